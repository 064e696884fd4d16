"""In-silico perturbation: shapes and keys, cells without the gene untouched, genes the perturbation cannot reach
through the prior predicted exactly as before, determinism, and the script's outputs and errors."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import GENES, tiny_config

from modeling_scgrn import ScGrnForCellClassification, ScGrnForMaskedExpressionModeling
from modeling_scgrn.tl.fields import CellFields
from modeling_scgrn.tl.perturb import _cells, _perturbed, masking_groups, predicted_expression
from modeling_scgrn.tl.verbs import perturb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cells():
    rng = np.random.default_rng(3)
    dense = rng.integers(1, 30, size=(24, 12)).astype(np.float32)
    dense[::3, 4] = 0  # G4 absent from every third cell
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(24)])
    return ad.AnnData(sp.csr_matrix(dense), obs=obs, var=pd.DataFrame(index=GENES))


def masked_model(tokenizer, edge_tensor, **overrides):
    torch.manual_seed(0)
    options = dict(grn_mode="grn", all_attend_cls=False, value_encoding="continuous",
                   grn_direction="regulator_to_target")
    model = ScGrnForMaskedExpressionModeling(tiny_config(tokenizer, **{**options, **overrides}))
    model.set_grn_edges(edge_tensor)
    model.config._attn_implementation = "eager"
    return model.eval()


def test_perturb_returns_effects_and_writes_uns(cells, tokenizer, edge_tensor):
    model = masked_model(tokenizer, edge_tensor)
    torch.manual_seed(1)
    classifier = ScGrnForCellClassification(tiny_config(tokenizer, grn_mode="dense", num_labels=2,
                                                        id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})).eval()
    effects = perturb(cells, model, tokenizer, ["G4", "G0"], classifier=classifier, batch_size=5, progress=False)
    assert list(effects.index) == ["G4", "G0"] and list(effects.columns) == GENES
    assert np.isnan(effects.loc["G4", "G4"]) and np.isnan(effects.loc["G0", "G0"])
    result = cells.uns["scgrn_perturbation"]
    assert result["mode"] == "delete" and result["effects"] is effects
    assert result["cells_perturbed"] == {"G4": 16, "G0": 24}
    shift = result["embedding_shift"]
    assert shift.shape == (24, 2) and shift["G4"].isna().sum() == 8 and (shift["G0"] >= 0).all()
    assert set(result["label_changed"]) == {"G4", "G0"} and list(result["label_moves"].columns) == ["a", "b"]
    again = perturb(cells.copy(), model, tokenizer, ["G4", "G0"], classifier=classifier, batch_size=5,
                    progress=False)
    pd.testing.assert_frame_equal(effects, again)  # deterministic


def test_deleting_a_gene_absent_from_a_cell_changes_nothing_for_it(cells, tokenizer, edge_tensor):
    model = masked_model(tokenizer, edge_tensor)
    encoded = _cells(cells, tokenizer, CellFields(max_length=None))
    assert _perturbed(encoded[0], tokenizer.convert_tokens_to_ids("G4"), "delete", 5) is None
    with_absent = perturb(cells, model, tokenizer, ["G4"], batch_size=4, progress=False)
    holders = cells[cells.X[:, 4].toarray().ravel() > 0].copy()
    only_holders = perturb(holders, model, tokenizer, ["G4"], batch_size=4, progress=False)
    assert with_absent.notna().sum().sum() == only_holders.notna().sum().sum()
    lacking = cells[[0]].copy()  # a cell without G4: nothing to delete, nothing predicted to change
    assert perturb(lacking, model, tokenizer, ["G4"], progress=False).isna().all().all()
    assert lacking.uns["scgrn_perturbation"]["cells_perturbed"] == {"G4": 0}
    assert lacking.uns["scgrn_perturbation"]["embedding_shift"].isna().all().all()


def test_genes_out_of_reach_of_the_prior_are_predicted_exactly_as_before(cells, tokenizer, edge_tensor):
    # prior: G4 -> G0 -> {G1, G2}, G1 -> G3, G5 -> G6. Deleting G4 reaches G0 in one layer and G1, G2 in two; with
    # two layers and no [CLS] channel, G3 (three edges away) and every other gene cannot change.
    model = masked_model(tokenizer, edge_tensor)
    cell = _cells(cells, tokenizer, CellFields(max_length=None))[1]
    groups = [masking_groups(cell, 4, 0)]
    before = predicted_expression(model, [cell], n_groups=4, groups=groups)[0]
    after = predicted_expression(model, [_perturbed(cell, tokenizer.convert_tokens_to_ids("G4"), "delete", 5)],
                                 n_groups=4, groups=groups)[0]
    name = dict(zip(tokenizer.convert_tokens_to_ids(GENES), GENES))
    changed = {name[g] for g in after if after[g] != before[g]}
    assert {"G0", "G1", "G2"} <= changed
    assert changed <= {"G0", "G1", "G2"}, f"genes out of the prior's reach changed: {changed}"
    dense = masked_model(tokenizer, edge_tensor, grn_mode="dense")
    after_dense = predicted_expression(dense, [_perturbed(cell, tokenizer.convert_tokens_to_ids("G4"), "delete", 5)],
                                       n_groups=4, groups=groups)[0]
    before_dense = predicted_expression(dense, [cell], n_groups=4, groups=groups)[0]
    assert sum(after_dense[g] != before_dense[g] for g in after_dense) > 3  # a dense model has no such guarantee


def test_a_deletion_keeps_the_cells_offset_so_a_value_baseline_moves_no_gene_out_of_reach(cells, tokenizer,
                                                                                           edge_tensor):
    # value_baseline starts every prediction at the gene's mean plus the cell's offset over its visible genes;
    # deleting G4 drops G4 from that offset, which moved every gene until perturb held the control's offset
    model = masked_model(tokenizer, edge_tensor, value_baseline="gene_mean_cell_offset")
    model.set_gene_means(torch.linspace(0.5, 3.0, model.config.vocab_size))
    effects = perturb(cells, model, tokenizer, ["G4"], rounds=2, batch_size=5, progress=False).loc["G4"]
    assert (effects[["G0", "G1", "G2"]].abs() > 1e-3).all() and abs(effects["G3"]) > 5e-6  # G3 through G1, pass 2
    out_of_reach = effects.drop(["G0", "G1", "G2", "G3", "G4"])
    assert (out_of_reach.abs() < 5e-7).all(), out_of_reach.abs().max()


def test_overexpression_sets_the_top_value_or_adds_the_gene(cells, tokenizer):
    encoded = _cells(cells, tokenizer, CellFields(max_length=None))
    gene = tokenizer.convert_tokens_to_ids("G4")
    up = _perturbed(encoded[0], gene, "overexpress", 5)  # absent: appended with the cell's top value
    assert up["input_ids"][-1] == gene and up["expression_values"][-1] == encoded[0]["expression_values"][1:].max()
    assert up["expression_bins"][-1] == 5
    present = _perturbed(encoded[1], gene, "overexpress", 5)
    where = list(encoded[1]["input_ids"]).index(gene)
    assert len(present["input_ids"]) == len(encoded[1]["input_ids"]) and present["expression_bins"][where] == 5


def test_perturb_refuses_unknown_genes_and_modes(cells, tokenizer, edge_tensor):
    model = masked_model(tokenizer, edge_tensor)
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        perturb(cells, model, tokenizer, ["NOPE"], progress=False)
    with pytest.raises(ValueError, match="mode="):
        perturb(cells, model, tokenizer, ["G4"], mode="knockdown", progress=False)


def test_script_writes_effects_heatmap_and_shifts(cells, tokenizer, edge_tensor, tmp_path):
    model = masked_model(tokenizer, edge_tensor)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    cells.write_h5ad(tmp_path / "cells.h5ad")
    script = [sys.executable, str(ROOT / "finetune" / "perturb.py"), "--model", str(tmp_path / "model"), "--input",
              str(tmp_path / "cells.h5ad"), "--genes", "G4", "G0"]
    result = subprocess.run([*script, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    effects = pd.read_csv(tmp_path / "out" / "effects.csv", index_col=0)
    assert list(effects.index) == ["G4", "G0"] and effects.shape[1] == len(GENES)
    assert (tmp_path / "out" / "effects_heatmap.png").stat().st_size > 0
    assert pd.read_csv(tmp_path / "out" / "embedding_shift.csv", index_col=0).shape == (24, 2)
    cascade = subprocess.run([*script, "--rounds", "2", "--output_dir", str(tmp_path / "cascade")],
                             capture_output=True, text=True)
    assert cascade.returncode == 0, cascade.stderr[-2000:]
    distance = pd.read_csv(tmp_path / "cascade" / "prior_distance.csv", index_col=0)
    assert distance.loc["G4", "G0"] == 1 and distance.loc["G4", "G1"] == 2
    assert pd.read_csv(tmp_path / "cascade" / "first_round_effects.csv", index_col=0).shape == effects.shape
    split = json.loads((tmp_path / "cascade" / "summary.json").read_text())["top_effects_by_distance"]["G4"]
    assert split["direct"] == ["G0"] and set(split["indirect"]) <= {"G1", "G2", "G3"}
    again = subprocess.run([*script, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().startswith("error:") and "--overwrite" in again.stderr
    unknown = subprocess.run([*script[:-2], "NOPE", "--output_dir", str(tmp_path / "other")], capture_output=True,
                             text=True)
    assert unknown.returncode == 2 and "not in the model's vocabulary" in unknown.stderr
    assert "Traceback" not in unknown.stderr and not (tmp_path / "other").exists()


def test_a_cascade_moves_the_third_gene_of_a_chain_only_with_two_or_more_rounds(cells, tokenizer, edge_tensor):
    # prior: G4 -> G0 -> {G1, G2}, G1 -> G3. One layer and no [CLS] channel: one pass reaches only G0 from G4;
    # fed back, G0's predicted change reaches G1 and G2, and a third pass G3.
    model = masked_model(tokenizer, edge_tensor, num_hidden_layers=1)
    holders = cells[cells.X[:, 4].toarray().ravel() > 0].copy()
    changed = {}
    for rounds in (1, 2, 3):
        effects = perturb(holders, model, tokenizer, ["G4"], rounds=rounds, tolerance=0.0, progress=False)
        changed[rounds] = {g for g in GENES if g != "G4" and effects.loc["G4", g] != 0}
        result = holders.uns["scgrn_perturbation"]
        assert result["rounds"] == rounds and result["params"]["rounds"] == rounds
    assert changed[1] == {"G0"}
    assert changed[2] == {"G0", "G1", "G2"}
    assert changed[3] == {"G0", "G1", "G2", "G3"}
    pd.testing.assert_frame_equal(result["first_round"], perturb(holders.copy(), model, tokenizer, ["G4"],
                                                                 progress=False))  # the first pass, kept
    distance = result["prior_distance"].loc["G4"]
    assert distance["G0"] == 1 and distance["G1"] == distance["G2"] == 2 and distance["G3"] == 3
    assert np.isnan(distance["G5"]) and np.isnan(distance["G6"])
    settled = perturb(holders, model, tokenizer, ["G4"], rounds=50, tolerance=1e-2, progress=False)
    assert holders.uns["scgrn_perturbation"]["rounds"] < 50 and settled.notna().any().any()  # stops when settled
    with pytest.raises(ValueError, match="rounds="):
        perturb(holders, model, tokenizer, ["G4"], rounds=0, progress=False)
