"""The PNGs a run writes: training curves, confusion matrix, UMAP, prior-vs-controls bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _metric_groups(evaluations: list[dict]) -> tuple[list[str], list[str]]:
    """The evaluation keys worth a curve: losses (names with "loss" or "mse"), and scores (every other number that
    stays within [-1, 1]: accuracies, F1, R^2, Pearson r). Counts and flags are left out: on a shared axis a count of
    12,000 masked values flattens every other curve."""
    numeric = sorted({k for e in evaluations for k, v in e.items()
                      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    losses = [k for k in numeric if "loss" in k or "mse" in k]
    scores = [k for k in numeric if k not in losses and
              all(-1 <= e[k] <= 1 for e in evaluations if isinstance(e.get(k), (int, float)))]
    return losses, scores


def plot_training_curves(history: dict, path: Path) -> None:
    """PNG of the training loss, the evaluation losses (with the trivial predictors' beside the model's) and the
    evaluation scores against the step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in zip(("evaluation losses", "evaluation scores"), _metric_groups(history["eval"])) if g[1]]
    fig, axes = plt.subplots(1, 1 + len(groups), figsize=(5 + 5 * len(groups), 4), squeeze=False)
    axes[0, 0].plot(history["step"], history["loss"], marker=".")
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="training loss")
    for axis, (title, keys) in zip(axes[0, 1:], groups):
        for key in keys:
            points = [(e["step"], e[key]) for e in history["eval"] if key in e]
            axis.plot(*zip(*points), marker="o", label=key)
        axis.set(xlabel="step", title=title)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_umap(embeddings: np.ndarray, labels, path, *, title: str = "cell embeddings", seed: int = 0) -> None:
    """PNG of a UMAP of the embeddings coloured by label (scanpy)."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    adata = anndata.AnnData(np.zeros((len(labels), 1), dtype=np.float32))
    adata.obsm["X_scgrn"] = embeddings
    adata.obs["label"] = pd.Categorical(np.asarray(labels).astype(str))
    sc.pp.neighbors(adata, use_rep="X_scgrn", n_neighbors=min(15, len(labels) - 1), random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sc.pl.umap(adata, color="label", ax=ax, show=False, title=title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion_matrix(matrix, classes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="held-out confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in COMPARED_METRICS]
    arms = table["arm"] if "arm" in table else "scratch"
    groups = list(dict.fromkeys(zip(table["grn_mode"], arms if not isinstance(arms, str) else [arms] * len(table))))
    keys = [f"{mode}" if arm == "scratch" else f"{mode} (pretrained)" for mode, arm in groups]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics):
        for x, (mode, arm) in enumerate(groups):
            chosen = (table["grn_mode"] == mode) & ((table["arm"] == arm) if "arm" in table else True)
            values = table.loc[chosen, metric].to_numpy()
            ax.bar(x, values.mean(), color=f"C{x}", alpha=0.6)
            ax.scatter(np.full(values.size, x), values, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(groups)), keys, rotation=30, ha="right")
        name = metric.removeprefix("test_")
        if "baselines" in table and name in ("accuracy", "macro_f1"):  # the same held-out cells for every run
            for style, baseline in (("--", "logistic_regression"), (":", "majority_class")):
                ax.axhline(table["baselines"].iloc[0][baseline][name], color="k", linestyle=style, linewidth=1,
                           label=baseline.replace("_", " "))
            ax.legend(fontsize=6, loc="lower right")
        ax.set_title(metric.removeprefix("test_"))
    fig.suptitle("prior (grn) vs unconstrained (dense) vs controls; dots are seeds, lines are baselines on the same cells")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COMPARED_METRICS = ("test_accuracy", "test_macro_f1", "test_silhouette", "test_leiden_ari", "test_leiden_nmi")
