import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import CELLTYPIST_SAMPLE, shared_data_or_skip

from modeling_scgrn import ScGrnConfig, ScGrnTokenizer
from modeling_scgrn.cells.collators import (
    DataCollatorForCellClassification,
    DataCollatorForMaskedExpression,
    GeneDropout,
    WithClassWeights,
)
from modeling_scgrn.cells.prepared import save_dataset_atomically, split_cells
from modeling_scgrn.cells.reading import (
    check_raw_counts,
    pbmc68k_reduced_counts,
    read_cells,
)
from modeling_scgrn.cells.tokenize import tokenize_anndata
from modeling_scgrn.train.training import TrainingConfig


@pytest.fixture(scope="module")
def pbmc():
    return pbmc68k_reduced_counts()


def test_pbmc_counts_are_integers(pbmc):
    assert pbmc.shape == (700, 765)
    assert np.all(pbmc.X.data == np.rint(pbmc.X.data)) and pbmc.X.data.min() >= 1
    check_raw_counts(pbmc.X)
    with pytest.raises(ValueError, match="not integers"):
        check_raw_counts(sc_log(pbmc).X)


def sc_log(adata):
    out = adata.copy()
    out.X = out.X.copy()
    out.X.data = np.log1p(out.X.data)
    return out


def test_dataset_round_trip_equals_direct_tokenization(pbmc, tmp_path):
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    dataset, report = tokenize_anndata(pbmc, tokenizer, obs_columns=["bulk_labels"], max_length=200, chunk_size=128,
                                       show_progress=False)
    assert len(dataset) == 700 and report["cells"] == 700
    save_dataset_atomically(dataset, tmp_path / "ds", {"note": "test"})
    import datasets

    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    direct = tokenizer(pbmc, max_length=200, return_tensors="np")
    for cell in (0, 127, 128, 699):
        n = int(direct["attention_mask"][cell].sum())
        assert loaded[cell]["input_ids"] == direct["input_ids"][cell, :n].tolist()
        assert loaded[cell]["expression_bins"] == direct["expression_bins"][cell, :n].tolist()
        np.testing.assert_allclose(loaded[cell]["expression_values"], direct["expression_values"][cell, :n], rtol=1e-6)
        assert loaded[cell]["length"] == n
        assert loaded[cell]["bulk_labels"] == str(pbmc.obs["bulk_labels"].iloc[cell])
    decoded = tokenizer.convert_ids_to_tokens(loaded[0]["input_ids"][1:])
    row = pbmc.X[0].toarray().ravel()
    assert set(decoded) <= set(pbmc.var_names[row > 0])


def test_celltypist_sample_reports_drops(tmp_path):
    adata = ad.read_h5ad(shared_data_or_skip(CELLTYPIST_SAMPLE))
    tokenizer = ScGrnTokenizer.from_genes(adata.var_names[:20000])
    dataset, report = tokenize_anndata(adata, tokenizer, max_length=None, show_progress=False)
    assert report["genes_unknown_to_vocabulary"] == 32786 - 20000
    detected_known = (adata.X[:, :20000] > 0).sum(1).A1
    assert dataset["length"] == (detected_known + 1).tolist()


def test_split_by_donor_never_shares_a_donor(pbmc):
    obs = pbmc.obs.copy()
    obs["donor"] = [f"d{i % 9}" for i in range(len(obs))]
    splits = split_cells(obs, label_column="bulk_labels", group_column="donor", seed=3)
    donors = {name: set(obs["donor"].iloc[rows]) for name, rows in splits.items()}
    assert not donors["train"] & donors["test"] and not donors["train"] & donors["validation"]
    assert not donors["validation"] & donors["test"]
    assert sum(len(r) for r in splits.values()) == len(obs)
    again = split_cells(obs, label_column="bulk_labels", group_column="donor", seed=3)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    stratified = split_cells(obs, label_column="bulk_labels", seed=0)
    test_share = obs["bulk_labels"].iloc[stratified["test"]].value_counts(normalize=True)
    overall = obs["bulk_labels"].value_counts(normalize=True)
    assert (test_share - overall).abs().max() < 0.05
    with pytest.raises(ValueError, match="no column 'donor_id'"):
        split_cells(obs, group_column="donor_id")


