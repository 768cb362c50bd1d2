"""The route file: a JSON file naming the tiers a question may go through (small model → local
larger model → remote endpoint), when to escalate past each, whether remote escalation is allowed
at all, and the combiner and curve the thresholds came from (`kecil route calibrate` writes it).

    {"format": "kecil-route/1", "name": "support",
     "tiers": [{"name": "small", "model": "smollm2-135m", "threshold": 0.42},
               {"name": "large", "model": "qwen2.5-coder-1.5b", "threshold": 0.3},
               {"name": "cloud", "url": "https://api.example.com/v1", "remote_model": "gpt-4o-mini",
                "key_env": "EXAMPLE_API_KEY"}],
     "allow_remote": false}

A remote tier's key comes from an environment variable (`key_env`) or a file (`key_file`), never
from the route file or the command line, so it does not end up in shell history or version control.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from kecil.errors import ConfigError, DataMissingError
from kecil.route.confidence import Combiner, ConfidenceConfig, default_combiner

FORMAT = "kecil-route/1"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Tier:
    """One place an answer can come from: a local model (`model`) or a remote OpenAI-compatible
    endpoint (`url`). A question goes past this tier when its answer's confidence is below `threshold`."""

    name: str
    model: str | None = None
    url: str | None = None  # the API base, e.g. https://host/v1 (…/chat/completions is added)
    remote_model: str = ""  # the model name the remote endpoint is asked for
    key_env: str | None = None
    key_file: str | None = None
    threshold: float = 0.5
    timeout: float = 30.0  # seconds one attempt may take (never more than the request has left)
    retries: int = 1  # further attempts after a failed one (connection refused, 5xx, 429)

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"tier name {self.name!r}: use letters, digits, '.', '_' or '-'")
        if (self.model is None) == (self.url is None):
            raise ConfigError(f"tier {self.name!r} needs exactly one of model (a local MODEL) or url (a remote endpoint)")
        if self.url is not None:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(f"tier {self.name!r}: url must be http(s)://host[:port]/path, got {self.url!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"tier {self.name!r}: threshold must be between 0 and 1, got {self.threshold}")
        if self.timeout <= 0 or not 0 <= self.retries <= 5:
            raise ConfigError(f"tier {self.name!r}: timeout must be positive and retries between 0 and 5")

    @property
    def remote(self) -> bool:
        return self.url is not None

    def api_key(self) -> str | None:
        """The remote endpoint's key from `key_env` or `key_file`; None when neither is set."""
        if self.key_env:
            value = os.environ.get(self.key_env)
            if not value:
                raise ConfigError(f"tier {self.name!r} reads its key from ${self.key_env}, which is not set: export it")
            return value.strip()
        if self.key_file:
            try:
                return Path(self.key_file).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"tier {self.name!r}: cannot read its key file {self.key_file} ({exc.strerror})") from None
        return None


@dataclass(frozen=True)
class RouteFile:
    name: str
    tiers: tuple[Tier, ...]
    allow_remote: bool = False  # remote tiers are skipped unless this is true
    combiner: Combiner = field(default_factory=default_combiner)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    redaction: dict = field(default_factory=dict)  # passed to kecil.route.redact as its config
    max_tokens: int = 256  # the answer's length when a request does not say
    calibration: dict | None = None  # the data, curve and target the thresholds came from

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"route name {self.name!r}: use letters, digits, '.', '_' or '-' (it becomes the model id route:NAME)")
        if not self.tiers or self.tiers[0].remote:
            raise ConfigError(f"route {self.name!r}: the first tier must be a local model (it answers first, on this machine)")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"route {self.name!r}: two tiers share a name ({', '.join(names)})")

    def as_dict(self) -> dict:
        tier_defaults = {f.name: f.default for f in fields(Tier)}
        tiers = [{k: v for k, v in asdict(t).items() if k == "name" or v != tier_defaults[k]} for t in self.tiers]
        return {"format": FORMAT, "name": self.name, "tiers": tiers, "allow_remote": self.allow_remote,
                "max_tokens": self.max_tokens, "confidence": asdict(self.confidence), "redaction": self.redaction,
                "combiner": self.combiner.as_dict(), "calibration": self.calibration}


def save_route(route: RouteFile, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(route.as_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(path)  # a reader never sees half a file
    return path


def load_route(path: Path | str) -> RouteFile:
    """Read and check a route file; every mistake is named with the file it is in."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataMissingError(f"no route file at {path}: write one with `kecil route calibrate SMALL --large LARGE --data FILE`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON route file ({exc})") from None
    try:
        return _parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parse(data) -> RouteFile:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"not a route file: it needs \"format\": \"{FORMAT}\"")
    known = {f.name for f in fields(Tier)}
    tiers = []
    for i, tier in enumerate(data.get("tiers") or []):
        if not isinstance(tier, dict) or "name" not in tier:
            raise ConfigError(f"tier {i} must be an object with a name")
        unknown = set(tier) - known
        if unknown:
            raise ConfigError(f"tier {tier['name']!r} has unknown keys {sorted(unknown)}; keys: {', '.join(sorted(known))}")
        tiers.append(Tier(**tier))
    combiner = Combiner.from_dict(data["combiner"]) if data.get("combiner") else default_combiner()
    try:
        confidence = ConfidenceConfig(**(data.get("confidence") or {}))
    except TypeError as exc:
        raise ConfigError(f"confidence: {exc}") from None
    max_tokens = data.get("max_tokens", 256)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive whole number, got {max_tokens!r}")
    return RouteFile(name=str(data.get("name", "")), tiers=tuple(tiers), allow_remote=bool(data.get("allow_remote", False)),
                     combiner=combiner, confidence=confidence, redaction=dict(data.get("redaction") or {}),
                     max_tokens=max_tokens, calibration=data.get("calibration"))
