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


def masked_expression_metrics(model, dataset, collator, statistics: dict, batch_size: int = 64,
                              regulation: torch.Tensor | None = None) -> dict:
    """The model's masked-value loss on `dataset`, beside trivial predictors on the same masked tokens and in the
    loss's own units (cross-entropy over bins for binned encoding, squared error of log1p values for continuous):

    - `gene_mean`: each gene's training mean (binned: its training bin distribution);
    - `gene_mean_cell_offset`: the gene's mean plus how far the cell's unmasked genes sit above their means (binned:
      squared error of the expected bin only, since it gives no distribution);
    - `cell_value_distribution`: the mean of the cell's unmasked values (binned: the distribution of its unmasked
      bins).

    Distributions are smoothed by one pseudo-observation spread over the bins. `statistics` comes from
    [`gene_statistics`] on the training split. Also the squared error of each prediction (binned: of the expected
    bin), the model's Pearson r, and `beats_every_baseline`.

    With `regulation`, a `(vocab_size, vocab_size)` boolean matrix of known regulator -> target edges (by token id),
    `regulated_targets` repeats the model's and the predictors' losses on the masked tokens whose gene has a
    regulator among the cell's visible genes: where a GRN prior should help if it helps anywhere."""
    binned = model.config.value_encoding == "binned"
    parts = {name: {"loss": [], "mse": []} for name in ("scgrn", *MASKED_BASELINES)}
    truth_all, predicted_all, flags = [], [], []
    for batch, output in predict_batches(model, dataset, collator, batch_size):
        for name, (loss, squared, truth, predicted) in _masked_batch_scores(batch, output, statistics, binned).items():
            parts[name]["loss"].append(loss)
            parts[name]["mse"].append(squared)
            if name == "scgrn":
                truth_all.append(truth)
                predicted_all.append(predicted)
        if regulation is not None:
            flags.append(_regulated_masked_tokens(batch, regulation, binned).cpu())
    truth, predicted = torch.cat(truth_all), torch.cat(predicted_all)

    def mean_of(values, where=None):
        values = torch.cat(values)
        return float(values.mean() if where is None else values[where].mean())

    summary = {name: {k: (mean_of(v) if v and v[0] is not None else None) for k, v in part.items()}
               for name, part in parts.items()}
    losses = {name: entry["loss"] for name, entry in summary.items() if entry["loss"] is not None}
    regulated = None
    if regulation is not None:
        where = torch.cat(flags)
        regulated = {"masked_values": int(where.sum()), **{
            name: {k: (mean_of(v, where) if v and v[0] is not None and where.any() else None) for k, v in part.items()}
            for name, part in parts.items()}}
    return {
        "loss_name": "cross_entropy" if binned else "mse",
        "masked_loss": summary["scgrn"]["loss"],
        "masked_mse": summary["scgrn"]["mse"],
        "gene_mean_mse": summary["gene_mean"]["mse"],
        "pearson_r": float(np.corrcoef(predicted.numpy(), truth.numpy())[0, 1]),
        "masked_values": int(truth.numel()),
        "baselines": {name: summary[name] for name in MASKED_BASELINES},
        "beats_every_baseline": all(losses["scgrn"] < v for k, v in losses.items() if k != "scgrn")
        and all(summary["scgrn"]["mse"] < summary[k]["mse"] for k in MASKED_BASELINES),
        "regulated_targets": regulated,
    }


def _regulated_masked_tokens(batch, regulation: torch.Tensor, binned: bool) -> torch.Tensor:
    """Per masked token (in `_masked_batch_scores`' order): does a visible gene of the cell regulate its gene?"""
    labels, ids = batch["labels"], batch["input_ids"]
    scored = labels != -100 if binned else ~torch.isnan(labels)
    visible = batch["attention_mask"].bool() & ~scored
    visible[:, 0] = False
    regulation = regulation.to(ids.device)
    pairs = regulation[ids[:, :, None], ids[:, None, :]] & visible[:, :, None]  # (cell, regulator, target)
    return pairs.any(1)[scored]


MASKED_BASELINES = ("gene_mean", "gene_mean_cell_offset", "cell_value_distribution")