def test_masking_collator_never_masks_cls_or_padding():
    features = [
        {"input_ids": [1, 5, 6, 7, 8], "expression_values": [0, 3.0, 2.0, 1.0, 0.5], "expression_bins": [0, 4, 3, 2, 1]},
        {"input_ids": [1, 9], "expression_values": [0, 1.5], "expression_bins": [0, 4]},
    ]
    collator = DataCollatorForMaskedExpression(pad_token_id=0, value_encoding="binned", n_bins=4, mask_probability=0.5,
                                               generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        batch = collator(features)
        masked = batch["labels"] != -100
        assert not masked[:, 0].any() and not masked[1, 2:].any()
        assert masked.sum(1).min() >= 1
        assert torch.all(batch["expression_bins"][masked] == 5)
        original = torch.tensor([[0, 4, 3, 2, 1], [0, 4, 0, 0, 0]])
        assert torch.equal(batch["labels"][masked], original[masked])
        assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    continuous = DataCollatorForMaskedExpression(0, "continuous", 4, mask_value=-1.0, mask_probability=0.5)(features)
    scored = ~torch.isnan(continuous["labels"])
    assert torch.all(continuous["expression_values"][scored] == -1.0) and not scored[:, 0].any()


def test_masking_collator_makes_independently_masked_views_for_the_contrastive_term():
    """`views=2` (what `from_config` chooses for a model with a contrastive term): every cell twice, rows `i` and
    `i + batch`, masked independently, with `cell_index` naming the cell; the draws are the seed's."""
    features = [{"input_ids": [1, *range(5, 25)], "expression_values": [0.0, *np.linspace(0.5, 3, 20)]},
                {"input_ids": [1, 9, 10], "expression_values": [0.0, 1.5, 2.5]}]
    config = ScGrnConfig(vocab_size=32, hidden_size=8, num_attention_heads=2, value_encoding="continuous",
                         contrastive_weight=1.0)
    collator = DataCollatorForMaskedExpression.from_config(config, 0.3, seed=0)
    assert collator.views == 2 and DataCollatorForMaskedExpression.from_config(config, views=1).views == 1
    batch = collator(features)
    assert batch["cell_index"].tolist() == [0, 1, 0, 1]
    assert torch.equal(batch["input_ids"][:2], batch["input_ids"][2:])
    assert torch.equal(batch["attention_mask"][:2], batch["attention_mask"][2:])
    masked = ~torch.isnan(batch["labels"])
    assert not torch.equal(masked[0], masked[2])  # 20 genes at 30%: two draws that agree are vanishingly rare
    assert not masked[:, 0].any() and masked.sum(1).min() >= 1
    again = DataCollatorForMaskedExpression.from_config(config, 0.3, seed=0)(features)
    assert torch.equal(torch.isnan(again["labels"]), torch.isnan(batch["labels"]))


def test_views_can_leave_out_genes_each_keeping_tokens_with_their_own_values():
    """`view_gene_dropout`: each view shows a different subset of a cell's genes, every kept gene with its own
    value, in order, `[CLS]` first, re-padded; at least one gene stays in a cell of one gene."""
    values = {g: 0.1 * g for g in range(5, 45)}
    features = [{"input_ids": [1, *values], "expression_values": [0.0, *values.values()]},
                {"input_ids": [1, 9], "expression_values": [0.0, values[9]]}]
    config = ScGrnConfig(vocab_size=64, hidden_size=8, num_attention_heads=2, value_encoding="continuous",
                         contrastive_weight=1.0)
    collator = DataCollatorForMaskedExpression.from_config(config, 0.15, seed=0, view_gene_dropout=0.5)
    padded = collator.pad(features)
    batch = collator.mask(padded)
    shown = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert all(ids[0] == 1 and ids == sorted(ids) for ids in shown)
    assert shown[0] != shown[2] and 8 < len(shown[0]) - 1 < 32  # 40 genes, half left out in each view
    assert shown[1] == shown[3] == [1, 9]  # the only gene is kept
    truth = torch.where(torch.isnan(batch["labels"]), batch["expression_values"], batch["labels"])
    for row, ids in enumerate(shown):
        assert truth[row, 1:len(ids)].tolist() == pytest.approx([values[g] for g in ids[1:]])
    assert (batch["input_ids"][batch["attention_mask"] == 0] == config.pad_token_id).all()
    with pytest.raises(ValueError, match="view_gene_dropout"):
        TrainingConfig(view_gene_dropout=1.0)


def test_a_detection_decoder_gets_each_cell_whole_and_single_views_that_leave_genes_out():
    """A model with a gene-detection decoder: the collator adds `cell_genes`, each row's cell's full token list
    before any gene is left out, and `view_gene_dropout` leaves genes out of single views too (without the decoder
    and with one view, it leaves every gene in)."""
    features = [{"input_ids": [1, *range(5, 45)], "expression_values": [0.0, *np.linspace(0.5, 3, 40)]},
                {"input_ids": [1, 9, 10], "expression_values": [0.0, 1.5, 2.5]}]
    config = ScGrnConfig(vocab_size=64, hidden_size=8, num_attention_heads=2, value_encoding="continuous",
                         detection_weight=1.0)
    collator = DataCollatorForMaskedExpression.from_config(config, 0.15, seed=0, view_gene_dropout=0.5)
    assert collator.views == 1 and collator.cell_genes
    batch = collator(features)
    assert batch["cell_genes"].tolist() == collator.pad(features)["input_ids"].tolist()
    assert 8 < int(batch["attention_mask"][0].sum()) - 1 < 32  # about half of 40 genes shown
    assert set(batch["input_ids"][0].tolist()) - {0} < set(features[0]["input_ids"])
    plain = ScGrnConfig(vocab_size=64, hidden_size=8, num_attention_heads=2, value_encoding="continuous")
    unchanged = DataCollatorForMaskedExpression.from_config(plain, 0.15, seed=0, view_gene_dropout=0.5)(features)
    assert "cell_genes" not in unchanged and int(unchanged["attention_mask"][0].sum()) == 41


def test_a_spread_gives_each_view_its_own_share_of_genes_left_out():
    """`view_dropout_spread`: each view leaves out a share drawn within that distance of `view_gene_dropout`, so
    views of one cell show different numbers of genes; without it every view shows about the same number."""
    features = [{"input_ids": [1, *range(5, 105)], "expression_values": [0.0, *np.linspace(0.5, 3, 100)]}] * 200
    config = ScGrnConfig(vocab_size=128, hidden_size=8, num_attention_heads=2, value_encoding="continuous",
                         contrastive_weight=1.0)

    def shown_shares(spread):
        collator = DataCollatorForMaskedExpression.from_config(config, 0.15, seed=0, view_gene_dropout=0.5,
                                                               view_dropout_spread=spread)
        return (collator(features)["attention_mask"].sum(1) - 1).numpy() / 100

    spread, fixed = shown_shares(0.4), shown_shares(0.0)
    assert spread.std() > 0.15 and fixed.std() < 0.08  # uniform on [0.1, 0.9]: sd 0.23; binomial: 0.05
    assert spread.min() >= 0.05 and spread.max() <= 0.95
    with pytest.raises(ValueError, match="keep them in"):
        TrainingConfig(view_gene_dropout=0.5, view_dropout_spread=0.6)
    with pytest.raises(ValueError, match="keep them in"):
        DataCollatorForMaskedExpression.from_config(config, view_gene_dropout=0.2, view_dropout_spread=0.3)


def test_complementary_views_split_a_cell_into_disjoint_halves():
    """`view_complementary`: at `view_gene_dropout` 0.5 the two views of a cell show disjoint gene sets that
    together are the whole cell (each gene keeping its value); it is refused without two views that leave genes out."""
    features = [{"input_ids": [1, *range(5 + i, 65 + i)], "expression_values": [0.0, *np.linspace(0.5, 3, 60)]}
                for i in range(8)]
    config = ScGrnConfig(vocab_size=128, hidden_size=8, num_attention_heads=2, value_encoding="continuous",
                         contrastive_weight=1.0)
    collator = DataCollatorForMaskedExpression.from_config(config, 0.15, seed=0, view_gene_dropout=0.5,
                                                           view_complementary=True)
    batch = collator(features)
    for cell, feature in enumerate(features):
        first, second = (set(batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()) - {1}
                         for row in (cell, cell + len(features)))
        assert not first & second and first | second == set(feature["input_ids"][1:])
        assert 15 < len(first) < 45
        shown = batch["expression_values"][cell][batch["attention_mask"][cell].bool()]
        values = dict(zip(feature["input_ids"], feature["expression_values"]))
        ids = batch["input_ids"][cell][batch["attention_mask"][cell].bool()].tolist()
        unmasked = shown != config.mask_value
        assert torch.allclose(shown[unmasked], torch.tensor([values[i] for i in ids], dtype=shown.dtype)[unmasked])
    independent = DataCollatorForMaskedExpression.from_config(config, 0.15, seed=0, view_gene_dropout=0.5)(features)
    overlap = (set(independent["input_ids"][0].tolist()) & set(independent["input_ids"][8].tolist())) - {0, 1}
    assert len(overlap) > 5  # independent views share about a quarter of the genes
    with pytest.raises(ValueError, match="view_complementary"):
        DataCollatorForMaskedExpression.from_config(config, view_complementary=True)


def test_depth_jitter_renormalises_each_view_to_its_own_total():
    """`view_depth_jitter`: every value of a view is `log1p(expm1(v) * c)` with one `c` per view (within exp(+/-j)),
    the masked targets in the same units as what the view shows, `[CLS]` and padding untouched."""
    values = np.linspace(0.2, 3, 30)
    features = [{"input_ids": [1, *range(5, 35)], "expression_values": [0.0, *values]},
                {"input_ids": [1, 9, 10], "expression_values": [0.0, 1.5, 2.5]}]
    config = ScGrnConfig(vocab_size=64, hidden_size=8, num_attention_heads=2, value_encoding="continuous",
                         contrastive_weight=1.0)
    batch = DataCollatorForMaskedExpression.from_config(config, 0.3, seed=0, view_depth_jitter=1.0)(features)
    shown = torch.where(torch.isnan(batch["labels"]), batch["expression_values"], batch["labels"])
    scales = []
    for row, original in ((0, values), (2, values), (1, [1.5, 2.5]), (3, [1.5, 2.5])):
        ratio = torch.expm1(shown[row, 1:len(original) + 1]) / torch.expm1(torch.tensor(original, dtype=torch.float32))
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)  # one factor for the whole view
        assert np.exp(-1.0) - 1e-4 <= ratio[0] <= np.exp(1.0) + 1e-4
        scales.append(float(ratio[0]))
    assert scales[0] != pytest.approx(scales[1], rel=1e-3)  # the two views of a cell: two totals
    assert (batch["expression_values"][:, 0] == 0).all() and (batch["expression_values"][[1, 3], 3:] == 0).all()
    plain = DataCollatorForMaskedExpression.from_config(config, 0.3, seed=0)(features)
    unjittered = torch.where(torch.isnan(plain["labels"]), plain["expression_values"], plain["labels"])
    assert unjittered[0, 1:31].tolist() == pytest.approx(values.tolist())
    with pytest.raises(ValueError, match="at least 0"):
        TrainingConfig(view_depth_jitter=-1.0)
    with pytest.raises(ValueError, match="rescales continuous values, but these are binned"):
        DataCollatorForMaskedExpression(0, "binned", 4, views=2, view_depth_jitter=1.0)


