"""Regulatory edges out of a model: the table's shape and columns for every method, pairs the model cannot connect
scored 0, the perturbation score equal to `tl.perturb`'s deletion, determinism, the benchmark's rankings, and the
script's outputs and one-line errors."""

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import EDGES, GENES, tiny_config

from modeling_scgrn import ScGrnForMaskedExpressionModeling, ScGrnModel
from modeling_scgrn.bench.edges import questions, ranking_scores
from modeling_scgrn.tl.edges import EDGE_METHODS, regulatory_edges
from modeling_scgrn.tl.perturb import perturb

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["source", "target", "weight", "in_prior", "cells", "method"]


@pytest.fixture(scope="module")
def simulated(collectri_prior):
    """A tiny simulation: 40 genes of CollecTRI, 60 cells, 2 types (raw counts and the true network)."""
    pytest.importorskip("sergio_rs")
    from modeling_scgrn.bench.simulate import simulate_cells

    return simulate_cells(collectri_prior, n_genes=40, n_cells=60, n_cell_types=2, seed=1, targets_per_regulator=10)


def model_of(cells, *, layers: int = 2, kernel: str = "eager", **options):
    from modeling_scgrn import ScGrnTokenizer
    from modeling_scgrn.bench.simulate import true_edges

    tokenizer = ScGrnTokenizer.from_genes(list(cells.var_names), n_bins=5)
    torch.manual_seed(0)
    config = tiny_config(tokenizer, value_encoding="continuous", num_hidden_layers=layers, **options)
    model = ScGrnForMaskedExpressionModeling(config)
    if config.grn_mode != "dense":
        edges = true_edges(cells)
        model.set_grn_edges(torch.tensor([tokenizer.convert_tokens_to_ids(list(edges["source"])),
                                          tokenizer.convert_tokens_to_ids(list(edges["target"]))]))
    model.config._attn_implementation = kernel
    return model.eval(), tokenizer


@pytest.mark.parametrize("method", EDGE_METHODS)
def test_every_method_gives_a_decoupler_table_and_is_deterministic(simulated, method):
    model, tokenizer = model_of(simulated, grn_mode="grn")
    cells = simulated.copy()
    edges = regulatory_edges(cells, model, tokenizer, method=method, batch_size=32, progress=False)
    assert list(edges.columns) == COLUMNS and (edges["method"] == method).all()
    regulators = set(model_prior_sources(model, tokenizer))
    assert set(edges["source"]) <= regulators and (edges["source"] != edges["target"]).all()
    assert set(edges["target"]) <= set(cells.var_names) and (edges["cells"] >= 1).all()
    assert edges["in_prior"].any() and not edges.duplicated(["source", "target"]).any()
    assert np.isfinite(edges["weight"]).all()
    assert (np.diff(edges["weight"].abs().to_numpy()) <= 0).all()  # sorted by |weight|
    assert cells.uns["scgrn_edges"]["edges"] is edges and cells.uns["scgrn_edges"]["method"] == method
    again = regulatory_edges(simulated.copy(), model, tokenizer, method=method, batch_size=32, progress=False)
    pd.testing.assert_frame_equal(edges, again)  # deterministic
    other = regulatory_edges(simulated.copy(), model, tokenizer, method=method, batch_size=7, progress=False)
    pd.testing.assert_frame_equal(edges[COLUMNS[:2]], other[COLUMNS[:2]])  # other batches: the same pairs, in order,
    np.testing.assert_allclose(other["weight"], edges["weight"], rtol=1e-3, atol=1e-6)  # up to float32 rounding
    assert model.config._attn_implementation == "eager"


def model_prior_sources(model, tokenizer):
    from modeling_scgrn.tl.perturb import model_prior

    return model_prior(model, tokenizer)["source"]


@pytest.mark.parametrize("kernel", ["eager", "grn_auto"])
def test_pairs_the_model_cannot_connect_score_zero(simulated, kernel):
    # one layer, no [CLS] channel: a target reads only its prior regulators, so every other pair scores 0
    model, tokenizer = model_of(simulated, layers=1, kernel=kernel, grn_mode="grn", all_attend_cls=False)
    regulators = sorted(set(simulated.var_names))  # every gene as a candidate regulator
    for method in EDGE_METHODS:
        edges = regulatory_edges(simulated.copy(), model, tokenizer, method=method, regulators=regulators,
                                 progress=False)
        inside, outside = edges[edges["in_prior"]], edges[~edges["in_prior"]]
        assert len(outside) > 5 * len(inside) > 0
        assert (inside["weight"].abs() > 1e-5).mean() > 0.9
        assert (outside["weight"] == 0).all(), method
    assert model.config._attn_implementation == kernel  # restored


