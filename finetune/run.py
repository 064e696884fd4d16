"""Cell-type finetuning of scgrn through Accelerate, with held-out evaluation and a Hub-ready model folder.

    accelerate launch finetune/run.py --config finetune/configs/pbmc68k.yaml --data runs/pbmc68k/data \
        --model runs/pbmc68k/pretrain/model --label_column bulk_labels --output_dir runs/pbmc68k/finetune

A new dataset can come as an `.h5ad` instead of `--data`: `--input FILE --prior TABLE [--group_column donor]`
tokenizes it first into OUTPUT_DIR/data, with the pretrained model's own vocabulary (genes it does not know are
dropped and counted), split by donor when `--group_column` is given. Without `--model` the model trains from
scratch (a comparison baseline). Prints held-out accuracy and macro-F1 next to the majority-class baseline; writes
`model/` (weights, tokenizer, GRN files, model card), `confusion_matrix.png` and `training_curves.png`. A non-empty
--output_dir is refused unless --overwrite is given or the run in it is resumed.
"""

import argparse
import json
import runpy
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

# scgrn's shared options (names, help, choices), read by path before scgrn is imported (it loads torch), so that
# --help answers at once
shared = SimpleNamespace(**runpy.run_path(str(Path(find_spec("modeling_scgrn").origin).parent / "options" /
                                                "arguments.py")))


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = shared.new_parser(__doc__)
    shared.add_config(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=shared.DATA_FOLDER_HELP + " (with --label_column)")
    shared.add_input(source, several=True, when="to tokenize first into OUTPUT_DIR/data (needs --prior)")
    shared.add_prior(parser, when="with --input")
    parser.add_argument("--group_column", default=None, help="with --input: obs column of donors/samples; the split "
                        "keeps each group in one split")
    parser.add_argument("--max_length", type=shared.count, default=None, help="with --input: "
                        + shared.DATA_HELP["max_length"] + " (default: DataConfig's)")
    parser.add_argument("--model", default=None, help="a pretrained scgrn model folder to finetune")
    parser.add_argument("--architecture_from", default=None, help="without --model: train from scratch with "
                        "this model folder's architecture (a like-for-like control for finetuning that model)")
    parser.add_argument("--label_column", required=True, help="obs column with the cell types")
    parser.add_argument("--labels_per_type", type=shared.count, default=None, help="finetune with few labels: keep "
                        "this many training cells of each type (seeded by training.seed; the baselines see the same "
                        "cells; validation and test cells unchanged)")
    shared.add_output_dir(parser, "checkpoints, logs, plots and model/ go here")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    shared.add_housekeeping(parser)
    args = parser.parse_args(argv)
    if args.input and not args.prior:
        parser.error("--input needs --prior (run data/fetch_prior.py for the OmniPath table)")
    return args


def finetune(args) -> dict:
    from modeling_scgrn.workflows.cli import training_script_configs
    from modeling_scgrn.workflows.data import CellSource
    from modeling_scgrn.workflows.finetune import run_finetuning

    model_options, training = training_script_configs(args.config, args.overrides, args.output_dir,
                                                      args.resume_from_checkpoint)
    # finetuning a model (--model): its cells are tokenized with its vocabulary
    source = CellSource(data_dir=args.data, cells=args.input, prior=args.prior, resource=args.resource,
                        max_length=args.max_length, label_column=args.label_column, group_column=args.group_column)
    evaluation = run_finetuning(source, training, label_column=args.label_column, pretrained=args.model,
                                model_options=model_options, architecture_from=args.architecture_from,
                                labels_per_class=args.labels_per_type)
    headline = {k: v for k, v in evaluation.items()
                if k not in ("per_class", "confusion_matrix", "baselines", "baseline_table")}
    print(json.dumps(headline, indent=2))
    print(evaluation["baseline_table"])
    return evaluation


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: finetune(args), output_dir=args.output_dir, task="finetune",
               resume=bool(args.resume_from_checkpoint), inputs=(args.data, *(args.input or []), args.prior,
                                                                 args.model, args.architecture_from, args.config))


if __name__ == "__main__":
    main()