def test_gene_dropout_leaves_genes_out_of_training_batches_and_keeps_each_cell_with_its_label():
    """Finetuning's `gene_dropout` (`GeneDropout`, a batch transform): a new random share of each cell's genes left
    out at every call, kept genes with their own values, `[CLS]` first, per-cell entries untouched."""
    values = {g: 0.1 * g for g in range(5, 45)}
    features = [{"input_ids": [1, *values], "expression_values": [0.0, *values.values()], "cell_type": "T"},
                {"input_ids": [1, 9], "expression_values": [0.0, values[9]], "cell_type": "B"}]
    batch = WithClassWeights(DataCollatorForCellClassification(0, {"B": 0, "T": 1}, "cell_type"),
                             torch.tensor([0.5, 2.0]))(features)
    dropout = GeneDropout(pad_token_id=0, share=0.3)
    torch.manual_seed(0)
    first, second = dropout(batch), dropout(batch)
    for out in (first, second):
        shown = [ids[mask.bool()].tolist() for ids, mask in zip(out["input_ids"], out["attention_mask"])]
        assert shown[0][0] == 1 and shown[0] == sorted(shown[0]) and 16 < len(shown[0]) - 1 < 40
        assert shown[1] == [1, 9]  # a cell's only gene is kept
        assert out["expression_values"][0, 1:len(shown[0])].tolist() == pytest.approx([values[g] for g in shown[0][1:]])
        assert out["labels"].tolist() == [1, 0] and out["class_weights"].tolist() == [0.5, 2.0]
        assert (out["input_ids"][out["attention_mask"] == 0] == 0).all()
    assert not torch.equal(first["input_ids"], second["input_ids"])  # drawn anew at each step
    assert torch.equal(GeneDropout(0, 0.0)(batch)["input_ids"], batch["input_ids"])


