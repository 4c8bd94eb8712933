"""Checkpoint formats on disk: Meta's layout, Hugging Face directories and quantized checkpoints;
safe memory-mapped reading, split and merge by the plan, and loading into a model on this rank."""
