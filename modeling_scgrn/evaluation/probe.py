"""What a model's pooled cell embedding holds, read with it frozen: a linear probe of cell types (logistic
regression fitted on training cells' embeddings, scored on held-out cells) beside the same classifiers on the raw
values, and how well the embedding predicts sequencing depth (a pretrained embedding that holds depth and no cell
state is what the masked-value loss alone produces)."""

from __future__ import annotations

import numpy as np
import torch

from ..cells.collators import DataCollatorForCellClassification
from ..cells.config import SEQUENCE_COLUMNS
from .baselines import classification_baselines
from .inference import run_batches
from .metrics import label_scores


def cell_embeddings(model, dataset, *, batch_size: int = 64) -> np.ndarray:
    """`(cells, hidden)` pooled embeddings of a tokenized dataset (the encoder of any scgrn head)."""
    encoder = model.base_model
    cells = dataset.remove_columns([c for c in dataset.column_names if c not in SEQUENCE_COLUMNS])
    # its own generator: iterating draws nothing from torch's global RNG, so a run probed at each evaluation trains
    # exactly as one that is not
    loader = torch.utils.data.DataLoader(cells, batch_size=batch_size, shuffle=False, generator=torch.Generator(),
                                         collate_fn=DataCollatorForCellClassification(encoder.config.pad_token_id))
    parts = [output.pooler_output.float().cpu() for _, output in run_batches(encoder, loader)]
    return torch.cat(parts).numpy()


def depth(dataset) -> dict[str, np.ndarray]:
    """Per cell: genes detected (tokens besides `[CLS]`) and the mean log1p value of those genes."""
    values = dataset["expression_values"]
    return {"genes_detected": np.array([len(v) - 1 for v in values], dtype=float),
            "mean_log1p": np.array([float(np.mean(v[1:])) if len(v) > 1 else 0.0 for v in values])}


def probe_split(dataset, max_cells: int, seed: int):
    """At most `max_cells` cells of a split (a seeded sample), the probe's training or held-out cells."""
    if len(dataset) <= max_cells:
        return dataset
    return dataset.select(np.sort(np.random.default_rng(seed).choice(len(dataset), max_cells, replace=False)))


def embedding_probe(model, train, test, label_column: str, *, baselines: dict | None = None, seed: int = 0) -> dict:
    """The frozen pooled embedding of `model` read by a linear probe: logistic regression fitted on the `train`
    cells' embeddings (standardised) and scored on the `test` cells (`accuracy`, `macro_f1`), beside `baselines`
    (`classification_baselines` on the same cells; computed when None), and `depth_r2`: the R^2 on the test cells
    of a linear regression from the embedding to each depth measure ([`depth`]), fitted on the train cells."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    train_z, test_z = cell_embeddings(model, train), cell_embeddings(model, test)
    scaler = StandardScaler().fit(train_z)
    train_z, test_z = scaler.transform(train_z), scaler.transform(test_z)
    train_y, test_y = np.asarray(train[label_column]).astype(str), np.asarray(test[label_column]).astype(str)
    predicted = LogisticRegression(max_iter=3000).fit(train_z, train_y).predict(test_z)
    result = {k: v for k, v in label_scores(test_y, predicted, sorted(set(train_y))).items() if k != "per_class"}
    result["cells"] = len(test_y)
    train_depth, test_depth = depth(train), depth(test)
    result["depth_r2"] = {name: float(r2_score(test_depth[name], LinearRegression().fit(
        train_z, train_depth[name]).predict(test_z))) for name in train_depth}
    if baselines is None:
        baselines = classification_baselines(train, test, label_column, model.config.vocab_size, seed=seed)
    result["baselines"] = {name: {k: entry[k] for k in ("accuracy", "macro_f1")} for name, entry in baselines.items()}
    return result


def probe_table(probe: dict, label_column: str) -> str:
    """The probe beside the baselines (markdown), with the verdict in words."""
    lines = [f"| cell embedding, frozen (`{label_column}`, {probe['cells']} held-out cells) | accuracy | macro-F1 |",
             "| --- | --- | --- |", f"| linear probe of scgrn's pooled embedding | {probe['accuracy']:.3f} | "
             f"{probe['macro_f1']:.3f} |"]
    lines += [f"| {name} (raw values) | {e['accuracy']:.3f} | {e['macro_f1']:.3f} |" for name, e in
              probe["baselines"].items()]
    pca = probe["baselines"].get("pca_logistic_regression", {}).get("accuracy")
    verdict = ("the probe beats PCA + logistic regression" if pca is not None and probe["accuracy"] > pca else
               "the probe does NOT beat PCA + logistic regression on the raw values")
    depth_text = ", ".join(f"{name} R^2 {value:.2f}" for name, value in probe["depth_r2"].items())
    return "\n".join(lines) + f"\n\nFrozen embedding: {verdict}; it predicts depth with {depth_text}.\n"


def _cross_validated_labels(x, y, estimator, folds: int, seed: int) -> dict:
    """Accuracy and macro-F1 of `estimator` on `x`, every cell predicted once while held out (stratified folds)."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y).astype(str)
    predicted = cross_val_predict(estimator, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"accuracy": float(np.mean(predicted == y)), "macro_f1": float(f1_score(y, predicted, average="macro"))}


def cross_validated_probe(embedding, labels: dict, depths: dict, *, folds: int = 5, seed: int = 0) -> dict:
    """What a frozen `(cells, features)` embedding holds, every cell scored once, held out (stratified `folds`-fold):
    for each label column in `labels` (`{name: (cells,) array}`), the accuracy and macro-F1 of a logistic
    regression on the standardised embedding and the silhouette of the labels in it; for each depth measure in
    `depths`, the R^2 of a linear regression from the embedding. The same call reads PCA of the counts or a random
    encoder's embedding, so the rows compare like with like."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import r2_score, silhouette_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(embedding, dtype=np.float64)
    result = {}
    for name, y in labels.items():
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        silhouette = silhouette_score(StandardScaler().fit_transform(x), np.asarray(y).astype(str))
        result[name] = {**_cross_validated_labels(x, y, probe, folds, seed), "silhouette": float(silhouette)}
    for name, values in depths.items():
        predicted = cross_val_predict(make_pipeline(StandardScaler(), LinearRegression()), x, np.asarray(values),
                                      cv=KFold(folds, shuffle=True, random_state=seed))
        result[f"depth_r2_{name}"] = float(r2_score(values, predicted))
    return result


def cross_validated_baselines(values, components, labels: dict, *, folds: int = 5, seed: int = 0,
                              neighbors: int = 5) -> dict:
    """`classification_baselines` in the probe's cross-validated form, on the same folds: logistic regression on
    the log-normalised `values`, kNN on their principal `components` (PCA + logistic regression is the probe of
    `components` itself) and the majority class; `{baseline: {label column: scores}}`."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    fitted = {"logistic_regression": (values, LogisticRegression(max_iter=3000)),
              "knn": (components, KNeighborsClassifier(neighbors)),
              "majority_class": (components, DummyClassifier(strategy="most_frequent"))}
    return {name: {column: _cross_validated_labels(x, y, estimator, folds, seed) for column, y in labels.items()}
            for name, (x, estimator) in fitted.items()}