def test_classification_collator_rejects_unseen_labels():
    collator = DataCollatorForCellClassification(0, {"B": 0, "T": 1}, "cell_type")
    batch = collator([{"input_ids": [1, 5], "expression_bins": [0, 3], "expression_values": [0, 1.0], "cell_type": "T"}])
    assert batch["labels"].tolist() == [1]
    with pytest.raises(ValueError, match=r"labels \['NK'\] are not among"):
        collator([{"input_ids": [1, 5], "expression_bins": [0, 3], "expression_values": [0, 1.0], "cell_type": "NK"}])


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_cells(str(empty))
    source = shared_data_or_skip(CELLTYPIST_SAMPLE)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(source.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_cells(str(truncated))
    with pytest.raises(FileNotFoundError):
        read_cells(str(tmp_path / "missing.h5ad"))


def test_failed_save_leaves_no_dataset(tmp_path):
    import datasets

    class Exploding(datasets.Dataset):
        def save_to_disk(self, path, **kwargs):
            super().save_to_disk(path, **kwargs)
            raise RuntimeError("disk full")

    dataset = datasets.Dataset.from_dict({"input_ids": [[1, 2]]})
    dataset.__class__ = Exploding
    with pytest.raises(RuntimeError, match="disk full"):
        save_dataset_atomically(dataset, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_qc_filters_count_what_they_drop(pbmc, tmp_path):
    from modeling_scgrn.cells.reading import qc_masks

    genes_per_cell = np.diff(pbmc.X.tocsr().indptr)
    cells_per_gene = np.bincount(pbmc.X.indices, minlength=pbmc.n_vars)
    min_genes, min_cells = int(np.median(genes_per_cell)), 20
    cells_kept, genes_kept, report = qc_masks(pbmc, min_genes=min_genes, min_cells=min_cells, chunk_size=97)
    assert np.array_equal(cells_kept, genes_per_cell >= min_genes)
    assert np.array_equal(genes_kept, cells_per_gene >= min_cells)
    assert report["cells_dropped_min_genes"] == int((genes_per_cell < min_genes).sum()) > 100
    assert report["genes_dropped_min_cells"] == int((cells_per_gene < min_cells).sum()) > 0
    off = qc_masks(pbmc)
    assert off[0].all() and off[1].all()
    with pytest.raises(ValueError, match="min_genes"):
        qc_masks(pbmc, min_genes=10_000)
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names[genes_kept], n_bins=51)
    dataset, _ = tokenize_anndata(pbmc, tokenizer, obs_columns=["bulk_labels"], cells_kept=cells_kept,
                                  max_length=None, show_progress=False, chunk_size=100)
    assert len(dataset) == cells_kept.sum()
    assert dataset["bulk_labels"] == pbmc.obs["bulk_labels"][cells_kept].astype(str).tolist()


def test_parallel_streamed_and_backed_tokenization_equal_the_plain_one(pbmc, tmp_path):
    from modeling_scgrn.cells.tokenize import stream_anndata

    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    options = dict(obs_columns=["bulk_labels"], max_length=128, chunk_size=150, show_progress=False)
    plain, report = tokenize_anndata(pbmc, tokenizer, **options)
    parallel, parallel_report = tokenize_anndata(pbmc, tokenizer, num_proc=2, **options)
    assert plain.to_dict() == parallel.to_dict() and report == parallel_report
    assert plain.features["expression_values"].feature.dtype == "float32"
    streamed = list(stream_anndata(pbmc, tokenizer, obs_columns=["bulk_labels"], max_length=128, chunk_size=150))
    assert len(streamed) == 700 and streamed[0] == plain[0] and streamed[699] == plain[699]
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")
    backed = read_cells(str(tmp_path / "pbmc.h5ad"), backed=True)
    assert backed.isbacked
    from_disk, _ = tokenize_anndata(backed, tokenizer, **options)
    assert from_disk.to_dict() == plain.to_dict()


def test_saved_dataset_is_sharded(pbmc, tmp_path):
    import datasets

    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    dataset, _ = tokenize_anndata(pbmc, tokenizer, max_length=None, show_progress=False)
    save_dataset_atomically(dataset, tmp_path / "ds", max_shard_size="200KB")
    shards = sorted((tmp_path / "ds").glob("data-*.arrow"))
    assert len(shards) > 3
    assert datasets.load_from_disk(str(tmp_path / "ds")).to_dict() == dataset.to_dict()


@pytest.mark.parametrize("vocabulary_order", ["file", "shuffled"])
def test_compiled_encoder_equals_the_tokenizer(pbmc, vocabulary_order):
    from modeling_scgrn.cells.tokenize import _encode_compiled

    genes = list(pbmc.var_names)
    if vocabulary_order == "shuffled":  # token ids no longer follow the columns: the general sort path
        genes = list(np.random.default_rng(0).permutation(genes))
    tokenizer = ScGrnTokenizer.from_genes(genes[:700], n_bins=51)
    counts = pbmc.X.tocsr().copy()
    counts.data[::50] *= 5000  # a few very large counts: the counting sort gives way to the general sort
    subset = ad.AnnData(counts, var=pbmc.var)
    for max_length in (None, 64):
        columns, report = _encode_compiled(subset.X, tokenizer, list(subset.var_names), max_length)
        direct = tokenizer(subset, max_length=max_length, return_tensors="np")
        lengths = direct["attention_mask"].sum(1)
        assert columns["length"].to_pylist() == lengths.tolist()
        real = np.arange(direct["input_ids"].shape[1])[None, :] < lengths[:, None]  # every token of every cell
        for name in ("input_ids", "expression_bins", "expression_values"):
            np.testing.assert_array_equal(columns[name].flatten().to_numpy(), direct[name][real], err_msg=name)
        assert report == tokenizer.last_report


def test_empty_cell_is_named_by_the_compiled_path(pbmc):
    counts = pbmc.X.tocsr().copy()
    counts[3] = 0
    counts.eliminate_zeros()
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    with pytest.raises(ValueError, match="1 of 700 cells have no detected gene"):
        tokenize_anndata(ad.AnnData(counts, var=pbmc.var), tokenizer, show_progress=False, chunk_size=1000)


def test_single_class_label_column_is_refused_before_anything_is_written(pbmc, tmp_path):
    from modeling_scgrn.cells.prepared import prepare_cells
    from modeling_scgrn.grn.network import GeneRegulatoryNetwork

    one_type = pbmc[:50].copy()
    one_type.obs["cell_type"] = "CD4+/CD45RA+/CD25- Naive T"
    source = tmp_path / "one_type.h5ad"
    one_type.write_h5ad(source)
    network = GeneRegulatoryNetwork.from_dataframe(
        pd.DataFrame({"source": ["SPI1", "CEBPB"], "target": ["CD14", "LYZ"], "weight": [1.0, 1.0]}))
    with pytest.raises(ValueError, match="label column 'cell_type' has a single class"):
        prepare_cells(str(source), network, tmp_path / "out", label_column="cell_type")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad,message", [(np.nan, "1 NaN"), (np.inf, "1 infinite"), (-3.0, "1 negative")])
def test_compiled_path_names_bad_values(pbmc, bad, message):
    from modeling_scgrn.cells.tokenize import _encode_compiled

    counts = pbmc.X.tocsr().astype(np.float32)
    counts.data[12345] = bad  # one entry deep inside the chunk, found by the encoder's own pass
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    with pytest.raises(ValueError, match=message):
        _encode_compiled(counts, tokenizer, list(pbmc.var_names), None)


def test_compiled_path_leaves_non_integer_values_to_the_tokenizer(pbmc):
    from modeling_scgrn.cells.tokenize import _encode_compiled

    counts = pbmc.X.tocsr().astype(np.float32)
    counts.data[-1] += 0.5
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    assert _encode_compiled(counts, tokenizer, list(pbmc.var_names), None) is None
    assert _encode_compiled(pbmc.X.tocsr(), tokenizer, list(pbmc.var_names), None) is not None


def test_compiled_encoder_with_unsorted_columns_equals_the_tokenizer(pbmc):
    from modeling_scgrn.cells.tokenize import _encode_compiled

    counts = pbmc.X.tocsr().copy()
    for row in range(counts.shape[0]):  # each row's entries in reverse column order: still a valid CSR matrix
        start, stop = counts.indptr[row], counts.indptr[row + 1]
        counts.indices[start:stop] = counts.indices[start:stop][::-1].copy()
        counts.data[start:stop] = counts.data[start:stop][::-1].copy()
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=51)
    columns, _ = _encode_compiled(counts, tokenizer, list(pbmc.var_names), None)
    direct = tokenizer(pbmc, return_tensors="np")
    real = np.arange(direct["input_ids"].shape[1])[None, :] < direct["attention_mask"].sum(1)[:, None]
    for name in ("input_ids", "expression_bins", "expression_values"):
        np.testing.assert_array_equal(columns[name].flatten().to_numpy(), direct[name][real], err_msg=name)