def test_gradients_run_on_the_models_own_kernel_with_eagers_numbers(simulated, monkeypatch):
    import modeling_scgrn.model.kernels as kernels

    scores = {}
    for kernel in ["eager", "grn_auto"]:
        model, tokenizer = model_of(simulated, kernel=kernel, grn_mode="grn")
        scores[kernel] = regulatory_edges(simulated.copy(), model, tokenizer, method="gradient", progress=False)
    pd.testing.assert_frame_equal(scores["eager"][COLUMNS[:2]], scores["grn_auto"][COLUMNS[:2]])
    np.testing.assert_allclose(scores["grn_auto"]["weight"], scores["eager"]["weight"], rtol=1e-4, atol=1e-6)
    calls = []  # the structured kernel's plain-op path ran (the model was not switched to eager)
    plain = kernels._structured_attention
    monkeypatch.setattr(kernels, "_structured_attention", lambda *a: calls.append(1) or plain(*a))
    model, tokenizer = model_of(simulated, kernel="grn_auto", grn_mode="grn")
    again = regulatory_edges(simulated.copy(), model, tokenizer, method="gradient", progress=False)
    pd.testing.assert_frame_equal(again, scores["grn_auto"])
    assert len(calls) >= model.config.num_hidden_layers


def test_perturbation_score_is_minus_the_deletion_effect_of_tl_perturb():
    # G4 -> G0 in the prior; deleting G4 through tl.perturb and through regulatory_edges moves G0 alike
    from modeling_scgrn import ScGrnTokenizer

    tokenizer = ScGrnTokenizer.from_genes(GENES, n_bins=5)
    rng = np.random.default_rng(3)
    cells = ad.AnnData(sp.csr_matrix(rng.integers(1, 30, size=(1, 12)).astype(np.float32)),
                       var=pd.DataFrame(index=GENES))
    torch.manual_seed(0)
    model = ScGrnForMaskedExpressionModeling(tiny_config(tokenizer, value_encoding="continuous", num_hidden_layers=1,
                                                         all_attend_cls=False, value_baseline="none"))
    ids = tokenizer.convert_tokens_to_ids
    model.set_grn_edges(torch.tensor([[ids(s) for s, _ in EDGES], [ids(t) for _, t in EDGES]]))
    model.config._attn_implementation = "eager"
    model.eval()
    edges = regulatory_edges(cells.copy(), model, tokenizer, regulators=["G4"], n_groups=2, progress=False)
    effect = perturb(cells.copy(), model, tokenizer, ["G4"], n_groups=2, progress=False)
    # one layer: G0 reads G4 and itself; its prediction with G0 masked does not depend on the other genes' groups
    assert edges.set_index("target").loc["G0", "weight"] == pytest.approx(-effect.loc["G4", "G0"], abs=1e-5)


def test_a_dense_model_needs_regulators_and_a_binned_one_no_gradient(simulated):
    model, tokenizer = model_of(simulated, grn_mode="dense")
    with pytest.raises(ValueError, match="pass network= .* or regulators="):
        regulatory_edges(simulated, model, tokenizer, progress=False)
    edges = regulatory_edges(simulated.copy(), model, tokenizer, regulators=list(simulated.var_names[:3]),
                             progress=False)
    assert not edges["in_prior"].any() and set(edges["source"]) <= set(simulated.var_names[:3])
    encoder = ScGrnModel(model.config)
    with pytest.raises(ValueError, match="masked-expression model"):
        regulatory_edges(simulated, encoder, tokenizer, regulators=["x"], progress=False)
    from modeling_scgrn import ScGrnTokenizer

    tokenizer = ScGrnTokenizer.from_genes(list(simulated.var_names), n_bins=5)
    binned = ScGrnForMaskedExpressionModeling(tiny_config(tokenizer, value_encoding="binned", grn_mode="dense"))
    with pytest.raises(ValueError, match="value_encoding='continuous'"):
        regulatory_edges(simulated, binned.eval(), tokenizer, method="gradient", regulators=["x"], progress=False)
    with pytest.raises(ValueError, match="method='nope' is not one of"):
        regulatory_edges(simulated, binned.eval(), tokenizer, method="nope", progress=False)


