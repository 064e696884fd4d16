"""Masked-expression pretraining of scgrn through Accelerate (one CPU to many GPUs with the same command).

    accelerate launch pretrain/run.py --config pretrain/configs/cpu_smoke.yaml --data runs/pbmc68k/data \
        --output_dir runs/pbmc68k/pretrain [--set training.max_steps=200] [--init_from FOLDER]

`--data` is a folder written by data/tokenize_cells.py; or give `--h5ad FILE --prior TABLE` to tokenize first. The config holds sections `model` (ScGrnConfig fields)
and `training` (TrainingConfig fields); `--set section.option=value` overrides any of them.
"""

import argparse
import json

from modeling_scgrn.grn import GeneRegulatoryNetwork
from modeling_scgrn.pipeline import add_config_arguments, prepare_cells, run_pretraining, script_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder from data/tokenize_cells.py")
    source.add_argument("--h5ad", action="append", help="raw-count .h5ad file(s) (or pbmc68k_reduced) to tokenize "
                        "first into OUTPUT_DIR/data (needs --prior)")
    parser.add_argument("--prior", default=None, help="with --h5ad: OmniPath table or source,target network file")
    parser.add_argument("--max_length", type=int, default=1024, help="with --h5ad: tokens per cell")
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, summary and model/ go here")
    parser.add_argument("--init_from", default=None, help="continue from a saved scgrn model folder")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    args = parser.parse_args()
    options = script_options(args.config, args.overrides, {"model": None, "training": None})
    if args.resume_from_checkpoint:
        options["training"]["resume_from_checkpoint"] = args.resume_from_checkpoint
    data = args.data
    if args.h5ad:
        if not args.prior:
            parser.error("--h5ad needs --prior (run data/fetch_prior.py for the OmniPath table)")
        data = f"{args.output_dir}/data"
        # continuing a model: tokenize with its vocabulary
        prepare_cells(args.h5ad, GeneRegulatoryNetwork.read(args.prior), data, max_length=args.max_length,
                      tokenizer=args.init_from)
    summary = run_pretraining(data, args.output_dir, model_options=options["model"],
                              training_options=options["training"], init_from=args.init_from)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