def test_already_normalised_values_are_refused_unless_normalisation_is_switched_off(tmp_path):
    import scanpy as sc

    from modeling_scgrn.cells.prepared import prepare_cells
    from modeling_scgrn.grn.network import GeneRegulatoryNetwork

    reduced = sc.datasets.pbmc68k_reduced()
    logged = ad.AnnData(sp.csr_matrix(reduced.raw.X), obs=reduced.obs[["bulk_labels"]], var=reduced.raw.var)
    source = tmp_path / "log1p.h5ad"
    logged.write_h5ad(source)
    genes = list(logged.var_names)
    network = GeneRegulatoryNetwork.from_dataframe(
        pd.DataFrame({"source": genes[:2], "target": genes[2:4], "weight": [1.0, 1.0]}))
    with pytest.raises(ValueError, match="not integers.*--no_normalize"):
        prepare_cells(str(source), network, tmp_path / "refused", label_column="bulk_labels")
    with pytest.raises(ValueError, match="normalize=False .* needs panel='all'"):
        prepare_cells(str(source), network, tmp_path / "hvg", panel="hvg", normalize=False)
    report = prepare_cells(str(source), network, tmp_path / "out", label_column="bulk_labels", normalize=False,
                           max_length=None)
    assert report["tokenization"]["normalized_by_scgrn"] is False
    import datasets

    dataset = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    # the values are the file's own log1p values, highest first in each cell, never normalised again
    for values in dataset["train"]["expression_values"][:20]:
        assert np.all(np.diff(np.asarray(values[1:], np.float32)) <= 0)
    everything = np.concatenate([np.asarray(v[1:], np.float32) for v in dataset["train"]["expression_values"]])
    assert np.isin(everything, np.asarray(sp.csr_matrix(reduced.raw.X).data, np.float32)).all()


