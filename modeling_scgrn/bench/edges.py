"""The edges benchmark: regulatory edges read out of pretrained models (`tl.regulatory_edges`) against the network
that generated the cells, beside correlation, a GENIE3-style tree ensemble and the prior's own weights.

Three questions, each a set of candidate pairs (regulator from the true network's TFs x every other gene) and
which of them are true:
- **noisy prior**: a model's prior edges, true vs false (for a model trained with false edges added);
- **incomplete prior**: pairs outside a model's prior, the removed true edges vs every non-edge (for a model trained
  with true edges removed);
- **whole network**: every candidate pair, true edges vs the rest (every model).

Every score ranks pairs by its absolute value; a pair a model never scored (the genes never together in a cell)
ranks last. AUROC, AUPRC (beside the AUPRC of a random ranking, the share of true pairs) and the early-precision
ratio (precision among the top k pairs, k the number of true ones, over the random precision, as BEELINE reports).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..tl.edges import balanced, regulatory_edges
from ..tl.perturb import model_prior
from .known_truth import candidate_pairs, correlation_pair_scores, tree_pair_scores

# the model scores: (column, method, attention normalisation)
MODEL_SCORES = (("perturbation", "perturbation", "none"), ("gradient", "gradient", "none"),
                ("attention", "attention", "none"), ("attention, row-normalised", "attention", "row"),
                ("attention, Sinkhorn", "attention", "sinkhorn"))
BASELINES = ("|Pearson r|", "|Spearman rho|", "GENIE3-style trees", "prior weight")


def model_pair_scores(cells, model, tokenizer, pairs: pd.DataFrame, *, max_cells: int = 500, seed: int = 0,
                      batch_size: int = 64) -> tuple[pd.DataFrame, dict]:
    """Each `MODEL_SCORES` column for `pairs` (`regulator`, `target`), from `max_cells` of `cells`; 0 where the
    model scored nothing. Attention runs once: its balanced columns are the same means, balanced. Returns the
    scores and the seconds each method took."""
    regulators = list(pd.unique(pairs["regulator"]))
    keys = list(zip(pairs["regulator"], pairs["target"]))
    out, seconds, attention = pairs.copy(), {}, None
    for column, method, normalization in MODEL_SCORES:
        if method == "gradient" and model.config.value_encoding != "continuous":
            continue
        start = time.perf_counter()
        if method == "attention" and attention is not None:
            edges = rebalanced(attention, normalization)
        else:
            edges = regulatory_edges(cells, model, tokenizer, method=method, regulators=regulators,
                                     max_cells=max_cells, normalization=normalization, seed=seed,
                                     batch_size=batch_size, max_length=None, progress=False,
                                     key_added="edges_benchmark")
            attention = edges if method == "attention" and normalization == "none" else attention
        seconds[column] = round(time.perf_counter() - start, 1)
        weights = dict(zip(zip(edges["source"], edges["target"]), edges["weight"]))
        out[column] = [weights.get(key, 0.0) for key in keys]
    return out, seconds


def rebalanced(edges: pd.DataFrame, normalization: str) -> pd.DataFrame:
    """An attention table of unbalanced means (`normalization="none"`) balanced as `regulatory_edges` would with
    `normalization`: pairs never seen together count 0 there too, so the same numbers without a second pass."""
    sources, targets = (pd.Index(pd.unique(edges[c])) for c in ("source", "target"))
    rows, columns = sources.get_indexer(edges["source"]), targets.get_indexer(edges["target"])
    means = np.full((len(sources), len(targets)), np.nan)
    means[rows, columns] = edges["weight"].to_numpy()
    return edges.assign(weight=balanced(means, normalization)[rows, columns])


def baseline_pair_scores(cells, pairs: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """|Pearson r| and |Spearman rho| over every cell and GENIE3-style trees on up to 1,000 of them, per pair."""
    scores = tree_pair_scores(cells, correlation_pair_scores(cells, pairs), seed=seed)
    return scores.rename(columns={"pearson": "|Pearson r|", "spearman": "|Spearman rho|",
                                  "trees": "GENIE3-style trees"})


def ranking_scores(scores: np.ndarray, truth: np.ndarray) -> dict:
    """AUROC, AUPRC, random AUPRC and early-precision ratio of ranking by |scores|."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ranked = np.abs(np.nan_to_num(np.asarray(scores, dtype=float)))
    k, random = int(truth.sum()), truth.mean()
    return {"pairs": int(len(truth)), "true_pairs": k, "auroc": float(roc_auc_score(truth, ranked)),
            "auprc": float(average_precision_score(truth, ranked)), "random_auprc": float(random),
            "early_precision_ratio": early_precision(ranked, truth, k) / random}


