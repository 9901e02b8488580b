"""Tests for stdiff.expression: library-size normalisation, gene selection and the gene list file."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stdiff.constants import GENES_NAME
from stdiff.expression import GeneSet, expression_matrix, normalize_log1p, select_top_genes, total_counts


def make_adata(counts, genes) -> AnnData:
    counts = np.asarray(counts, dtype=np.float32)
    adata = AnnData(X=sp.csr_matrix(counts))
    adata.var_names = list(genes)
    adata.obs_names = [f"spot{i}" for i in range(counts.shape[0])]
    return adata


def test_total_counts_sums_each_spot():
    adata = make_adata([[1, 3, 0], [0, 0, 0], [2, 2, 4]], ["a", "b", "c"])

    np.testing.assert_array_equal(total_counts(adata), [4.0, 0.0, 8.0])


def test_normalize_log1p_matches_hand_computation():
    counts = [[1, 3, 0], [0, 0, 0], [2, 2, 4]]
    adata = make_adata(counts, ["a", "b", "c"])

    result = normalize_log1p(adata)

    expected = np.zeros((3, 3))
    for row, values in enumerate(counts):
        total = sum(values)
        for column, value in enumerate(values):
            if total > 0:
                expected[row, column] = math.log1p(value / total * 1e4)
    assert sp.isspmatrix_csr(result)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-6)


def test_normalize_log1p_keeps_empty_spot_zero():
    adata = make_adata([[0, 0], [5, 5]], ["a", "b"])

    result = normalize_log1p(adata).toarray()

    assert np.all(result[0] == 0)
    assert np.all(np.isfinite(result))


def test_normalize_log1p_uses_target_sum():
    adata = make_adata([[1, 1]], ["a", "b"])

    result = normalize_log1p(adata, target_sum=100.0).toarray()

    np.testing.assert_allclose(result, [[math.log1p(50.0), math.log1p(50.0)]], rtol=1e-6)


def test_normalize_log1p_on_real_sample(shared_data_dir):
    from stdiff.io import read_visium

    sample = shared_data_dir / "her2st-C2"
    if not sample.is_dir():
        pytest.skip(f"{sample} not found")
    adata = read_visium(sample)

    normalized = normalize_log1p(adata)

    # Undoing log1p gives counts per 10,000 in each spot that has counts.
    per_spot = np.expm1(normalized.toarray().astype(np.float64)).sum(axis=1)
    has_counts = total_counts(adata) > 0
    np.testing.assert_allclose(per_spot[has_counts], 1e4, rtol=1e-3)


def test_select_top_genes_picks_highest_means():
    # Per-spot fractions are fixed so the normalised means rank c > a > d > b.
    adata = make_adata([[30, 5, 50, 15], [30, 5, 50, 15]], ["a", "b", "c", "d"])

    gene_set = select_top_genes([adata], n_genes=3)

    assert gene_set.genes == ("c", "a", "d")
    assert gene_set.target_sum == 1e4


def test_select_top_genes_uses_only_shared_genes():
    first = make_adata([[90, 5, 5]], ["only_first", "a", "b"])
    second = make_adata([[1, 10, 89]], ["a", "b", "only_second"])

    gene_set = select_top_genes([first, second], n_genes=2)

    assert set(gene_set.genes) == {"a", "b"}
    # Summed over the two spots, b scores log1p(500) + log1p(1000) and a scores log1p(500) + log1p(100).
    assert gene_set.genes == ("b", "a")


def test_select_top_genes_ignores_sample_order():
    first = make_adata([[10, 20, 30, 40]], ["a", "b", "c", "d"])
    second = make_adata([[40, 30, 20, 10], [5, 5, 5, 5]], ["d", "c", "b", "a"])

    forward = select_top_genes([first, second], n_genes=4)
    backward = select_top_genes([second, first], n_genes=4)

    assert forward == backward


def test_select_top_genes_breaks_ties_by_name():
    adata = make_adata([[5, 5, 5]], ["c", "a", "b"])

    assert select_top_genes([adata], n_genes=3).genes == ("a", "b", "c")


def test_select_top_genes_too_few_shared_genes():
    first = make_adata([[1, 2, 3]], ["a", "b", "c"])
    second = make_adata([[1, 2, 3]], ["a", "b", "x"])

    with pytest.raises(ValueError, match="Only 2 genes.*n_genes=3"):
        select_top_genes([first, second], n_genes=3)


@pytest.mark.parametrize("n_genes", [0, -1])
def test_select_top_genes_rejects_nonpositive_n_genes(n_genes):
    adata = make_adata([[1, 2]], ["a", "b"])

    with pytest.raises(ValueError, match=f"got {n_genes}"):
        select_top_genes([adata], n_genes=n_genes)


def test_select_top_genes_needs_a_sample():
    with pytest.raises(ValueError, match="at least one sample"):
        select_top_genes([], n_genes=1)


def test_expression_matrix_orders_columns_by_gene_set():
    adata = make_adata([[1, 3, 6], [4, 0, 4]], ["a", "b", "c"])
    gene_set = GeneSet(genes=("c", "a"))

    values = expression_matrix(adata, gene_set)

    normalized = normalize_log1p(adata).toarray()
    assert values.dtype == np.float32
    assert values.shape == (2, 2)
    np.testing.assert_array_equal(values[:, 0], normalized[:, 2])
    np.testing.assert_array_equal(values[:, 1], normalized[:, 0])


def test_expression_matrix_fills_missing_genes_with_zeros(caplog):
    adata = make_adata([[1, 3], [2, 2]], ["a", "b"])
    gene_set = GeneSet(genes=("b", "missing_gene", "a"))

    with caplog.at_level(logging.WARNING, logger="stdiff.expression"):
        values = expression_matrix(adata, gene_set)

    normalized = normalize_log1p(adata).toarray()
    np.testing.assert_array_equal(values[:, 1], 0.0)
    np.testing.assert_array_equal(values[:, 0], normalized[:, 1])
    np.testing.assert_array_equal(values[:, 2], normalized[:, 0])
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "missing_gene" in warnings[0].getMessage()
    assert "1 of 3" in warnings[0].getMessage()


def test_expression_matrix_uses_gene_set_target_sum():
    adata = make_adata([[1, 1]], ["a", "b"])

    values = expression_matrix(adata, GeneSet(genes=("a",), target_sum=10.0))

    np.testing.assert_allclose(values, [[math.log1p(5.0)]], rtol=1e-6)


def test_expression_matrix_no_genes_present():
    adata = make_adata([[1, 3]], ["a", "b"])

    with pytest.raises(ValueError, match="None of the model's 2 genes"):
        expression_matrix(adata, GeneSet(genes=("x", "y")))


def test_gene_set_round_trip(tmp_path):
    gene_set = GeneSet(genes=("ERBB2", "IGKC", "MT-CO1"), target_sum=5e3)

    path = gene_set.save(tmp_path)

    assert path == tmp_path / GENES_NAME
    payload = json.loads(path.read_text())
    assert payload["genes"] == ["ERBB2", "IGKC", "MT-CO1"]
    assert GeneSet.load(tmp_path) == gene_set


def test_gene_set_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        GeneSet.load(tmp_path)