def test_two_inputs_of_the_same_file_name_are_both_tokenized(pbmc, tmp_path, collectri_prior):
    from modeling_scgrn.cells.prepared import prepare_cells
    from modeling_scgrn.cells.reading import read_cells_from

    for folder, cells in (("a", pbmc[:120]), ("b", pbmc[120:200])):
        (tmp_path / folder).mkdir()
        cells.write_h5ad(tmp_path / folder / "donor.h5ad")
    sources = [str(tmp_path / "a" / "donor.h5ad"), str(tmp_path / "b" / "donor.h5ad")]
    joined = read_cells_from(sources)
    assert joined.n_obs == 200 and joined.obs["dataset"].value_counts().to_dict() == {"a/donor": 120, "b/donor": 80}
    report = prepare_cells(sources, collectri_prior, tmp_path / "out", panel="all")
    assert report["cells"] == 200 and [s["name"] for s in report["sources"]] == ["donor.h5ad", "donor.h5ad"]
    with pytest.raises(ValueError, match="is given twice"):
        read_cells_from([sources[0], str(tmp_path / "a" / ".." / "a" / "donor.h5ad")])


def test_unlabelled_cells_are_left_out_and_counted_never_a_class(pbmc, tmp_path, collectri_prior):
    import datasets

    from modeling_scgrn.cells.prepared import prepare_cells

    cells = pbmc.copy()
    labels = cells.obs["bulk_labels"].astype(object)
    labels.iloc[::10] = np.nan
    cells.obs["bulk_labels"] = labels
    report = prepare_cells(cells, collectri_prior, tmp_path / "out", label_column="bulk_labels", panel="all")
    assert report["qc"]["unlabelled_cells_dropped"] == 70 and report["cells"] == 630
    splits = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    found = set().union(*(set(split["bulk_labels"]) for split in splits.values()))
    assert "nan" not in found and found == set(pbmc.obs["bulk_labels"].astype(str))


