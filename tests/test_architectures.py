"""Every technique on every tiny architecture: one table, one tester (as peft's test table is).

A technique that must work on each supported architecture adds one row to TECHNIQUES: its name,
the check (a function `check(arch, tiny_hf_model, tmp_path)` kept beside the technique's other
tests) and, if not all of TINY_ARCHS, the architectures it covers. A new architecture is one entry
in tests/tiny_models.py, and every row then runs on it.
"""

from __future__ import annotations

import pytest

from tests.compress.test_prune import pruned_model_loads_and_runs_in_llama_cpp
from tests.infer.test_backends import generates_with_usage_and_finish_reason
from tests.models.formats.test_hf_to_gguf import converts_to_gguf_computing_what_transformers_computes
from tests.models.test_info import tiny_hf_folder_facts
from tests.models.test_reference import resolves_to_its_architecture
from tests.tiny_models import EXTRA_ARCHS, TINY_ARCHS
from tests.tune.test_lora import trains_with_its_default_targets

TECHNIQUES = [
    ("resolve", resolves_to_its_architecture, TINY_ARCHS),  # models/reference.py
    ("inspect", tiny_hf_folder_facts, TINY_ARCHS),  # models/info.py
    ("convert-to-gguf", converts_to_gguf_computing_what_transformers_computes, TINY_ARCHS + EXTRA_ARCHS),  # models/formats
    ("generate-torch", generates_with_usage_and_finish_reason, TINY_ARCHS),  # infer/torch_backend.py
    ("lora", trains_with_its_default_targets, TINY_ARCHS),  # tune/lora.py
    ("prune", pruned_model_loads_and_runs_in_llama_cpp, TINY_ARCHS),  # compress/prune.py
]
CASES = [pytest.param(check, arch, id=f"{name}-{arch}") for name, check, archs in TECHNIQUES for arch in archs]


@pytest.mark.parametrize(("check", "arch"), CASES)
def test_technique_on_architecture(check, arch, tiny_hf_model, tmp_path):
    check(arch, tiny_hf_model, tmp_path)
