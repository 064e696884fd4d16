"""Prior against controls: the same finetuning for the prior and each control mask over several seeds, one table and
one plot, with the baselines fitted once on the same held-out cells.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..cells.prepared import load_prepared
from ..evaluation.baselines import classification_baselines
from ..evaluation.plots import COMPARED_METRICS, plot_comparison
from ..model.configuration_scgrn import GRN_MODES
from ..storage.folders import jsonable
from ..train.training import TrainingConfig
from .finetune import labelled_classes, run_finetuning
from .pretrain import run_pretraining

def _comparison_run(data_dir, folder: Path, mode: str, seed: int, label_column: str, model_options: dict,
                    training: TrainingConfig, pretraining: TrainingConfig | None, baselines: dict) -> dict:
    """One cell of the comparison: finetune `mode` from scratch, or pretrain it first when `pretraining`."""
    options = {**model_options, "grn_mode": mode, "grn_control_seed": int(seed)}
    pretrained = None
    if pretraining is not None:
        run_pretraining(data_dir, replace(pretraining, seed=int(seed), report_to="none",
                                          output_dir=str(folder / "pretrain")), model_options=options)
        pretrained, options = str(folder / "pretrain" / "model"), {}
    training = replace(training, seed=int(seed), report_to="none", output_dir=str(folder / "finetune"))
    evaluation = run_finetuning(data_dir, training, label_column=label_column, pretrained=pretrained,
                                model_options=options, save_outputs=False, baselines=baselines)
    coverage = evaluation["prior_coverage"] or {}
    return {"grn_mode": mode, "arm": "pretrained" if pretrained else "scratch", "seed": int(seed),
            **{k: evaluation[k] for k in COMPARED_METRICS},
            "active_pairs_per_cell": coverage.get("mean_active_pairs_per_cell", float("nan")),
            "tokens_with_partner": coverage.get("mean_share_of_tokens_with_partner", float("nan")),
            "baselines": {k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in evaluation["baselines"].items()}}


def comparison_markdown(runs: list[dict], label_column: str) -> str:
    """Mean +/- sd over seeds per mask (and arm), with each mask's per-cell reach, then the baselines' rows on the
    same held-out cells."""
    import pandas as pd

    table = pd.DataFrame(runs)
    columns = [*COMPARED_METRICS, "active_pairs_per_cell", "tokens_with_partner"]
    summary = table.groupby(["grn_mode", "arm"], sort=False)[columns].agg(["mean", "std"])
    seeds = table["seed"].nunique()
    lines = [f"Finetuned on `{label_column}`, {seeds} seeds per mask; mean +/- sd over seeds. Active pairs and tokens "
             "with a partner are per training cell, for the edges each mask uses.", "",
             "| mask | arm | " + " | ".join(m.removeprefix("test_") for m in COMPARED_METRICS)
             + " | active pairs per cell | tokens with a partner |", "| --- | --- |" + " --- |" * (len(columns))]
    for mode, arm in summary.index:
        cells = [f"{summary.loc[(mode, arm), (m, 'mean')]:.3f} +/- {np.nan_to_num(summary.loc[(mode, arm), (m, 'std')]):.3f}"
                 for m in COMPARED_METRICS]
        active, share = summary.loc[(mode, arm), ("active_pairs_per_cell", "mean")], summary.loc[
            (mode, arm), ("tokens_with_partner", "mean")]
        reach = ["-", "-"] if np.isnan(active) else [f"{active:.1f}", f"{share:.1%}"]
        lines.append(f"| {mode} | {arm} | " + " | ".join(cells + reach) + " |")
    for name, entry in runs[0]["baselines"].items():
        lines.append(f"| {name} (baseline) | - | {entry['accuracy']:.3f} | {entry['macro_f1']:.3f} |"
                     + " - |" * (len(columns) - 2))
    return "\n".join(lines) + "\n"


def run_comparison(data_dir, output_dir, *, label_column: str, training: TrainingConfig | None = None,
                   pretraining: TrainingConfig | None = None, model_options: Mapping | None = None,
                   modes=GRN_MODES, seeds=(0, 1, 2)) -> dict:
    """The prior-vs-control table on the user's data: the same architecture (`model_options`, `ScGrnConfig` fields)
    and budget (`training`; each run sets its own seed and folder under `output_dir`) finetuned with each mask
    mode over several seeds (the seed sets initialisation, data order and the controls' edges). `rewired` is the
    control matched to what cells see (degree-preserving, no real edge). With `pretraining`, a second arm
    pretrains each mask on the same cells first, then finetunes it: whether pretraining with the prior helps.
    Baselines (logistic regression, kNN, majority class) on the same held-out cells close the
    table.

    Writes `comparison.md`, `comparison.json` (every run) and `comparison.png` under `output_dir`; returns the runs
    and the markdown."""
    import pandas as pd

    unknown = [mode for mode in modes if mode not in GRN_MODES]
    if unknown:
        raise ValueError(f"mode(s) {unknown} are not grn_mode values; choose from {list(GRN_MODES)}.")
    for name, given in (("seeds", list(seeds)), ("modes", list(modes))):
        if not given or len(set(given)) != len(given):
            raise ValueError(f"{name} {given} must be given, each once: a repeated one would train into the same "
                             "run folder twice.")

    model_options, training = dict(model_options or {}), training or TrainingConfig()
    arms = [None] if pretraining is None else [None, pretraining]
    dataset, tokenizer, _, _ = load_prepared(data_dir)
    labelled_classes(dataset, label_column)  # refuse a missing or single-class column before any run
    # the same held-out cells for every run: the baselines are fitted once
    baselines = classification_baselines(dataset["train"], dataset["test"], label_column, len(tokenizer))
    runs = [_comparison_run(data_dir, Path(output_dir) / f"{mode}_seed{seed}" / ("pretrained" if arm else "scratch"),
                            mode, seed, label_column, model_options, training, arm, baselines)
            for mode in modes for arm in arms for seed in seeds]
    markdown = comparison_markdown(runs, label_column)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "comparison.md").write_text(markdown)
    (output_dir / "comparison.json").write_text(json.dumps(runs, indent=2, default=jsonable))
    plot_comparison(pd.DataFrame(runs), output_dir / "comparison.png")
    return {"runs": runs, "markdown": markdown}
