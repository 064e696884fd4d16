"""Masked-expression pretraining of scgrn through Accelerate (one CPU to many GPUs with the same command).

    accelerate launch pretrain/run.py --config pretrain/configs/cpu_smoke.yaml --data runs/pbmc68k/data \
        --output_dir runs/pbmc68k/pretrain [--set training.max_steps=200] [--init_from FOLDER]

`--data` is a folder written by data/tokenize_cells.py. The config holds sections `model` (ScGrnConfig fields)
and `training` (TrainingConfig fields); `--set section.option=value` overrides any of them.
"""

import argparse
import json

from modeling_scgrn.pipeline import add_config_arguments, run_pretraining, script_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--data", required=True, help="folder from data/tokenize_cells.py")
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, summary and model/ go here")
    parser.add_argument("--init_from", default=None, help="continue from a saved scgrn model folder")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    args = parser.parse_args()
    options = script_options(args.config, args.overrides, {"model": None, "training": None})
    if args.resume_from_checkpoint:
        options["training"]["resume_from_checkpoint"] = args.resume_from_checkpoint
    summary = run_pretraining(args.data, args.output_dir, model_options=options["model"],
                              training_options=options["training"], init_from=args.init_from)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
