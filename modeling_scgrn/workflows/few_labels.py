"""Few labels on real cells: the frozen pooled embeddings of pretrained scgrn models (several folders under one
name are seeds of one pretraining, averaged) beside logistic regression on the log-normalised counts, PCA +
logistic regression, kNN on the principal components and the majority class, each fitted on the same few labelled
cells per type and scored on every other cell ([`few_label_scores`]); each embedding is read by a linear probe and
by kNN, as the principal components are. Writes `few_labels.json`, `few_labels.csv`,
`few_labels.md` and `few_labels.png` (macro-F1 against labelled cells per type)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..evaluation.label_budget import COUNTS, MAJORITY, NEIGHBOURS, PROBE, few_label_scores
from ..hub.model_folder import load_pretrained
from ..model.modeling_scgrn import ScGrnModel
from ..model.tokenization_scgrn import ScGrnTokenizer
from ..tl.verbs import embed
from .objectives import log_normalised, principal_components, read_labelled_cells

BASELINES = {"logistic regression on the log-normalised counts": COUNTS,
             "PCA (50 components) + logistic regression": PROBE, "kNN (k=5) on the 50 principal components": NEIGHBOURS,
             "majority class": MAJORITY}
UNTRAINED = "untrained encoder (architecture and prior of the first model)"


def model_embeddings(folder, adata, *, untrained: bool = False) -> np.ndarray:
    """`(cells, hidden)` pooled embeddings of `adata` by the encoder saved in `folder` (its own tokenizer); with
    `untrained`, by a freshly initialised encoder of the same config and prior edges (seed 0)."""
    tokenizer = ScGrnTokenizer.from_pretrained(folder)
    model = load_pretrained(ScGrnModel, folder)
    if untrained:
        torch.manual_seed(0)
        fresh = ScGrnModel(model.config)
        fresh.grn_edges = model.grn_edges.clone()  # the stored edges as they are (a control's already drawn)
        model = fresh
    return embed(adata, model.eval(), tokenizer, copy=True).obsm["X_scgrn"]


def run_few_labels(cells, models: list[tuple[str, str]], output_dir, *, label_columns=("bulk_labels", "louvain"),
                   budgets=(3, 5, 10, 25), repeats: int = 20, seed: int = 0, untrained: bool = True) -> str:
    """Embed `cells` with each `(name, model folder)` of `models` and read every label column at each budget
    beside the baselines on the same draws; returns the markdown it writes under `output_dir`."""
    adata = read_labelled_cells(cells, label_columns)
    if not models:
        raise ValueError("give at least one pretrained model folder (--model NAME=FOLDER).")
    normalised = log_normalised(adata)
    components = principal_components(normalised, seed=seed)
    shared = dict(zip(BASELINES, (normalised.X, components, components, components)))
    embeddings = [(name, index, model_embeddings(folder, adata)) for index, (name, folder) in enumerate(models)]
    if untrained:
        embeddings.append((UNTRAINED, 0, model_embeddings(models[0][1], adata, untrained=True)))
    rows = []
    for column in label_columns:
        y = adata.obs[column].to_numpy()
        features = {name: (matrix, BASELINES[name]) for name, matrix in shared.items()}
        rows += [{"label_column": column, "model": None, **r}
                 for r in few_label_scores(features, y, budgets, repeats=repeats, seed=seed)]
        for name, index, matrix in embeddings:
            readings = {name: (matrix, PROBE), f"{name}, kNN (k=5)": (matrix, NEIGHBOURS)}
            rows += [{"label_column": column, "model": index, **r}
                     for r in few_label_scores(readings, y, budgets, repeats=repeats, seed=seed)]
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    markdown = few_labels_markdown(rows, len(adata), repeats)
    (output / "few_labels.json").write_text(json.dumps(rows, indent=2))
    _frame(rows).to_csv(output / "few_labels.csv", index=False)
    (output / "few_labels.md").write_text(markdown)
    plot_few_labels(rows, output / "few_labels.png")
    return markdown


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows)


def few_labels_markdown(rows: list[dict], cells: int, repeats: int) -> str:
    """Per label column: macro-F1 (mean +/- sd over draws and model seeds) per row and budget, then the verdict of
    the best scgrn embedding against logistic regression on the counts at each budget."""
    frame = _frame(rows)
    budgets = sorted(frame["labels_per_type"].unique())
    lines = [f"Macro-F1 on the cells left unlabelled ({cells} cells in all), {repeats} draws of the labelled cells per "
             "budget, the same draws for every row; mean +/- sd over draws (and pretraining seeds).", ""]
    for column, group in frame.groupby("label_column", sort=False):
        lines += [f"`{column}`:", "", "| features | " + " | ".join(f"{b} per type" for b in budgets) + " |",
                  "| --- |" + " --- |" * len(budgets)]
        summary = group.groupby(["features", "labels_per_type"], sort=False)["macro_f1"].agg(["mean", "std"])
        seeds = group.groupby("features", sort=False)["model"].nunique()
        for name in group["features"].unique():
            label = name if _reference(name) else f"scgrn: {name} ({seeds[name]} seed(s))"
            lines.append(f"| {label} | " + " | ".join(f"{summary.loc[(name, b), 'mean']:.3f} +/- "
                                                    f"{summary.loc[(name, b), 'std']:.3f}" for b in budgets) + " |")
        lines += ["", *_verdicts(summary, group, budgets), ""]
    return "\n".join(lines)


def _reference(name: str) -> bool:
    """A row that is no pretrained scgrn model: a baseline or the untrained encoder (either reading)."""
    return name in BASELINES or name.startswith(UNTRAINED)


def _verdicts(summary, group, budgets) -> list[str]:
    counts = next(name for name, kind in BASELINES.items() if kind == COUNTS)
    models = [n for n in group["features"].unique() if not _reference(n)]
    lines = []
    for budget in budgets:
        best = max(models, key=lambda n: summary.loc[(n, budget), "mean"])
        gap = summary.loc[(best, budget), "mean"] - summary.loc[(counts, budget), "mean"]
        verdict = "beats" if gap > 0 else "does NOT beat"
        lines.append(f"- {budget} per type: the best scgrn reading ({best}, {summary.loc[(best, budget), 'mean']:.3f}) "
                     f"{verdict} logistic regression on the counts ({summary.loc[(counts, budget), 'mean']:.3f}; "
                     f"{gap:+.3f} macro-F1).")
    return lines


def plot_few_labels(rows: list[dict], path: Path) -> None:
    """Macro-F1 against labelled cells per type, one panel per label column; baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = _frame(rows)
    columns = list(frame["label_column"].unique())
    budgets = sorted(frame["labels_per_type"].unique())
    figure, axes = plt.subplots(1, len(columns), figsize=(6.5 * len(columns), 6), squeeze=False)
    for axis, column in zip(axes[0], columns):
        group = frame[frame["label_column"] == column]
        for name in group["features"].unique():
            mean = group[group["features"] == name].groupby("labels_per_type")["macro_f1"].agg(["mean", "std"])
            style = dict(color="k", linestyle=("--", "-.", ":", (0, (1, 3)))[list(BASELINES).index(name)]) \
                if name in BASELINES else dict(linestyle=":" if _reference(name) else "-")
            axis.errorbar(mean.index, mean["mean"], yerr=mean["std"].fillna(0.0), marker="o", capsize=3,
                          label=name, **style)
        axis.set_xscale("log")
        axis.set_xticks(budgets, [str(b) for b in budgets])
        axis.minorticks_off()
        axis.set(xlabel="labelled cells per type", ylabel="macro-F1 on the other cells", title=f"`{column}`")
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=2, fontsize=7)
    figure.subplots_adjust(bottom=0.32)
    figure.savefig(path, dpi=120)
    plt.close(figure)
