import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from modeling_scgrn import ScGrnTokenizer


@pytest.fixture(scope="module")
def pbmc():
    adata = sc.datasets.pbmc68k_reduced()
    # integer UMI counts over the 765 genes, recovered as documented in shared/data/README.md
    counts = np.rint(np.expm1(adata.raw.X.toarray()) * adata.obs["n_counts"].to_numpy()[:, None] / 1e4)
    return ad.AnnData(sp.csr_matrix(counts), obs=adata.obs.copy(), var=adata.raw.var.copy())


def test_hand_made_matrix_gives_known_ids_order_values_and_bins():
    tokenizer = ScGrnTokenizer.from_genes(["A", "B", "C", "D", "E"], n_bins=4)
    # genes: A B C D X(unknown); totals include the unknown gene's counts
    matrix = np.array([[6, 0, 1, 3, 10], [0, 2, 2, 0, 0], [1, 5, 3, 2, 0]], dtype=float)
    enc = tokenizer(matrix, gene_names=["A", "B", "C", "D", "X"], return_tensors="np")
    a, b, c, d = (tokenizer.convert_tokens_to_ids(g) for g in "ABCD")
    np.testing.assert_array_equal(
        enc["input_ids"], [[1, a, d, c, 0], [1, b, c, 0, 0], [1, b, c, d, a]]
    )
    np.testing.assert_array_equal(enc["attention_mask"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(enc["expression_values"][0, 1:4], np.log1p(np.array([6, 3, 1]) / 20 * 1e4), rtol=1e-6)
    np.testing.assert_allclose(enc["expression_values"][1, 1:3], np.log1p(np.array([2, 2]) / 4 * 1e4), rtol=1e-6)
    # quantile bins: rank 0 -> 4, rank r of n -> 4 - floor(4r/n); ties share the best rank
    np.testing.assert_array_equal(enc["expression_bins"], [[0, 4, 3, 2, 0], [0, 4, 4, 0, 0], [0, 4, 3, 2, 1]])
    report = tokenizer.last_report
    assert report["genes_unknown_to_vocabulary"] == 1 and report["unknown_genes_examples"] == ["X"]
    assert report["cells"] == 3


def test_max_length_keeps_most_expressed_and_vocabulary_order():
    tokenizer = ScGrnTokenizer.from_genes(["A", "B", "C", "D"], n_bins=4)
    matrix = sp.csr_matrix(np.array([[1, 4, 3, 2]], dtype=float))
    enc = tokenizer(matrix, gene_names=["A", "B", "C", "D"], max_length=3, return_tensors="np")
    ids = tokenizer.convert_tokens_to_ids
    np.testing.assert_array_equal(enc["input_ids"], [[1, ids("B"), ids("C")]])
    np.testing.assert_array_equal(enc["expression_bins"], [[0, 4, 3]])
    assert tokenizer.last_report["cells_truncated_to_max_length"] == 1
    panel = tokenizer(matrix, gene_names=["A", "B", "C", "D"], rank_by="vocabulary", return_tensors="np")
    np.testing.assert_array_equal(panel["input_ids"], [[1, ids("A"), ids("B"), ids("C"), ids("D")]])
    np.testing.assert_array_equal(panel["expression_bins"], [[0, 1, 4, 3, 2]])
    padded = tokenizer(matrix, gene_names=["A", "B", "C", "D"], max_length=8, padding="max_length", return_tensors="np")
    assert padded["input_ids"].shape == (1, 8) and padded["attention_mask"].sum() == 5


def test_aliases_resolve_and_duplicates_are_summed():
    tokenizer = ScGrnTokenizer.from_genes(["ENSG01", "ENSG02"], gene_aliases={"CD3E": "ENSG01", "CD4": "ENSG02"})
    matrix = np.array([[2, 3, 5]], dtype=float)  # CD3E and ENSG01 are the same gene
    enc = tokenizer(matrix, gene_names=["CD3E", "ENSG01", "CD4"], return_tensors="np")
    assert tokenizer.last_report["duplicate_gene_entries_summed"] == 1
    assert tokenizer.last_report["genes_unknown_to_vocabulary"] == 0
    np.testing.assert_allclose(enc["expression_values"][0, 1:], np.log1p(np.array([5, 5]) / 10 * 1e4), rtol=1e-6)


def test_real_pbmc68k_reduced(pbmc):
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names[:700], n_bins=51)
    enc = tokenizer(pbmc, max_length=129, return_tensors="np")
    report = tokenizer.last_report
    assert report["genes_unknown_to_vocabulary"] == 65
    assert report["cells"] == 700
    ids, bins, values, mask = enc["input_ids"], enc["expression_bins"], enc["expression_values"], enc["attention_mask"]
    assert ids.shape[0] == 700 and ids.shape[1] <= 129
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    # genes come ranked by expression within every cell, bins never rise along the ranking
    real = mask.astype(bool)
    real[:, 0] = False
    for cell in range(0, 700, 97):
        n = real[cell].sum()
        assert np.all(np.diff(values[cell, 1 : n + 1]) <= 0)
        assert np.all(np.diff(bins[cell, 1 : n + 1]) <= 0)
        assert bins[cell, 1] == 51
    # tokens of cell 0 equal its detected known genes, most expressed first
    row = pbmc.X[0].toarray().ravel()[:700]
    order = np.lexsort((np.arange(700), -row))
    expected = [tokenizer.convert_tokens_to_ids(pbmc.var_names[i]) for i in order[: min(128, (row > 0).sum())]]
    assert ids[0, 1 : len(expected) + 1].tolist() == expected


def test_bad_input_errors(tokenizer):
    genes = [f"G{i}" for i in range(12)]
    with pytest.raises(ValueError, match="none of the 3 gene names"):
        tokenizer(np.ones((2, 3)), gene_names=["ENSG1", "ENSG2", "ENSG3"])
    empty = np.ones((3, 12))
    empty[1] = 0
    with pytest.raises(ValueError, match="1 of 3 cells have no detected gene"):
        tokenizer(empty, gene_names=genes)
    negative = np.ones((2, 12))
    negative[0, 3] = -1
    with pytest.raises(ValueError, match="1 negative"):
        tokenizer(negative, gene_names=genes)
    nan = np.ones((2, 12))
    nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        tokenizer(sp.csr_matrix(nan), gene_names=genes)
    with pytest.raises(ValueError, match="needs `gene_names`"):
        tokenizer(np.ones((2, 12)))
    with pytest.raises(ValueError, match="12 genes"):
        tokenizer(np.ones((2, 12)), gene_names=genes[:5])
    adata = ad.AnnData(np.ones((2, 12), dtype=np.float32))
    adata.var_names = genes
    with pytest.raises(ValueError, match="no column 'symbol'"):
        tokenizer(adata, gene_column="symbol")


def test_text_call_and_save_load(tokenizer, tmp_path):
    assert tokenizer("G0 G3")["input_ids"] == [1, 4, 7]
    tokenizer.save_pretrained(tmp_path)
    loaded = ScGrnTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.n_bins == tokenizer.n_bins
