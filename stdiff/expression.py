"""Per-spot expression vectors: library-size normalisation, log1p and a fixed gene list."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .constants import GENES_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneSet:
    """The genes a model reads, in order, and how expression was normalised."""

    genes: tuple[str, ...]
    target_sum: float = 1e4  # counts per spot after library-size normalisation, before log1p

    def save(self, folder: str | Path, name: str = GENES_NAME) -> Path:
        path = Path(folder) / name
        payload = {
            "genes": list(self.genes),
            "target_sum": self.target_sum,
            "normalization": "counts / total counts of the spot * target_sum, then natural log1p",
        }
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str = GENES_NAME) -> "GeneSet":
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"No {name} in {Path(folder)}: the gene list of the model is missing.")
        payload = json.loads(path.read_text())
        return cls(genes=tuple(payload["genes"]), target_sum=float(payload["target_sum"]))


def total_counts(adata: AnnData) -> np.ndarray:
    """Return the UMI count of each spot (n_obs,)."""
    return np.asarray(adata.X.sum(axis=1)).ravel().astype(np.float64)


def normalize_log1p(adata: AnnData, *, target_sum: float = 1e4) -> sp.csr_matrix:
    """Return log1p(counts / total * target_sum) for every spot and gene, as CSR float32.

    Spots with zero counts stay zero.
    """
    counts = sp.csr_matrix(adata.X, dtype=np.float64)
    totals = total_counts(adata)
    factors = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    normalized = sp.diags(factors) @ counts
    normalized.data = np.log1p(normalized.data)
    return normalized.astype(np.float32).tocsr()


def _shared_genes(adatas: Sequence[AnnData], n_genes: int, option: str = "n_genes") -> list[str]:
    """Genes measured in every sample, sorted by name; at least ``n_genes`` of them (``option`` names the setting
    in messages)."""
    if n_genes < 1:
        raise ValueError(f"{option} must be at least 1, got {n_genes}.")
    if not adatas:
        raise ValueError("Choosing genes needs at least one sample.")
    shared = set(adatas[0].var_names)
    for adata in adatas[1:]:
        shared &= set(adata.var_names)
    if len(shared) < n_genes:
        raise ValueError(
            f"Only {len(shared)} genes are measured in all {len(adatas)} training samples, fewer than "
            f"{option}={n_genes}. Lower {option} or train on samples from the same panel."
        )
    return sorted(shared)


def select_top_genes(adatas: Sequence[AnnData], *, n_genes: int = 50, target_sum: float = 1e4) -> GeneSet:
    """Pick the ``n_genes`` genes with the highest mean normalised expression over all spots of ``adatas``.

    Only genes measured in every sample are eligible, so the vector means the same in each.
    """
    order = _shared_genes(adatas, n_genes)
    sums = np.zeros(len(order))
    n_spots = 0
    for adata in adatas:
        normalized = normalize_log1p(adata, target_sum=target_sum)
        columns = adata.var_names.get_indexer(order)
        sums += np.asarray(normalized[:, columns].sum(axis=0)).ravel()
        n_spots += adata.n_obs
    means = sums / max(n_spots, 1)
    # Ties are broken by name so the list does not depend on sample order.
    ranked = sorted(range(len(order)), key=lambda i: (-means[i], order[i]))[:n_genes]
    genes = tuple(order[i] for i in ranked)
    logger.info("Selected %d genes from %d spots; top: %s", len(genes), n_spots, ", ".join(genes[:5]))
    return GeneSet(genes=genes, target_sum=target_sum)


def select_variable_genes(adatas: Sequence[AnnData], *, n_genes: int = 50, target_sum: float = 1e4,
                          option: str = "n_genes") -> GeneSet:
    """Pick the ``n_genes`` most variable genes over all spots of ``adatas``, as scanpy defines them.

    Runs ``scanpy.pp.highly_variable_genes`` (Seurat flavour, on the log1p-normalised values, each sample a
    batch) over the genes measured in every sample. Genes expressed in no spot are left out first.
    """
    import anndata
    import scanpy as sc

    order = _shared_genes(adatas, n_genes, option)
    parts = []
    for index, adata in enumerate(adatas):
        columns = adata.var_names.get_indexer(order)
        parts.append(anndata.AnnData(
            X=normalize_log1p(adata, target_sum=target_sum)[:, columns],
            obs={"sample": np.full(adata.n_obs, str(index))},
        ))
    combined = anndata.concat(parts, index_unique="-")
    combined.var_names = order
    expressed = np.asarray((combined.X > 0).sum(axis=0)).ravel() > 0
    combined = combined[:, expressed].copy()
    if combined.n_vars < n_genes:
        raise ValueError(f"Only {combined.n_vars} shared genes are expressed in the training spots, fewer than "
                         f"{option}={n_genes}. Lower {option}.")
    batch_key = "sample" if len(adatas) > 1 else None
    table = sc.pp.highly_variable_genes(combined, flavor="seurat", n_top_genes=n_genes, batch_key=batch_key,
                                        inplace=False)
    table.index = combined.var_names
    if batch_key:
        ranked = table.sort_values(["highly_variable_nbatches", "dispersions_norm"], ascending=False)
    else:
        ranked = table.sort_values("dispersions_norm", ascending=False)
    genes = tuple(ranked.index[:n_genes])
    logger.info("Selected %d variable genes from %d spots; top: %s", len(genes), combined.n_obs,
                ", ".join(genes[:5]))
    return GeneSet(genes=genes, target_sum=target_sum)


def expression_matrix(adata: AnnData, gene_set: GeneSet) -> np.ndarray:
    """Return the normalised expression of ``gene_set`` genes, (n_obs, n_genes) float32.

    Genes the sample does not measure are filled with zeros and logged as a warning, so a model can still
    run on a sample from a slightly different panel.
    """
    normalized = normalize_log1p(adata, target_sum=gene_set.target_sum)
    columns = adata.var_names.get_indexer(list(gene_set.genes))
    missing = [gene for gene, column in zip(gene_set.genes, columns) if column < 0]
    if len(missing) == len(gene_set.genes):
        raise ValueError(
            f"None of the model's {len(gene_set.genes)} genes (for example {', '.join(gene_set.genes[:3])}) "
            "are in this sample. Check the species and the gene naming (symbols vs Ensembl ids)."
        )
    if missing:
        logger.warning("%d of %d model genes are not in the sample and are set to 0: %s",
                       len(missing), len(gene_set.genes), ", ".join(missing[:10]))
    values = np.zeros((adata.n_obs, len(gene_set.genes)), dtype=np.float32)
    present = columns >= 0
    values[:, present] = normalized[:, columns[present]].toarray()
    return values
