"""What `kecil quantize` must never do to the user's disk (issue 16, points 12 and 13): overwrite its
own input, fail on a full disk with an internal error or leave half files, or let the leftovers of
a killed run pile up forever."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kecil.compress.quantize import QuantizeConfig, quantize
from kecil.errors import ConfigError, KecilError
from kecil.scratch import sweep_stale
from tests.compress.test_quantize import assert_clean_error, kecil


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf_model, tmp_path_factory) -> Path:
    """A small GGUF file to quantize (the tiny llama at f16)."""
    out = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
    quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="f16", output=out, method="none", report=False))
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_refuses_to_write_over_its_input_by_path_symlink_or_hard_link(tiny_gguf, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    before = digest(model)
    symlink = tmp_path / "link.gguf"
    symlink.symlink_to(model)
    hard = tmp_path / "hard.gguf"
    os.link(model, hard)
    for source, output in ((model, model), (model, symlink), (symlink, model), (model, hard), (hard, model)):
        with pytest.raises(ConfigError, match="is the input model itself") as error:
            quantize(QuantizeConfig(model=str(source), to="q4_0", output=output, method="none", report=False))
        assert "pick another -o path" in str(error.value)
    assert digest(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.gguf", "link.gguf", "model.gguf"]
    # another file of the same content is not the input: writing it is fine
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(model.read_bytes())
    quantize(QuantizeConfig(model=str(model), to="q4_0", output=copy, method="none", report=False))
    assert digest(model) == before and digest(copy) != before


def test_cli_refuses_quantizing_a_file_onto_itself(tiny_gguf, tmp_path):
    model = tmp_path / "x.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    before = digest(model)
    assert_clean_error(kecil("quantize", str(model), "--to", "q4_0", "-o", str(model), "--no-report"), "input model itself")
    assert digest(model) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: a real file system that runs out of space (needs root, as CI runs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip() or 'mount failed'}): this test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_says_so_and_leaves_nothing(tiny_gguf, tiny_hf_model, small_disk):
    out = small_disk / "tiny-q8.gguf"
    assert tiny_gguf.stat().st_size > 4 * 64 * 1024  # its q8_0 (about half) cannot fit
    # from a GGUF: the requantizer knows the output's exact size before writing
    with pytest.raises(KecilError) as error:
        quantize(QuantizeConfig(model=str(tiny_gguf), to="q8_0", output=out, method="none", report=False))
    message = str(error.value)
    assert not isinstance(error.value, OSError)
    assert "the disk is full" in message and str(small_disk) in message and "tiny-q8.gguf" in message
    assert "needs about" in message and "free" in message
    assert list(small_disk.iterdir()) == []  # no .part file, no working folder
    # from an HF folder: the float copy made first runs out of space
    with pytest.raises(KecilError, match="the disk is full") as error:
        quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q8_0", output=out, method="none", report=False))
    assert str(small_disk) in str(error.value)
    assert list(small_disk.iterdir()) == []


def test_cli_on_a_full_disk_is_a_clean_error_not_an_internal_one(tiny_gguf, small_disk):
    done = kecil("quantize", str(tiny_gguf), "--to", "q8_0", "-o", str(small_disk / "t.gguf"), "--no-report")
    assert done.returncode != 70, done.stderr  # 70 is "internal error, please report it"
    assert_clean_error(done, "disk is full", str(small_disk))
    assert list(small_disk.iterdir()) == []


_STALLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kecil.compress.quantize import QuantizeConfig, quantize

    def stall(stage, done, total):
        if stage == "quantize" and done == 2:
            Path(sys.argv[3]).write_text("writing")
            time.sleep(600)

    quantize(QuantizeConfig(model=sys.argv[1], to="q4_0", output=Path(sys.argv[2]), method="none", report=False), progress=stall)
    """
)


def test_a_killed_run_is_swept_by_the_next_but_a_live_run_is_not(tiny_hf_model, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, marker = out_dir / "t.gguf", tmp_path / "writing"
    run = subprocess.Popen([sys.executable, "-c", _STALLED_RUN, str(tiny_hf_model("llama")), str(out), str(marker)])
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run to kill never started writing"
            time.sleep(0.2)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.kill()
        run.wait()
    left = sorted(p.name for p in out_dir.iterdir())
    assert any(n.startswith(f".kecil-quantize-{run.pid}-") for n in left), left  # the HF folder's GGUF copy
    assert any(n.startswith(f".t.gguf.kecil-{run.pid}-") and n.endswith(".part") for n in left), left
    # a concurrent run that is still alive: its files must survive the sweep
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (out_dir / f".other.gguf.kecil-{live.pid}-abc.part").write_bytes(b"half")
        (out_dir / f".kecil-quantize-{live.pid}-abc").mkdir()
        (out_dir / "mine.gguf").write_bytes(b"not a leftover")
        quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q4_0", output=out, method="none", report=False))
        assert sorted(p.name for p in out_dir.iterdir()) == sorted(
            [f".kecil-quantize-{live.pid}-abc", f".other.gguf.kecil-{live.pid}-abc.part", "mine.gguf", "t.gguf"]
        )
    finally:
        live.kill()
        live.wait()
    # once that run is gone too, the next sweep takes its files
    assert len(sweep_stale(out_dir)) == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["mine.gguf", "t.gguf"]


def test_fit_sweeps_its_folders_under_kecil_home(kecil_home):
    from kecil.build.fit import _sweep

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = kecil_home / "fit" / "some-model-1234"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".q4_0.gguf.kecil-{dead.pid}-x1.part").write_bytes(b"half")
    (folder / f".kecil-quantize-{dead.pid}-x2").mkdir()
    (folder / "q8_0.gguf").write_bytes(b"a finished variant")
    _sweep(None)
    assert [p.name for p in folder.iterdir()] == ["q8_0.gguf"]


def test_a_reused_pid_does_not_protect_a_leftover(tmp_path):
    """A live process that started after the file was last written cannot be its owner."""
    leftover = tmp_path / f".x.gguf.kecil-{os.getpid()}-old.part"
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    assert sweep_stale(tmp_path) == []  # this process is alive and is never swept by itself
    young = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        reused = tmp_path / f".x.gguf.kecil-{young.pid}-old.part"
        leftover.rename(reused)
        os.utime(reused, (time.time() - 3600, time.time() - 3600))  # written an hour before `young` started
        assert sweep_stale(tmp_path) == [reused]
    finally:
        young.kill()
        young.wait()


def test_leftovers_named_before_the_pid_are_swept_once_a_day_old(tmp_path):
    from kecil.scratch import LEGACY_AGE_SECONDS

    old_part, old_dir = tmp_path / ".t.gguf.ab12cd_3.part", tmp_path / ".kecil-quantize-x9y8z7w6"
    fresh = tmp_path / ".u.gguf.zz99yy88.part"
    old_part.write_bytes(b"half")
    old_dir.mkdir()
    fresh.write_bytes(b"maybe a run of an older kecil, still writing")
    other = tmp_path / ".notes.txt.ab12cd_3.part"  # not a name kecil wrote
    other.write_bytes(b"someone else's")
    past = time.time() - LEGACY_AGE_SECONDS - 60
    for path in (old_part, old_dir, other):
        os.utime(path, (past, past))
    assert sorted(p.name for p in sweep_stale(tmp_path)) == sorted([old_part.name, old_dir.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])
