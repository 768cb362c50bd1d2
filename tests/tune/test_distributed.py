"""`accelerate launch` runs the same `kecil tune` data-parallel: here 2 CPU processes over gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.tune.helpers import memorisable_chat, write_jsonl


def test_two_processes_train_the_adapter_one_process_trains_with_accumulation(tiny_hf_model, tmp_path):
    """Two processes × 1 micro-batch each see the same batches per step as one process
    accumulating 2, so (without dropout) they must end with the same adapter."""
    import torch
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(12))
    common = [str(tiny_hf_model("llama")), str(data), "--epochs", "2", "--batch-size", "1", "--max-length", "40",
              "--dropout", "0", "--lr", "5e-3", "--val-split", "0.2", "--eval-every", "2", "--threads", "1"]
    env = {**os.environ, "KECIL_DEBUG": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    launcher = Path(sys.executable).with_name("accelerate")
    two = subprocess.run(
        # --multi_gpu is accelerate's torchrun launcher; with no GPU kecil trains on CPU over gloo.
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "-m", "kecil",
         "tune", *common, "--grad-accum", "1", "-o", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "kecil", "tune", *common, "--grad-accum", "2", "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(tmp_path / "two" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it did train
    state = json.loads(next((tmp_path / "two" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["fingerprint"]["processes"] == 2 and state["step"] == 10
    summary = json.loads((tmp_path / "two" / "kecil_tune.json").read_text())
    assert summary["processes"] == 2 and summary["distributed_backend"] == "gloo"  # CPU processes, no GPU here
