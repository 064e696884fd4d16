"""The known-truth benchmark: cells simulated from a real network (`simulate.py`), where the value of a GRN prior can
be measured against the network that generated them.

Pieces (each usable alone): wrong priors (`corrupted_network`, `unrelated_network`), edge-recovery scores from
correlation, a GENIE3-style tree ensemble and attention (`correlation_pair_scores`, `tree_pair_scores`,
`attention_pair_scores`, `edge_recovery`), and `run_known_truth`, which pretrains each mask on an unlabelled simulated
corpus, finetunes cell types with few to all labels, and writes the tables and PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.label_budget import COUNTS, PROBE, estimator, labelled_indices  # noqa: F401 (PROBE, COUNTS: the kinds)
from ..grn.network import GeneRegulatoryNetwork
from .simulate import abs_correlation, log_normalised


# ---------------------------------------------------------------------------------------------------- wrong priors
def network_from_edges(edges: pd.DataFrame, name: str) -> GeneRegulatoryNetwork:
    """A `GeneRegulatoryNetwork` of `source, target[, sign]` edges, its provenance naming `name`."""
    weight = edges["sign"] if "sign" in edges else 1.0
    table = pd.DataFrame({"source": edges["source"], "target": edges["target"], "weight": weight})
    return GeneRegulatoryNetwork.from_dataframe(table, provenance={"resource": name})


def corrupted_network(edges: pd.DataFrame, genes, *, removed: float = 0.0, added: float = 0.0,
                      seed: int = 0) -> GeneRegulatoryNetwork:
    """The true network with a share `removed` of its edges dropped and `added` x its edge count of false edges
    (random regulator -> target pairs among `genes`, regulators drawn from the true regulators, none a true edge)."""
    rng = np.random.default_rng(seed)
    kept = edges.iloc[np.sort(rng.permutation(len(edges))[:round(len(edges) * (1 - removed))])]
    true_pairs = set(zip(edges["source"], edges["target"]))
    regulators, genes = np.asarray(sorted(set(edges["source"]))), np.asarray(list(genes))
    false: set = set()
    wanted = round(len(edges) * added)
    while len(false) < wanted:
        pair = (str(rng.choice(regulators)), str(rng.choice(genes)))
        if pair[0] != pair[1] and pair not in true_pairs:
            false.add(pair)
    extra = pd.DataFrame(sorted(false), columns=["source", "target"]).assign(sign=1)
    name = f"true network, {removed:.0%} removed, {added:.0%} false added"
    return network_from_edges(pd.concat([kept[["source", "target", "sign"]], extra], ignore_index=True), name)


def unrelated_network(prior: GeneRegulatoryNetwork, true_edges: pd.DataFrame, genes, *, seed: int = 0):
    """A real but unrelated regulatory topology: a different piece of `prior` (another seed of
    `select_subnetwork`), its genes mapped at random onto the simulated `genes`, true edges removed."""
    from .simulate import select_subnetwork

    genes = list(genes)
    other, _ = select_subnetwork(prior, len(genes), seed=seed + 10_000)
    other_genes = list(pd.unique(other[["source", "target"]].values.ravel()))
    mapping = dict(zip(other_genes, np.random.default_rng(seed).permutation(genes)))
    mapped = pd.DataFrame({"source": other["source"].map(mapping), "target": other["target"].map(mapping),
                           "sign": other["sign"]}).dropna()
    true_pairs = set(zip(true_edges["source"], true_edges["target"]))
    mapped = mapped[[pair not in true_pairs for pair in zip(mapped["source"], mapped["target"])]]
    return network_from_edges(mapped, "unrelated CollecTRI piece, genes relabelled")


# ---------------------------------------------------------------------------------------------------- edge recovery
def candidate_pairs(genes, regulators) -> pd.DataFrame:
    """Every ordered (regulator, target) pair of distinct genes, regulators drawn from `regulators`."""
    genes, regulators = list(genes), set(regulators)
    return pd.DataFrame([(r, t) for r in genes if r in regulators for t in genes if r != t],
                        columns=["regulator", "target"])


def correlation_pair_scores(adata, pairs: pd.DataFrame) -> pd.DataFrame:
    """|Pearson r| and |Spearman rho| of log-normalised expression for each pair (columns `pearson`, `spearman`)."""
    from scipy.stats import rankdata

    values = log_normalised(adata)
    index = {g: i for i, g in enumerate(adata.var_names)}
    r, t = pairs["regulator"].map(index).to_numpy(), pairs["target"].map(index).to_numpy()
    pearson, spearman = abs_correlation(values), abs_correlation(rankdata(values, axis=0))
    return pairs.assign(pearson=pearson[r, t], spearman=spearman[r, t])


def tree_pair_scores(adata, pairs: pd.DataFrame, *, n_estimators: int = 50, max_cells: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """GENIE3-style scores (Huynh-Thu et al. 2010): for each target, an extra-trees regression on the candidate
    regulators' expression; a pair's score is that regulator's feature importance (column `trees`)."""
    from sklearn.ensemble import ExtraTreesRegressor

    values = log_normalised(adata)
    if values.shape[0] > max_cells:
        values = values[np.random.default_rng(seed).permutation(values.shape[0])[:max_cells]]
    index = {g: i for i, g in enumerate(adata.var_names)}
    regulators = list(pd.unique(pairs["regulator"]))
    scores = {}
    for target in pd.unique(pairs["target"]):
        inputs = [r for r in regulators if r != target]
        model = ExtraTreesRegressor(n_estimators=n_estimators, max_features="sqrt", random_state=seed, n_jobs=1)
        model.fit(values[:, [index[r] for r in inputs]], values[:, index[target]])
        scores.update({(r, target): w for r, w in zip(inputs, model.feature_importances_)})
    return pairs.assign(trees=[scores.get(pair, 0.0) for pair in zip(pairs["regulator"], pairs["target"])])


