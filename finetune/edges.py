"""Regulatory edges out of a pretrained scgrn model: a score for every regulator -> target pair present together in
the cells, in decoupler's network format (source, target, weight) with in_prior, and the top regulons drawn.

    python finetune/edges.py --model runs/quickstart/pretrain/model --input pbmc68k_reduced \
        --method perturbation --output_dir runs/edges [--prior omnipath_interactions.parquet --resource CollecTRI]

Methods: perturbation (delete the regulator, predict the target again; weight = minus the change, log2 units),
gradient (input x gradient of the predicted target value by the regulator's value) and attention (mean attention
of the target on the regulator, Sinkhorn-balanced). Writes edges.csv (or --table edges.parquet), top_regulons.png
and summary.json. A non-empty --output_dir is refused unless --overwrite.
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
    parser.add_argument("--model", required=True, help="pretrained scgrn folder (masked-expression head)")
    shared.add_input(parser, required=True)
    parser.add_argument("--method", default="perturbation", choices=["perturbation", "gradient", "attention"])
    shared.add_prior(parser, prior_help="a network (e.g. the OmniPath table): in_prior and the regulators follow "
                     "it instead of the model's own prior (needed for a dense model)")
    parser.add_argument("--regulators", nargs="+", help="genes scored as regulators (default: the prior's TFs)")
    parser.add_argument("--table", default="edges.csv", help="edge table file name: .csv or .parquet")
    parser.add_argument("--max_cells", type=shared.count, help="score at most this many cells (a seeded sample)")
    parser.add_argument("--top", type=shared.count, default=12, help="regulators drawn in top_regulons.png")
    parser.add_argument("--batch_size", type=shared.count, default=64)
    parser.add_argument("--seed", type=shared.seed, default=0)
    shared.add_output_dir(parser, "where the edge table, picture and summary go")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def run(args) -> dict:
    from modeling_scgrn.workflows.edges import run_edges

    summary = run_edges(args.input, args.model, args.output_dir, method=args.method, table=args.table,
                        prior=args.prior, resource=args.resource, regulators=args.regulators,
                        max_cells=args.max_cells, top=args.top, batch_size=args.batch_size, seed=args.seed)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output_dir}/{args.table}, top_regulons.png and summary.json")
    return summary


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="edges", inputs=(args.input, args.prior))


if __name__ == "__main__":
    main()
