"""The transformers and peft versions kecil's torch features need, checked as a feature starts.

An older transformers fails deep inside itself instead (issue 18: under transformers 5.17 `kecil
tune` died with an IndexError in modeling_llama on the boolean logits_to_keep kecil passes), so
each feature states its floor here and `require` turns a too-old package into one clear error.
The minimums were found by reading each release's code for the feature named; everything is
tested only at the versions pinned in pyproject.toml (TESTED).
"""

from __future__ import annotations

from collections.abc import Mapping

from kecil.errors import DependencyError

TESTED = {"transformers": "5.23.0", "peft": "0.21.2", "accelerate": "1.15.0"}  # pyproject.toml's pins

# feature -> package -> (lowest version that has what the feature uses, what that is)
NEEDS: dict[str, dict[str, tuple[str, str]]] = {
    "tune": {
        "transformers": ("5.21.0", "the loss is computed only at the answer tokens through a boolean logits_to_keep "
                                   "(transformers' slice_logits_to_keep takes a mask from 5.21.0)"),
        "peft": ("0.16.0", "kecil's fused LoRA forward reads peft's lora_variant (from 0.16.0)"),
    },
}


def installed_versions(packages) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def require(feature: str, installed: Mapping[str, str | None] | None = None) -> None:
    """Raise DependencyError when a package `feature` needs is missing or older than NEEDS says;
    `installed` (name -> version) defaults to this environment's."""
    from packaging.version import Version

    needs = NEEDS[feature]
    installed = installed_versions(needs) if installed is None else installed
    for name, (lowest, why) in needs.items():
        have = installed.get(name)
        if have is None or Version(have) < Version(lowest):
            found = "is not installed" if have is None else f"has {name} {have}"
            raise DependencyError(
                f"kecil {feature} needs {name} >= {lowest} ({why}); this environment {found}: "
                f"pip install '{name}=={TESTED[name]}' (the version kecil is tested with)"
            )
