"""Baselines beside every result: trivial masked-value predictors computed by hand, scikit-learn classifiers on the
same real cells, and the prior's per-cell reach."""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import OMNIPATH_TABLE, shared_data_or_skip

from modeling_scgrn.cells.prepared import load_prepared, prepare_cells
from modeling_scgrn.evaluation.baselines import (
    best_trivial_loss,
    classification_baselines,
    classification_table,
    masked_baseline_table,
)
from modeling_scgrn.evaluation.metrics import (
    DEPTH_BINS,
    _masked_batch_scores,
    _smoothed,
    detected_given_not_shown,
    gene_statistics,
)
from modeling_scgrn.grn.coverage import prior_coverage
from modeling_scgrn.grn.network import GeneRegulatoryNetwork


def test_trivial_masked_value_predictors_by_hand():
    # one cell: [CLS] then genes 4, 5, 6 with log1p values 1, 2, 4; gene 6 is masked (its value is hidden)
    batch = {"input_ids": torch.tensor([[1, 4, 5, 6]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "expression_values": torch.tensor([[0.0, 1.0, 2.0, -1.0]]),
             "labels": torch.tensor([[math.nan, math.nan, math.nan, 4.0]])}
    means = torch.zeros(8)
    means[4], means[5], means[6] = 0.5, 1.0, 3.0
    output = SimpleNamespace(logits=torch.tensor([[0.0, 0.0, 0.0, 3.5]]))
    scores = _masked_batch_scores(batch, output, {"means": means}, binned=False)
    assert float(scores["scgrn"][0]) == pytest.approx(0.25)  # (3.5 - 4)^2
    assert float(scores["gene_mean"][0]) == pytest.approx(1.0)  # (3 - 4)^2
    offset = ((1.0 - 0.5) + (2.0 - 1.0)) / 2  # the cell sits 0.75 above its visible genes' means
    assert float(scores["gene_mean_cell_offset"][0]) == pytest.approx((3.0 + offset - 4.0) ** 2)
    assert float(scores["cell_value_distribution"][0]) == pytest.approx((1.5 - 4.0) ** 2)


def test_detection_shares_by_depth_by_hand():
    """`gene_statistics`' trivial predictor for the gene-detection decoder: each gene's detection share among the
    training cells of the cell's depth bin (quantiles of the log gene count), shrunk towards its overall share by
    two pseudo-cells; cells of 1 to 8 genes, where deeper cells detect the later genes."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    cells = [[1, *sorted(rng.choice(np.arange(4, 12), size=n, replace=False, p=np.linspace(1, 3, 8) / 16))]
             for n in rng.integers(1, 9, size=60)]
    data = Dataset.from_dict({"input_ids": cells, "expression_values": [[0.0] * len(c) for c in cells]})
    statistics = gene_statistics(data, 12, "continuous", 4)
    log_genes = np.log([len(c) - 1 for c in cells])
    edges = np.quantile(log_genes, np.linspace(0, 1, DEPTH_BINS + 1)[1:-1])
    np.testing.assert_allclose(statistics["depth_edges"].numpy(), edges, rtol=1e-6)
    shares = statistics["detection"].numpy()
    for depth_bin in range(DEPTH_BINS):
        members = [c for c, b in zip(cells, np.searchsorted(edges, log_genes, side="right")) if b == depth_bin]
        for gene in range(4, 12):
            detected = sum(gene in c for c in members)
            assert statistics["detection_by_depth"][depth_bin, gene].item() == pytest.approx(
                (detected + 2 * shares[gene]) / (len(members) + 2), rel=1e-6)
    deep, shallow = statistics["detection_by_depth"][-1, 4:12], statistics["detection_by_depth"][0, 4:12]
    assert (deep > shallow).all()  # the deepest cells detect every gene more often than the shallowest


def test_a_trivial_detection_predictor_scores_only_genes_the_input_does_not_show():
    """A gene detected in half the cells, in inputs that leave out half of each cell's detected genes: of the cells
    where it is not shown, a quarter of all cells detect it and a half do not, so the chance is 1/3; inputs that
    leave out nothing leave a detected gene never unshown (0, kept above it), and a gene always detected and always
    left out is certainly detected (1, kept below it)."""
    predicted = detected_given_not_shown(torch.tensor([[0.5, 0.5, 1.0]]), torch.tensor([[0.5], [0.0], [1.0]]))
    torch.testing.assert_close(predicted, torch.tensor([[1 / 3, 1 / 3, 1 - 1e-4], [1e-4, 1e-4, 1e-4],
                                                        [0.5, 0.5, 1 - 1e-4]]))
    rng = np.random.default_rng(0)  # the same by simulation: 200,000 cells, a gene detected in 30% of them
    detected = rng.random(200_000) < 0.3
    shown = detected & (rng.random(200_000) >= 0.4)
    assert detected[~shown].mean() == pytest.approx(float(detected_given_not_shown(torch.tensor(0.3),
                                                                                     torch.tensor(0.4))), abs=0.003)


def test_binned_predictors_use_bin_distributions():
    # 3 bins (+ bin 0 for no value); visible genes sit in bins 1 and 1, the masked one is in bin 2
    batch = {"input_ids": torch.tensor([[1, 4, 5, 6]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "expression_bins": torch.tensor([[0, 1, 1, 4]]), "labels": torch.tensor([[-100, -100, -100, 2]])}
    histograms = _smoothed(torch.tensor([[0.0, 1.0, 1.0, 2.0]]).repeat(8, 1))  # every gene: bins 1, 2, 3, 3
    statistics = {"means": torch.full((8,), 2.25), "histograms": histograms}
    output = SimpleNamespace(logits=torch.zeros(1, 4, 4))  # uniform over the 4 classes
    scores = _masked_batch_scores(batch, output, statistics, binned=True)
    assert float(scores["scgrn"][0]) == pytest.approx(math.log(4))
    assert float(scores["gene_mean"][0]) == pytest.approx(-math.log((1 + 1 / 3) / (4 + 1)))
    assert float(scores["cell_value_distribution"][0]) == pytest.approx(-math.log((1 / 3) / (2 + 1)))
    assert scores["gene_mean_cell_offset"][0] is None  # no distribution: squared error only
    metrics = {"loss_name": "cross_entropy", "masked_values": 1, "masked_loss": 1.0, "masked_mse": 0.1,
               "baselines": {"gene_mean": {"loss": 0.9, "mse": 0.2}, "gene_mean_cell_offset": {"loss": None, "mse": 0.3}},
               "beats_every_baseline": False}
    assert "does NOT beat" in masked_baseline_table(metrics)


def test_classification_baselines_on_real_cells(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
        prepare_cells("pbmc68k_reduced", network, tmp_path / "data", label_column="bulk_labels")
    dataset, tokenizer, network, _ = load_prepared(tmp_path / "data")
    baselines = classification_baselines(dataset["train"], dataset["test"], "bulk_labels", len(tokenizer))
    assert list(baselines) == ["logistic_regression", "pca_logistic_regression", "knn", "majority_class"]
    # the figures a user sees on pbmc68k_reduced's 140 held-out cells (split seed 0)
    assert baselines["logistic_regression"]["accuracy"] == pytest.approx(0.850, abs=0.01)
    assert baselines["majority_class"]["accuracy"] == pytest.approx(0.343, abs=0.001)
    assert baselines["knn"]["accuracy"] > 0.7 and "CD14+ Monocyte" in baselines["knn"]["per_class"]
    table = classification_table({"accuracy": 0.79, "macro_f1": 0.6}, baselines)
    assert "scgrn does NOT beat logistic_regression" in table
    coverage = prior_coverage(dataset["train"]["input_ids"], network.to_vocab_edges(tokenizer), len(tokenizer),
                              tokenizer.all_special_ids)
    assert 0.05 < coverage["mean_share_of_tokens_with_partner"] < 0.2  # the prior reaches few tokens here


def test_prior_coverage_by_hand():
    # vocabulary of 10; edges 4 -> 5 and 6 -> 7; cell A holds 4, 5, 6; cell B holds 6, 7, 8, 9; cell C holds 8
    cells = [np.array([1, 4, 5, 6]), np.array([1, 6, 7, 8, 9]), np.array([1, 8])]
    coverage = prior_coverage(cells, np.array([[4, 6], [5, 7]]), 10, special_ids=(0, 1, 2, 3))
    assert coverage["mean_share_of_tokens_with_partner"] == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    assert coverage["mean_active_pairs_per_cell"] == pytest.approx(2 / 3)
    assert coverage["share_of_cells_without_active_pair"] == pytest.approx(1 / 3)


def test_the_inference_loop_changes_no_state_of_the_run():
    """`run_batches`/`run_batch` restore the model's training mode and torch's grad mode, and draw from torch's RNG
    exactly what iterating the batches draws (a seeded finetuning evaluates inside its loop: an extra draw shifted
    its held-out macro-F1 from 0.755 to 0.605)."""
    from modeling_scgrn.evaluation.inference import run_batch, run_batches

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.calls = torch.nn.Linear(3, 2), []

        def forward(self, input_ids, attention_mask):
            self.calls.append((self.training, torch.is_grad_enabled()))
            return self.linear(input_ids.float())

    model = Recorder().train()
    batches = [{"input_ids": torch.ones(2, 3), "attention_mask": torch.ones(2, 3, dtype=torch.long)}] * 3
    torch.manual_seed(0)
    list(torch.utils.data.DataLoader(batches, batch_size=None))
    expected = torch.rand(1)
    torch.manual_seed(0)
    outputs = [out for _, out in run_batches(model, torch.utils.data.DataLoader(batches, batch_size=None))]
    assert torch.equal(torch.rand(1), expected) and len(outputs) == 3
    run_batch(model, batches[0])
    assert model.calls == [(False, False)] * 4  # eval mode, no gradients, inside the loop
    assert model.training and torch.is_grad_enabled()  # both restored after it


def test_training_curves_group_losses_and_scores_and_leave_counts_out(tmp_path):
    from modeling_scgrn.evaluation.plots import _metric_groups, plot_training_curves

    evaluations = [{"step": s, "masked_loss": 0.6 - s / 1e4, "gene_mean_mse": 0.55, "masked_values": 12873,
                    "beats_every_baseline": False, "probe_accuracy": 0.8, "pearson_r": 0.5, "baselines": {"x": 1}}
                   for s in (100, 200)]
    assert _metric_groups(evaluations) == (["gene_mean_mse", "masked_loss"], ["pearson_r", "probe_accuracy"])
    plot_training_curves({"step": [50, 100, 150], "loss": [2.0, 1.0, 0.9], "eval": evaluations}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_best_trivial_loss_leaves_out_predictors_without_a_loss():
    assert best_trivial_loss({"gene_mean": 0.5, "gene_mean_cell_offset": None, "cell_values": 0.3}) == 0.3
    assert best_trivial_loss({"gene_mean": 0.0, "cell_values": 0.2}) == 0.0  # a perfect predictor counts
    assert best_trivial_loss({"gene_mean": None}) is None  # nothing of the kind scored (no regulated target masked)
