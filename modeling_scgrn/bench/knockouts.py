"""In-silico knockouts checked against truth: on cells simulated from a known network, knock regulators out in the
simulator (`simulate_knockout`, the truth) and in the model (`perturbation.perturb`, the prediction), and score
the prediction beside a linear baseline.

Scores per knocked-out gene, over the other genes: Pearson r of predicted and true log-fold changes; sign accuracy
on direct and on indirect targets that truly change; recall of the truly changed downstream genes among the top-k
predicted (k = their number). The baseline regresses each gene on the knocked-out gene in unperturbed cells and
predicts the change of setting it to zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CHANGED = 0.25  # |true log2 fold change| at which a gene counts as changed


def knockout_candidates(edges: pd.DataFrame, *, masters: int = 5, mid_level: int = 5) -> list[str]:
    """Master regulators and mid-level TFs (regulated regulators), those with the most targets first."""
    from .simulate import master_regulators

    out_degree = edges.groupby("source").size().sort_values(ascending=False, kind="stable")
    top = master_regulators(edges)
    targets = set(edges["target"])
    regulated = [g for g in out_degree.index if g in targets]
    return sorted(top, key=lambda g: -out_degree[g])[:masters] + regulated[:mid_level]


def downstream(edges: pd.DataFrame, gene: str) -> dict[str, int]:
    """Genes reachable from `gene` along the network, with their distance in edges."""
    targets = edges.groupby("source")["target"].apply(list).to_dict()
    distance, frontier, step = {}, [gene], 0
    while frontier:
        step += 1
        frontier = [t for g in frontier for t in targets.get(g, []) if t not in distance and t != gene]
        for target in frontier:
            distance.setdefault(target, step)
        frontier = list(dict.fromkeys(frontier))
    return distance


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


def score_knockout(predicted: pd.Series, truth: pd.Series, edges: pd.DataFrame, gene: str) -> dict:
    """The scores of one knockout's prediction (genes -> change) against the true log2 fold changes."""
    reach = downstream(edges, gene)
    genes = [g for g in truth.index if g != gene and g in predicted.index and not np.isnan(predicted[g])
             and np.isfinite(truth[g])]
    p, t = predicted[genes].to_numpy(float), truth[genes].to_numpy(float)
    changed = np.abs(t) >= CHANGED
    direct = np.array([reach.get(g) == 1 for g in genes])
    indirect = np.array([(reach.get(g) or 0) >= 2 for g in genes])
    moved_down = changed & np.array([g in reach for g in genes])

    def sign_accuracy(where):
        where = where & changed
        return float((np.sign(p[where]) == np.sign(t[where])).mean()) if where.any() else float("nan")

    k = int(moved_down.sum())
    top = np.argsort(-np.abs(p), kind="stable")[:k]
    return {"gene": gene, "genes_scored": len(genes), "downstream_changed": k,
            "pearson": float(np.corrcoef(p, t)[0, 1]) if len(genes) > 2 and p.std() > 0 else float("nan"),
            "sign_accuracy_direct": sign_accuracy(direct), "sign_accuracy_indirect": sign_accuracy(indirect),
            "recall_at_k": float(moved_down[top].mean()) if k else float("nan")}


def model_cells(control, n_cells: int, *, seed: int = 0):
    """`n_cells` of `control` drawn at random (seeded), so that every cell type is perturbed in proportion: the
    simulated cells are stored type by type, and the first ones would all be of one or two types."""
    chosen = np.sort(np.random.default_rng(seed).permutation(control.n_obs)[:n_cells])
    return control[chosen].copy()


def validate_knockouts(corpus, models: dict, genes, *, n_truth_cells: int = 2000, n_model_cells: int = 300,
                       chunk: int = 997, batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """Score each model's in-silico deletion of each of `genes` against the simulator's knockout, beside the linear
    baseline. `corpus` carries the simulation (uns["scgrn_simulation"]); `models`: name -> (masked-expression
    model, tokenizer). Truth (each knockout against its paired control, `simulate_knockouts`) and predictions use
    fresh cells (`chunk`) that no model was trained on; the perturbed cells are drawn across the cell types.
    Returns one row per (predictor, gene)."""
    from ..tl.perturb import perturb
    from .simulate import knockout_effects, simulate_knockouts, true_edges

    edges = true_edges(corpus)
    simulated = simulate_knockouts(corpus, list(genes), n_truth_cells, chunk=chunk)
    control = simulated["control"]
    truth = {g: knockout_effects(control, simulated[g]).loc["all"] for g in genes}
    shown = model_cells(control, n_model_cells, seed=chunk)
    rows = []
    baseline = linear_baseline(control, genes)
    for gene in genes:
        rows.append({"predictor": "linear baseline", **score_knockout(baseline.loc[gene], truth[gene], edges, gene)})
    for name, (model, tokenizer) in models.items():
        effects = perturb(shown, model, tokenizer, list(genes), batch_size=batch_size, max_length=None,
                          progress=progress)
        rows += [{"predictor": name, **score_knockout(effects.loc[g], truth[g], edges, g)} for g in genes]
    return pd.DataFrame(rows)


def knockout_markdown(scores: pd.DataFrame) -> str:
    """Mean over knocked-out genes per predictor."""
    columns = ["pearson", "sign_accuracy_direct", "sign_accuracy_indirect", "recall_at_k"]
    summary = scores.groupby("predictor", sort=False)[columns].mean()
    lines = [f"{scores['gene'].nunique()} knocked-out genes; mean over them (NaN-free entries).", "",
             "| predictor | Pearson r | sign accuracy, direct | sign accuracy, indirect | recall of changed "
             "downstream genes in top-k |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |"
              for name, row in summary.iterrows()]
    return "\n".join(lines) + "\n"


def plot_knockout_scores(scores: pd.DataFrame, path) -> None:
    """Bars: each predictor's mean score, one panel per score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["pearson", "sign_accuracy_direct", "sign_accuracy_indirect", "recall_at_k"]
    summary = scores.groupby("predictor", sort=False)[columns].mean()
    figure, axes = plt.subplots(1, len(columns), figsize=(13, 3.2), sharey=True)
    for axis, column in zip(axes, columns):
        axis.barh(summary.index, summary[column], color="tab:blue")
        axis.set_title(column.replace("_", " "), fontsize=9)
        axis.axvline(0, color="k", linewidth=0.5)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
