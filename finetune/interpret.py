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
import runpy
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

# scgrn's shared options (names, help, choices), read by path before scgrn is imported (it loads torch), so that
# --help answers at once
shared = SimpleNamespace(**runpy.run_path(str(Path(find_spec("modeling_scgrn").origin).parent / "options" /
                                                "arguments.py")))


def parse_arguments(argv=None) -> argparse.Namespace:
    # no defaults here: what is not given takes InterpretationOptions' own
    parser = shared.new_parser(__doc__, argument_default=argparse.SUPPRESS)
    parser.add_argument("--data", required=True, help=shared.DATA_FOLDER_HELP + " (with --label_column)")
    parser.add_argument("--label_column", required=True)
    parser.add_argument("--model", required=True, help="GRN-masked scgrn model folder")
    parser.add_argument("--dense_model", help="the dense control's model folder")
    parser.add_argument("--split", help=shared.default_help(shared.InterpretationOptions, "split",
                                                            "dataset split to read"))
    parser.add_argument("--regulators", nargs="+", help="TFs for the heat map (default: the 4 most attended)")
    parser.add_argument("--top", type=shared.count, help=shared.default_help(shared.InterpretationOptions, "top",
                                                                            "pairs listed per cell type"))
    parser.add_argument("--max_cells_per_label", type=shared.count, help=shared.default_help(
        shared.InterpretationOptions, "max_cells_per_label", "cells read per cell type"))
    parser.add_argument("--batch_size", type=shared.count, help=shared.default_help(
        shared.InterpretationOptions, "batch_size", "cells per forward pass"))
    shared.add_output_dir(parser, "where the tables and heat maps go")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def interpret(args) -> dict:
    from modeling_scgrn.options.arguments import InterpretationOptions
    from modeling_scgrn.options.typed import given_options
    from modeling_scgrn.workflows.interpret import run_interpretation

    options = given_options(InterpretationOptions, args, "interpretation")
    return run_interpretation(args.data, args.output_dir, label_column=args.label_column, model=args.model,
                              dense_model=getattr(args, "dense_model", None), options=options)


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: interpret(args), output_dir=args.output_dir, task="interpret",
               inputs=(args.data, args.model, getattr(args, "dense_model", None)))


if __name__ == "__main__":
    main()
