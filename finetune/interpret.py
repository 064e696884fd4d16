"""Attention read as regulation, per cell type: top attended TF -> target pairs of a GRN model, agreement of a dense
model's attention with the prior (AUROC/AUPRC), candidate links the prior lacks, and a heat map for chosen TFs.

    python finetune/interpret.py --data runs/pbmc68k/data --label_column bulk_labels \
        --model runs/pbmc68k/finetune/model --dense_model runs/pbmc68k/finetune_dense/model \
        --regulators SPI1 CEBPB IRF8 --output_dir runs/pbmc68k/interpret

`--model` is a GRN-masked scgrn folder; `--dense_model` (optional) the same architecture trained with
grn_mode=dense (finetune/run.py --set model.grn_mode=dense). Writes attention_report.json and .md, the score
tables as Parquet, and attention_heatmap.png.
"""

import argparse
import json
from pathlib import Path


def table(frame, columns) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return lines


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder from data/tokenize_cells.py (with --label_column)")
    parser.add_argument("--label_column", required=True)
    parser.add_argument("--model", required=True, help="GRN-masked scgrn model folder")
    parser.add_argument("--dense_model", default=None, help="the dense control's model folder")
    parser.add_argument("--split", default="test", help="dataset split to read (default: held-out test)")
    parser.add_argument("--regulators", nargs="*", default=None,
                        help="TFs for the heat map (default: the 4 most attended regulators)")
    parser.add_argument("--top", type=int, default=10, help="pairs listed per cell type")
    parser.add_argument("--max_cells_per_label", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def interpret(args) -> dict:
    from transformers import AutoModel

    from modeling_scgrn.interpret import attention_scores, plot_attention_heatmap, prior_agreement, top_pairs
    from modeling_scgrn.data import load_prepared
    from modeling_scgrn.hub import check_compatible, load_pretrained

    dataset, tokenizer, network, _ = load_prepared(Path(args.data))
    if args.split not in dataset:
        raise ValueError(f"the dataset has no split {args.split!r}; splits are {list(dataset)}.")
    cells = dataset[args.split]
    if args.label_column not in cells.column_names:
        raise ValueError(f"the dataset has no label column {args.label_column!r}; columns are {cells.column_names}.")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report, lines = {}, [f"# Attention vs prior on `{args.label_column}` ({args.split} split)", ""]

    check_compatible(args.model, tokenizer)
    model = load_pretrained(AutoModel, args.model)
    if model.config.grn_mode == "dense":
        raise ValueError("--model must be GRN-masked (grn_mode grn/random/shuffled); pass dense ones as --dense_model.")
    both = model.config.grn_direction == "both"
    scores = attention_scores(model, tokenizer, cells, args.label_column, batch_size=args.batch_size,
                              max_cells_per_label=args.max_cells_per_label, progress=True)
    top = top_pairs(scores, network, args.top, regulators_only=True, both_ways=both)
    report["grn_model"] = {"folder": args.model, "grn_mode": model.config.grn_mode,
                           "top_pairs": {k: v.to_dict("records") for k, v in top.items()}}
    lines += [f"## Top attended TF -> target pairs ({args.model}, grn_mode={model.config.grn_mode})", ""]
    for label, frame in top.items():
        lines += [f"### {label}", "", *table(frame, ["regulator", "target", "score", "cells", "in_prior"]), ""]
    for label, frame in scores.items():
        frame.to_parquet(output / f"scores_grn_{label.replace('/', '_').replace(' ', '_')}.parquet")
    regulators = args.regulators
    if not regulators:
        best = {}
        for frame in top.values():
            for regulator, score in zip(frame["regulator"], frame["score"]):
                best[regulator] = max(best.get(regulator, 0.0), score)
        regulators = sorted(best, key=best.get, reverse=True)[:4]
    png = plot_attention_heatmap(scores, regulators, output / "attention_heatmap.png")
    lines += [f"Heat map of {', '.join(regulators)}: {png.name}", ""]

    if args.dense_model:
        check_compatible(args.dense_model, tokenizer)
        dense = load_pretrained(AutoModel, args.dense_model)
        dense.config.grn_direction = model.config.grn_direction  # read with the GRN model's orientation
        dense_scores = attention_scores(dense, tokenizer, cells, args.label_column, batch_size=args.batch_size,
                                        max_cells_per_label=args.max_cells_per_label, progress=True)
        agreement = prior_agreement(dense_scores, network, both_ways=both)
        candidates = top_pairs(dense_scores, network, args.top, regulators_only=True, outside_prior=True,
                               both_ways=both)
        report["dense_model"] = {"folder": args.dense_model, "prior_agreement": agreement,
                                 "candidate_links": {k: v.to_dict("records") for k, v in candidates.items()}}
        lines += [f"## Dense control's attention vs the prior ({args.dense_model})", "",
                  "| cell type | pairs | prior edges | AUROC | AUPRC | random AUPRC |", "| --- |" + " --- |" * 5]
        for label, entry in agreement.items():
            lines.append(f"| {label} | {entry['pairs']} | {entry['prior_edges']} | {entry.get('auroc', float('nan')):.3f} "
                         f"| {entry.get('auprc', float('nan')):.4f} | {entry.get('random_auprc', float('nan')):.4f} |")
        lines += ["", "## Candidate links: TF -> target pairs the dense model attends to that the prior lacks", ""]
        for label, frame in candidates.items():
            lines += [f"### {label}", "", *table(frame, ["regulator", "target", "score", "cells"]), ""]
    (output / "attention_report.json").write_text(json.dumps(report, indent=2, default=str))
    (output / "attention_report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.cli import run_script

    run_script(args, lambda: interpret(args), output_dir=args.output_dir, task="interpret",
               inputs=(args.data, args.model, args.dense_model))


if __name__ == "__main__":
    main()
