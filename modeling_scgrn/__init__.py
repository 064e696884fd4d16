"""scgrn: a single-cell foundation model whose attention follows a gene regulatory network.

Importing this package registers the model with transformers' Auto classes, so
`AutoModel.from_pretrained(...)` works on scgrn checkpoints without `trust_remote_code`.
"""

import transformers
from transformers import AutoConfig, AutoTokenizer

from . import modeling_scgrn as _modeling
from .configuration_scgrn import AUTO_HEADS, ScGrnConfig
from .modeling_scgrn import (
    ScGrnCellClassificationOutput,
    ScGrnForCellClassification,
    ScGrnForMaskedExpressionModeling,
    ScGrnMaskedExpressionOutput,
    ScGrnModel,
    ScGrnModelOutput,
    ScGrnPreTrainedModel,
)
from .tokenization_scgrn import ScGrnTokenizer

__version__ = "0.1.0"

AutoConfig.register("scgrn", ScGrnConfig, exist_ok=True)
AutoTokenizer.register(ScGrnConfig, fast_tokenizer_class=ScGrnTokenizer, exist_ok=True)
# `auto_map` in saved configs lets `trust_remote_code=True` load checkpoints where scgrn is not installed.
ScGrnConfig.register_for_auto_class()
ScGrnTokenizer.register_for_auto_class("AutoTokenizer")
for _auto, _head in AUTO_HEADS.items():
    getattr(transformers, _auto).register(ScGrnConfig, getattr(_modeling, _head), exist_ok=True)
    getattr(_modeling, _head).register_for_auto_class(_auto)

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
]