@pytest.mark.parametrize("normalization", ["row", "sinkhorn"])
def test_attention_balanced_from_its_means_equals_a_second_pass(simulated, normalization):
    from modeling_scgrn.bench.edges import rebalanced

    model, tokenizer = model_of(simulated, grn_mode="grn")
    means = regulatory_edges(simulated.copy(), model, tokenizer, method="attention", normalization="none",
                             progress=False)
    direct = regulatory_edges(simulated.copy(), model, tokenizer, method="attention", normalization=normalization,
                              progress=False).set_index(["source", "target"])
    derived = rebalanced(means, normalization).set_index(["source", "target"])
    assert len(derived) == len(direct) and not np.allclose(derived["weight"], means.set_index(
        ["source", "target"])["weight"].loc[derived.index])  # balancing changed the numbers
    np.testing.assert_allclose(derived["weight"], direct["weight"].loc[derived.index], rtol=1e-9, atol=1e-12)


def test_rankings_and_questions():
    truth = np.array([True, True, False, False, False])
    perfect = ranking_scores(np.array([0.9, -0.8, 0.1, 0.0, 0.2]), truth)  # |weight| ranks
    assert perfect["auroc"] == 1.0 and perfect["early_precision_ratio"] == pytest.approx(1 / 0.4)
    constant = ranking_scores(np.zeros(5), truth)
    assert constant["auroc"] == 0.5 and constant["early_precision_ratio"] == pytest.approx(1.0)
    pairs = pd.DataFrame({"regulator": ["A", "A", "A", "B"], "target": ["B", "C", "D", "C"]})
    asked = questions(pairs, truth={("A", "B"), ("A", "C")}, prior={("A", "B"), ("B", "C")})
    assert set(asked) == {"whole network", "noisy prior", "incomplete prior"}
    where, true = asked["noisy prior"]
    assert where.tolist() == [True, False, False, True] and true.tolist() == [True, False]
    where, true = asked["incomplete prior"]
    assert where.tolist() == [False, True, True, False] and true.tolist() == [True, False]
    assert set(questions(pairs, truth={("A", "B")}, prior=None)) == {"whole network"}


def test_edges_script_writes_the_table_and_regulons_and_refuses_bad_input(simulated, tmp_path):
    model, tokenizer = model_of(simulated, grn_mode="grn")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cells = tmp_path / "cells.h5ad"
    simulated.write_h5ad(cells)
    script = [sys.executable, str(ROOT / "finetune" / "edges.py"), "--model", str(folder), "--input", str(cells)]
    out = tmp_path / "edges"
    done = subprocess.run([*script, "--method", "attention", "--table", "edges.parquet", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(out / "edges.parquet")
    assert list(table.columns) == COLUMNS and (out / "top_regulons.png").stat().st_size > 5_000
    assert (out / "summary.json").exists()
    refused = subprocess.run([*script, "--output_dir", str(out)], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    bad = subprocess.run([*script, "--table", "edges.txt", "--output_dir", str(tmp_path / "other")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "must be a file name ending in .csv or .parquet" in bad.stderr
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_curated_agreement_ranks_shared_edges_with_a_permutation_p_value():
    from modeling_scgrn.bench.edges import curated_agreement, rank_auroc_test

    rng = np.random.default_rng(0)
    positive = np.zeros(200, dtype=bool)
    positive[:20] = True
    separated = rank_auroc_test(np.where(positive, 2.0, 1.0) + rng.random(200) * 0.1, positive, permutations=500)
    assert separated["auroc"] == 1.0 and separated["p_value"] == pytest.approx(1 / 501)
    unrelated = rank_auroc_test(rng.random(200), positive, permutations=500)
    assert 0.3 < unrelated["auroc"] < 0.7 and unrelated["p_value"] > 0.05
    scores = pd.DataFrame({"source": ["A", "A", "A", "B"], "target": ["B", "C", "D", "C"], "s": [0.9, 0.1, 0.5, 0.0]})
    rows = curated_agreement(scores, first={("A", "B"), ("A", "C")}, second={("A", "B"), ("A", "D")}, columns=["s"],
                             permutations=50)
    both, second_only = rows
    assert both["comparison"] == "in both vs first only" and (both["positives"], both["negatives"]) == (1, 1)
    assert both["auroc"] == 1.0  # (A, B) in both scores above (A, C), first only
    assert second_only["comparison"] == "second only vs in neither" and second_only["auroc"] == 1.0
