"""layerwise: pre-train and compare language models whose layers are not all the same width."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerwise.training import train

__version__ = "0.1.0"
__all__ = ["__version__", "train"]


def __getattr__(name: str) -> Any:
    """`layerwise.train` without importing torch for `import layerwise` itself (CLI start-up)."""
    if name == "train":
        from layerwise.training import train

        return train
    raise AttributeError(f"module 'layerwise' has no attribute {name!r}")
