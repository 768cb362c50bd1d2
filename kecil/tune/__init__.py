"""Fine-tuning small models on your own data: LoRA training, checkpoints, merging and adapter export."""
