"""In-silico knockouts checked against truth: on cells simulated from a known network, knock regulators out in the
simulator (`simulate_knockout`, the truth) and in the model (`perturbation.perturb`, the prediction), and score
the prediction beside a linear baseline.

Scores per knocked-out gene, over the other genes: Pearson and Spearman r of predicted and true log-fold changes;
AUROC of |prediction| for the genes that truly change; sign accuracy on direct and on indirect targets that truly
change, and on its direct targets that the deleted gene represses (they should rise); recall of the truly changed
downstream genes among the top-k predicted (k = their number). Each score is computed against two truths: counts (as
a user would measure) and the simulator's noise-free expression.

Beside each model, predictors that read no data: the linear baseline regresses each gene on the knocked-out gene in
unperturbed cells and predicts the change of setting it to zero; the prior-only predictors move a network's direct
targets of the deleted gene (signed: activated targets down, repressed ones up; unsigned: all down) or every gene
downstream of it, by a constant. They are built from the true network and from each model's own prior (its mask's
edges, which carry no sign), so that a model is compared with reading its prior directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..grn.network import downstream

CHANGED = 0.25  # |true log2 fold change| at which a gene counts as changed


def knockout_candidates(edges: pd.DataFrame, *, masters: int = 5, mid_level: int = 5) -> list[str]:
    """Master regulators and mid-level TFs (regulated regulators), those with the most targets first."""
    from .simulate import master_regulators

    out_degree = edges.groupby("source").size().sort_values(ascending=False, kind="stable")
    top = master_regulators(edges)
    targets = set(edges["target"])
    regulated = [g for g in out_degree.index if g in targets]
    return sorted(top, key=lambda g: -out_degree[g])[:masters] + regulated[:mid_level]


def linear_baseline(cells, genes) -> pd.DataFrame:
    """Per knocked-out gene, each gene's change (log2 units of 1 + normalised value) predicted by a least-squares
    line on the knocked-out gene's log1p value in unperturbed `cells`, when that value goes to zero."""
    from .simulate import log_normalised

    values = log_normalised(cells)
    index = {g: i for i, g in enumerate(cells.var_names)}
    rows = {}
    for gene in genes:
        x = values[:, index[gene]]
        centred = x - x.mean()
        slope = centred @ (values - values.mean(0)) / max(float(centred @ centred), 1e-12)
        rows[gene] = slope * (0.0 - x.mean()) / np.log(2)
    return pd.DataFrame(rows, index=cells.var_names).T


def prior_predictions(edges: pd.DataFrame, genes, columns, *, signed: bool = False,
                      every_hop: bool = False) -> pd.DataFrame:
    """`(genes, columns)` predicted changes that read only a network (`source, target`, and `sign` when `signed`):
    -1 for each direct target of the deleted gene (+1 for a repressed one when `signed`), or -1 for every gene
    downstream of it with `every_hop`; 0 elsewhere."""
    rows = []
    for gene in genes:
        row = pd.Series(0.0, index=list(columns))
        if every_hop:
            reached = [g for g in downstream(edges, gene) if g in row.index]
            row[reached] = -1.0
        else:
            direct = edges[(edges["source"] == gene) & edges["target"].isin(row.index)]
            row[direct["target"].to_numpy()] = (-np.sign(direct["sign"].to_numpy()) if signed else -1.0)
        rows.append(row)
    return pd.DataFrame(rows, index=list(genes))


def _prior_only(name: str, edges: pd.DataFrame, genes, columns, signed: bool) -> dict[str, pd.DataFrame]:
    out = {f"{name}: direct targets, unsigned": prior_predictions(edges, genes, columns),
           f"{name}: every downstream gene": prior_predictions(edges, genes, columns, every_hop=True)}
    if signed:
        out[f"{name}: direct targets, signed"] = prior_predictions(edges, genes, columns, signed=True)
    return out


def score_knockout(predicted: pd.Series, truth: pd.Series, edges: pd.DataFrame, gene: str) -> dict:
    """The scores of one knockout's prediction (genes -> change) against the true log2 fold changes."""
    reach = downstream(edges, gene)
    genes = [g for g in truth.index if g != gene and g in predicted.index and not np.isnan(predicted[g])
             and np.isfinite(truth[g])]
    p, t = predicted[genes].to_numpy(float), truth[genes].to_numpy(float)
    changed = np.abs(t) >= CHANGED
    direct = np.array([reach.get(g) == 1 for g in genes])
    indirect = np.array([(reach.get(g) or 0) >= 2 for g in genes])
    repressed = set(edges.loc[(edges["source"] == gene) & (edges["sign"] < 0), "target"])
    moved_down = changed & np.array([g in reach for g in genes])

    def sign_accuracy(where):
        where = where & changed
        return float((np.sign(p[where]) == np.sign(t[where])).mean()) if where.any() else float("nan")

    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    k = int(moved_down.sum())
    top = np.argsort(-np.abs(p), kind="stable")[:k]
    varied = len(genes) > 2 and p.std() > 0 and t.std() > 0
    return {"gene": gene, "genes_scored": len(genes), "downstream_changed": k,
            "pearson": float(np.corrcoef(p, t)[0, 1]) if varied else float("nan"),
            "spearman": float(spearmanr(p, t).statistic) if varied else float("nan"),
            "auroc_changed": (float(roc_auc_score(changed, np.abs(p))) if 0 < changed.sum() < len(changed)
                              else float("nan")),
            "sign_accuracy_direct": sign_accuracy(direct), "sign_accuracy_indirect": sign_accuracy(indirect),
            "sign_accuracy_repressed": sign_accuracy(direct & np.array([g in repressed for g in genes])),
            "recall_at_k": float(moved_down[top].mean()) if k else float("nan")}


