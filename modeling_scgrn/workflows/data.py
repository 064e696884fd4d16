"""Data run: a prepared data folder from cell files (or a SOMA experiment) and a prior, written once however many
processes are launched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from ..cells.prepared import prepare_cells
from ..grn.network import GeneRegulatoryNetwork
from ..train.training import launched_processes


def tokenize_files(cells, prior: str | Path, output_dir, *, resource: str | None = None, **options) -> dict:
    """`prepare_cells` from files: the prior is read from `prior` (OmniPath table or a source,target network file,
    filtered to `resource`) and printed; `options` go to `prepare_cells` (its keywords and `DataConfig` fields)."""
    network = GeneRegulatoryNetwork.read(prior, resource)
    print(network)
    return prepare_cells(cells, network, output_dir, **options)


SOURCE_FIELDS = ("data_dir", "cells", "soma", "prior")  # what a CellSource reads; its other fields are options


@dataclass(frozen=True)
class CellSource:
    """Where a training run's cells come from, as its script was told: a tokenized data folder (`data_dir`, used as
    it is), or cell files (`cells`: .h5ad files or `pbmc68k_reduced`) or a SOMA experiment (`soma`:
    `cells.soma.SomaSource`) that the run tokenizes with `prior` (filtered to `resource`) into its own `data/`
    folder first. `tokenizer` (a model folder) tokenizes with that model's vocabulary; the other fields go to
    `prepare_cells` (files) or `prepare_soma` (SOMA; `panel` and `validation_cells` are for it alone), None taking
    their defaults."""

    data_dir: str | Path | None = None
    cells: tuple | list | str | None = None
    soma: object | None = None
    prior: str | Path | None = None
    resource: str | None = None
    tokenizer: str | Path | None = None
    max_length: int | None = None
    label_column: str | None = None
    group_column: str | None = None
    panel: str | None = None
    validation_cells: int | None = None

    def __post_init__(self):
        given = [name for name in ("data_dir", "cells", "soma") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of data_dir, cells and soma, not {' and '.join(given)}.")
        if (self.cells is not None or self.soma is not None) and self.prior is None:
            raise ValueError("cells to tokenize need a prior (run data/fetch_prior.py for the OmniPath table).")
        if self.cells is None and self.soma is None and self.data_dir is None:
            raise ValueError("no cells: give a tokenized data folder, cell files or a SOMA experiment.")
        if self.soma is None and (self.panel is not None or self.validation_cells is not None):
            raise ValueError("panel and validation_cells choose what a SOMA stream reads; drop them for cell files.")

    def options(self) -> dict:
        """The tokenizing options given (every field but the source and its prior, where not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in SOURCE_FIELDS and getattr(self, f.name) is not None}


def prepared_data(data, output_dir, *, resuming: bool = False, model=None) -> Path:
    """The tokenized data folder of a run: `data` itself when it is a folder, else the `CellSource`'s cells
    tokenized into `output_dir/data` (`run_data`), with the vocabulary of `model` (the folder a run continues or
    finetunes) unless the source names a tokenizer of its own."""
    if isinstance(data, CellSource):
        if data.tokenizer is None and model is not None:
            data = replace(data, tokenizer=model)
        return Path(run_data(data.data_dir, output_dir, cells=data.cells, soma=data.soma, prior=data.prior,
                             resuming=resuming, **data.options()))
    return Path(data)


def run_data(data_dir, output_dir, *, cells=None, soma=None, prior=None, resuming: bool = False, **options):
    """The tokenized data of a run: `data_dir` as given, or `cells` (.h5ad files or `pbmc68k_reduced`) tokenized
    with `prior` into `output_dir/data` first, or a SOMA experiment (`soma.SomaSource`) described there for
    streaming (`soma.prepare_soma`); a resumed run keeps the folder it wrote. `options` go to [`tokenize_files`]
    or `prepare_soma`; those given as None take their defaults."""
    if cells is None and soma is None:
        return data_dir
    folder = Path(output_dir) / "data"
    options = {k: v for k, v in options.items() if v is not None}

    def write():
        # a resumed run keeps its folder; in a run of several processes, another one may just have written it
        if (folder / "dataset").is_dir() and (resuming or launched_processes() > 1):
            return
        if soma is None:
            tokenize_files(cells, prior, folder, **options)
            return
        from ..cells.soma import prepare_soma

        network = GeneRegulatoryNetwork.read(prior, options.pop("resource", None))
        print(network)
        prepare_soma(soma, network, folder, **options)

    _in_turn(write)
    return folder


def _in_turn(write) -> None:
    """Run `write` once per folder in a run of several processes (torchrun, accelerate launch): first in process 0
    while the others wait, then in the first process of each machine (whose disk may be its own), then in the
    rest, which find the folder written. When a writer fails (it prints the one-line error), the others end with
    status 2 and nothing more to say. One process alone just writes."""
    import sys

    if launched_processes() < 2:
        write()
        return
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # as the training's Accelerator will ask
    turn = 0 if state.is_main_process else 1 if state.is_local_main_process else 2
    for now in range(3):
        if now == turn:
            write()
        try:
            state.wait_for_everyone()
        except RuntimeError:  # a writer's process ended: its error line is the report
            sys.exit(2)
