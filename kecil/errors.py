"""The one error hierarchy of kecil: every message says what was wrong and what to do next.

The CLI turns any KecilError into a one-line message and a non-zero exit code; a traceback
reaching a user is a bug.
"""

from __future__ import annotations


class KecilError(Exception):
    """Base class. `str(error)` is the whole user-facing message."""

    exit_code = 1


class ConfigError(KecilError, ValueError):
    """A setting is out of range or inconsistent (a negative temperature, an unknown backend)."""

    exit_code = 2


class DependencyError(KecilError):
    """An installed package is missing or too old for what was asked (kecil/infer/requirements.py
    says which versions each feature needs): the message names the version to install."""


class DeviceError(ConfigError):
    """The device asked for (`--device cuda`, `cuda:1`) is not there: no CUDA GPU, a CPU-only torch,
    or a GPU index past the last one. The message names what torch sees and what to pass instead."""


class ModelNotFoundError(KecilError):
    """The MODEL argument names nothing kecil can open: no such path, an uninstalled built-in
    (`kecil pull` installs it), or a hub id (kecil never downloads from the hub)."""


class DownloadError(KecilError):
    """`kecil pull` could not install a built-in's packages (no connection, an index without them,
    pip itself failing): the message carries pip's reason and how to retry; nothing was assembled."""


class InvalidModelError(KecilError):
    """The path exists but is not a usable model: truncated, corrupt, or not a model at all."""


class UnsupportedArchitectureError(KecilError):
    """The model is well-formed but its architecture is not one kecil supports."""


class DataMissingError(KecilError):
    """A data set or input file is not installed or unreadable (an evaluation set's package, a
    task file): the message names the file and the command that installs or fixes it."""


class BackendError(KecilError):
    """An inference backend is missing, cannot run this model, or failed while running it."""


class UnsupportedError(BackendError):
    """The engine running a model cannot do what was asked of it (a grammar or log-probabilities
    on the torch engine): the message names the engine and what would do it."""


class PromptTooLongError(KecilError):
    """The prompt does not fit in the context window; never truncated silently."""

    def __init__(self, prompt_tokens: int, context_length: int, max_tokens: int = 0):
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        self.max_tokens = max_tokens
        super().__init__(
            f"the prompt is {prompt_tokens} tokens but the context window is {context_length} tokens"
            + (f" (and {max_tokens} are reserved for the answer)" if max_tokens else "")
            + ": shorten the prompt, lower --max-tokens, or raise --context"
        )


class KnowledgeBaseError(KecilError):
    """A RAG knowledge base is missing, was built with another embedding model, or is damaged."""


class StoreUnavailableError(KnowledgeBaseError):
    """A knowledge base's database server cannot be reached or refused the work (connection lost,
    disk full): every file would fail alike, so an ingest stops instead of skipping one."""


class RedactionError(KecilError):
    """Private values could not be redacted for certain (a detector failed, a value would remain):
    nothing was sent anywhere. The message never quotes the text."""


class Interrupted(KecilError):
    """The user stopped a long job (Ctrl-C) and what it had done was kept: the message says where
    and how to continue."""

    exit_code = 130


class BuildError(KecilError):
    """A `kecil build` stage failed: the message names the stage, carries the stage's own error,
    and says that the stages before it are kept (rerunning the build resumes there)."""