def _masked_batch_scores(batch, output, statistics: dict, binned: bool) -> dict:
    """Per masked token: (loss, squared error, truth, prediction) of the model and of each trivial predictor."""
    labels, ids = batch["labels"], batch["input_ids"]
    scored = labels != -100 if binned else ~torch.isnan(labels)
    visible = batch["attention_mask"].bool() & ~scored
    visible[:, 0] = False  # [CLS] carries no value
    values = (batch["expression_bins"] if binned else batch["expression_values"]).float()
    means = statistics["means"].to(ids.device)
    gene_mean = means[ids]
    counted = visible.sum(1).clamp(min=1)
    offset = ((values - gene_mean) * visible).sum(1) / counted
    cell_mean = (values * visible).sum(1) / counted
    truth = labels[scored].float()
    cells = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)[scored]
    predictions = {"gene_mean": gene_mean[scored], "gene_mean_cell_offset": gene_mean[scored] + offset[cells],
                   "cell_value_distribution": cell_mean[cells]}
    logits = output.logits.float()
    if binned:
        bins = torch.arange(logits.shape[-1], device=ids.device, dtype=torch.float32)
        predicted = (logits.softmax(-1) * bins).sum(-1)[scored]
        model_loss = torch.nn.functional.cross_entropy(logits[scored], labels[scored].long(), reduction="none")
        histograms = statistics["histograms"].to(ids.device)
        cell_counts = torch.zeros(ids.shape[0], logits.shape[-1], device=ids.device)
        cell_counts.scatter_add_(1, values.long().clamp(max=logits.shape[-1] - 1), visible.float())
        losses = {"gene_mean": -torch.log(histograms[ids[scored], labels[scored].long()]),
                  "gene_mean_cell_offset": None,
                  "cell_value_distribution": -torch.log(_smoothed(cell_counts)[cells, labels[scored].long()])}
    else:
        predicted = logits[scored]
        model_loss = (predicted - truth) ** 2
        losses = {name: (prediction - truth) ** 2 for name, prediction in predictions.items()}
    scores = {"scgrn": (model_loss.cpu(), ((predicted - truth) ** 2).cpu(), truth.cpu(), predicted.cpu())}
    for name, prediction in predictions.items():
        loss = losses[name]
        scores[name] = (None if loss is None else loss.cpu(), ((prediction - truth) ** 2).cpu(), None, None)
    return scores


def _smoothed(counts: torch.Tensor) -> torch.Tensor:
    """Bin distributions from `(..., n_bins + 1)` counts over bins 1..n_bins (bin 0 holds no value), with one
    pseudo-observation spread evenly over those bins."""
    counts = counts.clone()
    counts[..., 0] = 0
    bins = counts.shape[-1] - 1
    counts[..., 1:] += 1.0 / bins
    return counts / counts.sum(-1, keepdim=True)


def gene_statistics(dataset, vocab_size: int, value_encoding: str, n_bins: int) -> dict:
    """Per-gene statistics of a tokenized training split, for the trivial masked-value predictors: `means`
    `(vocab_size,)` of the encoded value (bins or log1p values; genes never seen get the overall mean) and, for
    binned encoding, `histograms` `(vocab_size, n_bins + 1)` smoothed bin distributions."""
    column = "expression_bins" if value_encoding == "binned" else "expression_values"
    sums, counts = np.zeros(vocab_size), np.zeros(vocab_size)
    histograms = np.zeros((vocab_size, n_bins + 1)) if value_encoding == "binned" else None
    for ids, values in zip(dataset["input_ids"], dataset[column]):
        ids, values = np.asarray(ids[1:]), np.asarray(values[1:], dtype=np.float64)
        np.add.at(sums, ids, values)
        np.add.at(counts, ids, 1)
        if histograms is not None:
            np.add.at(histograms, (ids, values.astype(np.int64)), 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), sums.sum() / max(counts.sum(), 1))
    statistics = {"means": torch.tensor(means, dtype=torch.float32)}
    if histograms is not None:
        statistics["histograms"] = _smoothed(torch.tensor(histograms, dtype=torch.float32))
    return statistics


