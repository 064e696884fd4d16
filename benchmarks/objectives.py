"""Pretraining objectives compared by what they teach the cell embedding: each variant of a pretraining config
(benchmarks/configs/objectives.yaml: masked values alone, the cell decoder, higher masking, the trivial predictor
given to the model) pretrained on the same cells, then every cell's frozen pooled embedding read by a 5-fold
logistic regression of each label column, the silhouette of those labels and a linear regression to sequencing
depth, beside 50 principal components of the counts and an untrained encoder read the same way. Prints and writes
objectives.md, objectives.csv and objectives.json.

    python benchmarks/objectives.py --input pbmc68k_reduced --prior priors/omnipath_interactions.parquet \
        --output_dir runs/objectives [--variant "cell decoder"] [--seeds 0 1 2]

On 2 CPU cores each variant's pretraining (the quickstart's: 30 epochs of 490 cells) takes one to three minutes.
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
ROOT = Path(__file__).resolve().parents[1]


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = shared.new_parser(__doc__)
    shared.add_input(parser, required=True)
    shared.add_prior(parser, required=True)
    parser.add_argument("--config", help="the base pretraining config the variants are laid over (default: the "
                        "variants file's `base`, a path beside it; without one, the quickstart's "
                        "pretrain/configs/pbmc68k.yaml)")
    parser.add_argument("--variants", default=str(ROOT / "benchmarks" / "configs" / "objectives.yaml"),
                        help="YAML/JSON file whose `variants` maps names to `model`/`training` entries")
    parser.add_argument("--variant", action="append", help="run only this variant (repeatable)")
    parser.add_argument("--label_columns", nargs="+", default=["bulk_labels", "louvain"],
                        help="obs columns the probe reads (the first splits the tokenized cells)")
    parser.add_argument("--seeds", type=shared.seed, nargs="+", default=[0], help="pretraining seeds")
    shared.add_output_dir(parser, "objectives.md/csv/json and each variant's pretraining go here")
    shared.add_housekeeping(parser)
    return parser.parse_args(argv)


def base_config(config: str | None, variants_path: str, entries: dict) -> Path:
    """The config the variants are laid over: --config, else the variants file's `base` (a path relative to that
    file, so that its variants keep the meaning they were measured with when the shipped config moves on), else the
    quickstart's pretraining."""
    if config:
        return Path(config)
    if entries.get("base"):
        return Path(variants_path).parent / entries["base"]
    return ROOT / "pretrain" / "configs" / "pbmc68k.yaml"


def run(args) -> str:
    from modeling_scgrn.workflows.cli import load_yaml_or_json
    from modeling_scgrn.workflows.objectives import run_objectives

    entries = load_yaml_or_json(args.variants)
    variants = entries.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{args.variants} has no `variants` mapping of names to model/training entries.")
    unknown = sorted(set(args.variant or []) - set(variants))
    if unknown:
        raise ValueError(f"no variant {unknown} in {args.variants}; variants are {list(variants)}.")
    chosen = {name: variants[name] or {} for name in (args.variant or variants)}
    base = load_yaml_or_json(base_config(args.config, args.variants, entries))
    markdown = run_objectives(args.input, args.prior, args.output_dir, chosen, base=base,
                              label_columns=args.label_columns, seeds=args.seeds, resource=args.resource)
    print(markdown)
    return markdown


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: run(args), output_dir=args.output_dir, task="objectives",
               inputs=(args.input, args.prior, args.config, args.variants))


if __name__ == "__main__":
    main()
