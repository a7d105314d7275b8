"""Training: state, optimizer, losses, pure step functions, checkpointing and the loop."""
from sw_zoo.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