def attention_pair_scores(model, tokenizer, dataset, pairs: pd.DataFrame, *, layers=None, max_cells: int = 500,
                          column: str = "attention") -> pd.DataFrame:
    """Mean attention a target pays its candidate regulator (query = target, key = regulator), over the cells of
    `dataset` holding both and over heads and `layers` (`interpret.attention_scores`); 0 where never seen."""
    from ..tl.attention import attention_scores

    count = min(max_cells, len(dataset))
    cells = dataset.select(range(count)).add_column("all_cells", ["all"] * count)
    frame = attention_scores(model, tokenizer, cells, "all_cells", layers=layers)["all"]
    scores = dict(zip(zip(frame["regulator"], frame["target"]), frame["score"]))
    return pairs.assign(**{column: [scores.get(pair, 0.0) for pair in zip(pairs["regulator"], pairs["target"])]})


def edge_recovery(scores: pd.DataFrame, true_edges: pd.DataFrame, columns) -> dict:
    """AUROC and AUPRC of each score column for telling true edges from the other candidate pairs, beside the
    AUPRC of a random ranking (the share of true pairs)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = set(zip(true_edges["source"], true_edges["target"]))
    is_true = np.array([pair in truth for pair in zip(scores["regulator"], scores["target"])])
    result = {"pairs": int(len(scores)), "true_pairs": int(is_true.sum()), "random_auprc": float(is_true.mean())}
    for column in columns:
        result[column] = {"auroc": float(roc_auc_score(is_true, scores[column])),
                          "auprc": float(average_precision_score(is_true, scores[column]))}
    return result


def recovery_markdown(recovery: dict) -> str:
    names = [k for k in recovery if isinstance(recovery[k], dict)]
    lines = [f"Candidate pairs: {recovery['pairs']} (regulator from the prior's TFs x every gene), "
             f"{recovery['true_pairs']} true; a random ranking has AUPRC {recovery['random_auprc']:.4f}.", "",
             "| scores | AUROC | AUPRC |", "| --- | --- | --- |"]
    lines += [f"| {name} | {recovery[name]['auroc']:.3f} | {recovery[name]['auprc']:.4f} |" for name in names]
    return "\n".join(lines) + "\n"


def save_json(data, path: Path) -> None:
    from ..storage.folders import jsonable

    path.write_text(json.dumps(data, indent=2, default=jsonable))


def recover_edges(data_dir: Path, cells, prior: GeneRegulatoryNetwork, models: dict, *, seed: int = 0) -> dict:
    """Edge recovery: correlation over all `cells`, a GENIE3-style tree ensemble (on up to 1,000 of them) and each
    model's attention over the first 500 test cells (`models`: name -> (model folder, layers or None)), over
    candidate pairs whose regulator is a TF of `prior`."""
    from ..cells.prepared import load_prepared
    from ..hub.model_folder import load_pretrained
    from ..model.modeling_scgrn import ScGrnForMaskedExpressionModeling
    from .simulate import true_edges

    dataset, tokenizer, _, _ = load_prepared(data_dir)
    pairs = candidate_pairs(cells.var_names, set(prior.edges["source"]))
    scores = tree_pair_scores(cells, correlation_pair_scores(cells, pairs), seed=seed)
    for name, (folder, layers) in models.items():
        model = load_pretrained(ScGrnForMaskedExpressionModeling, folder, trained_head=True)
        scores = attention_pair_scores(model, tokenizer, dataset["test"], scores, layers=layers, column=name)
    return edge_recovery(scores, true_edges(cells), ["pearson", "spearman", "trees", *models])


# ---------------------------------------------------------------------------------------------- frozen embeddings
def budget_probe_rows(features: dict, train_labels, test_labels, budgets, *, seed: int) -> list[dict]:
    """Each of `features` (name -> (train matrix, test matrix, `PROBE` or `COUNTS`)) read by a logistic regression
    fitted on the labelled training cells of each budget (cells per type, None: all; the cells finetuning gets with
    the same `seed`, `labelled_indices`) and scored on every test cell; one row per name and budget."""
    from ..evaluation.metrics import label_scores

    train_labels, test_labels = np.asarray(train_labels).astype(str), np.asarray(test_labels).astype(str)
    rows = []
    for budget in budgets:
        chosen = np.arange(len(train_labels)) if budget is None else labelled_indices(train_labels, budget, seed)
        for name, (train_x, test_x, kind) in features.items():
            predicted = estimator(kind, len(chosen)).fit(train_x[chosen], train_labels[chosen]).predict(test_x)
            scores = label_scores(test_labels, predicted, sorted(set(train_labels)))
            rows.append({"features": name, "seed": seed, "labels_per_type": budget or "all",
                         "labelled": int(len(chosen)), "macro_f1": scores["macro_f1"],
                         "accuracy": scores["accuracy"]})
    return rows


def probe_markdown(rows: list[dict]) -> str:
    """Frozen features read with each label budget: mean +/- sd macro-F1 over seeds."""
    frame = pd.DataFrame(rows)
    frame["labels_per_type"] = frame["labels_per_type"].astype(str)
    budgets = list(pd.unique(frame["labels_per_type"]))
    summary = _mean_sd(frame, ["features", "labels_per_type"], "macro_f1")
    seeds = frame.groupby("features", sort=False)["seed"].nunique()
    lines = ["| frozen features, logistic regression | seeds | " + " | ".join(f"{b} labels/type" for b in budgets)
             + " |", "| --- | --- |" + " --- |" * len(budgets)]
    for name in seeds.index:
        cells = [f"{summary.loc[(name, b), 'mean']:.3f} +/- {summary.loc[(name, b), 'sd']:.3f}"
                 if (name, b) in summary.index else "-" for b in budgets]
        lines.append(f"| {name} | {seeds[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def embedding_markdown(rows: list[dict]) -> str:
    """Silhouette and Leiden ARI/NMI by cell type of each embedding of the test cells (mean over seeds)."""
    frame = pd.DataFrame(rows)
    columns = ["silhouette", "leiden_ari", "leiden_nmi", "leiden_clusters"]
    summary = frame.groupby("embedding", sort=False)[columns].mean()
    seeds = frame.groupby("embedding", sort=False)["seed"].nunique()
    lines = ["| embedding of the test cells | seeds | silhouette (cosine) | Leiden ARI | Leiden NMI | clusters |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {seeds[name]} | {row.silhouette:.3f} | {row.leiden_ari:.3f} | {row.leiden_nmi:.3f} | "
              f"{row.leiden_clusters:.0f} |" for name, row in summary.iterrows()]
    return "\n".join(lines) + "\n"


def _mean_sd(frame: pd.DataFrame, keys, column: str) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=False)[column]
    return pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std().fillna(0.0)})


def pretraining_markdown(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    columns = ["validation_loss", "best_trivial_loss", "regulated_loss", "regulated_best_trivial_loss",
               "tokens_with_partner"]
    summary = frame.groupby("arm", sort=False)[columns].agg(["mean", "std"])
    seeds = frame.groupby("arm", sort=False)["seed"].nunique()
    lines = ["| mask / prior | seeds | validation loss | best trivial | on regulated targets | best trivial there | "
             "tokens with a partner |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm in summary.index:
        cells = []
        for column in columns:
            mean, sd = summary.loc[arm, (column, "mean")], np.nan_to_num(summary.loc[arm, (column, "std")])
            cells.append("-" if pd.isna(mean) else (f"{mean:.1%}" if column == "tokens_with_partner"
                                                    else f"{mean:.4f} +/- {sd:.4f}"))
        lines.append(f"| {arm} | {seeds[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def finetuning_markdown(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    frame["labels_per_type"] = frame["labels_per_type"].astype(str)
    budgets = list(pd.unique(frame["labels_per_type"]))
    summary = _mean_sd(frame, ["arm", "start", "labels_per_type"], "macro_f1")
    seeds = frame.groupby(["arm", "start"], sort=False)["seed"].nunique()
    lines = ["| mask / prior | start | seeds | " + " | ".join(f"{b} labels/type" for b in budgets) + " |",
             "| --- | --- | --- |" + " --- |" * len(budgets)]
    for arm, start in seeds.index:
        cells = [f"{summary.loc[(arm, start, b), 'mean']:.3f} +/- {summary.loc[(arm, start, b), 'sd']:.3f}"
                 if (arm, start, b) in summary.index else "-" for b in budgets]
        lines.append(f"| {arm} | {start} | {seeds[(arm, start)]} | " + " | ".join(cells) + " |")
    for baseline in ("logistic_regression", "knn", "majority_class"):
        base = _mean_sd(frame, ["labels_per_type"], f"{baseline}_macro_f1")
        lines.append(f"| {baseline} (baseline) | - | - | " + " | ".join(
            f"{base.loc[b, 'mean']:.3f} +/- {base.loc[b, 'sd']:.3f}" for b in budgets) + " |")
    return "\n".join(lines) + "\n"


def plot_label_curves(rows: list[dict], path: Path, probes: list[dict] = ()) -> None:
    """Macro-F1 against labelled cells per type: one line per mask and start, baselines dashed, and each frozen
    embedding's probe (`probes`, rows of `budget_probe_rows`) dash-dotted with open markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    frame["labels"] = [np.nan if b == "all" else b for b in frame["labels_per_type"]]
    most = np.nanmax(frame["labels"]) * 2 if frame["labels"].notna().any() else 1
    frame["labels"] = frame["labels"].fillna(most)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for (arm, start), group in frame.groupby(["arm", "start"], sort=False):
        mean = group.groupby("labels")["macro_f1"].agg(["mean", "std"]).fillna(0.0)
        axis.errorbar(mean.index, mean["mean"], yerr=mean["std"], marker="o", capsize=3, label=f"{arm} ({start})",
                      linestyle="-" if start == "pretrained" else ":")
    for baseline, style in (("logistic_regression", "k--"), ("knn", "k-."), ("majority_class", "k:")):
        mean = frame.groupby("labels")[f"{baseline}_macro_f1"].mean()
        axis.plot(mean.index, mean.values, style, label=baseline, linewidth=1)
    for name, group in pd.DataFrame(list(probes) or None, columns=["features", "labels_per_type", "macro_f1"]
                                     ).groupby("features", sort=False):
        labels = [most if b == "all" else b for b in group["labels_per_type"]]
        mean = group.assign(labels=labels).groupby("labels")["macro_f1"].mean()
        axis.plot(mean.index, mean.values, marker="s", markerfacecolor="none", linestyle="-.", linewidth=1,
                  label=f"{name}")
    axis.set_xscale("log")
    axis.set_xlabel("labelled cells per type (rightmost: all)")
    axis.set_ylabel("held-out macro-F1")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_pretraining(rows: list[dict], path: Path) -> None:
    """Validation loss per mask/prior beside the best trivial predictor, overall and on regulated targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows).groupby("arm", sort=False).mean(numeric_only=True)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (column, trivial, title) in zip(axes, (("validation_loss", "best_trivial_loss", "all masked genes"),
                                                    ("regulated_loss", "regulated_best_trivial_loss",
                                                     "masked genes with a true regulator in view"))):
        axis.barh(frame.index, frame[column], color="tab:blue")
        axis.axvline(frame[trivial].mean(), color="k", linestyle="--", label="best trivial predictor")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("masked squared error (log1p values)")
        lower = min(frame[column].min(), frame[trivial].min())
        axis.set_xlim(lower * 0.95, max(frame[column].max(), frame[trivial].max()) * 1.02)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
