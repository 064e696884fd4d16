"""Edges: regulatory edges read out of pretrained scgrn models (`tl.regulatory_edges`: perturbation, gradient and
attention scores) against the network that generated a simulated corpus, beside |Pearson r|, |Spearman rho|, a
GENIE3-style tree ensemble and the prior's own weights, on three questions: a model's prior edges true vs false
(noisy prior), the removed true edges among the pairs outside its prior (incomplete prior), and every TF x gene
pair (whole network). Prints and writes edges.md, edges.csv, edges_seconds.json and edges.png.

    python benchmarks/edges.py --corpus sim.h5ad --model grn=runs/known_truth/runs/grn_seed0/pretrain/model \
        --model "50% false=runs/known_truth/runs/50pct_false_added_seed0/pretrain/model" --output_dir runs/edges

On real cells (--real_cells cells.h5ad --omnipath omnipath_interactions.parquet, models trained with CollecTRI), where
no truth is known, two separately curated priors stand in: do CollecTRI edges that DoRothEA also lists rank above
CollecTRI-only ones, and DoRothEA-only edges above pairs in neither (permutation tests)?

The models are the known-truth benchmark's pretrained arms (benchmarks/known_truth.py, with --arms naming the
wrong priors), so nothing is trained twice.
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="an .h5ad from data/simulate_cells.py (its network: the truth)")
    parser.add_argument("--real_cells", help="instead of --corpus: raw-count cells (.h5ad) with --omnipath, for models "
                        "trained with CollecTRI: do edges DoRothEA also lists rank first? (no truth known)")
    parser.add_argument("--omnipath", help="the OmniPath interaction table (CollecTRI and DoRothEA), with --real_cells")
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER of a pretrained model; repeat")
    parser.add_argument("--max_cells", type=shared.count, default=500, help="cells each model scores")
    parser.add_argument("--seed", type=shared.seed, default=0)
    parser.add_argument("--output_dir", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def run(args) -> str:
    from modeling_scgrn.workflows.edges import run_edges_benchmark

    models = shared.named_folders(args.model)
    if bool(args.corpus) == bool(args.real_cells):
        raise ValueError("give --corpus (a simulated corpus) or --real_cells with --omnipath, one of them.")
    if args.real_cells:
        from modeling_scgrn.workflows.edges import run_curated_edges

        if not args.omnipath:
            raise ValueError("--real_cells needs --omnipath, the OmniPath interaction table (data/fetch_prior.py).")
        markdown = run_curated_edges(args.real_cells, models, args.omnipath, args.output_dir,
                                     max_cells=args.max_cells, seed=args.seed)
    else:
        markdown = run_edges_benchmark(args.corpus, models, args.output_dir, max_cells=args.max_cells,
                                       seed=args.seed)
    print(markdown)
    return markdown


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="edges",
               inputs=(args.corpus, args.real_cells, args.omnipath))


if __name__ == "__main__":
    main()
