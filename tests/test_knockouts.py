"""Knockout validation: reachability, scoring against truth, the linear baseline, and a tiny end-to-end run."""

import numpy as np
import pandas as pd
import pytest
import torch

from modeling_scgrn.bench.knockouts import downstream, knockout_candidates, score_knockout

EDGES = pd.DataFrame({"source": ["A", "A", "B", "B", "D"], "target": ["B", "C", "D", "E", "F"], "sign": 1})


def test_downstream_distances_and_candidates():
    assert downstream(EDGES, "A") == {"B": 1, "C": 1, "D": 2, "E": 2, "F": 3}
    assert downstream(EDGES, "E") == {}
    assert knockout_candidates(EDGES, masters=1, mid_level=2) == ["A", "B", "D"]


def test_scores_reward_the_right_signs_and_ranking():
    truth = pd.Series({"A": -5.0, "B": -2.0, "C": -1.0, "D": -0.8, "E": 0.5, "F": -0.3, "G": 0.01, "H": -0.02})
    perfect = score_knockout(truth, truth, EDGES, "A")
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["recall_at_k"] == 1.0
    assert perfect["sign_accuracy_direct"] == 1.0 and perfect["sign_accuracy_indirect"] == 1.0
    assert perfect["downstream_changed"] == 5 and perfect["genes_scored"] == 7  # A itself is left out
    flipped = score_knockout(-truth, truth, EDGES, "A")
    assert flipped["sign_accuracy_direct"] == 0.0 and flipped["pearson"] == pytest.approx(-1.0)


def test_tiny_validation_runs_every_predictor(collectri_prior):
    pytest.importorskip("sergio_rs")
    from conftest import tiny_config

    from modeling_scgrn import ScGrnForMaskedExpressionModeling, ScGrnTokenizer
    from modeling_scgrn.bench.knockouts import validate_knockouts
    from modeling_scgrn.bench.simulate import simulate_cells, true_edges

    cells = simulate_cells(collectri_prior, n_genes=40, n_cells=60, n_cell_types=3, seed=1, targets_per_regulator=10)
    tokenizer = ScGrnTokenizer.from_genes(list(cells.var_names), n_bins=5)
    torch.manual_seed(0)
    model = ScGrnForMaskedExpressionModeling(tiny_config(tokenizer, value_encoding="continuous", grn_mode="dense"))
    genes = knockout_candidates(true_edges(cells), masters=1, mid_level=1)
    scores = validate_knockouts(cells, {"tiny": (model.eval(), tokenizer)}, genes, n_truth_cells=90,
                                n_model_cells=12)
    assert set(scores["predictor"]) == {"linear baseline", "tiny"} and len(scores) == 2 * len(genes)
    assert scores["genes_scored"].min() > 10
    assert np.isfinite(scores.loc[scores["predictor"] == "linear baseline", "pearson"]).all()
