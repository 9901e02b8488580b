"""Similarity between embeddings (for example CLIP image embeddings of real and generated patches)."""

from __future__ import annotations

import numpy as np
import torch

from stdiff.metrics._inputs import as_float_matrix


def cosine_similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Compute the cosine similarity between each row of ``a`` and the same row of ``b``.

    Higher is better, and values lie in [-1, 1]. A row whose norm is 0 has no direction, so its
    cosine is NaN, which :func:`~stdiff.metrics.bootstrap_ci` and :func:`~stdiff.metrics.summarize` skip.

    Parameters
    ----------
    a, b
        numpy arrays or torch tensors of shape ``(N, D)``, or ``(D,)`` for one vector, with the same shape.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(N,)``.

    Raises
    ------
    ValueError
        If the inputs are not numeric 1-D or 2-D arrays of the same shape.
    """
    a_matrix = as_float_matrix(a, name="a")
    b_matrix = as_float_matrix(b, name="b")
    if a_matrix.shape != b_matrix.shape:
        raise ValueError(f"a and b must have the same shape, got a {tuple(a.shape)} and b {tuple(b.shape)}")

    norms = np.linalg.norm(a_matrix, axis=1) * np.linalg.norm(b_matrix, axis=1)
    dots = np.einsum("nd,nd->n", a_matrix, b_matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = np.where(norms > 0, dots / norms, np.nan)
    return np.clip(cosines, -1.0, 1.0)


def random_derangement(n: int, *, seed: int = 0) -> np.ndarray:
    """Return a permutation of ``range(n)`` with no fixed point, drawn uniformly among all such permutations.

    Draws random permutations until one has no fixed point. About 1 in e (37%) of permutations
    qualify, so this takes e (2.7) draws on average.

    Raises
    ------
    ValueError
        If ``n`` is less than 2, because no derangement exists then.
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got n={n}")
    rng = np.random.default_rng(seed)
    identity = np.arange(n)
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == identity):
            return permutation


def mismatched_cosine(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, seed: int = 0
) -> np.ndarray:
    """Compute the cosine similarity of each row ``a[i]`` with another spot's row ``b[perm[i]]``.

    ``perm`` is a random derangement (``perm[i] != i`` for every i) from :func:`random_derangement`.
    This is the baseline for :func:`cosine_similarity`: if generated patches carry information about
    their own spot, matched pairs score higher than mismatched pairs.

    Parameters
    ----------
    a, b
        numpy arrays or torch tensors of shape ``(N, D)`` with N at least 2 and the same shape.
    seed
        Seed for the derangement.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(N,)``.

    Raises
    ------
    ValueError
        If the inputs differ in shape or have fewer than 2 rows.
    """
    a_matrix = as_float_matrix(a, name="a")
    b_matrix = as_float_matrix(b, name="b")
    if a_matrix.shape != b_matrix.shape:
        raise ValueError(f"a and b must have the same shape, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if len(a_matrix) < 2:
        raise ValueError(f"mismatched_cosine needs at least 2 rows to pair each with another, got {len(a_matrix)}")
    permutation = random_derangement(len(a_matrix), seed=seed)
    return cosine_similarity(a_matrix, b_matrix[permutation])
