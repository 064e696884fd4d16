"""Known truth: does a GRN prior in attention, and pretraining, pay off on cells simulated from a real network?

Simulates cells from a CollecTRI piece (sergio-rs, optional extra: pip install "scgrn[simulate]"), or reads a corpus
from data/simulate_cells.py, tokenizes them with the true network, and for each seed pretrains every mask (grn with
the true network, dense, rewired, random, shuffled, and grn with a dense last layer) and the true-network mask with
wrong priors (25/50/75% of edges removed, as many false edges added, an unrelated CollecTRI piece); then finetunes
cell types with 10, 50, 200 and all labelled cells per type, beside from-scratch training and logistic regression,
kNN and majority class on the same labelled cells. Edge recovery compares attention with correlation and a
GENIE3-style tree ensemble. Writes known_truth.md/.json, label_efficiency.png and pretraining.png.

    python benchmarks/known_truth.py --prior priors/omnipath_interactions.parquet --output_dir runs/known_truth
    python benchmarks/known_truth.py --prior ... --output_dir ... --quick     # minutes: 60 genes, 600 cells, 1 seed
    python benchmarks/known_truth.py --prior ... --corpus sim.h5ad --n_cells 10000 --pretraining_cells 90000 \
        --output_dir ... [--resume]    # pretrain on 90,000 unlabelled cells; a resumed run keeps the finished arms
    python benchmarks/known_truth.py --prior ... --corpus sim.h5ad --pretrain_config pretrain/configs/pbmc68k.yaml \
        --output_dir ...    # the arms pretrained with the shipped objective instead of the benchmark's own
    python benchmarks/known_truth.py ... --finetune_set training.gene_dropout=0.3   # another finetuning recipe
"""

import argparse
import json
import platform
import runpy
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

# scgrn's shared options (names, help, choices), read by path before scgrn is imported (it loads torch), so that
# --help answers at once
shared = SimpleNamespace(**runpy.run_path(str(Path(find_spec("modeling_scgrn").origin).parent / "options" /
                                                "arguments.py")))

