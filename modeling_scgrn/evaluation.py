"""How well a model does, and pictures of it: masked-expression and classification metrics, embedding metrics,
and the PNGs a run writes (training curves, confusion matrix, UMAP, prior-vs-controls bars)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch


def plot_training_curves(history: dict, path: Path) -> None:
    """PNG of the training loss and every numeric evaluation metric against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_keys = sorted({k for e in history["eval"] for k, v in e.items() if k != "step" and isinstance(v, (int, float))})
    fig, axes = plt.subplots(1, 1 + bool(eval_keys), figsize=(5 + 5 * bool(eval_keys), 4), squeeze=False)
    axes[0, 0].plot(history["step"], history["loss"], marker=".")
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="training loss")
    if eval_keys:
        for key in eval_keys:
            axes[0, 1].plot([e["step"] for e in history["eval"]], [e.get(key) for e in history["eval"]], marker="o", label=key)
        axes[0, 1].set(xlabel="step", title="evaluation")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predict_batches(model, dataset, collator, batch_size: int = 64, device=None):
    """Yield (batch, model output) over a dataset, in order, without gradients."""
    device = device or next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            yield batch, model(**batch)


def masked_expression_metrics(model, dataset, collator, gene_means: torch.Tensor, batch_size: int = 64) -> dict:
    """Masked-value MSE of the model vs predicting each gene's training mean, and their Pearson r, on `dataset`.

    Values are compared in the model's own unit: expression bins (binned encoding: the expected bin under the
    predicted distribution) or log1p values (continuous). `gene_means` is `(vocab_size,)` in that unit."""
    predicted, truth, baseline, losses = [], [], [], []
    binned = model.config.value_encoding == "binned"
    for batch, output in predict_batches(model, dataset, collator, batch_size):
        labels = batch["labels"]
        scored = labels != -100 if binned else ~torch.isnan(labels)
        if binned:
            bins = torch.arange(output.logits.shape[-1], device=labels.device, dtype=torch.float32)
            expected = (output.logits.float().softmax(-1) * bins).sum(-1)
        else:
            expected = output.logits.float()
        predicted.append(expected[scored].cpu())
        truth.append(labels[scored].float().cpu())
        baseline.append(gene_means.to(labels.device)[batch["input_ids"][scored]].cpu())
        losses.append(float(output.loss))
    predicted, truth, baseline = torch.cat(predicted), torch.cat(truth), torch.cat(baseline)
    return {
        "masked_loss": float(np.mean(losses)),
        "masked_mse": float(((predicted - truth) ** 2).mean()),
        "gene_mean_mse": float(((baseline - truth) ** 2).mean()),
        "pearson_r": float(np.corrcoef(predicted.numpy(), truth.numpy())[0, 1]),
        "masked_values": int(truth.numel()),
    }


def gene_mean_values(dataset, vocab_size: int, value_encoding: str) -> torch.Tensor:
    """Per-gene mean of the encoded value over a tokenized dataset (the baseline of masked-value prediction)."""
    column = "expression_bins" if value_encoding == "binned" else "expression_values"
    sums = np.zeros(vocab_size)
    counts = np.zeros(vocab_size)
    for ids, values in zip(dataset["input_ids"], dataset[column]):
        ids, values = np.asarray(ids[1:]), np.asarray(values[1:], dtype=np.float64)
        np.add.at(sums, ids, values)
        np.add.at(counts, ids, 1)
    return torch.tensor(np.where(counts > 0, sums / np.maximum(counts, 1), sums.sum() / max(counts.sum(), 1)), dtype=torch.float32)


def classification_metrics(model, dataset, collator, batch_size: int = 64) -> dict:
    """Accuracy, macro-F1, per-class report and confusion matrix of a cell classifier on a labelled dataset."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    truth, predicted, embeddings = [], [], []
    for batch, output in predict_batches(model, dataset, collator, batch_size):
        truth.append(batch["labels"].cpu())
        predicted.append(output.logits.argmax(-1).cpu())
        embeddings.append(output.cell_embeddings.float().cpu())
    truth, predicted = torch.cat(truth).numpy(), torch.cat(predicted).numpy()
    labels = list(range(model.config.num_labels))
    names = [model.config.id2label[i] for i in labels]
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": classification_report(
            truth, predicted, labels=labels, target_names=names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "embeddings": torch.cat(embeddings).numpy(),
        "true_labels": [names[i] for i in truth],
    }


def embedding_metrics(embeddings: np.ndarray, labels, *, seed: int = 0, resolution: float = 1.0) -> dict:
    """How well cell embeddings separate the labels: silhouette by label (cosine), and ARI/NMI between Leiden
    clusters of the embeddings' kNN graph (scanpy) and the labels; where scib-metrics is installed, also its
    rescaled label silhouette and k-means NMI/ARI (`scib_*`)."""
    import anndata
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    labels = np.asarray(labels).astype(str)
    if len(np.unique(labels)) < 2 or len(labels) < 10:
        raise ValueError("embedding metrics need at least 10 cells of at least 2 labels.")
    adata = anndata.AnnData(np.zeros((len(labels), 1), dtype=np.float32))
    adata.obsm["X_scgrn"] = embeddings
    sc.pp.neighbors(adata, use_rep="X_scgrn", n_neighbors=min(15, len(labels) - 1), random_state=seed)
    sc.tl.leiden(adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    clusters = adata.obs["leiden"].astype(str).to_numpy()
    metrics = {
        "silhouette": float(silhouette_score(embeddings, labels, metric="cosine")),
        "leiden_ari": float(adjusted_rand_score(labels, clusters)),
        "leiden_nmi": float(normalized_mutual_info_score(labels, clusters)),
        "leiden_clusters": int(len(np.unique(clusters))),
    }
    if importlib.util.find_spec("scib_metrics") is None:  # optional: pip install "scgrn[scib]" (pulls jax)
        return metrics
    import scib_metrics

    embeddings = np.asarray(embeddings, dtype=np.float32)
    metrics["scib_silhouette_label"] = float(scib_metrics.silhouette_label(embeddings, labels))
    kmeans = scib_metrics.nmi_ari_cluster_labels_kmeans(embeddings, labels)
    metrics["scib_kmeans_nmi"], metrics["scib_kmeans_ari"] = float(kmeans["nmi"]), float(kmeans["ari"])
    return metrics


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
    modes = list(dict.fromkeys(table["grn_mode"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics):
        for x, mode in enumerate(modes):
            values = table.loc[table["grn_mode"] == mode, metric].to_numpy()
            ax.bar(x, values.mean(), color=f"C{x}", alpha=0.6)
            ax.scatter(np.full(values.size, x), values, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(modes)), modes, rotation=30)
        ax.set_title(metric.removeprefix("test_"))
    fig.suptitle("prior (grn) vs unconstrained (dense) vs sparsity-matched controls; dots are seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COMPARED_METRICS = ("test_accuracy", "test_macro_f1", "test_silhouette", "test_leiden_ari", "test_leiden_nmi")
