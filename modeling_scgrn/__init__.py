"""scgrn: a single-cell foundation model whose attention follows a gene regulatory network.

Importing this package registers the model with transformers' Auto classes, so
`AutoModel.from_pretrained(...)` works on scgrn checkpoints without `trust_remote_code`.

The folders are the architecture, each importing only those below it:

    workflows/   the runs scripts start (pretrain, finetune, compare, interpret, perturb, benchmarks)
    tl/          scanpy-style verbs on AnnData: embed, predict, perturb, attention
    train/       the Accelerate training loop and its config
    evaluation/  metrics, baselines and plots
    bench/       simulated cells from a known network, and scores against that truth
    hub/         complete model folders: save, check, load, publish
    cells/       reading and tokenizing cells, splits, collators, streams (AnnData, SOMA)
    grn/         regulatory-network priors: readers, coverage reports, gene panels, attaching a prior to a model
    storage/     output folders that lose nothing
    options/     option names, help and choices the scripts share (standard library only), typed options
    model/       the files that ship with the weights (config, model, tokenizer, attention kernels, the mask rule)
"""

import importlib

import transformers
from transformers import AutoConfig, AutoTokenizer

from .model import modeling_scgrn as _modeling
from .model.configuration_scgrn import AUTO_HEADS, ScGrnConfig
from .model.modeling_scgrn import (
    ScGrnCellClassificationOutput,
    ScGrnForCellClassification,
    ScGrnForMaskedExpressionModeling,
    ScGrnMaskedExpressionOutput,
    ScGrnModel,
    ScGrnModelOutput,
    ScGrnPreTrainedModel,
)
from .model.tokenization_scgrn import ScGrnTokenizer

__version__ = "0.1.0"

AutoConfig.register("scgrn", ScGrnConfig, exist_ok=True)
AutoTokenizer.register(ScGrnConfig, fast_tokenizer_class=ScGrnTokenizer, exist_ok=True)
# `auto_map` in saved configs lets `trust_remote_code=True` load checkpoints where scgrn is not installed.
ScGrnConfig.register_for_auto_class()
ScGrnTokenizer.register_for_auto_class("AutoTokenizer")
for _auto, _head in AUTO_HEADS.items():
    getattr(transformers, _auto).register(ScGrnConfig, getattr(_modeling, _head), exist_ok=True)
    getattr(_modeling, _head).register_for_auto_class(_auto)

# The rest of the public surface is imported on first use, so that `import modeling_scgrn` (what
# `AutoModel.from_pretrained` needs) stays as light as the model files: name -> module that defines it.
_LAZY = {
    "GeneRegulatoryNetwork": "grn.network",
    "prior_report": "grn.coverage",
    "new_config": "grn.attach",
    "attach_grn": "grn.attach",
    "DataConfig": "cells.config",
    "read_cells": "cells.reading",
    "prepare_cells": "cells.prepared",
    "load_prepared": "cells.prepared",
    "TrainingConfig": "train.training",
    "load_pretrained": "hub.model_folder",
    "save_model_folder": "hub.model_folder",
    "push_model_folder": "hub.publish",
    "tl": "tl",
    "CellSource": "workflows.data",
    "PerturbationOptions": "options.arguments",
    "InterpretationOptions": "options.arguments",
    "run_data": "workflows.data",
    "run_pretraining": "workflows.pretrain",
    "run_finetuning": "workflows.finetune",
    "run_comparison": "workflows.compare",
    "run_interpretation": "workflows.interpret",
    "run_perturbation": "workflows.perturb",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'modeling_scgrn' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    value = module if name == "tl" else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "ScGrnConfig",
    "ScGrnTokenizer",
    "ScGrnPreTrainedModel",
    "ScGrnModel",
    "ScGrnForMaskedExpressionModeling",
    "ScGrnForCellClassification",
    "ScGrnModelOutput",
    "ScGrnMaskedExpressionOutput",
    "ScGrnCellClassificationOutput",
    *_LAZY,
]
