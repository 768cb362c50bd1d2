"""With a validation set, the adapter written is the one of the step with the lowest validation loss,
and the run stops once `patience` validations in a row have not beaten it (issue 26, point 6).

The run: a tiny random llama at lr 0.3 with the output layer adapted too. Its validation loss falls
for the first two steps and then blows up (measured: 6.35, 6.36, 6.02, then 195 and never below
60 again), so the best adapter is an early one and the last is far worse: what a user's run that
went too far looks like, in a few seconds.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from kecil.tune.checkpoint import BEST_FILE, checkpoint_dirs
from kecil.tune.lora import LINEAR_TARGETS, TuneConfig, tune
from tests.cli_helpers import kecil
from tests.tune.helpers import COLOURS, THINGS, write_jsonl


def _colours(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"What is the {THINGS[i]}?"},
                             {"role": "assistant", "content": COLOURS[(i * 3) % len(COLOURS)]}]} for i in range(8)]
    return write_jsonl(tmp_path / "train.jsonl", records), write_jsonl(tmp_path / "val.jsonl", records)


SETTINGS = dict(epochs=3, lr=0.3, batch_size=1, max_length=48, dropout=0.0, threads=1, eval_every=1, mix_general=0,
                check_general=False, target_modules=LINEAR_TARGETS + ("lm_head",))


def test_the_adapter_written_is_the_best_by_validation_loss_not_the_last(tiny_hf_model, tmp_path):
    train, val = _colours(tmp_path)
    result = tune(TuneConfig(model=str(tiny_hf_model("llama")), data=train, val_data=val, output=tmp_path / "out",
                             patience=0, **SETTINGS))
    losses = {h["step"]: h["val_loss"] for h in result.history if "val_loss" in h}
    best = min(losses, key=losses.get)
    assert result.steps == result.plan.total_steps and not result.stopped_early  # patience 0: never stops early
    assert 0 < result.best_step == best < result.steps
    assert result.val_loss == losses[best] and result.last_val_loss == losses[result.steps] > 2 * result.val_loss
    written = load_file(tmp_path / "out" / "adapter_model.safetensors")
    last = checkpoint_dirs(tmp_path / "out")[-1]
    kept = load_file(last / BEST_FILE)
    at_last_step = load_file(last / "adapter_model.safetensors")
    assert written.keys() == kept.keys() == at_last_step.keys()
    assert all(torch.equal(written[k], kept[k]) for k in written)
    assert not all(torch.equal(written[k], at_last_step[k]) for k in written)


def test_patience_stops_the_run_and_the_cli_says_which_step_was_kept(tiny_hf_model, tmp_path):
    """The same run from the command line with --patience 3: it stops three validations after the
    best step, and the summary names the step kept, its loss and why the run ended early."""
    train, val = _colours(tmp_path)
    done = kecil("tune", str(tiny_hf_model("llama")), str(train), "--val-data", str(val), "-o", str(tmp_path / "out"),
                 "--epochs", "3", "--lr", "0.3", "--batch-size", "1", "--max-length", "48", "--dropout", "0", "--threads", "1",
                 "--eval-every", "1", "--patience", "3", "--mix-general", "0", "--no-check-general",
                 *[arg for target in LINEAR_TARGETS + ("lm_head",) for arg in ("--target-modules", target)])
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    kept = next(line for line in lines if line.startswith("kept the adapter of step"))
    step = int(kept.split()[5].rstrip(":"))
    assert step > 0 and "the lowest seen" in kept
    stopped = next(line for line in lines if line.startswith("stopped early"))
    assert f"at step {step + 3} of" in stopped and "--patience" in stopped
    assert "plan: validation every 1 steps" in done.stderr and "lowest validation loss is kept" in done.stderr
