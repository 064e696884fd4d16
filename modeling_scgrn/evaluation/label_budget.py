"""Few labels: how well fixed features of cells (a frozen embedding, principal components, the counts) tell cell
types apart when only a few cells of each type are labelled. Every method of a draw is fitted on the same labelled
cells and scored on all the others, so the rows compare like with like; draws are repeated and averaged."""

from __future__ import annotations

import numpy as np

PROBE = "linear probe"  # standardised features, logistic regression: how a frozen embedding or PCA is read
COUNTS = "logistic regression"  # on the log-normalised counts as they are (sparse, unscaled)
NEIGHBOURS = "kNN"
MAJORITY = "majority class"


def labelled_indices(labels, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `per_class` cells of each label in `labels`, drawn with `seed`: the labelled cells
    of a finetuning run with a label budget (`workflows.finetune.labelled_subset`) and of a frozen embedding read
    with the same budget and seed."""
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == label))[:per_class]
                                   for label in np.unique(labels)]))


def labelled_draw(labels, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `budget` cells per type drawn with `rng`; a type with `budget` cells or fewer gives all but one
    (so that every type keeps a held-out cell), and at least one."""
    labels = np.asarray(labels).astype(str)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, min(budget, members.size - 1))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def estimator(kind: str, fewest: int):
    """The reader of `kind`; kNN asks no more neighbours than the rarest type has labelled cells (`fewest`)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == PROBE:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    if kind == COUNTS:
        return LogisticRegression(max_iter=3000)
    if kind == NEIGHBOURS:
        return KNeighborsClassifier(min(5, fewest))
    if kind == MAJORITY:
        return DummyClassifier(strategy="most_frequent")
    raise ValueError(f"no estimator {kind!r}; one of {[PROBE, COUNTS, NEIGHBOURS, MAJORITY]}.")


def few_label_scores(features: dict, labels, budgets, *, repeats: int = 10, seed: int = 0) -> list[dict]:
    """`features` maps a row name to `(matrix, kind)`, `kind` one of `PROBE`, `COUNTS`, `NEIGHBOURS`, `MAJORITY`;
    for each of `budgets` (labelled cells per type) and each of `repeats` seeded draws ([`labelled_draw`]), every row
    is fitted on the draw's cells and scored on all the others. Returns one entry per row, budget and draw:
    `{"features", "labels_per_type", "draw", "labelled", "accuracy", "macro_f1"}` (macro-F1 over every type)."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels).astype(str)
    classes = np.unique(labels)
    rows = []
    for budget in budgets:
        if budget < 1:
            raise ValueError(f"a label budget is a number of cells per type, at least 1, not {budget}.")
        for draw in range(repeats):
            train = labelled_draw(labels, int(budget), np.random.default_rng([seed, int(budget), draw]))
            test = np.setdiff1d(np.arange(labels.size), train)
            fewest = int(np.unique(labels[train], return_counts=True)[1].min())
            for name, (matrix, kind) in features.items():
                predicted = estimator(kind, fewest).fit(matrix[train], labels[train]).predict(matrix[test])
                rows.append({"features": name, "labels_per_type": int(budget), "draw": draw, "labelled": train.size,
                             "accuracy": float(np.mean(predicted == labels[test])),
                             "macro_f1": float(f1_score(labels[test], predicted, labels=classes, average="macro",
                                                        zero_division=0))})
    return rows
