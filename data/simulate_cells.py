"""Simulate single cells from a real regulatory network (known truth), with sergio-rs (GPL-3, optional extra:
pip install "scgrn[simulate]").

A connected, acyclic piece of --n_genes genes is taken from the prior (CollecTRI by default; real symbols and
signs), SERGIO integrates its stochastic differential equations for --n_cell_types cell types, and technical noise
(10x-like by default) turns the clean expression into raw UMI counts. The corpus is simulated in chunks of
--chunk_cells cells (--num_proc at a time), joined on disk, and written to --output (.h5ad) only when complete.
The true network, the parameters and the seed are stored in uns["scgrn_simulation"].

    python data/simulate_cells.py --prior priors/omnipath_interactions.parquet --n_genes 2000 \
        --n_cells 200000 --output sim.h5ad

Prints a summary: time, cells per second, what building the subnetwork dropped, and the regulation check (are true
edges more correlated than random gene pairs, across and within cell types?).
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
    shared.add_prior(parser, required=True)
    parser.add_argument("--output", required=True, help="the .h5ad file to write")
    parser.add_argument("--n_genes", type=shared.count, default=1000, help="genes in the network")
    parser.add_argument("--n_cells", type=shared.count, default=10_000, help="cells in all")
    parser.add_argument("--n_cell_types", type=shared.count, default=10, help="cell types (master-regulator programs)")
    parser.add_argument("--seed", type=shared.seed, default=0, help="the same seed gives identical cells")
    parser.add_argument("--noise", default="10x", help="technical noise: 10x, none, or a SERGIO setting (DS1..DS14)")
    parser.add_argument("--chunk_cells", type=shared.count, default=2_000, help="cells simulated at a time (memory grows "
                        "with it: about 0.9 GB per 1,000 cells of 1,000 genes)")
    parser.add_argument("--num_proc", type=shared.count, default=1, help="chunks simulated in parallel")
    shared.add_housekeeping(parser, output="--output file")
    return parser.parse_args(argv)


def simulate(args) -> dict:
    from modeling_scgrn.bench.simulate import signal_line, simulate_corpus
    from modeling_scgrn.grn.network import GeneRegulatoryNetwork

    if not args.output.endswith(".h5ad"):
        raise ValueError(f"--output {args.output} must end in .h5ad.")
    network = GeneRegulatoryNetwork.read(args.prior, args.resource)
    summary = simulate_corpus(network, args.output, args.n_cells, chunk_cells=args.chunk_cells,
                              num_proc=args.num_proc, overwrite=args.overwrite, n_genes=args.n_genes,
                              n_cell_types=args.n_cell_types, seed=args.seed, noise=args.noise)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output}: {summary['cells']} cells x {summary['genes']} genes in {summary['seconds']} s "
          f"({summary['cells_per_second']} cells/s)")
    print("regulation check (first chunk): " + signal_line(summary["regulation_signal_first_chunk"]))
    return summary


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: simulate(args))


if __name__ == "__main__":
    main()