def test_a_single_cell_class_stays_in_train_and_every_other_class_is_stratified(pbmc):
    obs = pbmc.obs[["bulk_labels"]].astype(str).copy()
    obs.iloc[0, 0] = "a type of one cell"
    shares = obs["bulk_labels"].value_counts(normalize=True)
    for seed in range(4):
        splits = split_cells(obs, label_column="bulk_labels", seed=seed)
        assert 0 in splits["train"]
        assert sum(len(rows) for rows in splits.values()) == len(obs)
        test = obs["bulk_labels"].iloc[splits["test"]].value_counts(normalize=True)
        big = shares[shares > 0.05].index  # stratified: each common class keeps its share of the test split
        assert np.allclose(test[big], shares[big], atol=0.015), seed


KILLED_TOKENIZATION = """
import os, signal, sys
import modeling_scgrn.cells.tokenize as tokenize
from modeling_scgrn.cells.prepared import prepare_cells
from modeling_scgrn.grn.network import GeneRegulatoryNetwork

rows, calls = tokenize._tokenize_rows, []
def dying(*args, **kwargs):  # kill -9 in the middle of tokenizing, as a user's Ctrl-\\\\ or the OOM killer would
    calls.append(1)
    if len(calls) == 4 and sys.argv[3] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return rows(*args, **kwargs)
tokenize._tokenize_rows = dying
network = GeneRegulatoryNetwork.read(sys.argv[1], "collectri")
prepare_cells("pbmc68k_reduced", network, sys.argv[2], chunk_size=50)
"""


