"""stdiff: generate H&E tissue patches from spatial gene expression and measure what they carry.

The reader is re-exported here: ``stdiff.read_visium(path)``. It, the models, training and metrics are imported
on first use, so ``import stdiff`` stays light (the job wrapper and the command line start fast).
"""

__all__ = ["read_visium"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "read_visium":
        from stdiff.io import read_visium

        return read_visium
    raise AttributeError(f"module 'stdiff' has no attribute {name!r}")
