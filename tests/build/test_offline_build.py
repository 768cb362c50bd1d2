"""Provably offline: a whole tiny build, then `kecil eval` and `kecil generate` on its result, inside a
network namespace that has only loopback (`unshare -n`, needs root: CI runs as root), with the audit
hook of tests/offline.py refusing any address that is not loopback in the kecil processes themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.build.test_build import write_recipe

ROOT = Path(__file__).resolve().parents[2]
# `python -m kecil ARGS` with the offline audit hook installed first
GUARDED = ("import sys, runpy; from tests import offline; sys.addaudithook(offline._audit); "
           "sys.argv = ['kecil', *sys.argv[1:]]; runpy.run_module('kecil', run_name='__main__')")


def _namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _namespace_works(), reason="needs `unshare -n` (root, or user namespaces) and iproute2's `ip`")
def test_a_build_and_its_result_run_with_no_network_but_loopback(tiny_hf_model, tmp_path):
    recipe = write_recipe(tmp_path, tiny_hf_model("llama"))
    kecil = f'{sys.executable} -c "{GUARDED}"'
    script = " && ".join([
        "ip link set lo up",
        "! ip route get 1.1.1.1 >/dev/null 2>&1",  # no route out: the namespace really is closed
        f"{kecil} build {recipe} -o {tmp_path / 'result'}",
        f"{kecil} eval {tmp_path / 'result' / 'tiny.gguf'} --tasks facts --task-file {tmp_path / 'facts.yaml'} --limit 2 --no-system --json",
        f"{kecil} generate {tmp_path / 'result' / 'tiny.gguf'} 'The cat' --max-tokens 4",
    ])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KECIL_DEBUG": ""}
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"task": "facts"' in done.stdout and "tried to leave the machine" not in done.stderr
    assert (tmp_path / "result" / "report.json").is_file()
