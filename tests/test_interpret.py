"""Attention interpretation on real cells (pbmc68k_reduced) and the real CollecTRI prior."""

import json
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import OMNIPATH_TABLE, shared_data_or_skip

from modeling_scgrn import ScGrnModel
from modeling_scgrn.cells.prepared import load_prepared, prepare_cells
from modeling_scgrn.grn.attach import attach_grn, new_config
from modeling_scgrn.tl.attention import attention_scores, plot_attention_heatmap, prior_agreement, top_pairs

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from modeling_scgrn.grn.network import GeneRegulatoryNetwork

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
    folder = tmp_path_factory.mktemp("interpret") / "data"
    prepare_cells("pbmc68k_reduced", network, folder, label_column="bulk_labels", max_length=128)
    return folder, *load_prepared(folder)[:3]


def tiny_model(tokenizer, network, mode):
    torch.manual_seed(0)
    model = ScGrnModel(new_config(tokenizer, grn_mode=mode, **TINY))
    attach_grn(model, network, tokenizer)
    return model.eval()


def test_grn_attention_lies_on_the_prior_and_ranks_it_perfectly(prepared):
    _, dataset, tokenizer, network = prepared
    model = tiny_model(tokenizer, network, "grn")
    scores = attention_scores(model, tokenizer, dataset["test"], "bulk_labels", max_cells_per_label=20)
    assert model.config._attn_implementation == "grn_auto"  # restored after the eager pass
    assert len(scores) >= 5
    edges = set(zip(network.edges["source"], network.edges["target"]))
    for label, frame in scores.items():
        attended = frame[frame["score"] > 0]
        assert len(attended) > 0 and (frame["score"] == 0).sum() > 10 * len(attended)
        # every pair with weight is a prior edge, oriented regulator -> target
        assert all(pair in edges for pair in zip(attended["regulator"], attended["target"])), label
        assert (frame["cells"] >= 1).all() and frame["cells"].max() <= 20
    agreement = prior_agreement(scores, network)
    assert all(entry["auroc"] == pytest.approx(1.0) and entry["auprc"] == pytest.approx(1.0)
               for entry in agreement.values() if "auroc" in entry)
    assert all(entry["random_auprc"] < 0.01 for entry in agreement.values() if "auroc" in entry)
    top = top_pairs(scores, network, 5, regulators_only=True)
    assert all(frame["in_prior"].all() and frame["known_regulator"].all() for frame in top.values())


def test_dense_attention_is_scored_against_the_prior(prepared, tmp_path):
    _, dataset, tokenizer, network = prepared
    scores = attention_scores(tiny_model(tokenizer, network, "dense"), tokenizer, dataset["test"], "bulk_labels",
                              max_cells_per_label=10)
    agreement = prior_agreement(scores, network)
    scored = [entry for entry in agreement.values() if "auroc" in entry]
    assert scored and all(0 <= e["auroc"] <= 1 and e["prior_edges"] > 0 for e in scored)
    assert all(e["pairs"] > 100 * e["prior_edges"] for e in scored)  # a dense model weighs non-edges too
    candidates = top_pairs(scores, network, 5, regulators_only=True, outside_prior=True)
    assert all(not frame["in_prior"].any() and frame["known_regulator"].all() for frame in candidates.values())
    png = plot_attention_heatmap(scores, ["SPI1", "CEBPB"], tmp_path / "heat.png")
    assert png.stat().st_size > 5_000
    with pytest.raises(ValueError, match="none of"):
        plot_attention_heatmap(scores, ["NOTAGENE"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no column 'cell_type'"):
        attention_scores(tiny_model(tokenizer, network, "dense"), tokenizer, dataset["test"], "cell_type")


def test_interpret_script_writes_report(prepared, tmp_path, monkeypatch):
    folder, _, tokenizer, network = prepared
    for mode in ("grn", "dense"):
        model = tiny_model(tokenizer, network, mode)
        model.save_pretrained(tmp_path / mode)
        tokenizer.save_pretrained(tmp_path / mode)
    monkeypatch.setattr(sys, "argv", ["interpret.py", "--data", str(folder), "--label_column", "bulk_labels",
                                      "--model", str(tmp_path / "grn"), "--dense_model", str(tmp_path / "dense"),
                                      "--max_cells_per_label", "5", "--output_dir", str(tmp_path / "out")])
    runpy.run_path(str(ROOT / "finetune" / "interpret.py"), run_name="__main__")
    report = json.loads((tmp_path / "out" / "attention_report.json").read_text())
    assert report["grn_model"]["top_pairs"] and report["dense_model"]["prior_agreement"]
    markdown = (tmp_path / "out" / "attention_report.md").read_text()
    assert "AUROC" in markdown and "Candidate links" in markdown
    assert (tmp_path / "out" / "attention_heatmap.png").stat().st_size > 5_000
