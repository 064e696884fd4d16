"""Masked-expression pretraining of scgrn through Accelerate (one CPU to many GPUs with the same command).

    accelerate launch pretrain/run.py --config pretrain/configs/cpu_smoke.yaml --data runs/pbmc68k/data \
        --output_dir runs/pbmc68k/pretrain [--set training.max_steps=200] [--model FOLDER]

`--data` is a folder written by data/tokenize_cells.py; or give `--input FILE --prior TABLE` to tokenize first; or
stream cells from a TileDB-SOMA experiment without exporting them (`--soma URI --prior TABLE [--obs_filter
"dataset == 'pbmc'"]`, or the hosted CELLxGENE Census with `--census RELEASE`; needs `pip install 'scgrn[soma]'`).
Each process (and DataLoader worker) then reads its own cells; checkpoints record the stream's position. The
config holds sections `model` (ScGrnConfig fields) and `training` (TrainingConfig fields); `--set
section.option=value` overrides any of them. A non-empty --output_dir is refused unless --overwrite is given or
the run in it is resumed (--resume_from_checkpoint latest).
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
    source.add_argument("--data", help=shared.DATA_FOLDER_HELP)
    shared.add_input(source, several=True, when="to tokenize first into OUTPUT_DIR/data (needs --prior)")
    source.add_argument("--soma", help="a TileDB-SOMA experiment (folder or URI) to stream cells from (needs --prior)")
    source.add_argument("--census", metavar="RELEASE", help="the hosted CELLxGENE Census release to stream from, e.g. "
                        "stable (needs network, --prior and pip install 'scgrn[census]')")
    shared.add_prior(parser, when="with --input/--soma/--census")
    parser.add_argument("--max_length", type=shared.count, default=None, help="with --input/--soma/--census: "
                        + shared.DATA_HELP["max_length"] + " (default: DataConfig's)")
    soma = parser.add_argument_group("streaming from SOMA (--soma, --census)")
    soma.add_argument("--obs_filter", default=None, help="TileDB value filter over obs, e.g. "
                      "\"is_primary_data == True and tissue_general == 'blood'\" (--census: primary cells by default)")
    soma.add_argument("--measurement", default="RNA", help="the experiment's measurement (default RNA)")
    soma.add_argument("--layer", default="raw", help="the X layer of raw counts (default raw)")
    soma.add_argument("--gene_column", default=None, help="the var column naming genes as the prior does (default: "
                      "feature_name, gene_symbols, gene_name, var_id or feature_id, the first present)")
    soma.add_argument("--panel", default=None, help="vocabulary: all (every gene of the experiment, default) or a "
                      "prior-aware panel: ranked, union, hvg (chosen on 10,000 sampled cells)")
    soma.add_argument("--validation_cells", type=shared.count, default=None, help="cells held out for validation (default "
                      "1,000, at most DataConfig's validation_size)")
    shared.add_output_dir(parser, "checkpoints, logs, summary and model/ go here")
    parser.add_argument("--model", default=None, help="continue pretraining a saved scgrn model folder")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    shared.add_housekeeping(parser)
    args = parser.parse_args(argv)
    if (args.input or args.soma or args.census) and not args.prior:
        parser.error("--input, --soma and --census need --prior (run data/fetch_prior.py for the OmniPath table)")
    return args


def pretrain(args) -> dict:
    from modeling_scgrn.workflows.cli import training_script_configs
    from modeling_scgrn.workflows.data import CellSource
    from modeling_scgrn.workflows.pretrain import run_pretraining

    model_options, training = training_script_configs(args.config, args.overrides, args.output_dir,
                                                      args.resume_from_checkpoint)
    soma = soma_source(args)
    streaming = {} if soma is None else dict(panel=args.panel, validation_cells=args.validation_cells)
    # continuing a model (--model): its cells are tokenized with its vocabulary
    source = CellSource(data_dir=args.data, cells=args.input, soma=soma, prior=args.prior, resource=args.resource,
                        max_length=args.max_length, **streaming)
    summary = run_pretraining(source, training, model_options=model_options, init_from=args.model)
    shown = {k: v for k, v in summary.items() if k not in ("validation", "baseline_table")}
    print(json.dumps(shown, indent=2))
    print(summary["baseline_table"])
    return summary


def soma_source(args):
    """The SOMA experiment of --soma or --census (None for --data/--input)."""
    if args.census:
        from modeling_scgrn.cells.soma import census_source

        return census_source(args.census, **({"obs_filter": args.obs_filter} if args.obs_filter else {}),
                             **({"gene_column": args.gene_column} if args.gene_column else {}))
    if args.soma:
        from modeling_scgrn.cells.soma import SomaSource

        return SomaSource(args.soma, args.measurement, args.layer, args.obs_filter, args.gene_column)
    return None


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: pretrain(args), output_dir=args.output_dir, task="pretrain",
               resume=bool(args.resume_from_checkpoint), inputs=(args.data, *(args.input or []), args.soma, args.prior,
                                                                 args.model, args.config))


if __name__ == "__main__":
    main()
