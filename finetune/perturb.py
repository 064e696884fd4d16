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
    # the perturbation's own options are left out when not given: PerturbationOptions holds their defaults
    parser = shared.new_parser(__doc__)
    parser.add_argument("--model", required=True, help="pretrained scgrn folder (masked-expression head)")
    shared.add_input(parser, required=True)
    parser.add_argument("--genes", required=True, nargs="+", help="genes to perturb")
    parser.add_argument("--mode", default=argparse.SUPPRESS, choices=shared.PERTURBATION_MODES,
                        help=shared.default_help(shared.PerturbationOptions, "mode", "delete or overexpress the genes"))
    parser.add_argument("--classifier", help="a finetuned scgrn cell-type classifier on the same genes")
    shared.add_prior(parser, prior_help="a network (e.g. the OmniPath table): test whether each perturbed "
                     "regulator's top predicted targets are enriched in its regulon (permutation test)")
    parser.add_argument("--max_cells", type=shared.count, default=argparse.SUPPRESS,
                        help=shared.default_help(shared.PerturbationOptions, "max_cells",
                                                 "perturb at most this many cells (a seeded sample)"))
    parser.add_argument("--rounds", type=shared.count, default=argparse.SUPPRESS,
                        help=shared.default_help(shared.PerturbationOptions, "rounds", "passes of a cascade: predicted "
                                                 "changes fed back as inputs, so indirect targets move (1: one "
                                                 "prediction)"))
    parser.add_argument("--top", type=shared.count, default=argparse.SUPPRESS,
                        help=shared.default_help(shared.PerturbationOptions, "top", "genes shown in the heat map"))
    parser.add_argument("--batch_size", type=shared.count, default=argparse.SUPPRESS,
                        help=shared.default_help(shared.PerturbationOptions, "batch_size", "cells per forward pass"))
    parser.add_argument("--seed", type=shared.seed, default=argparse.SUPPRESS,
                        help=shared.default_help(shared.PerturbationOptions, "seed", "sampling seed"))
    shared.add_output_dir(parser, "where the effects, heat map and summary go")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def run(args) -> dict:
    from modeling_scgrn.options.arguments import PerturbationOptions
    from modeling_scgrn.options.typed import given_options
    from modeling_scgrn.workflows.perturb import run_perturbation

    options = given_options(PerturbationOptions, args, "perturbation")
    summary = run_perturbation(args.input, args.model, args.genes, args.output_dir, options,
                               classifier_folder=args.classifier, prior=args.prior, resource=args.resource)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output_dir}/effects.csv, effects_heatmap.png, embedding_shift.csv and summary.json")
    return summary


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="perturb", inputs=(args.input, args.prior))


if __name__ == "__main__":
    main()