QUICK = {"n_genes": 60, "n_cells": 600, "pretraining_cells": 300, "n_cell_types": 3, "seeds": (0,),
         "budgets": (10, None), "arms": ("grn", "dense"),
         "single_seed_arms": ("random", "grn_dense_last", "50% removed", "unrelated"),
         "pretraining": {"num_epochs": 2}, "finetuning": {"max_steps": 20}}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", required=True, help="OmniPath interaction table (data/fetch_prior.py) or a network")
    parser.add_argument("--resource", default=None)
    parser.add_argument("--output_dir", required=True, help="output folder")
    parser.add_argument("--corpus", help="an .h5ad from data/simulate_cells.py instead of simulating here")
    parser.add_argument("--n_genes", type=shared.count, default=1000)
    parser.add_argument("--n_cells", type=shared.count, default=10_000, help="cells simulated (or taken from --corpus)")
    parser.add_argument("--n_cell_types", type=shared.count, default=10)
    parser.add_argument("--seeds", type=shared.seed, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["10", "50", "200", "all"], help="labelled cells per type")
    parser.add_argument("--arms", nargs="+", default=["grn", "dense"], help="masks run with every seed")
    parser.add_argument("--single_seed_arms", nargs="*", help="masks and wrong priors (names in "
                        "known_truth.WRONG_PRIORS) run with the first seed only (default: rewired random "
                        "grn_dense_last, 50%% removed, 50%% false added, unrelated)")
    parser.add_argument("--pretraining_cells", type=shared.count_or_zero, default=0, help="pretrain on this many "
                        "other cells of --corpus (or simulated), unlabelled and drawn apart from the --n_cells "
                        "labelled ones; 0: on the labelled cells' training split")
    parser.add_argument("--pretrain_steps", type=shared.count, default=400, help="pretraining optimizer steps")
    parser.add_argument("--pretrain_evaluations", type=shared.count, default=5, help="evaluations of the pretraining "
                        "(masked loss, embedding probe) spread over its steps: the curve that shows it flattening")
    parser.add_argument("--pretrain_config", help="a pretraining config (e.g. pretrain/configs/pbmc68k.yaml, the "
                        "shipped objective) whose `model` section and objective settings (learning rate and its floor, "
                        "warmup, masking, views) replace the benchmark's own (benchmarks/configs/contrastive_base.yaml's "
                        "objective); the steps, batch size, seeds and each arm's mask stay the benchmark's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="one pretraining option over --pretrain_config's (or the benchmark's), e.g. "
                        "model.all_attend_cls=false (repeatable; `training` takes the objective settings only)")
    parser.add_argument("--finetune_steps", type=shared.count, default=1000, help="finetuning optimizer steps, the "
                        "same for every label budget")
    parser.add_argument("--finetune_config", help="a finetuning config (e.g. finetune/configs/pbmc68k_pretrained.yaml, "
                        "the shipped recipe) whose recipe (learning rate and its floor, warmup, weight decay, gene "
                        "dropout, frozen encoder, layer and head learning rates, patience, class weights; the "
                        "classifier's dropout and mixup) replaces the benchmark's own, for pretrained and "
                        "scratch starts alike; the steps, batch size and seeds stay the benchmark's")
    parser.add_argument("--finetune_set", dest="finetune_overrides", action="append", default=[],
                        metavar="SECTION.OPTION=VALUE", help="one finetuning option over --finetune_config's (or the "
                        "benchmark's), e.g. training.gene_dropout=0.3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue a run into --output_dir: the (seed, arm) "
                        "units its progress.json lists are kept, the others run")
    parser.add_argument("--quick", action="store_true", help="a few-minute version (what the tests run)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def options(args) -> dict:
    from modeling_scgrn.workflows.known_truth import objective_from_config, recipe_from_config

    chosen = _options(args)
    if args.pretrain_config or args.overrides:
        values = _config(args.pretrain_config, args.overrides, "--pretrain_config", "pretrain/configs/pbmc68k.yaml")
        chosen["model_options"], objective = objective_from_config(values)
        chosen["pretraining"] = {**objective, **chosen["pretraining"]}
    if args.finetune_config or args.finetune_overrides:
        values = _config(args.finetune_config, args.finetune_overrides, "--finetune_config",
                         "finetune/configs/pbmc68k_pretrained.yaml")
        chosen["head_options"], recipe = recipe_from_config(values)
        chosen["finetuning"] = {**recipe, **chosen["finetuning"]}
    return chosen


def _config(path, overrides, flag: str, example: str) -> dict:
    """A config file's `model` and `training` sections with `section.option=value` overrides laid over them."""
    from modeling_scgrn.workflows.cli import script_options

    if path and not Path(path).is_file():
        raise ValueError(f"{flag} {path} is not a file; give a config such as {example}.")
    return script_options(path, overrides, {"model": None, "training": None})


def _options(args) -> dict:
    if args.quick:
        return {**QUICK, "resume": args.resume}
    single = ("rewired", "random", "grn_dense_last", "50% removed", "50% false added", "unrelated")
    return {"n_genes": args.n_genes, "n_cells": args.n_cells, "n_cell_types": args.n_cell_types,
            "seeds": tuple(args.seeds), "budgets": tuple(None if b == "all" else int(b) for b in args.budgets),
            "arms": tuple(args.arms), "single_seed_arms": tuple(single if args.single_seed_arms is None
                                                                else args.single_seed_arms),
            "pretraining": {"max_steps": args.pretrain_steps,
                            "eval_steps": max(1, args.pretrain_steps // args.pretrain_evaluations)},
            "finetuning": {"max_steps": args.finetune_steps}, "pretraining_cells": args.pretraining_cells,
            "resume": args.resume}


def benchmark(args) -> dict:
    import logging

    import torch

    from modeling_scgrn.grn.network import GeneRegulatoryNetwork
    from modeling_scgrn.workflows.known_truth import run_known_truth

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    chosen = options(args)  # a bad --pretrain_config is refused before the prior is read
    prior = GeneRegulatoryNetwork.read(args.prior, args.resource)
    cells = None
    if args.corpus:
        import anndata

        cells = anndata.read_h5ad(args.corpus)
        wanted = args.n_cells + args.pretraining_cells
        if wanted > cells.n_obs:
            raise ValueError(f"--corpus {Path(args.corpus).name} holds {cells.n_obs} cells, fewer than --n_cells + "
                             f"--pretraining_cells ({wanted}); lower them or simulate more cells.")
        if wanted < cells.n_obs:  # the corpus's first cells: whole chunks, every type in each
            cells = cells[:wanted].copy()  # (labelled and pretraining cells are then drawn apart at random)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}")
    results = run_known_truth(prior, args.output_dir, cells=cells, **chosen)
    print((__import__("pathlib").Path(args.output_dir) / "known_truth.md").read_text())
    print(json.dumps({"seconds": results["seconds"]}))
    return results


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: benchmark(args), output_dir=args.output_dir, task="known_truth", resume=args.resume,
               inputs=(args.prior, args.corpus))


if __name__ == "__main__":
    main()
