"""The training engine: loop, backends (local, DDP, DeepSpeed), checkpoints, optimizers."""
