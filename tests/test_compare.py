"""The prior-vs-control comparison runs end to end for every mask and 3 seeds (smallest configuration), with the
masks' per-cell reach and the baselines' rows; its pretrained arm pretrains each mask before finetuning it."""

import json
import warnings

from conftest import OMNIPATH_TABLE, shared_data_or_skip

from modeling_scgrn.cells.prepared import prepare_cells
from modeling_scgrn.grn.network import GeneRegulatoryNetwork
from modeling_scgrn.train.training import TrainingConfig
from modeling_scgrn.workflows.compare import run_comparison


def test_comparison_of_all_masks_over_three_seeds(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
    prepare_cells("pbmc68k_reduced", network, tmp_path / "data", label_column="bulk_labels", max_length=64)
    result = run_comparison(
        tmp_path / "data", tmp_path / "compare", label_column="bulk_labels", seeds=(0, 1, 2),
        model_options=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        training=TrainingConfig(max_steps=3, per_device_batch_size=32, show_progress=False, mixed_precision="no"),
    )
    runs = result["runs"]
    modes = ("grn", "dense", "rewired", "random", "shuffled")
    assert [(r["grn_mode"], r["seed"]) for r in runs] == [(m, s) for m in modes for s in (0, 1, 2)]
    assert all(0 <= r["test_accuracy"] <= 1 and -1 <= r["test_silhouette"] <= 1 for r in runs)
    assert all(r["arm"] == "scratch" for r in runs)
    table = (tmp_path / "compare" / "comparison.md").read_text()
    for mode in modes:
        assert f"| {mode} | scratch |" in table
    for baseline in ("logistic_regression", "pca_logistic_regression", "knn", "majority_class"):
        assert f"| {baseline} (baseline) |" in table
    assert "+/-" in table
    reach = {r["grn_mode"]: r["active_pairs_per_cell"] for r in runs if r["seed"] == 0}
    assert reach["grn"] > 0 and reach["rewired"] > 0 and reach["dense"] != reach["dense"]  # NaN: no mask
    assert json.loads((tmp_path / "compare" / "comparison.json").read_text()) == json.loads(json.dumps(runs))
    assert (tmp_path / "compare" / "comparison.png").stat().st_size > 10_000


def test_pretrained_arm_pretrains_each_mask_first(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
    prepare_cells("pbmc68k_reduced", network, tmp_path / "data", label_column="bulk_labels", max_length=64)
    quick = dict(max_steps=2, per_device_batch_size=32, show_progress=False, mixed_precision="no")
    result = run_comparison(
        tmp_path / "data", tmp_path / "compare", label_column="bulk_labels", seeds=(0,), modes=("grn", "rewired"),
        model_options=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        training=TrainingConfig(**quick), pretraining=TrainingConfig(**quick))
    assert [(r["grn_mode"], r["arm"]) for r in result["runs"]] == [
        ("grn", "scratch"), ("grn", "pretrained"), ("rewired", "scratch"), ("rewired", "pretrained")]
    for mode in ("grn", "rewired"):
        pretrained = tmp_path / "compare" / f"{mode}_seed0" / "pretrained" / "pretrain" / "model"
        assert json.loads((pretrained / "config.json").read_text())["grn_mode"] == mode
        assert f"| {mode} | pretrained |" in result["markdown"]
