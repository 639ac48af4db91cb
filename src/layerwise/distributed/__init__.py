"""Processes and layouts: the torchrun environment and collectives (`env`), and DDP, FSDP2,
compilation and activation checkpointing applied to a built model from outside (`parallelize`)."""
