"""Cell-type finetuning of scgrn through Accelerate, with held-out evaluation and a Hub-ready model folder.

    accelerate launch finetune/run.py --config finetune/configs/pbmc68k.yaml --data runs/pbmc68k/data \
        --pretrained runs/pbmc68k/pretrain/model --label_column bulk_labels --output_dir runs/pbmc68k/finetune

A new dataset can come as an `.h5ad` instead of `--data`: `--h5ad FILE --prior TABLE [--group_column donor]`
tokenizes it first into OUTPUT_DIR/data, with the pretrained model's own vocabulary (genes it does not know are
dropped and counted), split by donor when `--group_column` is given. Without `--pretrained` the model trains from
scratch (a comparison baseline). Prints held-out accuracy and macro-F1 next to the majority-class baseline; writes
`model/` (weights, tokenizer, GRN files, model card), `confusion_matrix.png` and `training_curves.png`. A non-empty
--output_dir is refused unless --overwrite is given or the run in it is resumed.
"""

import argparse
import json


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML/JSON file with `model` and `training` sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override one config value (repeatable)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder from data/tokenize_cells.py (with --label_column)")
    source.add_argument("--h5ad", action="append", help="raw-count .h5ad file(s) (or pbmc68k_reduced) to tokenize "
                        "first into OUTPUT_DIR/data (needs --prior)")
    parser.add_argument("--prior", default=None, help="with --h5ad: OmniPath table or source,target network file")
    parser.add_argument("--resource", default=None, help="with --h5ad and the OmniPath table: collectri (default) "
                        "or dorothea")
    parser.add_argument("--group_column", default=None, help="with --h5ad: obs column of donors/samples; the split "
                        "keeps each group in one split")
    parser.add_argument("--max_length", type=int, default=None, help="with --h5ad: tokens per cell (default: "
                        "DataConfig's)")
    parser.add_argument("--pretrained", default=None, help="a pretrained scgrn model folder")
    parser.add_argument("--architecture_from", default=None, help="without --pretrained: train from scratch with "
                        "this model folder's architecture (a like-for-like control for finetuning that model)")
    parser.add_argument("--label_column", required=True, help="obs column with the cell types")
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, plots and model/ go here")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    if args.h5ad and not args.prior:
        parser.error("--h5ad needs --prior (run data/fetch_prior.py for the OmniPath table)")
    return args


def finetune(args) -> dict:
    from modeling_scgrn.workflows.cli import training_script_options
    from modeling_scgrn.hub.model_folder import architecture_of
    from modeling_scgrn.workflows.data import run_data
    from modeling_scgrn.workflows.finetune import run_finetuning

    options = training_script_options(args.config, args.overrides, args.resume_from_checkpoint)
    if args.architecture_from:
        if args.pretrained:
            raise ValueError("--architecture_from trains from scratch; drop it or drop --pretrained.")
        options["model"] = {**architecture_of(args.architecture_from), **options["model"]}
    data = run_data(args.data, args.output_dir, cells=args.h5ad, prior=args.prior, tokenizer=args.pretrained,
                    label_column=args.label_column, group_column=args.group_column, resource=args.resource,
                    max_length=args.max_length, resuming=bool(args.resume_from_checkpoint))
    evaluation = run_finetuning(data, args.output_dir, label_column=args.label_column,
                                pretrained=args.pretrained, model_options=options["model"],
                                training_options=options["training"])
    headline = {k: v for k, v in evaluation.items()
                if k not in ("per_class", "confusion_matrix", "baselines", "baseline_table")}
    print(json.dumps(headline, indent=2))
    print(evaluation["baseline_table"])
    return evaluation


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: finetune(args), output_dir=args.output_dir, task="finetune",
               resume=bool(args.resume_from_checkpoint), inputs=(args.data, *(args.h5ad or []), args.prior,
                                                                 args.pretrained, args.architecture_from, args.config))


if __name__ == "__main__":
    main()
