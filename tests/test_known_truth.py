"""The known-truth benchmark's pieces (wrong priors, edge recovery, few-label subsets, frozen-embedding probes, the
labelled / pretraining split, resuming) and its --quick run."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import OMNIPATH_TABLE, shared_data_or_skip

from modeling_scgrn.bench.known_truth import (
    COUNTS,
    PROBE,
    budget_probe_rows,
    candidate_pairs,
    corrupted_network,
    edge_recovery,
    unrelated_network,
)
from modeling_scgrn.storage.folders import check_output_folder

ROOT = Path(__file__).resolve().parents[1]
TRUE = pd.DataFrame({"source": ["A", "A", "A", "B", "B", "C", "C", "C"],
                     "target": ["B", "D", "E", "F", "G", "H", "D", "F"], "sign": [1, -1, 1, 1, 1, -1, 1, 1]})
GENES = list("ABCDEFGH")


def test_corrupted_networks_remove_and_add_the_stated_shares():
    pairs = set(zip(TRUE["source"], TRUE["target"]))
    removed = corrupted_network(TRUE, GENES, removed=0.5, seed=0).edges
    assert len(removed) == 4 and set(zip(removed["source"], removed["target"])) <= pairs
    added = corrupted_network(TRUE, GENES, added=0.5, seed=0).edges
    new = set(zip(added["source"], added["target"])) - pairs
    assert len(added) == 12 and len(new) == 4
    assert all(s in {"A", "B", "C"} and s != t and t in GENES for s, t in new)
    assert corrupted_network(TRUE, GENES, removed=0.5, seed=0).edges.equals(removed)


def test_unrelated_network_is_a_real_topology_on_the_same_genes_without_true_edges(collectri_prior):
    pytest.importorskip("sergio_rs")
    prior = collectri_prior
    from modeling_scgrn.bench.simulate import simulate_cells, true_edges

    cells = simulate_cells(prior, n_genes=40, n_cells=30, n_cell_types=2, seed=3)
    truth = true_edges(cells)
    other = unrelated_network(prior, truth, cells.var_names, seed=0).edges
    assert len(other) > 0 and set(other["source"]) | set(other["target"]) <= set(cells.var_names)
    assert not set(zip(other["source"], other["target"])) & set(zip(truth["source"], truth["target"]))


def test_edge_recovery_scores_perfect_and_random_rankings():
    pairs = candidate_pairs(GENES, {"A", "B", "C"})
    assert len(pairs) == 3 * 7
    truth = set(zip(TRUE["source"], TRUE["target"]))
    perfect = pairs.assign(score=[float(p in truth) for p in zip(pairs["regulator"], pairs["target"])])
    shuffled = pairs.assign(score=np.random.default_rng(0).random(len(pairs)))
    result = edge_recovery(perfect.assign(noise=shuffled["score"]), TRUE, ["score", "noise"])
    assert result["true_pairs"] == 8 and result["random_auprc"] == pytest.approx(8 / 21)
    assert result["score"] == {"auroc": 1.0, "auprc": 1.0}
    assert 0.0 < result["noise"]["auroc"] < 1.0


def test_labelled_subset_keeps_at_most_n_cells_per_label_in_order():
    import datasets

    from modeling_scgrn.workflows.finetune import labelled_subset

    split = datasets.Dataset.from_dict({"cell_type": list("aaaaabbbc"), "row": list(range(9))})
    subset = labelled_subset(split, "cell_type", 2, seed=0)
    assert pd.Series(subset["cell_type"]).value_counts().to_dict() == {"a": 2, "b": 2, "c": 1}
    assert subset["row"] == sorted(subset["row"])
    assert labelled_subset(split, "cell_type", 2, seed=0)["row"] == subset["row"]


def test_frozen_features_are_read_with_the_cells_finetuning_gets():
    import datasets

    from modeling_scgrn.workflows.finetune import labelled_subset

    rng = np.random.default_rng(0)
    train_labels, test_labels = np.repeat(list("abc"), 40), np.repeat(list("abc"), 10)
    separated = {label: 5.0 * i for i, label in enumerate("abc")}
    train = np.stack([np.full(2, separated[t]) for t in train_labels]) + rng.normal(0, 0.3, (120, 2))
    test = np.stack([np.full(2, separated[t]) for t in test_labels]) + rng.normal(0, 0.3, (30, 2))
    features = {"informative": (train, test, PROBE), "noise": (rng.normal(size=(120, 2)), rng.normal(size=(30, 2)),
                                                               COUNTS)}
    rows = budget_probe_rows(features, train_labels, test_labels, (3, None), seed=4)
    by = {(r["features"], r["labels_per_type"]): r for r in rows}
    assert by[("informative", 3)]["labelled"] == 9 and by[("informative", "all")]["labelled"] == 120
    assert by[("informative", 3)]["macro_f1"] == 1.0 and by[("informative", "all")]["accuracy"] == 1.0
    assert by[("noise", "all")]["macro_f1"] < 0.7
    # the same cells as finetuning's labelled_subset with that budget and seed: every other training cell is moved
    # to the next type's place, so a probe fitted on any of them would name every test cell wrongly
    split = datasets.Dataset.from_dict({"cell_type": list(train_labels), "row": list(range(120))})
    chosen = labelled_subset(split, "cell_type", 3, seed=4)["row"]
    others = np.setdiff1d(np.arange(120), chosen)
    moved = train.copy()
    moved[others] = moved[others] + 5.0 * np.where(train_labels[others] == "c", -2, 1)[:, None]
    read = budget_probe_rows({"moved": (moved, test, PROBE)}, train_labels, test_labels, (3, None), seed=4)
    assert read[0]["macro_f1"] == 1.0 and read[1]["macro_f1"] < 0.5


def test_labelled_and_pretraining_cells_are_drawn_apart_with_every_type():
    import anndata

    from modeling_scgrn.workflows.known_truth import split_corpus

    cells = anndata.AnnData(np.zeros((90, 2), dtype=np.float32),
                            obs=pd.DataFrame({"cell_type": np.repeat(list("abc"), 30)},
                                             index=[f"c{i}" for i in range(90)]))
    labelled, unlabelled = split_corpus(cells, 30, 50, seed=1)
    assert labelled.n_obs == 30 and unlabelled.n_obs == 50
    assert not set(labelled.obs_names) & set(unlabelled.obs_names)
    assert set(labelled.obs["cell_type"]) == set(unlabelled.obs["cell_type"]) == set("abc")
    assert list(split_corpus(cells, 30, 50, seed=1)[0].obs_names) == list(labelled.obs_names)
    assert split_corpus(cells, 30, 0)[0] is cells and split_corpus(cells, 30, 0)[1] is None
    with pytest.raises(ValueError, match="90 cells cannot give 30 labelled and 61 pretraining"):
        split_corpus(cells, 30, 61)


def test_a_resumed_run_keeps_finished_units_and_refuses_when_their_models_are_gone(tmp_path):
    from modeling_scgrn.workflows.known_truth import _resumed

    progress = {"pretraining": [{"arm": "grn", "seed": 0}], "finetuning": [], "probes": [], "embeddings": [],
                "done": [[0, "grn"]]}
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    assert _resumed(tmp_path, False)["done"] == []
    with pytest.raises(ValueError, match=re.escape("the pretrained models of [[0, 'grn']] are gone")):
        _resumed(tmp_path, True)
    (tmp_path / "runs" / "grn_seed0" / "pretrain" / "model").mkdir(parents=True)
    assert _resumed(tmp_path, True) == progress
    assert _resumed(tmp_path / "elsewhere", True)["done"] == []


def test_quick_benchmark_writes_tables_with_baselines_and_pictures(tmp_path):
    pytest.importorskip("sergio_rs")
    output = tmp_path / "known_truth"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "known_truth.py"), "--prior",
                             str(shared_data_or_skip(OMNIPATH_TABLE)), "--output_dir", str(output), "--quick"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("known_truth.md", "known_truth.json", "label_efficiency.png", "pretraining.png"):
        assert (output / name).stat().st_size > 0
    results = json.loads((output / "known_truth.json").read_text())
    assert {row["arm"] for row in results["pretraining"]} == {"grn", "dense", "random", "grn_dense_last",
                                                              "50% removed", "unrelated"}
    assert all(row["regulated_loss"] is not None for row in results["pretraining"])
    assert {row["start"] for row in results["finetuning"]} == {"pretrained", "scratch"}
    markdown = (output / "known_truth.md").read_text()
    for row in ("logistic_regression (baseline)", "knn (baseline)", "majority_class (baseline)", "| trees |",
                "Regulation check: true edges", "| PCA of every training cell, 50 components (baseline) | 1 |",
                "| grn, pretrained embedding | 1 |", "### Embedding metrics by cell type"):
        assert row in markdown
    # pretrained on 300 further cells, apart from the 600 labelled ones; every pretrained arm read frozen
    assert results["pretraining_cells"] == 300 and results["cells"] == 600
    assert {row["features"] for row in results["probes"]} >= {f"{arm}, pretrained embedding" for arm in
                                                              ("grn", "dense", "random", "unrelated")}
    assert all(0.0 <= row["silhouette"] + 1 <= 2 and 0.0 <= row["leiden_nmi"] <= 1 for row in results["embeddings"])
    assert 0.0 <= results["edge_recovery"]["pearson"]["auroc"] <= 1.0
    check_output_folder(output, resume=True, task="known_truth")  # `--resume` recognises the folder as this run's


def test_a_typo_in_an_arm_or_a_repeated_seed_is_refused_before_anything_is_simulated(tmp_path, collectri_prior):
    from modeling_scgrn.workflows.known_truth import run_known_truth

    for options, words in (({"arms": ("grm",)}, "unknown arm(s) ['grm']"),
                           ({"single_seed_arms": ("60% removed",)}, "unknown arm(s) ['60% removed']"),
                           ({"seeds": (0, 0)}, "each once"), ({"budgets": (0,)}, "at least 1 cell"),
                           ({"finetuning": {"gene_dropout": 1.5}}, "gene_dropout=1.5"),
                           ({"pretraining": {"mask_probability": 0.0}}, "mask_probability=0.0")):
        with pytest.raises(ValueError, match=re.escape(words)):
            run_known_truth(collectri_prior, tmp_path / "out", n_genes=30, n_cells=50, **options)
    assert not (tmp_path / "out").exists()


def test_a_pretraining_config_gives_the_arms_its_objective_not_its_budget(tmp_path):
    from conftest import load_script

    script = load_script(ROOT / "benchmarks" / "known_truth.py", "known_truth_script")
    shipped = ROOT / "pretrain" / "configs" / "pbmc68k.yaml"
    args = script.parse_arguments(["--prior", "p", "--output_dir", "o", "--pretrain_steps", "300",
                                   "--pretrain_config", str(shipped)])
    chosen = script.options(args)
    # the shipped objective: detection decoder, token head at 0.1, LayerNorm, mean pooling, constant rate
    assert {k: chosen["model_options"][k] for k in ("detection_weight", "token_loss_weight", "embedding_layer_norm",
                                                    "pooling", "cell_decoder", "contrastive_weight")} == {
        "detection_weight": 1.0, "token_loss_weight": 0.1, "embedding_layer_norm": True, "pooling": "mean",
        "cell_decoder": "none", "contrastive_weight": 0.0}
    assert chosen["pretraining"]["min_learning_rate_ratio"] == 1.0 and chosen["pretraining"]["view_gene_dropout"] == 0.5
    # the benchmark's budget stays: 300 steps, not the config's 120 epochs; its seeds, not the config's
    assert chosen["pretraining"]["max_steps"] == 300 and "num_epochs" not in chosen["pretraining"]
    assert "seed" not in chosen["pretraining"]
    without = script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o"]))
    assert "model_options" not in without
    # --set lays one option over the config's (or over the benchmark's own objective, without a config)
    over = script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o", "--pretrain_config",
                                                  str(shipped), "--set", "model.all_attend_cls=false"]))
    assert over["model_options"]["all_attend_cls"] is False and over["model_options"]["detection_weight"] == 1.0
    alone = script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o", "--set",
                                                   "training.mask_probability=0.3"]))
    assert alone["model_options"] == {} and alone["pretraining"]["mask_probability"] == 0.3
    odd = tmp_path / "odd.yaml"
    odd.write_text("model: {hidden_size: 64}\ntraining: {layer_decay: 0.8}\n")
    with pytest.raises(ValueError, match=re.escape("training option(s) ['layer_decay']")):
        script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o", "--pretrain_config", str(odd)]))


def test_a_finetuning_config_gives_every_start_its_recipe_not_its_budget(tmp_path):
    from conftest import load_script

    script = load_script(ROOT / "benchmarks" / "known_truth.py", "known_truth_script")
    shipped = ROOT / "finetune" / "configs" / "pbmc68k_pretrained.yaml"
    chosen = script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o", "--finetune_steps", "200",
                                                    "--finetune_config", str(shipped), "--finetune_set",
                                                    "training.freeze_encoder=true", "--finetune_set",
                                                    "model.classifier_mixup_alpha=0.4"]))
    # the shipped recipe (gene dropout 0.3, class weights, warmup 0.1) and the classifier's dropout, with a training
    # option and the classifier's mixup laid over it; the benchmark's 200 steps, not the config's 1,000, and neither
    # its batch size nor its seed
    assert chosen["head_options"] == {"classifier_dropout": 0.1, "classifier_mixup_alpha": 0.4}
    recipe = chosen["finetuning"]
    assert (recipe["gene_dropout"], recipe["warmup_ratio"], recipe["class_weighting"]) == (0.3, 0.1, True)
    assert recipe["freeze_encoder"] is True and recipe["max_steps"] == 200
    assert not {"per_device_batch_size", "seed", "eval_steps"} & set(recipe)
    assert "head_options" not in script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o"]))
    # reinit_layers is refused too: the scratch arms get the recipe, and from scratch every layer is new
    for text, words in (("model: {hidden_size: 32}\n", "model option(s) ['hidden_size']"),
                        ("training: {mask_probability: 0.3}\n", "training option(s) ['mask_probability']"),
                        ("training: {reinit_layers: 1}\n", "training option(s) ['reinit_layers']")):
        odd = tmp_path / "odd.yaml"
        odd.write_text(text)
        with pytest.raises(ValueError, match=re.escape(words)):
            script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o", "--finetune_config",
                                                   str(odd)]))
    with pytest.raises(ValueError, match="is not a file"):
        script.options(script.parse_arguments(["--prior", "p", "--output_dir", "o", "--finetune_config", "nope.yaml"]))
