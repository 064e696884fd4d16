"""scgrn: a single-cell foundation model whose attention follows a gene regulatory network.

Importing this package registers the model with transformers' Auto classes, so
`AutoModel.from_pretrained(...)` works on scgrn checkpoints without `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .configuration_scgrn import ScGrnConfig
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
AutoModel.register(ScGrnConfig, ScGrnModel, exist_ok=True)
AutoModelForMaskedLM.register(ScGrnConfig, ScGrnForMaskedExpressionModeling, exist_ok=True)
AutoModelForSequenceClassification.register(ScGrnConfig, ScGrnForCellClassification, exist_ok=True)
AutoTokenizer.register(ScGrnConfig, fast_tokenizer_class=ScGrnTokenizer, exist_ok=True)

# `auto_map` in saved configs lets `trust_remote_code=True` load checkpoints where scgrn is not installed.
ScGrnConfig.register_for_auto_class()
ScGrnModel.register_for_auto_class("AutoModel")
ScGrnForMaskedExpressionModeling.register_for_auto_class("AutoModelForMaskedLM")
ScGrnForCellClassification.register_for_auto_class("AutoModelForSequenceClassification")
ScGrnTokenizer.register_for_auto_class("AutoTokenizer")

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
