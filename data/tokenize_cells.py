"""Tokenize cells for scgrn: an .h5ad file (or scanpy's bundled pbmc68k_reduced) and a GRN prior become a
tokenizer, a tokenized train/validation/test dataset (Hugging Face `datasets`, Arrow) and a prior report.

    python data/tokenize_cells.py --input pbmc68k_reduced --prior priors/omnipath_interactions.parquet \
        --label_column bulk_labels --output runs/pbmc68k/data

Options not given take their defaults from `modeling_scgrn.DataConfig` (max_length 1024, n_bins 51, panel
all, ...). A non-empty --output folder is refused unless --overwrite is given; the folder is written under a
temporary name and renamed when complete.
"""

import argparse
import json

# DataConfig's fields, settable here; their defaults live in DataConfig alone
DATA_OPTIONS = {
    "max_length": (int, "tokens per cell, [CLS] included"),
    "n_bins": (int, "expression bins per cell"),
    "n_top_genes": (int, "panel size for hvg/ranked/union"),
    "seed": (int, "split seed"),
    "test_size": (float, "share of cells (or groups) held out for testing"),
    "validation_size": (float, "share held out for validation"),
    "min_genes": (int, "QC: drop cells with fewer detected genes (0: off)"),
    "min_cells": (int, "QC: drop genes detected in fewer cells (0: off)"),
    "num_proc": (int, "tokenizing processes"),
    "chunk_size": (int, "cells read and tokenized at a time"),
    "max_shard_size": (str, "largest Arrow shard of the saved dataset"),
}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--input", required=True, action="append",
                        help="an .h5ad file of raw counts, or 'pbmc68k_reduced'; repeat to join several datasets")
    parser.add_argument("--prior", required=True, help="OmniPath interaction table (data/fetch_prior.py) or a "
                        "source,target[,weight] CSV/TSV/Parquet network")
    parser.add_argument("--resource", help="for the OmniPath table: collectri (default) or dorothea")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--label_column", help="obs column of cell types (stratifies the split)")
    parser.add_argument("--group_column", help="obs column of donors/samples: split by group")
    parser.add_argument("--panel", choices=["all", "hvg", "ranked", "union"],
                        help="gene panel: every gene of the file (default), or a (prior-aware) variable-gene panel")
    for name, (kind, text) in DATA_OPTIONS.items():
        parser.add_argument(f"--{name}", type=kind, help=text)
    parser.add_argument("--backed", action="store_true",
                        help="read the .h5ad lazily (files larger than memory; one input, --panel all)")
    parser.add_argument("--tokenizer", help="a folder with a tokenizer (e.g. a pretrained model): tokenize with its "
                        "vocabulary, so the data can finetune that model (genes outside it are dropped and counted; "
                        "--panel all)")
    parser.add_argument("--no_normalize", dest="normalize", action="store_false",
                        help="the values are already normalised (e.g. log1p of total-count-normalised counts): use "
                        "them as they are instead of requiring raw counts (--panel all)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def tokenize(args) -> dict:
    import logging

    from modeling_scgrn.workflows.data import tokenize_files

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    options = {k: v for k, v in vars(args).items() if k not in ("input", "prior", "output", "debug")}
    report = tokenize_files(args.input, args.prior, args.output, **options)
    prior = {k: v for k, v in report["prior"].items() if k not in ("out_degree", "in_degree")}
    print(json.dumps({"prior": prior, "qc": report["qc"], "tokenization": report["tokenization"],
                      "split": report["split"]}, indent=2))
    print(f"wrote {args.output}/dataset, tokenizer/, prior/ and prior_report.json")
    return report


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: tokenize(args), output_dir=args.output, task="tokenize",
               inputs=(*args.input, args.prior, getattr(args, "tokenizer", None)))


if __name__ == "__main__":
    main()
