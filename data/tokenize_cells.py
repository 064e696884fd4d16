"""Tokenize cells for scgrn: an .h5ad file (or scanpy's bundled pbmc68k_reduced) and a GRN prior become a
tokenizer, a tokenized train/validation/test dataset (Hugging Face `datasets`, Arrow) and a prior report.

    python data/tokenize_cells.py --input pbmc68k_reduced --prior priors/omnipath_interactions.parquet \
        --label_column bulk_labels --output_dir runs/pbmc68k/data

Options not given take their defaults from `modeling_scgrn.DataConfig` (max_length 1024, n_bins 51, panel
all, ...). A non-empty --output_dir is refused unless --overwrite is given; the folder is written under a
temporary name and renamed when complete.
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

# DataConfig's fields settable here with a value, and the type to parse it as; their defaults live in DataConfig
# alone, their help in the shared option table
DATA_OPTIONS = {"max_length": int, "n_bins": int, "n_top_genes": int, "seed": int, "test_size": float,
                "validation_size": float, "min_genes": int, "min_cells": int, "num_proc": int, "chunk_size": int,
                "max_shard_size": str}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = shared.new_parser(__doc__, argument_default=argparse.SUPPRESS)
    shared.add_input(parser, several=True, required=True)
    shared.add_prior(parser, required=True)
    shared.add_output_dir(parser, "the folder to write: dataset/, tokenizer/, prior/ and prior_report.json")
    parser.add_argument("--label_column", help="obs column of cell types (stratifies the split)")
    parser.add_argument("--group_column", help="obs column of donors/samples: split by group")
    parser.add_argument("--panel", choices=shared.PANELS, help=shared.DATA_HELP["panel"])
    for name, kind in DATA_OPTIONS.items():
        parser.add_argument(f"--{name}", type=kind, help=shared.DATA_HELP[name])
    parser.add_argument("--backed", action="store_true", help=shared.DATA_HELP["backed"] + " (one input, --panel all)")
    parser.add_argument("--tokenizer", help="a folder with a tokenizer (e.g. a pretrained model): tokenize with its "
                        "vocabulary, so the data can finetune that model (genes outside it are dropped and counted; "
                        "--panel all)")
    parser.add_argument("--no_normalize", dest="normalize", action="store_false",
                        help="the values are already normalised (e.g. log1p of total-count-normalised counts): use "
                        "them as they are instead of requiring raw counts (--panel all)")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def tokenize(args) -> dict:
    import logging

    from modeling_scgrn.workflows.data import tokenize_files

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    options = {k: v for k, v in vars(args).items() if k not in ("input", "prior", "output_dir", "debug")}
    report = tokenize_files(args.input, args.prior, args.output_dir, **options)
    prior = {k: v for k, v in report["prior"].items() if k not in ("out_degree", "in_degree")}
    print(json.dumps({"prior": prior, "qc": report["qc"], "tokenization": report["tokenization"],
                      "split": report["split"]}, indent=2))
    print(f"wrote {args.output_dir}/dataset, tokenizer/, prior/ and prior_report.json")
    return report


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: tokenize(args), output_dir=args.output_dir, task="tokenize",
               inputs=(*args.input, args.prior, getattr(args, "tokenizer", None)))


if __name__ == "__main__":
    main()
