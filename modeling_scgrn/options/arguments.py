"""The command-line options every scgrn script shares, each named, described and defaulted once: the scripts build
their parsers from these functions, and the library reads the same tables (`OMNIPATH_RESOURCES` for
`GeneRegulatoryNetwork.read`, `DATA_HELP` for `DataConfig`).

One name per thing, in every script: `--input` (raw-count cells: an .h5ad file or pbmc68k_reduced), `--data` (a
folder from data/tokenize_cells.py), `--prior` and `--resource` (the network), `--model` (a scgrn model folder),
`--output_dir` (a folder the run writes; `--output` where a script writes one file). Names used before are refused
with a one-line hint (`RENAMED`).

Standard library only: a script loads this file by its path (`runpy.run_path`, found with `importlib.util.find_spec`,
which imports nothing) before it imports scgrn, which loads torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

# A prior source: its name in scgrn -> the label OmniPath's `sources` column gives it. Adding a source read from the
# OmniPath table is one entry here; `GeneRegulatoryNetwork.from_omnipath_table` and every script's --resource read it.
OMNIPATH_RESOURCES = {"collectri": "CollecTRI", "dorothea": "DoRothEA"}
DEFAULT_RESOURCE = "collectri"

PANELS = ("all", "hvg", "ranked", "union")

PERTURBATION_MODES = ("delete", "overexpress")  # tl.perturb's modes, finetune/perturb.py's --mode

# The help of each DataConfig field: DataConfig's metadata and data/tokenize_cells.py's options read it from here.
DATA_HELP = {
    "max_length": "tokens per cell, [CLS] included (None: all genes)",
    "n_bins": "expression bins per cell",
    "panel": f"gene panel, one of {PANELS}: every gene, or a (prior-aware) variable-gene panel",
    "n_top_genes": "panel size for hvg/ranked/union",
    "test_size": "share of cells (or groups) held out for testing",
    "validation_size": "share held out for validation",
    "seed": "split seed",
    "min_genes": "QC: drop cells with fewer detected genes (0: off)",
    "min_cells": "QC: drop genes detected in fewer cells (0: off)",
    "backed": "read one .h5ad lazily (files larger than memory)",
    "num_proc": "tokenizing processes",
    "chunk_size": "cells read and tokenized at a time",
    "max_shard_size": "largest Arrow shard of the saved dataset",
    "normalize": "normalise raw counts (False: values are already log1p-normalised)",
}


def _whole_numbers(options, names, *, least: int = 1, optional: tuple = ()) -> None:
    """Each of `names` on the dataclass `options` is a whole number of at least `least` (`optional` ones may be
    None); ValueError otherwise."""
    for name in names:
        value = getattr(options, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r} must be a whole number of at least {least}.")


@dataclasses.dataclass(frozen=True)
class PerturbationOptions:
    """How `workflows.perturb.run_perturbation` perturbs and reports (finetune/perturb.py's options of the same
    names): `mode` (`delete` or `overexpress`), `rounds` of a cascade (1: one prediction), at most `max_cells`
    cells (a seeded sample; None: all), the `top` genes of the heat map, cells per forward pass and the seed."""

    mode: str = "delete"
    rounds: int = 1
    max_cells: int | None = None
    top: int = 25
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.mode not in PERTURBATION_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {list(PERTURBATION_MODES)}.")
        _whole_numbers(self, ("rounds", "max_cells", "top", "batch_size"), optional=("max_cells",))
        _whole_numbers(self, ("seed",), least=0)


@dataclasses.dataclass(frozen=True)
class InterpretationOptions:
    """How `workflows.interpret.run_interpretation` reads attention (finetune/interpret.py's options of the same
    names): the dataset `split`, the `regulators` of the heat map (None: the 4 most attended), the `top` pairs
    listed per cell type, at most `max_cells_per_label` cells read per cell type, cells per forward pass."""

    split: str = "test"
    regulators: list[str] | None = None
    top: int = 10
    max_cells_per_label: int = 200
    batch_size: int = 16

    def __post_init__(self):
        _whole_numbers(self, ("top", "max_cells_per_label", "batch_size"))
        if self.regulators is not None and not self.regulators:
            raise ValueError("regulators=[] names no gene; give at least one, or None for the 4 most attended.")


def default_help(options: type, name: str, text: str) -> str:
    """`text` with the default of field `name` of the dataclass `options`: a script's help says the default that
    applies without keeping a copy of it."""
    default = {f.name: f.default for f in dataclasses.fields(options)}[name]
    return f"{text} (default {'none' if default is None else default})"


# Option names scripts used before, refused with the name that replaced them (scgrn is not released: no shims).
RENAMED = {"--h5ad": "--input", "--cells": "--input", "--output": "--output_dir", "--pretrained": "--model",
           "--init_from": "--model", "--folder": "--model"}

INPUT_HELP = "an .h5ad file of raw counts, or 'pbmc68k_reduced'"
DATA_FOLDER_HELP = "folder from data/tokenize_cells.py"
PRIOR_HELP = "OmniPath interaction table (data/fetch_prior.py) or a source,target[,weight] CSV/TSV/Parquet network"
RESOURCE_HELP = (f"for the OmniPath table: {' or '.join(OMNIPATH_RESOURCES)} (default {DEFAULT_RESOURCE}); "
                 "a plain network file needs none")


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}; give a whole number of at least {least}")
    return value


def count(text: str) -> int:
    """argparse type of a number of things (cells, genes, steps, batch size): a whole number of at least 1."""
    return _whole_number(text, 1)


def count_or_zero(text: str) -> int:
    """argparse type of an optional number of things (0: none): a whole number of at least 0."""
    return _whole_number(text, 0)


def seed(text: str) -> int:
    """argparse type of a random seed: a whole number of at least 0 (numpy refuses negative seeds)."""
    return _whole_number(text, 0)


def named_folder_list(entries) -> list[tuple[str, str]]:
    """`(name, folder)` of each repeated `--model NAME=FOLDER` option, in order (a name may repeat: seeds of one
    model); an entry without both is refused (ValueError, the scripts' one-line error)."""
    pairs = []
    for entry in entries:
        name, _, folder = entry.partition("=")
        if not folder or not name:
            raise ValueError(f"--model {entry}: write NAME=FOLDER, e.g. grn=runs/x/pretrain/model.")
        pairs.append((name, folder))
    return pairs


def named_folders(entries) -> dict:
    """`{name: folder}` of repeated `--model NAME=FOLDER` options ([`named_folder_list`]; a repeated name keeps its
    last folder)."""
    return dict(named_folder_list(entries))


def new_parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """A script's parser: its module docstring as the description, kept as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_config(parser: argparse.ArgumentParser, sections: str = "`model` and `training`") -> None:
    parser.add_argument("--config", default=None, help=f"YAML/JSON file with {sections} sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override one config value (repeatable)")


def add_input(parser, *, when: str = "", several: bool = False, **kwargs) -> None:
    """`--input`: raw-count cells (repeatable with `several`)."""
    text = INPUT_HELP + ("; repeat to join several datasets" if several else "") + (f" {when}" if when else "")
    parser.add_argument("--input", help=text, **({"action": "append"} if several else {}), **kwargs)


def add_prior(parser, *, when: str = "", required: bool = False, prior_help: str = PRIOR_HELP) -> None:
    """`--prior` and `--resource`: the network, and which resource of the OmniPath table it is."""
    prefix = f"{when}: " if when else ""
    parser.add_argument("--prior", required=required, default=None, help=prefix + prior_help)
    parser.add_argument("--resource", default=None, help=RESOURCE_HELP)  # checked by GeneRegulatoryNetwork.read


def add_output_dir(parser, text: str) -> None:
    parser.add_argument("--output_dir", required=True, help=text)


def add_housekeeping(parser, *, output: str | None = "--output_dir") -> None:
    """`--overwrite` (for scripts writing `output`), `--debug`, and the renamed options, refused."""
    if output:
        parser.add_argument("--overwrite", action="store_true", help=f"replace a non-empty {output}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    refuse_renamed(parser)


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        new = self.const
        print(f"error: {option_string} is now {new}; run the command again with {new}", file=sys.stderr)
        sys.exit(2)


def refuse_renamed(parser: argparse.ArgumentParser) -> None:
    """Each old name in `RENAMED` whose new name this parser has (and which it does not use itself) is refused with
    one line naming the new option."""
    taken = set(parser._option_string_actions)
    for old, new in RENAMED.items():
        if new in taken and old not in taken:
            parser.add_argument(old, nargs="*", action=_Renamed, const=new, help=argparse.SUPPRESS)
