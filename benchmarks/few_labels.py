"""Few labels on real cells: the frozen pooled embedding of pretrained scgrn models, read by a logistic regression
(and by kNN) fitted on 3, 5, 10 or 25 labelled cells per type, beside logistic regression on the log-normalised
counts, PCA + logistic regression and kNN on the principal components and the majority class, fitted on the same
labelled cells and scored on every other cell (20 seeded draws per budget), plus an untrained encoder of the first
model's architecture and prior. Give one model folder per --model; a name given several times averages its
folders (pretraining seeds). Prints and writes few_labels.md, .csv, .json and few_labels.png.

    python benchmarks/few_labels.py --input pbmc68k_reduced --model contrastive=runs/quickstart/pretrain/model \
        --output_dir runs/few_labels [--label_columns bulk_labels louvain] [--budgets 3 5 10 25] [--repeats 20]

The models' pretraining may have seen these cells (unlabelled), as PCA does; the labels are only the draws'.
On 2 CPU cores, 700 cells and three models take about five minutes.
"""

import argparse
import runpy
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

# scgrn's shared options, read by path before scgrn is imported (it loads torch), so that --help answers at once
shared = SimpleNamespace(**runpy.run_path(str(Path(find_spec("modeling_scgrn").origin).parent / "options" /
                                                "arguments.py")))


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = shared.new_parser(__doc__)
    shared.add_input(parser, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a pretrained model folder (repeatable; a repeated NAME: seeds of one pretraining)")
    parser.add_argument("--label_columns", nargs="+", default=["bulk_labels", "louvain"], help="obs columns to read")
    parser.add_argument("--budgets", type=shared.count, nargs="+", default=[3, 5, 10, 25],
                        help="labelled cells per type")
    parser.add_argument("--repeats", type=shared.count, default=20, help="seeded draws per budget")
    parser.add_argument("--seed", type=shared.seed, default=0, help="seed of the draws and of PCA")
    parser.add_argument("--no_untrained", action="store_true", help="leave out the untrained encoder's row")
    shared.add_output_dir(parser, "few_labels.md/csv/json/png go here")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def run(args) -> str:
    from modeling_scgrn.workflows.few_labels import run_few_labels

    markdown = run_few_labels(args.input, shared.named_folder_list(args.model), args.output_dir,
                              label_columns=args.label_columns, budgets=args.budgets, repeats=args.repeats,
                              seed=args.seed, untrained=not args.no_untrained)
    print(markdown)
    return markdown


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="few_labels",
               inputs=(args.input, *(m.partition("=")[2] for m in args.model)))


if __name__ == "__main__":
    main()