def masked_baseline_table(metrics: dict) -> str:
    """The model's masked-value loss beside the trivial predictors' (markdown), with the verdict in words."""
    unit = "cross-entropy" if metrics["loss_name"] == "cross_entropy" else "squared error"
    lines = [f"| predictor (masked validation values: {metrics['masked_values']}) | loss ({unit}) | squared error |",
             "| --- | --- | --- |",
             f"| scgrn | {metrics['masked_loss']:.4f} | {metrics['masked_mse']:.4f} |"]
    for name, entry in metrics["baselines"].items():
        loss = "-" if entry["loss"] is None else f"{entry['loss']:.4f}"
        lines.append(f"| {name} | {loss} | {entry['mse']:.4f} |")
    margins = []
    for key, label in (("loss", "loss"), ("mse", "squared error")):
        best = min((e[key], n) for n, e in metrics["baselines"].items() if e[key] is not None)
        ours = metrics["masked_loss" if key == "loss" else "masked_mse"]
        margins.append(f"{label} {ours:.4f} against {best[0]:.4f} for {best[1]} ({1 - ours / best[0]:+.1%})")
    verdict = ("scgrn beats every trivial predictor: " if metrics["beats_every_baseline"] else
               "scgrn does NOT beat every trivial predictor (pretraining has learnt little beyond per-gene and "
               "per-cell averages here): ") + "; ".join(margins) + "."
    return "\n".join(lines) + "\n\n" + verdict + "\n"


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


def cells_by_genes(dataset, vocab_size: int, column: str = "expression_values"):
    """The tokenized values of a split as a sparse `(cells, vocab_size)` matrix (log1p-normalised values by
    default): exactly what the model was given, so baselines see the same genes of the same cells."""
    import scipy.sparse as sp

    ids, values = dataset["input_ids"], dataset[column]
    rows = np.concatenate([np.full(len(cell) - 1, row) for row, cell in enumerate(ids)])
    columns = np.concatenate([np.asarray(cell[1:], dtype=np.int64) for cell in ids])  # [CLS] first
    data = np.concatenate([np.asarray(cell[1:], dtype=np.float32) for cell in values])
    return sp.csr_matrix((data, (rows, columns)), shape=(len(ids), vocab_size))


def label_scores(truth, predicted, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and the per-class report of predicted labels (names) against true ones."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class": classification_report(truth, predicted, labels=classes, output_dict=True, zero_division=0),
    }


CLASSIFICATION_BASELINES = ("logistic_regression", "pca_logistic_regression", "knn", "majority_class")


def classification_baselines(train, test, label_column: str, vocab_size: int, *, seed: int = 0,
                             n_components: int = 50, neighbors: int = 5) -> dict:
    """scikit-learn's standard answers on the same cells and genes the model saw: logistic regression on the
    log1p-normalised values, logistic regression and kNN on their first `n_components` principal components, and
    the majority class; each fitted on `train` and scored on `test` ([`label_scores`])."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    train_x, test_x = cells_by_genes(train, vocab_size), cells_by_genes(test, vocab_size)
    train_y, test_y = np.asarray(train[label_column]).astype(str), np.asarray(test[label_column]).astype(str)
    classes = sorted(set(train_y))
    components = min(n_components, train_x.shape[0] - 1, train_x.shape[1])
    pca = PCA(components, random_state=seed).fit(train_x.toarray())
    train_pc, test_pc = pca.transform(train_x.toarray()), pca.transform(test_x.toarray())
    fitted = {
        "logistic_regression": LogisticRegression(max_iter=3000).fit(train_x, train_y).predict(test_x),
        "pca_logistic_regression": LogisticRegression(max_iter=3000).fit(train_pc, train_y).predict(test_pc),
        "knn": KNeighborsClassifier(min(neighbors, len(train_y))).fit(train_pc, train_y).predict(test_pc),
        "majority_class": np.full(len(test_y), max(classes, key=list(train_y).count)),
    }
    return {name: label_scores(test_y, predicted, classes) for name, predicted in fitted.items()}


def classification_table(scgrn: dict, baselines: dict) -> str:
    """scgrn's held-out accuracy and macro-F1 beside each baseline's (markdown), with the verdict in words."""
    lines = ["| model (same held-out cells) | accuracy | macro-F1 |", "| --- | --- | --- |",
             f"| scgrn | {scgrn['accuracy']:.3f} | {scgrn['macro_f1']:.3f} |"]
    lines += [f"| {name} | {entry['accuracy']:.3f} | {entry['macro_f1']:.3f} |" for name, entry in baselines.items()]
    best = max(baselines, key=lambda name: baselines[name]["accuracy"])
    gap = scgrn["accuracy"] - baselines[best]["accuracy"]
    verdict = (f"scgrn matches or beats every baseline ({gap:+.3f} accuracy against {best})." if gap >= 0 else
               f"scgrn does NOT beat {best}: {scgrn['accuracy']:.3f} against {baselines[best]['accuracy']:.3f} "
               f"accuracy ({gap:+.3f}).")
    return "\n".join(lines) + "\n\n" + verdict + "\n"


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
