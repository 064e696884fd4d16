"""In-silico perturbation with a pretrained scgrn model: delete (or overexpress) genes in every cell, predict every
other gene with the masked-expression head, and report the mean predicted change, where each cell's embedding
moves and, with a finetuned classifier, which cell types the cells move to.

    python finetune/perturb.py --model runs/quickstart/pretrain/model --cells pbmc68k_reduced \
        --genes SPI1 CEBPB --output runs/perturb [--classifier runs/quickstart/finetune/model]

Writes effects.csv (perturbed genes x genes), effects_heatmap.png, embedding_shift.csv (cells x perturbed genes),
label_moves.csv (with --classifier) and summary.json. A non-empty --output is refused unless --overwrite.
"""

import argparse
import json


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained scgrn folder (masked-expression head)")
    parser.add_argument("--cells", required=True, help="an .h5ad of raw counts, or 'pbmc68k_reduced'")
    parser.add_argument("--genes", required=True, nargs="+", help="genes to perturb")
    parser.add_argument("--mode", default="delete", choices=["delete", "overexpress"])
    parser.add_argument("--classifier", help="a finetuned scgrn cell-type classifier on the same genes")
    parser.add_argument("--prior", help="a network (e.g. the OmniPath table): test whether each perturbed "
                        "regulator's top predicted targets are enriched in its regulon (permutation test)")
    parser.add_argument("--resource", default="collectri", help="for the OmniPath table: collectri or dorothea")
    parser.add_argument("--max_cells", type=int, help="perturb at most this many cells (a seeded sample)")
    parser.add_argument("--top", type=int, default=25, help="genes shown in the heat map")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def run(args) -> dict:
    from modeling_scgrn.workflows.perturb import run_perturbation

    summary = run_perturbation(args.cells, args.model, args.genes, args.output, mode=args.mode,
                               classifier_folder=args.classifier, max_cells=args.max_cells, top=args.top,
                               batch_size=args.batch_size, seed=args.seed, prior=args.prior,
                               resource=args.resource)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output}/effects.csv, effects_heatmap.png, embedding_shift.csv and summary.json")
    return summary


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output, task="perturb", inputs=(args.cells, args.prior))


if __name__ == "__main__":
    main()
