"""kecil: make small language models fit your device and task, and run them privately, offline."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Privacy is the product: no Hugging Face library may reach the network from inside kecil.
# Set before anything imports huggingface_hub/transformers, which read these at import time.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
