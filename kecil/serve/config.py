"""Everything `kecil serve` can be told, validated once at start-up (a bad setting never
surfaces as a failed request later)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from kecil.errors import ConfigError
from kecil.infer.hardware import check_device_name, device_field
from kecil.models.info import parse_bytes

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # what may follow "BASE+" in a served id


@dataclass(frozen=True)
class APIKey:
    name: str  # who this key belongs to: what the audit log records, never the key itself
    secret: str


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server. Defaults suit a laptop serving its owner on loopback."""

    models: tuple[str, ...] = field(default=(), metadata={
        "help": "Models to serve (built-in names, .gguf files, Hugging Face folders); default: the embedded model. Each loads on its first request.",
        "metavar": "[MODEL]..."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on. Anything but loopback needs --api-key or --api-keys-file."})
    port: int = field(default=8000, metadata={"help": "Port to listen on (0 = any free port)."})
    api_keys: tuple[APIKey, ...] = ()  # from --api-key and --api-keys-file
    max_memory: int | None = field(default=None, metadata={
        "help": "Memory all loaded models may use, e.g. 4GB or 4GiB (GB = 10^9 bytes, GiB = 2^30); least-recently-used models are unloaded to stay under it (default: 75% of RAM).",
        "parse": parse_bytes})
    context_length: int | None = field(default=None, metadata={
        "help": "Context window in tokens per request (default: the model's, at most 4096).", "flag": ("--context", "-c")})
    parallel: int = field(default=4, metadata={"help": "Requests per model decoded together (continuous batching slots).", "flag": ("--parallel", "-p")})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: physical cores).", "flag": ("--threads", "-t")})
    device: str = device_field()  # Hugging Face models (the torch engine); llama.cpp runs GGUF files on the CPU
    max_queue: int = field(default=64, metadata={"help": "Requests waiting per model before the server answers 429."})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "Largest request body in bytes, e.g. 1MB.", "flag": "--max-body", "parse": parse_bytes})
    max_tokens_limit: int | None = field(default=None, metadata={"help": "Largest max_tokens a request may ask for (default: the context length)."})
    request_timeout: float = field(default=300.0, metadata={"help": "Seconds one request may take, queueing included.", "flag": "--timeout"})
    log_requests: bool = field(default=False, metadata={"help": "Log prompts and completions (off: they are never logged)."})
    audit_log: Path | None = field(default=None, metadata={"help": "Append-only JSON audit log (default: $KECIL_HOME/serve/audit.jsonl)."})
    embedding_model: str | None = DEFAULT_EMBEDDING_MODEL  # on the command line: --embeddings/--no-embeddings
    preload: bool = field(default=True, metadata={"help": "Load the first model at start-up (then /ready means ready)."})
    knowledge_bases: tuple[str, ...] = field(default=(), metadata={"hidden": True})  # served as models named rag:NAME
    # One LoRA for the first model, for callers of the library: the same as adapters=((its name, path),).
    adapter: Path | None = field(default=None, metadata={"hidden": True})
    adapters: tuple[tuple[str, Path], ...] = field(default=(), metadata={
        "help": "LoRA adapters served on the first model, each as its own model BASE+NAME: NAME=PATH "
                "(PATH: a `kecil tune` -o folder or a GGUF LoRA file); repeat for several."})
    draft: str | None = field(default=None, metadata={"metavar": "MODEL", "help": (
        "Speculative decoding for the first model while one request runs alone: a smaller GGUF model with the same "
        "tokenizer, or 'prompt-lookup' (n-grams of the prompt). Same output; faster on a CPU.")})
    routes: tuple[Path, ...] = field(default=(), metadata={
        "help": "A route file (`kecil route calibrate` writes one), served as the model route:NAME (repeatable).", "flag": "--route"})
    max_prompts: int = field(default=64, metadata={
        "help": "Prompts one /v1/completions request may carry (each also counts against --max-queue)."})
    reports_dir: Path | None = field(default=None, metadata={
        "help": "A folder of `kecil eval --html` reports the web page lists and opens.", "flag": "--reports"})
    max_messages: int = field(default=2000, metadata={
        "help": "Messages one chat request may carry (a larger conversation is refused with 400)."})
    max_upload_bytes: int = field(default=1_000_000_000, metadata={
        "help": "Bytes of files the web page may upload into one knowledge base, all its files together, e.g. 5GB "
                "(past it an upload is refused with 413).", "flag": "--max-upload", "parse": parse_bytes})
    max_upload_files: int = field(default=10_000, metadata={
        "help": "Files the web page may upload into one knowledge base (past it an upload is refused with 413)."})
    min_free_disk: int = field(default=500_000_000, metadata={
        "help": "Free disk space an upload from the web page must leave, e.g. 2GB (below it the upload is refused with 507).",
        "parse": parse_bytes})

    def __post_init__(self) -> None:
        check_device_name(self.device)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        for name, value, low in (("parallel", self.parallel, 1), ("max_queue", self.max_queue, 0),
                                 ("max_body_bytes", self.max_body_bytes, 1024), ("max_prompts", self.max_prompts, 1),
                                 ("max_messages", self.max_messages, 1), ("max_upload_bytes", self.max_upload_bytes, 1),
                                 ("max_upload_files", self.max_upload_files, 1), ("min_free_disk", self.min_free_disk, 0)):
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}")
        if self.request_timeout <= 0:
            raise ConfigError(f"the request timeout must be positive, got {self.request_timeout}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"--max-memory must be positive, got {self.max_memory}")
        if self.max_tokens_limit is not None and self.max_tokens_limit < 1:
            raise ConfigError(f"the max_tokens limit must be at least 1, got {self.max_tokens_limit}")
        names = [name for name, _ in self.served_adapters()]
        for name in names:
            if not ADAPTER_NAME.fullmatch(name):
                raise ConfigError(f"the adapter name {name!r} cannot be part of a model id: use letters, digits, '.', '_' or '-'")
        if len(set(names)) != len(names):
            raise ConfigError(f"two adapters are named alike ({', '.join(names)}): give each its own NAME=PATH")
        if not is_loopback(self.host) and not self.api_keys:
            raise ConfigError(
                f"binding to {self.host} lets other machines reach the server, so it needs a key: "
                "pass --api-key KEY or --api-keys-file FILE (or bind to 127.0.0.1)"
            )


    def served_adapters(self) -> list[tuple[str, Path]]:
        """Every adapter to serve, (name, path): `adapters`, and `adapter` under its own name."""
        single = [(adapter_name(self.adapter), Path(self.adapter))] if self.adapter is not None else []
        return single + [(name, Path(path)) for name, path in self.adapters]


def adapter_name(path: Path | str) -> str:
    """An adapter's name when none is given: its folder's name, or its file's without .gguf."""
    name = Path(path).expanduser().name
    return name[:-5] if name.lower().endswith(".gguf") else name


def parse_adapter_spec(text: str) -> tuple[str, Path]:
    """`--adapter NAME=PATH` (or a bare PATH, named after its folder or file) as (name, path);
    the adapter is then served as the model BASE+NAME."""
    name, sep, path = text.partition("=")
    if sep and ADAPTER_NAME.fullmatch(name) and path:
        return name, Path(path)
    if sep and "/" not in name and not Path(text).expanduser().exists():
        raise ConfigError(f"--adapter {text!r}: give NAME=PATH with a NAME of letters, digits, '.', '_' or '-' (or just PATH)")
    return adapter_name(text), Path(text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def read_keys_file(path: Path) -> list[APIKey]:
    """One key per line, `name:key` or a bare key; blank lines and # comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API keys file {path} ({exc}): give a readable text file, one key per line") from None
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        keys.append(make_key(secret.strip(), name.strip()) if sep else make_key(line, None, where=f"{path}:{number}"))
    if not keys:
        raise ConfigError(f"the API keys file {path} holds no keys: add one per line (name:key or key)")
    return keys


def make_key(secret: str, name: str | None = None, *, where: str = "--api-key") -> APIKey:
    import hashlib

    # Clients cannot send a key's outer whitespace (a Bearer value is stripped), so a key copied
    # with a trailing newline would never match: it is the key without it.
    secret = secret.strip()
    if len(secret) < 8:
        raise ConfigError(f"the API key at {where} is shorter than 8 characters: use a longer random key (e.g. `openssl rand -hex 24`)")
    return APIKey(name or "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8], secret)