def early_precision(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Precision among the `k` highest `ranked` pairs, ties at the k-th value broken at random (in expectation),
    so that a constant score gets the random precision."""
    threshold = np.sort(ranked)[::-1][k - 1]
    above, tied = ranked > threshold, ranked == threshold
    room = k - above.sum()
    return float((truth[above].sum() + room * truth[tied].mean()) / k)


def questions(pairs: pd.DataFrame, truth: set, prior: set | None) -> dict:
    """The benchmark's three questions for a model with `prior` (None: dense): name -> (pair mask, true mask),
    only those with true and false pairs."""
    keys = list(zip(pairs["regulator"], pairs["target"]))
    is_true = np.array([key in truth for key in keys])
    asked = {"whole network": (np.ones(len(keys), dtype=bool), is_true)}
    if prior is not None:
        in_prior = np.array([key in prior for key in keys])
        asked["noisy prior"] = (in_prior, is_true[in_prior])
        asked["incomplete prior"] = (~in_prior, is_true[~in_prior])
    return {name: (where, truth_mask) for name, (where, truth_mask) in asked.items()
            if 0 < truth_mask.sum() < len(truth_mask)}


def edges_benchmark(cells, models: dict, *, max_cells: int = 500, seed: int = 0, progress=print) -> tuple:
    """Score every model (`{name: (model, tokenizer)}`) and the baselines on the candidate pairs of `cells`
    (a simulated corpus). Returns `(rows, seconds, pair_scores)`: one row per question, model and score; per model
    the seconds each method took; and every pair's scores (baselines, then each model's columns prefixed
    `<model>: `, with `true`)."""
    from .simulate import true_edges

    edges = true_edges(cells)
    truth = set(zip(edges["source"], edges["target"]))
    pairs = candidate_pairs(cells.var_names, set(edges["source"]))
    progress(f"baselines on {len(pairs)} candidate pairs")
    baselines = baseline_pair_scores(cells, pairs, seed=seed)
    rows, seconds = [], {}
    pair_scores = baselines.assign(true=[key in truth for key in zip(pairs["regulator"], pairs["target"])])
    for name, (model, tokenizer) in models.items():
        progress(f"model {name}: {max_cells} cells")
        scored, seconds[name] = model_pair_scores(cells, model, tokenizer, pairs, max_cells=max_cells, seed=seed)
        pair_scores = pair_scores.assign(**{f"{name}: {c}": scored[c].to_numpy() for c in scored.columns[2:]})
        own = model_prior(model, tokenizer)
        prior = None if own is None else set(zip(own["source"], own["target"]))
        table = baselines.assign(**{"prior weight": 0.0 if prior is None else
                                    [float(key in prior) for key in zip(pairs["regulator"], pairs["target"])]})
        columns = [c for c, _, _ in MODEL_SCORES if c in scored]
        for question, (where, truth_mask) in questions(pairs, truth, prior).items():
            for column in columns + list(BASELINES):
                values = (scored if column in columns else table)[column].to_numpy()[where]
                rows.append({"question": question, "model": name, "score": column,
                             "kind": "model" if column in columns else "baseline",
                             **ranking_scores(values, truth_mask)})
    return rows, seconds, pair_scores


def edges_markdown(rows: list[dict], seconds: dict) -> str:
    """One table per question (models' scores and the baselines on the same pairs), a verdict line per model, and
    the time each method took."""
    frame = pd.DataFrame(rows)
    lines = []
    for question, group in frame.groupby("question", sort=False):
        lines += [f"### {question}", "", "| model | score | pairs | true | AUROC | AUPRC | random AUPRC | "
                  "early precision ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, row in group.iterrows():
            lines.append(f"| {row['model']} | {row['score']} | {row['pairs']} | {row['true_pairs']} | "
                         f"{row['auroc']:.3f} | {row['auprc']:.4f} | {row['random_auprc']:.4f} | "
                         f"{row['early_precision_ratio']:.2f} |")
        lines.append("")
        lines += [verdict(question, model, sub) for model, sub in group.groupby("model", sort=False)]
        lines.append("")
    lines += ["Seconds per method (one model, cells scored):", ""]
    lines += [f"- {model}: " + ", ".join(f"{k} {v} s" for k, v in times.items()) for model, times in seconds.items()]
    return "\n".join(lines) + "\n"


def verdict(question: str, model: str, group: pd.DataFrame) -> str:
    """Whether the model's best score beats every baseline on the same pairs (AUROC and AUPRC)."""
    scores, baselines = group[group["kind"] == "model"], group[group["kind"] == "baseline"]
    best = scores.loc[scores["auroc"].idxmax()]
    base = baselines.loc[baselines["auroc"].idxmax()]
    base_pr = baselines.loc[baselines["auprc"].idxmax()]
    beats = best["auroc"] > base["auroc"] and scores["auprc"].max() > base_pr["auprc"]
    word = "beats" if beats else "does NOT beat"
    return (f"- {question}, {model}: best model score {best['score']} (AUROC {best['auroc']:.3f}, best AUPRC "
            f"{scores['auprc'].max():.4f}) {word} the best baseline ({base['score']} AUROC {base['auroc']:.3f}; "
            f"{base_pr['score']} AUPRC {base_pr['auprc']:.4f}).")


def plot_edges(rows: list[dict], path) -> None:
    """AUROC of every score, one panel per question, bars grouped by model; baselines hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    asked = list(pd.unique(frame["question"]))
    figure, axes = plt.subplots(1, len(asked), figsize=(6 * len(asked), 5), squeeze=False)
    for axis, question in zip(axes[0], asked):
        group = frame[frame["question"] == question]
        labels = [f"{m}: {s}" for m, s in zip(group["model"], group["score"])]
        colours = ["tab:blue" if k == "model" else "tab:grey" for k in group["kind"]]
        axis.barh(range(len(group)), group["auroc"], color=colours)
        axis.set_yticks(range(len(group)), labels, fontsize=6)
        axis.axvline(0.5, color="k", linestyle=":", linewidth=1)
        axis.set_xlim(0.3, 1.0)
        axis.invert_yaxis()
        axis.set_title(f"{question} (blue: model scores, grey: baselines)", fontsize=9)
        axis.set_xlabel("AUROC")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- real cells
def rank_auroc_test(scores: np.ndarray, positive: np.ndarray, *, permutations: int = 2000, seed: int = 0) -> dict:
    """AUROC of |scores| for `positive` against the rest, and a one-sided permutation p-value (the labels shuffled
    `permutations` times: (as high or higher + 1) / (permutations + 1))."""
    from scipy.stats import rankdata

    ranks = rankdata(np.abs(np.nan_to_num(np.asarray(scores, dtype=float))))
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return {"positives": n1, "negatives": n0}

    def auroc(rank_sum):
        return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)

    observed = auroc(ranks[positive].sum())
    rng = np.random.default_rng(seed)
    draws = np.array([auroc(ranks[rng.permutation(len(ranks))[:n1]].sum()) for _ in range(permutations)])
    return {"positives": n1, "negatives": n0, "auroc": float(observed),
            "p_value": float(((draws >= observed).sum() + 1) / (permutations + 1))}


def curated_agreement(scores: pd.DataFrame, first: set, second: set, columns, *, permutations: int = 2000,
                      seed: int = 0) -> list[dict]:
    """On real cells, where no truth is known, two separately curated priors as partial evidence: among the pairs
    of `scores` (`source`, `target` and score `columns`), do edges of `first` that `second` also lists rank above
    the `first`-only ones, and do `second`-only edges rank above pairs in neither? One row per comparison and
    column (`rank_auroc_test`)."""
    keys = list(zip(scores["source"], scores["target"]))
    in_first = np.array([k in first for k in keys])
    in_second = np.array([k in second for k in keys])
    comparisons = {"in both vs first only": (in_first, in_second[in_first]),
                   "second only vs in neither": (~in_first, in_second[~in_first])}
    rows = []
    for name, (where, positive) in comparisons.items():
        for column in columns:
            rows.append({"comparison": name, "score": column,
                         **rank_auroc_test(scores[column].to_numpy()[where], positive, permutations=permutations,
                                           seed=seed)})
    return rows
