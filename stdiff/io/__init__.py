"""Readers for Space Ranger (10x Visium) samples and their tissue images."""

from stdiff.io.errors import VisiumReadError
from stdiff.io.images import TissueImage, open_tissue_image
from stdiff.io.visium import list_samples, read_visium

__all__ = ["TissueImage", "VisiumReadError", "list_samples", "open_tissue_image", "read_visium"]
