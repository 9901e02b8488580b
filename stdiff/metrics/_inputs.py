"""Input checks shared by the image and embedding metrics."""

from __future__ import annotations

import numpy as np
import torch


def describe(array: object) -> str:
    """Return ``type shape dtype`` of an array-like object, for error messages."""
    shape = getattr(array, "shape", None)
    dtype = getattr(array, "dtype", None)
    return f"{type(array).__name__} of shape {tuple(shape) if shape is not None else '?'} and dtype {dtype}"


def as_patch_batches(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check a pair of RGB patch arrays and return them as ``(N, H, W, 3)`` batches.

    Parameters
    ----------
    real, generated
        uint8 arrays of shape ``(N, H, W, 3)``, or ``(H, W, 3)`` for a single patch. Both must have the
        same shape.

    Returns
    -------
    tuple of numpy.ndarray
        ``real`` and ``generated`` as uint8 ``(N, H, W, 3)`` arrays (views, not copies).

    Raises
    ------
    ValueError
        If either input is not a uint8 numpy array of one of those shapes, or the shapes differ.
    """
    for name, patches in (("real", real), ("generated", generated)):
        if not isinstance(patches, np.ndarray):
            raise ValueError(f"{name} must be a uint8 numpy array of shape (N, H, W, 3), got {describe(patches)}")
        if patches.dtype != np.uint8:
            raise ValueError(
                f"{name} must have dtype uint8 (RGB values 0..255), got {describe(patches)}. "
                "Convert float images in [0, 1] with (image * 255).round().astype(np.uint8)"
            )
        if patches.ndim not in (3, 4) or patches.shape[-1] != 3:
            raise ValueError(f"{name} must have shape (N, H, W, 3) or (H, W, 3), got {describe(patches)}")
    if real.shape != generated.shape:
        raise ValueError(
            f"real and generated must have the same shape, got real {real.shape} and generated {generated.shape}"
        )
    if real.ndim == 3:
        return real[np.newaxis], generated[np.newaxis]
    return real, generated


def as_float_matrix(values: np.ndarray | torch.Tensor, *, name: str) -> np.ndarray:
    """Return a numpy or torch array of shape ``(N, D)`` or ``(D,)`` as a float64 ``(N, D)`` array.

    Raises
    ------
    ValueError
        If ``values`` is not a numpy array or torch tensor, is not 1-D or 2-D, or is not numeric.
    """
    if isinstance(values, torch.Tensor):
        matrix = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    elif isinstance(values, np.ndarray):
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise ValueError(f"{name} must be numeric, got {describe(values)}")
        matrix = values.astype(np.float64, copy=False)
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor of shape (N, D), got {describe(values)}")
    if matrix.ndim == 1:
        matrix = matrix[np.newaxis]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D) or (D,), got {describe(values)}")
    return matrix
