"""Progress that reaches a log file: plain lines every few seconds when stderr is not a terminal; no stray bars."""

from __future__ import annotations

import io

from kecil.tune.progress import ProgressLines, TuneProgress, clock_time, progress_for


def _at(step: int, total: int = 100) -> TuneProgress:
    return TuneProgress(step=step, total_steps=total, loss=1.5, val_loss=None, tokens_per_second=850.0, eta_seconds=62.0)


def test_progress_lines_come_every_few_seconds_and_at_the_end():
    now = [0.0]
    out = io.StringIO()
    report = ProgressLines(out, every=10.0, clock=lambda: now[0])
    for step in range(1, 101):
        now[0] = step * 0.5  # a step every half second: a line every 20 steps
        report(_at(step))
    lines = out.getvalue().splitlines()
    assert lines[0] == "tune: step 1/100 loss 1.500 | 850 tok/s | ETA 1m02s"
    assert [line.split()[2] for line in lines] == ["1/100", "21/100", "41/100", "61/100", "81/100", "100/100"]


def test_a_terminal_keeps_its_bar_a_file_gets_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def bar(p):
        return None

    assert progress_for(Terminal(), bar) is bar
    assert isinstance(progress_for(io.StringIO(), bar), ProgressLines)


def test_clock_time():
    assert (clock_time(7), clock_time(125), clock_time(3723)) == ("7s", "2m05s", "1h02m03s")


def test_loading_a_gguf_into_torch_draws_no_tqdm_bar(tiny_hf_model, tmp_path, capfd):
    from kecil.infer.torch_backend import load_transformers
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf
    from kecil.models.reference import resolve

    source = convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path / "tiny.gguf", out_type="f16")
    capfd.readouterr()
    load_transformers(resolve(str(source)))
    captured = capfd.readouterr()
    assert "de-quantizing" not in captured.err + captured.out
