"""In-silico perturbation with a pretrained scgrn model: delete (or overexpress) genes in every cell, predict every
other gene with the masked-expression head, and report the mean predicted change, where each cell's embedding
moves and, with a finetuned classifier, which cell types the cells move to.

    python finetune/perturb.py --model runs/quickstart/pretrain/model --input pbmc68k_reduced \
        --genes SPI1 CEBPB --output_dir runs/perturb [--classifier runs/quickstart/finetune/model]

Writes effects.csv (perturbed genes x genes), effects_heatmap.png, embedding_shift.csv (cells x perturbed genes),
label_moves.csv (with --classifier) and summary.json. A non-empty --output_dir is refused unless --overwrite.
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
    parser.add_argument("--genes", required=True, nargs="+", help="genes to perturb")
    parser.add_argument("--mode", default="delete", choices=["delete", "overexpress"])
    parser.add_argument("--classifier", help="a finetuned scgrn cell-type classifier on the same genes")
    shared.add_prior(parser, prior_help="a network (e.g. the OmniPath table): test whether each perturbed "
                     "regulator's top predicted targets are enriched in its regulon (permutation test)")
    parser.add_argument("--max_cells", type=shared.count, help="perturb at most this many cells (a seeded sample)")
    parser.add_argument("--rounds", type=shared.count, default=1,
                        help="passes of a cascade: predicted changes fed back as inputs, so indirect targets move "
                             "(default 1: one prediction)")
    parser.add_argument("--top", type=shared.count, default=25, help="genes shown in the heat map")
    parser.add_argument("--batch_size", type=shared.count, default=16)
    parser.add_argument("--seed", type=shared.seed, default=0)
    shared.add_output_dir(parser, "where the effects, heat map and summary go")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def run(args) -> dict:
    from modeling_scgrn.workflows.perturb import run_perturbation

    summary = run_perturbation(args.input, args.model, args.genes, args.output_dir, mode=args.mode,
                               rounds=args.rounds, classifier_folder=args.classifier, max_cells=args.max_cells,
                               top=args.top, batch_size=args.batch_size, seed=args.seed, prior=args.prior,
                               resource=args.resource)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output_dir}/effects.csv, effects_heatmap.png, embedding_shift.csv and summary.json")
    return summary


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="perturb", inputs=(args.input, args.prior))


if __name__ == "__main__":
    main()
