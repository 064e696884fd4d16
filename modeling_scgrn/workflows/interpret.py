"""Interpretation run: attention scores of a finetuned model (and a dense one beside it) per cell type, their
agreement with the prior, top pairs, a heat map and a markdown report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..options.arguments import InterpretationOptions
from ..tl.attention import attention_scores, plot_attention_heatmap, prior_agreement, top_pairs


def _markdown_table(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return lines


def _most_attended_regulators(top: dict, n: int = 4) -> list[str]:
    best = {}
    for frame in top.values():
        for regulator, score in zip(frame["regulator"], frame["score"]):
            best[regulator] = max(best.get(regulator, 0.0), score)
    return sorted(best, key=best.get, reverse=True)[:n]


def _grn_model_section(model, folder, cells, tokenizer, network, label_column, output: Path,
                       options: InterpretationOptions):
    """Top attended TF -> target pairs of a GRN model per cell type, their score tables and the heat map."""
    both = model.config.grn_direction == "both"
    scores = attention_scores(model, tokenizer, cells, label_column, batch_size=options.batch_size,
                              max_cells_per_label=options.max_cells_per_label, progress=True)
    top = top_pairs(scores, network, options.top, regulators_only=True, both_ways=both)
    lines = [f"## Top attended TF -> target pairs ({folder}, grn_mode={model.config.grn_mode})", ""]
    for label, frame in top.items():
        lines += [f"### {label}", "", *_markdown_table(frame, ["regulator", "target", "score", "cells", "in_prior"]), ""]
    for label, frame in scores.items():
        frame.to_parquet(output / f"scores_grn_{label.replace('/', '_').replace(' ', '_')}.parquet")
    regulators = options.regulators or _most_attended_regulators(top)
    png = plot_attention_heatmap(scores, regulators, output / "attention_heatmap.png")
    lines += [f"Heat map of {', '.join(regulators)}: {png.name}", ""]
    report = {"folder": Path(str(folder)).name, "grn_mode": model.config.grn_mode,
              "top_pairs": {k: v.to_dict("records") for k, v in top.items()}}
    return report, lines


def _dense_model_section(dense, folder, grn_direction, cells, tokenizer, network, label_column,
                         options: InterpretationOptions):
    """How a dense model's attention agrees with the prior (AUROC/AUPRC) and the links it attends that the prior
    lacks."""
    dense.config.grn_direction = grn_direction  # read with the GRN model's orientation
    both = grn_direction == "both"
    scores = attention_scores(dense, tokenizer, cells, label_column, batch_size=options.batch_size,
                              max_cells_per_label=options.max_cells_per_label, progress=True)
    agreement = prior_agreement(scores, network, both_ways=both)
    candidates = top_pairs(scores, network, options.top, regulators_only=True, outside_prior=True, both_ways=both)
    lines = [f"## Dense control's attention vs the prior ({folder})", "",
             "| cell type | pairs | prior edges | AUROC | AUPRC | random AUPRC |", "| --- |" + " --- |" * 5]
    for label, entry in agreement.items():
        lines.append(f"| {label} | {entry['pairs']} | {entry['prior_edges']} | {entry.get('auroc', float('nan')):.3f} "
                     f"| {entry.get('auprc', float('nan')):.4f} | {entry.get('random_auprc', float('nan')):.4f} |")
    lines += ["", "## Candidate links: TF -> target pairs the dense model attends to that the prior lacks", ""]
    for label, frame in candidates.items():
        lines += [f"### {label}", "", *_markdown_table(frame, ["regulator", "target", "score", "cells"]), ""]
    report = {"folder": Path(str(folder)).name, "prior_agreement": agreement,
              "candidate_links": {k: v.to_dict("records") for k, v in candidates.items()}}
    return report, lines


def run_interpretation(data_dir, output_dir, *, label_column: str, model: str, dense_model: str | None = None,
                       options: InterpretationOptions | None = None) -> dict:
    """Attention read as regulation on `options.split` of a tokenized data folder ([`InterpretationOptions`]): the
    GRN `model`'s top attended pairs per cell type (and a heat map of `options.regulators`, by default the 4 most
    attended), and with `dense_model` its agreement with the prior and candidate links. Writes
    `attention_report.json` and `.md`, score tables as Parquet and `attention_heatmap.png` under `output_dir`;
    returns the report."""
    from transformers import AutoModel

    from ..cells.prepared import load_prepared
    from ..hub.model_folder import check_compatible, load_pretrained

    options = InterpretationOptions() if options is None else options
    split = options.split
    dataset, tokenizer, network, _ = load_prepared(Path(data_dir))
    if split not in dataset:
        raise ValueError(f"the dataset has no split {split!r}; splits are {list(dataset)}.")
    cells = dataset[split]
    if label_column not in cells.column_names:
        raise ValueError(f"the dataset has no label column {label_column!r}; columns are {cells.column_names}.")
    check_compatible(model, tokenizer)
    grn_model = load_pretrained(AutoModel, model)
    if grn_model.config.grn_mode == "dense":
        raise ValueError("--model must be GRN-masked (grn_mode grn, random, shuffled or rewired); pass dense ones as --dense_model.")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report, lines = {}, [f"# Attention vs prior on `{label_column}` ({split} split)", ""]
    report["grn_model"], section = _grn_model_section(grn_model, model, cells, tokenizer, network, label_column,
                                                      output, options)
    lines += section
    if dense_model:
        check_compatible(dense_model, tokenizer)
        report["dense_model"], section = _dense_model_section(
            load_pretrained(AutoModel, dense_model), dense_model, grn_model.config.grn_direction, cells, tokenizer,
            network, label_column, options)
        lines += section
    (output / "attention_report.json").write_text(json.dumps(report, indent=2, default=str))
    (output / "attention_report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report
