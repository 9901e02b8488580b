"""Readers for Space Ranger (10x Visium) samples and their tissue images."""

from stdiff.io.errors import VisiumReadError, VisiumReadWarning
from stdiff.io.images import TissueImage, open_tissue_image
from stdiff.io.samples import read_samples
from stdiff.io.visium import list_samples, read_visium

__all__ = [
    "TissueImage",
    "VisiumReadError",
    "VisiumReadWarning",
    "list_samples",
    "open_tissue_image",
    "read_samples",
    "read_visium",
]