def test_a_tokenization_killed_midway_leaves_no_chunks_and_the_next_run_cleans_up(tmp_path, monkeypatch,
                                                                                  collectri_prior):
    import os
    import subprocess
    import sys
    import tempfile

    from conftest import OMNIPATH_TABLE

    from modeling_scgrn.cells.prepared import prepare_cells

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(KILLED_TOKENIZATION)
    out = tmp_path / "work" / "data"
    out.parent.mkdir()
    killed = subprocess.run([sys.executable, str(script), str(shared_data_or_skip(OMNIPATH_TABLE)), str(out), "die"],
                            capture_output=True, text=True, env={**os.environ, "TMPDIR": str(temporary)}, timeout=300,
                            check=False)
    assert killed.returncode == -9
    chunks = list(temporary.rglob("*.arrow"))
    # the kill comes inside the 4th chunk: what is left are chunks written but not yet read back (each one read back
    # is unlinked at once), at most the 3 before it, and never the 14 of the whole file
    assert len(chunks) <= 3
    assert not out.exists() and (out.parent / ".data.lock").exists()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # the next runs, in this process, use the same place
    with pytest.raises(ValueError, match="that is no longer running"):
        prepare_cells("pbmc68k_reduced", collectri_prior, out, chunk_size=50)
    (out.parent / ".data.lock").unlink()  # what the message says to do, once the user has looked
    (out.parent / ".data.tmpkilled").mkdir()  # what a kill -9 while writing the folder would have left
    (out.parent / ".data.tmpkilled" / "part.arrow").write_bytes(b"half")
    prepare_cells("pbmc68k_reduced", collectri_prior, out, chunk_size=50)
    assert not list(temporary.glob("scgrn-tokenize-*")) and (out / "dataset").is_dir()
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]  # no half-written .data.tmp* sibling left
