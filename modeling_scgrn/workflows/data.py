"""Data run: a prepared data folder from cell files (or a SOMA experiment) and a prior, written once however many
processes are launched.
"""

from __future__ import annotations

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
