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
    assert np.isnan(perfect["sign_accuracy_repressed"])  # A represses nothing here


def test_repressed_targets_are_scored_apart():
    edges = EDGES.assign(sign=[1, -1, 1, 1, 1])  # A activates B and represses C
    truth = pd.Series({"B": -2.0, "C": 1.5, "D": -0.8, "E": 0.5, "F": -0.3, "G": 0.01})
    every_target_down = truth.where(truth.index != "C", -1.0)
    scores = score_knockout(every_target_down, truth, edges, "A")
    assert scores["sign_accuracy_repressed"] == 0.0 and scores["sign_accuracy_direct"] == 0.5
    assert score_knockout(truth, truth, edges, "A")["sign_accuracy_repressed"] == 1.0
    assert np.isnan(score_knockout(truth, truth, edges, "B")["sign_accuracy_repressed"])  # B represses nothing


def test_tiny_validation_runs_every_predictor(collectri_prior):
    pytest.importorskip("sergio_rs")
    from conftest import tiny_config

    from modeling_scgrn import ScGrnForMaskedExpressionModeling, ScGrnTokenizer
    from modeling_scgrn.bench.knockouts import knockout_markdown, validate_knockouts
    from modeling_scgrn.bench.simulate import simulate_cells, true_edges

    cells = simulate_cells(collectri_prior, n_genes=40, n_cells=60, n_cell_types=3, seed=1, targets_per_regulator=10)
    tokenizer = ScGrnTokenizer.from_genes(list(cells.var_names), n_bins=5)
    torch.manual_seed(0)
    model = ScGrnForMaskedExpressionModeling(tiny_config(tokenizer, value_encoding="continuous", grn_mode="dense"))
    edges = true_edges(cells)
    grn = ScGrnForMaskedExpressionModeling(tiny_config(tokenizer, value_encoding="continuous", grn_mode="grn"))
    grn.set_grn_edges(torch.tensor([tokenizer.convert_tokens_to_ids(list(edges["source"])),
                                    tokenizer.convert_tokens_to_ids(list(edges["target"]))]))
    genes = knockout_candidates(edges, masters=1, mid_level=1)
    scores = validate_knockouts(cells, {"tiny": (model.eval(), tokenizer), "grn": (grn.eval(), tokenizer)}, genes,
                                n_truth_cells=90, n_model_cells=12)
    readers = {"true network: direct targets, signed", "true network: direct targets, unsigned",
               "true network: every downstream gene", "prior of grn: direct targets, unsigned",
               "prior of grn: every downstream gene"}
    assert set(scores["predictor"]) == {"linear baseline", "tiny", "grn"} | readers  # a dense model has no prior
    assert set(scores["truth"]) == {"counts", "noise-free"} and len(scores) == 2 * 8 * len(genes)
    assert scores["genes_scored"].min() > 10
    assert np.isfinite(scores.loc[scores["predictor"] == "linear baseline", "pearson"]).all()
    # the true network read directly, against noise-free truth: its direct targets are the genes that change most
    reading = scores[(scores["predictor"] == "true network: every downstream gene") & (scores["truth"] == "noise-free")]
    assert (reading["auroc_changed"].dropna() > 0.7).all()
    own = scores[scores["predictor"] == "prior of grn: direct targets, unsigned"]
    same = scores[scores["predictor"] == "true network: direct targets, unsigned"]
    assert np.allclose(own["spearman"].to_numpy(), same["spearman"].to_numpy(), equal_nan=True)  # it is the same prior
    markdown = knockout_markdown(scores)
    assert "Truth: noise-free." in markdown and "- grn: Spearman r" in markdown and "its own prior" in markdown


def test_prior_only_predictors_move_direct_or_downstream_targets_by_a_constant():
    from modeling_scgrn.bench.knockouts import prior_predictions

    edges = EDGES.assign(sign=[1, -1, 1, 1, 1])  # A represses C
    columns = list("ABCDEFG")
    unsigned = prior_predictions(edges, ["A"], columns).loc["A"]
    assert unsigned.to_dict() == {"A": 0, "B": -1, "C": -1, "D": 0, "E": 0, "F": 0, "G": 0}
    signed = prior_predictions(edges, ["A"], columns, signed=True).loc["A"]
    assert signed["B"] == -1 and signed["C"] == 1  # a repressed target is predicted to rise
    every = prior_predictions(edges, ["A", "E"], columns, every_hop=True)
    assert every.loc["A"].to_dict() == {"A": 0, "B": -1, "C": -1, "D": -1, "E": -1, "F": -1, "G": 0}
    assert (every.loc["E"] == 0).all()
    truth = pd.Series({"B": -2.0, "C": 1.0, "D": -0.5, "E": -0.4, "F": 0.0, "G": 0.0})
    scored = score_knockout(signed, truth, edges, "A")
    # changed B, C, D, E against unchanged F, G: B and C above both, D and E tied with both
    assert scored["auroc_changed"] == pytest.approx((4 + 4 * 0.5) / 8) and scored["spearman"] > 0
