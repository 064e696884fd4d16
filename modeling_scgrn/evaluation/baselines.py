"""The baselines printed beside every result, fitted on the same cells: logistic regression, PCA + logistic
regression, kNN and the majority class for classification, and the tables that set scgrn beside them."""

from __future__ import annotations

import numpy as np

from .metrics import label_scores


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
    if not metrics.get("token_head_trained", True):
        opening = ("The token head was not trained (model.token_loss_weight is 0), so scgrn's row is an untrained "
                   "head's error and says nothing about this pretraining; the gene-detection line and the "
                   "embedding probe do: ")
    elif metrics["beats_every_baseline"]:
        opening = "scgrn beats every trivial predictor: "
    else:
        opening = ("scgrn does NOT beat every trivial predictor (pretraining has learnt little beyond per-gene and "
                   "per-cell averages here): ")
    verdict = opening + "; ".join(margins) + "."
    return "\n".join(lines) + "\n\n" + verdict + "\n" + _detection_line(metrics.get("detection"))


def _detection_line(detection: dict | None) -> str:
    """The gene-detection decoder's loss beside its two trivial predictors, in words; empty without one."""
    if not detection:
        return ""
    ours, share, at_depth = detection["scgrn"], detection["gene_share"], detection["gene_share_at_depth"]
    verb = "beats" if detection["beats_gene_share_at_depth"] else "does NOT beat"
    return (f"\nGene detection (which panel genes each validation cell detects, binary cross-entropy): scgrn "
            f"{ours:.4f} {verb} each gene's training detection share among cells of the same depth "
            f"({at_depth:.4f}, {1 - ours / at_depth:+.1%}; the decoder is given the depth); each gene's share "
            f"alone: {share:.4f}.\n")


def best_trivial_loss(baselines: dict) -> float | None:
    """The lowest loss among the trivial predictors (`name -> loss`), leaving out those with none in the model's
    units (binned values: the gene mean plus cell offset gives no bin distribution); None when none has a loss
    (no masked value of the kind scored)."""
    return min((loss for loss in baselines.values() if loss is not None), default=None)


def cells_by_genes(dataset, vocab_size: int, column: str = "expression_values"):
    """The tokenized values of a split as a sparse `(cells, vocab_size)` matrix (log1p-normalised values by
    default): exactly what the model was given, so baselines see the same genes of the same cells."""
    import scipy.sparse as sp

    ids, values = dataset["input_ids"], dataset[column]
    rows = np.concatenate([np.full(len(cell) - 1, row) for row, cell in enumerate(ids)])
    columns = np.concatenate([np.asarray(cell[1:], dtype=np.int64) for cell in ids])  # [CLS] first
    data = np.concatenate([np.asarray(cell[1:], dtype=np.float32) for cell in values])
    return sp.csr_matrix((data, (rows, columns)), shape=(len(ids), vocab_size))


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
