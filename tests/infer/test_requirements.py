"""Each torch feature's package floor: this environment meets it, and an older package is one clear error."""

from __future__ import annotations

import pytest

from kecil.errors import DependencyError
from kecil.infer.requirements import NEEDS, TESTED, installed_versions, require


def test_this_environment_has_what_every_feature_needs():
    for feature in NEEDS:
        require(feature)


def test_the_pins_in_pyproject_are_the_tested_versions():
    import tomllib
    from pathlib import Path

    pins = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in TESTED.items():
        assert any(p.split(";")[0].strip() == f"{name}=={version}" for p in pins), (name, version)
    assert installed_versions(TESTED) == TESTED


@pytest.mark.parametrize("installed, words", [
    ({"transformers": "5.17.0", "peft": "0.21.2"}, ["transformers >= 5.21.0", "logits_to_keep", "has transformers 5.17.0",
                                                    "pip install 'transformers==5.23.0'"]),
    ({"transformers": "5.23.0", "peft": None}, ["peft >= 0.16.0", "is not installed", "pip install 'peft==0.21.2'"]),
])
def test_a_package_too_old_for_tune_is_named_with_the_version_to_install(installed, words):
    with pytest.raises(DependencyError) as caught:
        require("tune", installed)
    assert all(w in str(caught.value) for w in words), str(caught.value)
    assert "\n" not in str(caught.value)
