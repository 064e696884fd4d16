"""How long `tl.regulatory_edges` takes with each method, on real cells and the real prior, measured side by side.

    python benchmarks/edges_speed.py [--n_cells 2000] [--n_genes 1000] [--hidden 64] [--layers 2]

Cells: the celltypist sample (raw counts; its cells repeated to reach `--n_cells`), on a `--n_genes` panel chosen
with CollecTRI (`select_gene_panel(strategy="ranked")`), every CollecTRI regulator of the panel scored. Model: a
masked-expression model with random weights, continuous values and CollecTRI as its mask (hidden x layers; the
known-truth arms are 64 x 2, the package default 256 x 4). Each method runs once with the model's default attention
(`grn_auto`); the gradient also with `eager` (what it ran on before forward-mode AD went through the structured
kernel), so their ratio is measured in the same run. Not a test: numbers depend on the machine.
"""

import argparse
import platform
import time

import torch

from modeling_scgrn.options import arguments as shared
from real_cells import default_paths

METHODS = ["attention", "perturbation", "gradient", "gradient, eager"]


def arguments(argv=None) -> argparse.Namespace:
    cells, omnipath = default_paths()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default=str(cells), help="raw-count cells (.h5ad)")
    parser.add_argument("--omnipath", default=str(omnipath), help="the OmniPath interaction table (CollecTRI)")
    parser.add_argument("--n_cells", type=shared.count, default=2000)
    parser.add_argument("--n_genes", type=shared.count, default=1000)
    parser.add_argument("--hidden", type=shared.count, default=64)
    parser.add_argument("--layers", type=shared.count, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--batch_size", type=shared.count, default=64)
    shared.add_housekeeping(parser, output=None)
    return parser.parse_args(argv)


def setting(args):
    """The cells, the random-weight model, its tokenizer and CollecTRI."""
    import anndata as ad
    import numpy as np

    from modeling_scgrn import ScGrnForMaskedExpressionModeling, ScGrnTokenizer
    from modeling_scgrn.cells.reading import read_cells
    from modeling_scgrn.grn.attach import attach_grn, new_config
    from modeling_scgrn.grn.network import GeneRegulatoryNetwork
    from modeling_scgrn.grn.panel import select_gene_panel

    sample = read_cells(args.cells)
    prior = GeneRegulatoryNetwork.read(args.omnipath, "collectri")
    genes, _ = select_gene_panel(sample, prior, n_top_genes=args.n_genes, strategy="ranked")
    tokenizer = ScGrnTokenizer.from_genes(genes, n_bins=51)
    torch.manual_seed(0)
    config = new_config(tokenizer, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                        intermediate_size=2 * args.hidden, value_encoding="continuous")
    model = ScGrnForMaskedExpressionModeling(config).eval()
    attach_grn(model, prior, tokenizer)
    cells = ad.AnnData(sample.X[np.arange(args.n_cells) % sample.n_obs], var=sample.var)  # repeats, named apart
    panel = [g for g in cells.var_names if g in tokenizer.get_vocab()]
    per_cell = float(np.asarray((cells[:, panel].X > 0).sum(1)).mean())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {cells.n_obs:,} cells (of the sample's {sample.n_obs}, repeated as needed), "
          f"{len(panel):,}-gene panel, {per_cell:.0f} genes detected per cell; random-weight model {args.hidden} x "
          f"{args.layers} layers")
    return cells, model, tokenizer, prior


def main(argv=None) -> None:
    from modeling_scgrn.workflows.cli import run_script

    args = arguments(argv)
    run_script(args, lambda: measure(args))


def measure(args) -> None:
    from modeling_scgrn.tl.edges import regulatory_edges

    cells, model, tokenizer, prior = setting(args)
    print("| method | kernel | seconds | pairs scored |\n| --- | --- | --- | --- |")
    seconds = {}
    for name in args.methods:
        method, kernel = (name.split(", ") + ["grn_auto"])[:2]
        model.set_attn_implementation(kernel)
        start = time.perf_counter()
        edges = regulatory_edges(cells, model, tokenizer, method=method, network=prior, batch_size=args.batch_size,
                                 progress=False)
        seconds[name] = time.perf_counter() - start
        print(f"| {method} | {kernel} | {seconds[name]:.1f} | {len(edges):,} |", flush=True)
    if {"gradient", "gradient, eager"} <= seconds.keys():
        print(f"gradient: structured kernel {seconds['gradient, eager'] / seconds['gradient']:.2f}x faster than eager")


if __name__ == "__main__":
    main()
