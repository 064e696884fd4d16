"""The model as it ships with the weights: every `.py` file of this folder, and only these, is copied next to
`model.safetensors` for `trust_remote_code` loading (transformers' remote-code loader resolves only flat
`from .x import` between files of one folder). They import only torch, transformers, tokenizers, safetensors and
numpy; `tests/test_structure.py` checks both rules.
"""

from pathlib import Path

from .configuration_scgrn import AUTO_HEADS, DEFAULT_N_BINS, ScGrnConfig
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

# The code that ships with the weights, computed from this folder rather than kept by hand.
SHIPPED_CODE = tuple(sorted(path.name for path in Path(__file__).parent.glob("*.py") if path.name != "__init__.py"))

__all__ = [
    "AUTO_HEADS",
    "DEFAULT_N_BINS",
    "SHIPPED_CODE",
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
