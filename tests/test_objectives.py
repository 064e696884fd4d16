"""benchmarks/objectives.py: pretraining variants read by what their frozen embedding holds, beside PCA and an
untrained encoder, on real cells (pbmc68k_reduced, tiny models, a few steps)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import OMNIPATH_TABLE, load_script, shared_data_or_skip

from modeling_scgrn.evaluation.probe import cross_validated_probe
from modeling_scgrn.workflows.objectives import BASELINE_ROWS, PCA_ROW, RANDOM_ROW, variant_configs

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "value_encoding": "continuous"}


def objectives_script():
    return load_script(ROOT / "benchmarks" / "objectives.py", "objectives_script")


def test_the_probe_reads_labels_and_depth_that_an_embedding_holds():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 40)
    depth = rng.normal(size=120)
    holds_both = np.column_stack([np.repeat([0.0, 4.0, 8.0], 40) + rng.normal(size=120) * 0.1, depth,
                                  rng.normal(size=(120, 3))])
    scores = cross_validated_probe(holds_both, {"type": labels}, {"depth": depth})
    assert scores["type"]["accuracy"] == 1.0 and scores["type"]["silhouette"] > 0.1
    assert scores["depth_r2_depth"] > 0.99
    noise = cross_validated_probe(rng.normal(size=(120, 5)), {"type": labels}, {"depth": depth})
    assert noise["type"]["accuracy"] < 0.6 and noise["depth_r2_depth"] < 0.1
    assert abs(noise["type"]["silhouette"]) < 0.05


def test_a_variant_lays_its_entries_over_the_base_and_names_a_wrong_section(tmp_path):
    base = {"model": {"hidden_size": 16, "cell_decoder": "mvc"}, "training": {"max_steps": 3, "seed": 5}}
    model, training = variant_configs(base, {"model": {"cell_decoder": "none"}}, tmp_path, seed=2)
    assert model == {"hidden_size": 16, "cell_decoder": "none"} and training.max_steps == 3 and training.seed == 2
    with pytest.raises(ValueError, match="`model` and `training` sections only"):
        variant_configs(base, {"data": {}}, tmp_path, seed=0)


@pytest.mark.parametrize("variants", ["objectives.yaml", "objectives_simulated.yaml"])
def test_every_shipped_variant_builds_a_model_config_and_a_training_config(variants, tmp_path):
    """Each variant of the benchmark's variant files, laid over the base that file names (the script's default),
    names only options the model and training accept (a renamed option would otherwise fail only when its run
    starts)."""
    from modeling_scgrn import ScGrnConfig

    path = ROOT / "benchmarks" / "configs" / variants
    entries = yaml.safe_load(path.read_text())
    base_path = objectives_script().base_config(None, str(path), entries)
    assert base_path.exists() and base_path.parent == path.parent  # measured on a base of their own, kept beside
    base = yaml.safe_load(base_path.read_text())
    for name, variant in entries["variants"].items():
        model, training = variant_configs(base, variant, tmp_path, seed=0)
        ScGrnConfig(vocab_size=64, **model)
        assert training.seed == 0, name


def test_script_writes_every_row_beside_pca_and_an_untrained_encoder(tmp_path):
    prior = shared_data_or_skip(OMNIPATH_TABLE)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"model": TINY, "training": {
        "max_steps": 4, "per_device_batch_size": 16, "eval_steps": 4, "report_to": "none", "show_progress": False}}))
    variants = tmp_path / "variants.yaml"
    variants.write_text(yaml.safe_dump({"variants": {"decoder": {}, "no decoder, binned": {"model": {
                                                         "cell_decoder": "none", "value_encoding": "binned"}},
                                                     "contrastive": {"model": {"contrastive_weight": 1.0}},
                                                     "unused": {"training": {"mask_probability": 0.5}}}}))
    module = objectives_script()
    out = tmp_path / "out"
    module.main(["--input", "pbmc68k_reduced", "--prior", str(prior), "--config", str(config), "--variants",
                 str(variants), "--variant", "decoder", "--variant", "no decoder, binned", "--variant", "contrastive",
                 "--output_dir", str(out)])
    rows = pd.read_csv(out / "objectives.csv")
    names = ["decoder", "no decoder, binned", "contrastive"]  # binned: no gene mean + offset loss (it was min'd)
    assert list(rows["variant"]) == [PCA_ROW, *BASELINE_ROWS.values(), RANDOM_ROW, *names]
    pca, counts, knn, majority = (rows.iloc[i] for i in range(4))
    assert pca["bulk_labels_accuracy"] > 0.7 and pca["louvain_accuracy"] > 0.7  # real cells, real labels
    assert counts["bulk_labels_accuracy"] > 0.7 and knn["louvain_accuracy"] > 0.7
    assert majority["bulk_labels_accuracy"] < 0.4 < pca["bulk_labels_accuracy"]  # 240 of 700 cells in the largest type
    assert rows[["bulk_labels_accuracy", "louvain_accuracy"]].stack().between(0, 1).all()
    assert rows.loc[5:, "masked_loss"].gt(0).all() and rows.loc[5:, "best_trivial"].gt(0).all()
    markdown = (out / "objectives.md").read_text()
    assert "| decoder (1 seed) |" in markdown and f"| {PCA_ROW} | - | - |" in markdown
    assert "`louvain`: the best variant" in markdown and "PCA (" in markdown
    assert "logistic regression on the counts (" in markdown and "| majority class | - | - |" in markdown
    assert len(json.loads((out / "objectives.json").read_text())) == 8
    contrastive = json.loads((out / "contrastive" / "seed0" / "model" / "config.json").read_text())
    assert contrastive["contrastive_weight"] == 1.0  # two views of each cell trained, the term saved with the model
    assert (out / "decoder" / "seed0" / "model" / "model.safetensors").exists()
