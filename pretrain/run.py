"""Masked-expression pretraining of scgrn through Accelerate (one CPU to many GPUs with the same command).

    accelerate launch pretrain/run.py --config pretrain/configs/cpu_smoke.yaml --data runs/pbmc68k/data \
        --output_dir runs/pbmc68k/pretrain [--set training.max_steps=200] [--init_from FOLDER]

`--data` is a folder written by data/tokenize_cells.py; or give `--h5ad FILE --prior TABLE` to tokenize first. The
config holds sections `model` (ScGrnConfig fields) and `training` (TrainingConfig fields); `--set
section.option=value` overrides any of them. A non-empty --output_dir is refused unless --overwrite is given or
the run in it is resumed (--resume_from_checkpoint latest).
"""

import argparse
import json


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML/JSON file with `model` and `training` sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override one config value (repeatable)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder from data/tokenize_cells.py")
    source.add_argument("--h5ad", action="append", help="raw-count .h5ad file(s) (or pbmc68k_reduced) to tokenize "
                        "first into OUTPUT_DIR/data (needs --prior)")
    parser.add_argument("--prior", default=None, help="with --h5ad: OmniPath table or source,target network file")
    parser.add_argument("--resource", default=None, help="with --h5ad and the OmniPath table: collectri (default) "
                        "or dorothea")
    parser.add_argument("--max_length", type=int, default=None, help="with --h5ad: tokens per cell (default: "
                        "DataConfig's)")
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, summary and model/ go here")
    parser.add_argument("--init_from", default=None, help="continue from a saved scgrn model folder")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    if args.h5ad and not args.prior:
        parser.error("--h5ad needs --prior (run data/fetch_prior.py for the OmniPath table)")
    return args


def pretrain(args) -> dict:
    from modeling_scgrn.cli import training_script_options
    from modeling_scgrn.pipeline import run_data, run_pretraining

    options = training_script_options(args.config, args.overrides, args.resume_from_checkpoint)
    # continuing a model: its cells are tokenized with its vocabulary
    data = run_data(args.data, args.output_dir, cells=args.h5ad, prior=args.prior, tokenizer=args.init_from,
                    resource=args.resource, max_length=args.max_length, resuming=bool(args.resume_from_checkpoint))
    summary = run_pretraining(data, args.output_dir, model_options=options["model"],
                              training_options=options["training"], init_from=args.init_from)
    shown = {k: v for k, v in summary.items() if k not in ("validation", "baseline_table")}
    print(json.dumps(shown, indent=2))
    print(summary["baseline_table"])
    return summary


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.cli import run_script

    run_script(args, lambda: pretrain(args), output_dir=args.output_dir, task="pretrain",
               resume=bool(args.resume_from_checkpoint), inputs=(args.data, *(args.h5ad or []), args.prior,
                                                                 args.init_from, args.config))


if __name__ == "__main__":
    main()
