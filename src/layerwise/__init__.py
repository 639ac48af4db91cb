"""layerwise: pre-train and compare language models whose layers are not all the same width."""

__version__ = "0.1.0"
