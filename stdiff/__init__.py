"""stdiff: generate H&E tissue patches from spatial gene expression and measure what they carry.

The reader is re-exported here: ``stdiff.read_visium(path)``. Models, training and metrics live in
submodules and are imported on use, so ``import stdiff`` stays light.
"""

from stdiff.io import read_visium

__all__ = ["read_visium"]
__version__ = "0.1.0"
