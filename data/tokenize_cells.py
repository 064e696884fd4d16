"""Tokenize cells for scgrn: an .h5ad file (or scanpy's bundled pbmc68k_reduced) and a GRN prior become a
tokenizer, a tokenized train/validation/test dataset (Hugging Face `datasets`, Arrow) and a prior report.

    python data/tokenize_cells.py --input pbmc68k_reduced --prior priors/omnipath_interactions.parquet \
        --label_column bulk_labels --output runs/pbmc68k/data

A non-empty --output folder is refused unless --overwrite is given; the folder is written under a temporary name
and renamed when complete.
"""

import argparse
import json


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, action="append",
                        help="an .h5ad file of raw counts, or 'pbmc68k_reduced'; repeat to join several datasets")
    parser.add_argument("--prior", required=True, help="OmniPath interaction table (data/fetch_prior.py) or a "
                        "source,target[,weight] CSV/TSV/Parquet network")
    parser.add_argument("--resource", default="collectri", help="for the OmniPath table: collectri or dorothea")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--label_column", default=None, help="obs column of cell types (stratifies the split)")
    parser.add_argument("--group_column", default=None, help="obs column of donors/samples: split by group")
    parser.add_argument("--max_length", type=int, default=1024, help="tokens per cell, [CLS] included")
    parser.add_argument("--n_bins", type=int, default=51, help="expression bins per cell")
    parser.add_argument("--panel", default="all", choices=["all", "hvg", "ranked", "union"],
                        help="gene panel: every gene of the file, or a (prior-aware) variable-gene panel")
    parser.add_argument("--n_top_genes", type=int, default=2000, help="panel size for hvg/ranked/union")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--min_genes", type=int, default=0, help="QC: drop cells with fewer detected genes (0: off)")
    parser.add_argument("--min_cells", type=int, default=0, help="QC: drop genes detected in fewer cells (0: off)")
    parser.add_argument("--backed", action="store_true",
                        help="read the .h5ad lazily (files larger than memory; one input, --panel all)")
    parser.add_argument("--num_proc", type=int, default=1, help="tokenizing processes")
    parser.add_argument("--chunk_size", type=int, default=10_000, help="cells read and tokenized at a time")
    parser.add_argument("--max_shard_size", default="500MB", help="largest Arrow shard of the saved dataset")
    parser.add_argument("--tokenizer", default=None, help="a folder with a tokenizer (e.g. a pretrained model): "
                        "tokenize with its vocabulary, so the data can finetune that model (genes outside it are "
                        "dropped and counted; --panel all)")
    parser.add_argument("--no_normalize", action="store_true",
                        help="the values are already normalised (e.g. log1p of total-count-normalised counts): use "
                        "them as they are instead of requiring raw counts (--panel all)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    for name in ("max_length", "n_bins", "n_top_genes", "num_proc", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def tokenize(args) -> dict:
    import logging

    from modeling_scgrn.networks import GeneRegulatoryNetwork
    from modeling_scgrn.data import prepare_cells

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    network = GeneRegulatoryNetwork.read(args.prior, args.resource)
    print(network)
    report = prepare_cells(
        args.input, network, args.output, label_column=args.label_column, group_column=args.group_column,
        max_length=args.max_length, n_bins=args.n_bins, panel=args.panel, n_top_genes=args.n_top_genes,
        seed=args.seed, min_genes=args.min_genes, min_cells=args.min_cells, backed=args.backed,
        num_proc=args.num_proc, chunk_size=args.chunk_size, max_shard_size=args.max_shard_size,
        tokenizer=args.tokenizer, normalize=not args.no_normalize, overwrite=args.overwrite,
    )
    prior = {k: v for k, v in report["prior"].items() if k not in ("out_degree", "in_degree")}
    print(json.dumps({"prior": prior, "qc": report["qc"], "tokenization": report["tokenization"],
                      "split": report["split"]}, indent=2))
    print(f"wrote {args.output}/dataset, tokenizer/, prior/ and prior_report.json")
    return report


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.cli import run_script

    run_script(args, lambda: tokenize(args), output_dir=args.output, task="tokenize",
               inputs=(*args.input, args.prior, args.tokenizer))


if __name__ == "__main__":
    main()
