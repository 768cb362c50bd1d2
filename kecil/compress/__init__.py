"""Making models smaller: quantization (GGUF and torch weight-only), with calibration."""
