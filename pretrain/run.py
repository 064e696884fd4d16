"""Masked-expression pretraining of scgrn through Accelerate (one CPU to many GPUs with the same command).

    accelerate launch pretrain/run.py --config pretrain/configs/cpu_smoke.yaml --data runs/pbmc68k/data \
        --output_dir runs/pbmc68k/pretrain [--set training.max_steps=200] [--init_from FOLDER]

`--data` is a folder written by data/tokenize_cells.py; or give `--h5ad FILE --prior TABLE` to tokenize first; or
stream cells from a TileDB-SOMA experiment without exporting them (`--soma URI --prior TABLE [--obs_filter
"dataset == 'pbmc'"]`, or the hosted CELLxGENE Census with `--census RELEASE`; needs `pip install 'scgrn[soma]'`).
Each process (and DataLoader worker) then reads its own cells; checkpoints record the stream's position. The
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
    source.add_argument("--soma", help="a TileDB-SOMA experiment (folder or URI) to stream cells from (needs --prior)")
    source.add_argument("--census", metavar="RELEASE", help="the hosted CELLxGENE Census release to stream from, e.g. "
                        "stable (needs network, --prior and pip install 'scgrn[census]')")
    parser.add_argument("--prior", default=None, help="with --h5ad/--soma/--census: OmniPath table or "
                        "source,target network file")
    parser.add_argument("--resource", default=None, help="with the OmniPath table: collectri (default) or dorothea")
    parser.add_argument("--max_length", type=int, default=None, help="with --h5ad/--soma/--census: tokens per cell "
                        "(default: DataConfig's)")
    soma = parser.add_argument_group("streaming from SOMA (--soma, --census)")
    soma.add_argument("--obs_filter", default=None, help="TileDB value filter over obs, e.g. "
                      "\"is_primary_data == True and tissue_general == 'blood'\" (--census: primary cells by default)")
    soma.add_argument("--measurement", default="RNA", help="the experiment's measurement (default RNA)")
    soma.add_argument("--layer", default="raw", help="the X layer of raw counts (default raw)")
    soma.add_argument("--gene_column", default=None, help="the var column naming genes as the prior does (default: "
                      "feature_name, gene_symbols, gene_name, var_id or feature_id, the first present)")
    soma.add_argument("--panel", default=None, help="vocabulary: all (every gene of the experiment, default) or a "
                      "prior-aware panel: ranked, union, hvg (chosen on 10,000 sampled cells)")
    soma.add_argument("--validation_cells", type=int, default=None, help="cells held out for validation (default "
                      "1,000, at most DataConfig's validation_size)")
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, summary and model/ go here")
    parser.add_argument("--init_from", default=None, help="continue from a saved scgrn model folder")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    if (args.h5ad or args.soma or args.census) and not args.prior:
        parser.error("--h5ad, --soma and --census need --prior (run data/fetch_prior.py for the OmniPath table)")
    return args


def pretrain(args) -> dict:
    from modeling_scgrn.workflows.cli import training_script_options
    from modeling_scgrn.workflows.data import run_data
    from modeling_scgrn.workflows.pretrain import run_pretraining

    options = training_script_options(args.config, args.overrides, args.resume_from_checkpoint)
    soma, streaming = soma_source(args), {}
    if soma is not None:
        streaming = dict(panel=args.panel, validation_cells=args.validation_cells)
    # continuing a model: its cells are tokenized with its vocabulary
    data = run_data(args.data, args.output_dir, cells=args.h5ad, soma=soma, prior=args.prior, tokenizer=args.init_from,
                    resource=args.resource, max_length=args.max_length, resuming=bool(args.resume_from_checkpoint),
                    **streaming)
    summary = run_pretraining(data, args.output_dir, model_options=options["model"],
                              training_options=options["training"], init_from=args.init_from)
    shown = {k: v for k, v in summary.items() if k not in ("validation", "baseline_table")}
    print(json.dumps(shown, indent=2))
    print(summary["baseline_table"])
    return summary


def soma_source(args):
    """The SOMA experiment of --soma or --census (None for --data/--h5ad)."""
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
               resume=bool(args.resume_from_checkpoint), inputs=(args.data, *(args.h5ad or []), args.soma, args.prior,
                                                                 args.init_from, args.config))


if __name__ == "__main__":
    main()
