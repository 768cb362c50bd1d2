"""The main job's last step (kecil/demo.py): a real `kecil serve` on loopback, asked one question per model.

The build itself is tested on the real embedded model by tests/build/test_demo_build.py (heavy);
here the server is given the embedded model twice (as its built-in name and as its file), which
is what the main job does with the base and the built result.
"""

from __future__ import annotations

from kecil.demo import ask_served, demo_folder, demo_recipe_path
from kecil.models.builtins import builtin_path


def test_ask_served_asks_each_model_over_a_real_server_and_stops_it(tmp_path):
    log = tmp_path / "serve.log"
    file = builtin_path("smollm2-135m")
    base, other = ask_served("smollm2-135m", file, "What is the capital of France?", log)
    # each model answered under its own id, the file by its name (served by path it lacks the
    # built-in's preset system prompt, so its answer differs: the result of a build carries its own)
    assert base.model == "smollm2-135m" and other.model == file.stem
    assert "Paris" in base.answer and other.answer
    text = log.read_text()
    assert "What is the capital" not in text and "Paris" not in text  # kecil serve logs no prompt or answer
    assert (tmp_path / "audit.jsonl").is_file()


def test_the_main_job_builds_the_shipped_recipe_into_the_kecil_home(kecil_home):
    assert demo_recipe_path().is_file() and (demo_recipe_path().parent / "train.jsonl").is_file()
    assert demo_folder() == kecil_home / "demo"  # outside the repository: `make demo` leaves git clean
