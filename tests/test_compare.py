"""The prior-vs-control comparison runs end to end for all four masks and 3 seeds (smallest configuration)."""

import json
import warnings

import pytest

from modeling_scgrn.networks import GeneRegulatoryNetwork
from modeling_scgrn.data import prepare_cells
from modeling_scgrn.pipeline import run_comparison

from conftest import OMNIPATH_TABLE, shared_data_or_skip


def test_comparison_of_all_masks_over_three_seeds(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
    prepare_cells("pbmc68k_reduced", network, tmp_path / "data", label_column="bulk_labels", max_length=64)
    result = run_comparison(
        tmp_path / "data", tmp_path / "compare", label_column="bulk_labels", seeds=(0, 1, 2),
        model_options=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        training_options=dict(max_steps=3, per_device_batch_size=32, show_progress=False, mixed_precision="no"),
    )
    runs = result["runs"]
    assert [(r["grn_mode"], r["seed"]) for r in runs] == [(m, s) for m in ("grn", "dense", "random", "shuffled")
                                                          for s in (0, 1, 2)]
    assert all(0 <= r["test_accuracy"] <= 1 and -1 <= r["test_silhouette"] <= 1 for r in runs)
    table = (tmp_path / "compare" / "comparison.md").read_text()
    for mode in ("grn", "dense", "random", "shuffled"):
        assert f"| {mode} |" in table
    assert "+/-" in table
    assert json.loads((tmp_path / "compare" / "comparison.json").read_text()) == runs
    assert (tmp_path / "compare" / "comparison.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="from scratch"):
        run_comparison(tmp_path / "data", tmp_path / "x", label_column="bulk_labels", pretrained="some/folder")