def model_cells(control, n_cells: int, *, seed: int = 0):
    """`n_cells` of `control` drawn at random (seeded), so that every cell type is perturbed in proportion: the
    simulated cells are stored type by type, and the first ones would all be of one or two types."""
    chosen = np.sort(np.random.default_rng(seed).permutation(control.n_obs)[:n_cells])
    return control[chosen].copy()


def validate_knockouts(corpus, models: dict, genes, *, n_truth_cells: int = 2000, n_model_cells: int = 300,
                       chunk: int = 997, batch_size: int = 16, rounds: int = 1,
                       progress: bool = False) -> pd.DataFrame:
    """Score each model's in-silico deletion of each of `genes` against the simulator's knockout, beside the linear
    baseline. `corpus` carries the simulation (uns["scgrn_simulation"]); `models`: name -> (masked-expression
    model, tokenizer). Truth (each knockout against its paired control, `simulate_knockouts`) and predictions use
    fresh cells (`chunk`) that no model was trained on; the perturbed cells are drawn across the cell types.
    `rounds` > 1 lets each model's perturbation follow a cascade (`tl.perturb`). Beside the models: the linear
    baseline and the prior-only predictors of the true network and of each model's own prior. Returns one row per
    (truth, predictor, gene), truth "counts" or "noise-free"."""
    from ..tl.perturb import model_prior, perturb
    from .simulate import knockout_effects, simulate_knockouts, true_edges

    edges = true_edges(corpus)
    simulated = simulate_knockouts(corpus, list(genes), n_truth_cells, chunk=chunk, keep_expression=True)
    control = simulated["control"]
    truths = {"counts": {g: knockout_effects(control, simulated[g]).loc["all"] for g in genes},
              "noise-free": {g: knockout_effects(control, simulated[g], layer="expression").loc["all"]
                             for g in genes}}
    shown = model_cells(control, n_model_cells, seed=chunk)
    predictions = {"linear baseline": linear_baseline(control, genes),
                   **_prior_only("true network", edges, genes, control.var_names, signed=True)}
    for name, (model, tokenizer) in models.items():
        predictions[name] = perturb(shown, model, tokenizer, list(genes), batch_size=batch_size, max_length=None,
                                    rounds=rounds, progress=progress)
        prior = model_prior(model, tokenizer)
        if prior is not None:
            predictions.update(_prior_only(f"prior of {name}", prior, genes, control.var_names, signed=False))
    rows = [{"predictor": name, "truth": kind, **score_knockout(predicted.loc[g], truth[g], edges, g)}
            for kind, truth in truths.items() for name, predicted in predictions.items() for g in genes]
    return pd.DataFrame(rows)


SCORES = ["pearson", "spearman", "auroc_changed", "sign_accuracy_direct", "sign_accuracy_indirect",
          "sign_accuracy_repressed", "recall_at_k"]


def knockout_markdown(scores: pd.DataFrame) -> str:
    """Mean over knocked-out genes per predictor, one table per truth, and which models beat their own prior read
    directly."""
    lines = [f"{scores['gene'].nunique()} knocked-out genes; mean over them (NaN-free entries). Prior-only "
             "predictors read no data.", ""]
    for kind, group in scores.groupby("truth", sort=False):
        summary = group.groupby("predictor", sort=False)[SCORES].mean()
        lines += [f"Truth: {kind}.", "", "| predictor | Pearson r | Spearman r | AUROC, changed genes | sign accuracy, "
                  "direct | sign accuracy, indirect | sign accuracy, repressed direct targets | recall of changed "
                  "downstream genes in top-k |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in SCORES) + " |"
                  for name, row in summary.iterrows()]
        lines += ["", *_verdicts(summary), ""]
    return "\n".join(lines)


def _verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per model with a prior: does it beat the best predictor reading that prior, on Spearman r?"""
    lines = []
    for name in summary.index:
        own = [p for p in summary.index if p.startswith(f"prior of {name}: ")]
        if not own:
            continue
        best = summary.loc[own, "spearman"].idxmax()
        beats = summary.loc[name, "spearman"] > summary.loc[best, "spearman"]
        lines.append(f"- {name}: Spearman r {summary.loc[name, 'spearman']:.3f} "
                     f"{'beats' if beats else 'does NOT beat'} its own prior read directly "
                     f"({best.split(': ', 1)[1]}: {summary.loc[best, 'spearman']:.3f}).")
    return lines


def plot_knockout_scores(scores: pd.DataFrame, path) -> None:
    """Bars: each predictor's mean score against the first truth in `scores` (counts), one panel per score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = SCORES
    summary = scores[scores["truth"] == scores["truth"].iloc[0]].groupby("predictor", sort=False)[columns].mean()
    figure, axes = plt.subplots(1, len(columns), figsize=(18, 0.35 * len(summary) + 1.5), sharey=True)
    for axis, column in zip(axes, columns):
        axis.barh(summary.index, summary[column], color="tab:blue")
        axis.set_title(column.replace("_", " "), fontsize=9)
        axis.axvline(0, color="k", linewidth=0.5)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
