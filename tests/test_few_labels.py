"""benchmarks/few_labels.py: frozen embeddings read with a few labelled cells per type, beside logistic regression
on the counts, PCA, kNN and the majority class fitted on the same cells (real pbmc68k cells, tiny models)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script

from modeling_scgrn.evaluation.label_budget import COUNTS, MAJORITY, NEIGHBOURS, PROBE, few_label_scores, labelled_draw
from modeling_scgrn.grn.attach import attach_grn, new_config
from modeling_scgrn.model.modeling_scgrn import ScGrnForMaskedExpressionModeling
from modeling_scgrn.model.tokenization_scgrn import ScGrnTokenizer
from modeling_scgrn.workflows.few_labels import BASELINES, UNTRAINED

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "value_encoding": "continuous"}


def test_a_draw_labels_the_budget_of_each_type_and_leaves_every_type_a_held_out_cell():
    labels = np.array(["a"] * 30 + ["b"] * 4 + ["c"] * 2)
    draw = labelled_draw(labels, 5, np.random.default_rng(0))
    assert sorted(np.unique(labels[draw], return_counts=True)[1]) == [1, 3, 5]  # c: 1 of 2, b: 3 of 4, a: 5
    assert np.array_equal(draw, labelled_draw(labels, 5, np.random.default_rng(0)))
    assert not np.array_equal(draw, labelled_draw(labels, 5, np.random.default_rng(1)))


def test_every_reading_is_fitted_on_the_same_labelled_cells_and_scored_on_the_others():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], [60, 30, 10])
    means = np.repeat([[0.0, 0.0], [5.0, 1.0], [10.0, -1.0]], [60, 30, 10], axis=0)
    separated = means + rng.normal(size=(100, 2)) * 0.01
    noise = rng.normal(size=(100, 2))
    features = {"separated": (separated, PROBE), "separated, kNN": (separated, NEIGHBOURS),
                "noise": (noise, COUNTS), "majority": (noise, MAJORITY)}
    rows = pd.DataFrame(few_label_scores(features, labels, [1, 3], repeats=3, seed=0))
    assert len(rows) == 2 * 3 * 4 and rows.groupby(["labels_per_type", "draw"])["labelled"].nunique().eq(1).all()
    assert set(rows.loc[rows["labels_per_type"] == 3, "labelled"]) == {9}
    by = rows.groupby("features")["macro_f1"].mean()
    assert by["separated"] == 1.0 and by["separated, kNN"] == 1.0
    assert by["noise"] < 0.7 and by["majority"] < 0.35  # one type predicted: F1 of 0 for the other two
    with pytest.raises(ValueError, match="at least 1"):
        few_label_scores(features, labels, [0])


def _model_folder(folder: Path, adata, network, seed: int) -> str:
    tokenizer = ScGrnTokenizer.from_genes(list(adata.var_names))
    torch.manual_seed(seed)
    model = ScGrnForMaskedExpressionModeling(new_config(tokenizer, **TINY))
    attach_grn(model, network, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_script_reads_seeds_of_a_model_beside_the_baselines_and_refuses_a_bare_folder(tmp_path, collectri_prior,
                                                                                       capsys):
    from modeling_scgrn.cells.reading import read_cells

    adata = read_cells("pbmc68k_reduced")
    folders = [_model_folder(tmp_path / f"m{seed}", adata, collectri_prior, seed) for seed in (0, 1)]
    module = load_script(ROOT / "benchmarks" / "few_labels.py", "few_labels_script")
    out = tmp_path / "out"
    module.main(["--input", "pbmc68k_reduced", "--model", f"tiny={folders[0]}", "--model", f"tiny={folders[1]}",
                 "--label_columns", "bulk_labels", "--budgets", "2", "5", "--repeats", "2", "--output_dir", str(out)])
    rows = pd.read_csv(out / "few_labels.csv")
    assert set(rows["features"]) == {*BASELINES, "tiny", "tiny, kNN (k=5)", UNTRAINED, f"{UNTRAINED}, kNN (k=5)"}
    assert sorted(rows.loc[rows["features"] == "tiny", "model"].unique()) == [0, 1]
    counts = rows[rows["features"] == next(iter(BASELINES))]
    assert counts["macro_f1"].mean() > 0.3 and rows["macro_f1"].between(0, 1).all()  # real cells, real labels
    markdown = (out / "few_labels.md").read_text()
    assert "| scgrn: tiny (2 seed(s)) |" in markdown and "logistic regression on the counts (" in markdown
    assert (out / "few_labels.png").stat().st_size > 0 and len(json.loads((out / "few_labels.json").read_text()))
    with pytest.raises(SystemExit) as stop:
        module.main(["--input", "pbmc68k_reduced", "--model", folders[0], "--output_dir", str(tmp_path / "bad")])
    assert stop.value.code == 2 and "write NAME=FOLDER" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        module.main(["--input", "pbmc68k_reduced", "--model", f"tiny={folders[0]}", "--label_columns", "cell_type",
                     "--output_dir", str(tmp_path / "bad")])
    assert stop.value.code == 2 and "error: the cells have no label column ['cell_type']" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
