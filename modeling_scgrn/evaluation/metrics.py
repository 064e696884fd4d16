"""How well a model does: masked-expression metrics beside their trivial predictors, classification metrics, and
embedding metrics (silhouette, Leiden ARI/NMI, scib-metrics where installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from .inference import run_batches


def predict_batches(model, dataset, collator, batch_size: int = 64, device=None):
    """Yield (batch, model output) over a tokenized dataset, in order (`run_batches` over a DataLoader)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    return run_batches(model, loader, device=device)


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
    bin), the model's Pearson r, `beats_every_baseline`, and `token_head_trained` (False when
    `model.token_loss_weight` is 0: nothing trained the head these values come from).

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
        "token_head_trained": model.config.token_loss_weight > 0,
    }


def detection_metrics(model, dataset, collator, statistics: dict, batch_size: int = 64) -> dict:
    """A gene-detection decoder's binary cross-entropy on `dataset` (over the panel genes each cell's input does
    not show, with `collator` leaving genes out as in training) beside two trivial predictors on the same cells and
    genes, from the training cells' `gene_statistics`: each gene's detection share (`gene_share`) and its share
    among training cells of the cell's depth (`gene_share_at_depth`: the decoder is given the cell's log gene count,
    so this is the one it must beat to have learnt which genes, not how many), each turned by
    [`detected_given_not_shown`] into the chance that a gene the input does not show is detected. Returns
    `detection` (None when no batch had a gene to score) and the losses flat, for the trackers."""
    names = ("scgrn", "gene_share", "gene_share_at_depth")
    losses = {name: [] for name in names}
    decoder = model.gene_detection_decoder
    panel = decoder.panel_gene_ids
    for batch, output in predict_batches(model, dataset, collator, batch_size):
        if output.detection_loss is None:
            continue
        shown = decoder.genes(batch["input_ids"])
        scored = shown[:, panel] == 0
        in_cell = decoder.genes(batch["cell_genes"])
        truth = in_cell[:, panel][scored]
        genes = in_cell.sum(1, keepdim=True).clamp(min=1)
        left_out = 1 - (shown * in_cell).sum(1, keepdim=True) / genes
        depth_bin = torch.searchsorted(statistics["depth_edges"].to(genes.device), genes.log(), right=True).squeeze(1)
        shares = {"gene_share": statistics["detection"].to(genes.device)[None].expand_as(in_cell),
                  "gene_share_at_depth": statistics["detection_by_depth"].to(genes.device)[depth_bin]}
        losses["scgrn"].append(torch.nn.functional.binary_cross_entropy_with_logits(
            output.detection_logits.float()[scored], truth, reduction="none"))
        for name, share in shares.items():
            predicted = detected_given_not_shown(share, left_out)[:, panel][scored]
            losses[name].append(torch.nn.functional.binary_cross_entropy(predicted, truth, reduction="none"))
    if not losses["scgrn"]:
        return {"detection": None}
    ours, share, at_depth = (float(torch.cat(losses[name]).mean()) for name in names)
    return {"detection": {"loss_name": "binary_cross_entropy", "scgrn": ours, "gene_share": share,
                          "gene_share_at_depth": at_depth, "beats_gene_share": ours < share,
                          "beats_gene_share_at_depth": ours < at_depth},
            "detection_loss": ours, "detection_gene_share_loss": share, "detection_gene_share_at_depth_loss": at_depth}


def detected_given_not_shown(share: torch.Tensor, left_out: torch.Tensor) -> torch.Tensor:
    """The chance that a gene is detected given that the input does not show it, for a gene detected with
    probability `share` in a cell whose input leaves out the share `left_out` of its detected genes (at random):
    `share * left_out / (share * left_out + 1 - share)`, kept inside (0, 1) so that its log-loss is finite (a gene
    every cell detects, in inputs that leave nothing out, is never unshown: 0). Detected genes the input shows are
    not scored, so the raw share would overstate every unshown gene's chance."""
    hidden = share.float() * left_out.float()
    return (hidden / (hidden + 1 - share.float()).clamp(min=1e-12)).clamp(1e-4, 1 - 1e-4)


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
    binned encoding, `histograms` `(vocab_size, n_bins + 1)` smoothed bin distributions; `detection` `(vocab_size,)`
    each gene's share of the cells that detect it and `mean_log_genes` the cells' mean log gene count, for the
    gene-detection decoder, and `detection_by_depth` `(DEPTH_BINS, vocab_size)` the same shares within bins of the
    cells' log gene count (`depth_edges`, quantiles), that decoder's trivial predictor given the depth it is given."""
    column = "expression_bins" if value_encoding == "binned" else "expression_values"
    sums, counts = np.zeros(vocab_size), np.zeros(vocab_size)
    histograms = np.zeros((vocab_size, n_bins + 1)) if value_encoding == "binned" else None
    log_genes, token_ids = [], dataset["input_ids"]  # read once: the per-depth tally below goes over it again
    for ids, values in zip(token_ids, dataset[column]):
        ids, values = np.asarray(ids[1:]), np.asarray(values[1:], dtype=np.float64)
        log_genes.append(np.log(max(len(ids), 1)))
        np.add.at(sums, ids, values)
        np.add.at(counts, ids, 1)
        if histograms is not None:
            np.add.at(histograms, (ids, values.astype(np.int64)), 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), sums.sum() / max(counts.sum(), 1))
    shares = counts / max(len(log_genes), 1)
    statistics = {"means": torch.tensor(means, dtype=torch.float32),
                   "detection": torch.tensor(shares, dtype=torch.float32),
                   "mean_log_genes": float(np.mean(log_genes)) if log_genes else 0.0,
                   **_detection_by_depth(token_ids, np.asarray(log_genes), shares)}
    if histograms is not None:
        statistics["histograms"] = _smoothed(torch.tensor(histograms, dtype=torch.float32))
    return statistics


DEPTH_BINS = 10


def _detection_by_depth(token_ids, log_genes: np.ndarray, shares: np.ndarray) -> dict:
    """Each gene's detection share among the cells of each depth bin (`DEPTH_BINS` quantile bins of the log gene
    count, `depth_edges` between them), shrunk towards its overall share by two pseudo-cells."""
    edges = np.quantile(log_genes, np.linspace(0, 1, DEPTH_BINS + 1)[1:-1]) if len(log_genes) else np.zeros(0)
    bins = np.searchsorted(edges, log_genes, side="right")
    detected = np.zeros((DEPTH_BINS, len(shares)))
    for ids, b in zip(token_ids, bins):
        detected[b, np.asarray(ids[1:], dtype=np.int64)] += 1
    cells = np.bincount(bins, minlength=DEPTH_BINS)[:, None]
    by_depth = (detected + 2 * shares[None]) / (cells + 2)
    return {"detection_by_depth": torch.tensor(by_depth, dtype=torch.float32),
            "depth_edges": torch.tensor(edges, dtype=torch.float32)}


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


def label_scores(truth, predicted, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and the per-class report of predicted labels (names) against true ones."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class": classification_report(truth, predicted, labels=classes, output_dict=True, zero_division=0),
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
