"""Knockout: in-silico deletions of pretrained scgrn models checked against the simulator's knockouts.

For master regulators and mid-level TFs of the simulated network (or --genes), the simulator knocks each out in fresh
cells (the truth: log2 fold changes against paired control cells, on counts and on the noise-free expression), each
model deletes it in silico (`tools.perturb`, `--rounds` passes), and predictors that read no data stand beside them:
a linear regression of each gene on the knocked-out gene (fitted on unperturbed cells), and the true network's and
each model's own prior's targets moved by a constant. Prints and writes knockout.md, knockout.csv and knockout.png.

    python benchmarks/knockout.py --corpus sim.h5ad --model grn=runs/known_truth/runs/grn_seed0/pretrain/model \
        --model dense=runs/known_truth/runs/dense_seed0/pretrain/model --output_dir runs/knockout
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
    parser.add_argument("--corpus", required=True, help="an .h5ad from data/simulate_cells.py (its network is used)")
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER of a pretrained model; repeat")
    parser.add_argument("--genes", nargs="+", help="genes to knock out (default: 5 masters and 5 mid-level TFs)")
    parser.add_argument("--truth_cells", type=shared.count, default=2000, help="cells simulated per knockout")
    parser.add_argument("--model_cells", type=shared.count, default=300, help="cells perturbed in silico")
    parser.add_argument("--rounds", type=shared.count, default=1,
                        help="passes of each model's perturbation (a cascade: predicted changes fed back)")
    parser.add_argument("--output_dir", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def run(args) -> str:
    from modeling_scgrn.workflows.knockouts import run_knockout_validation

    models = shared.named_folders(args.model)
    markdown = run_knockout_validation(args.corpus, models, args.output_dir, genes=args.genes,
                                       n_truth_cells=args.truth_cells, n_model_cells=args.model_cells,
                                       rounds=args.rounds)
    print(markdown)
    return markdown


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="knockout", inputs=(args.corpus,))


if __name__ == "__main__":
    main()
