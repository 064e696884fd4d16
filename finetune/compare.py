"""The paper's table on your data, in one command: the same architecture and training budget finetuned with the
GRN mask (`grn`), without a mask (`dense`) and with the controls (`rewired`: the same genes as regulators and
targets, as often, along none of the prior's edges; `random`; `shuffled`),
over several seeds; mean +/- sd of accuracy, macro-F1 and embedding metrics, each mask's per-cell reach, and
scikit-learn baselines on the same held-out cells. `--pretrain_config` adds an arm that pretrains each mask first.

    python finetune/compare.py --config finetune/configs/pbmc68k.yaml --data runs/pbmc68k/data \
        --label_column bulk_labels --output_dir runs/pbmc68k/compare --seeds 0 1 2

Writes comparison.md, comparison.json and comparison.png. The model section of the config sets the shared
architecture (its grn_mode is overridden per run). A non-empty --output_dir is refused unless --overwrite is given.
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
    parser = shared.new_parser(__doc__)
    shared.add_config(parser)
    parser.add_argument("--data", required=True, help=shared.DATA_FOLDER_HELP + " (with --label_column)")
    parser.add_argument("--label_column", required=True, help="obs column with the cell types")
    shared.add_output_dir(parser, "where the runs and the table go")
    parser.add_argument("--modes", nargs="+", default=None, help="mask modes, values of ScGrnConfig's grn_mode "
                        "(default: all; rewired is the control matched to what cells see)")
    parser.add_argument("--pretrain_config", default=None, help="add a pretrained arm: each mask is pretrained on "
                        "the same cells with this config's training section first (its model section, if any, sets "
                        "the architecture of both arms)")
    parser.add_argument("--seeds", nargs="+", type=shared.seed, default=[0, 1, 2], help="seeds per mode")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def compare(args) -> dict:
    from modeling_scgrn.workflows.cli import training_script_configs
    from modeling_scgrn.workflows.compare import run_comparison

    model_options, training = training_script_configs(args.config, args.overrides)
    pretraining = None
    if args.pretrain_config:
        pretrain_model, pretraining = training_script_configs(args.pretrain_config, [])
        model_options = {**pretrain_model, **model_options}
    modes = {"modes": tuple(args.modes)} if args.modes else {}
    result = run_comparison(args.data, args.output_dir, label_column=args.label_column, seeds=args.seeds,
                            model_options=model_options, training=training, pretraining=pretraining, **modes)
    print(result["markdown"])
    return result


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: compare(args), output_dir=args.output_dir, task="compare",
               inputs=(args.data, args.config, args.pretrain_config))


if __name__ == "__main__":
    main()
