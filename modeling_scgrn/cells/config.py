"""Every data setting, with its default: how cells become tokens and splits (`DataConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.configuration_scgrn import DEFAULT_N_BINS
from ..options.arguments import DATA_HELP, PANELS
from ..options.typed import checked_dataclass

SEQUENCE_COLUMNS = ("input_ids", "expression_values", "expression_bins")


@dataclass
class DataConfig:
    """Every data setting, with its default: how cells become tokens and splits. The single source of these
    defaults; `prepare_cells`, the tokenizing functions, `tools` and the scripts read them from here."""

    max_length: int | None = field(default=1024, metadata={"help": DATA_HELP["max_length"]})
    n_bins: int = field(default=DEFAULT_N_BINS, metadata={"help": DATA_HELP["n_bins"]})
    panel: str = field(default="all", metadata={"help": DATA_HELP["panel"]})
    n_top_genes: int = field(default=2000, metadata={"help": DATA_HELP["n_top_genes"]})
    test_size: float = field(default=0.2, metadata={"help": DATA_HELP["test_size"]})
    validation_size: float = field(default=0.1, metadata={"help": DATA_HELP["validation_size"]})
    seed: int = field(default=0, metadata={"help": DATA_HELP["seed"]})
    min_genes: int = field(default=0, metadata={"help": DATA_HELP["min_genes"]})
    min_cells: int = field(default=0, metadata={"help": DATA_HELP["min_cells"]})
    backed: bool = field(default=False, metadata={"help": DATA_HELP["backed"]})
    num_proc: int = field(default=1, metadata={"help": DATA_HELP["num_proc"]})
    chunk_size: int = field(default=10_000, metadata={"help": DATA_HELP["chunk_size"]})
    max_shard_size: str = field(default="500MB", metadata={"help": DATA_HELP["max_shard_size"]})
    normalize: bool = field(default=True, metadata={"help": DATA_HELP["normalize"]})

    def __post_init__(self):
        if self.panel not in PANELS:
            raise ValueError(f"panel={self.panel!r} is not one of {list(PANELS)}.")
        for name in ("n_bins", "n_top_genes", "num_proc", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be at least 2 ([CLS] and one gene).")
        if not (0 < self.test_size < 1 and 0 < self.validation_size < 1 and self.test_size + self.validation_size < 1):
            raise ValueError(f"test_size={self.test_size} and validation_size={self.validation_size} must be shares "
                             "in (0, 1) that leave cells for training.")
        if self.min_genes < 0 or self.min_cells < 0:
            raise ValueError("min_genes and min_cells must not be negative.")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be at least 0 (the split's random state).")
        if self.backed and self.panel != "all":
            raise ValueError(f"panel={self.panel!r} needs the matrix in memory (variable genes); use panel='all' with "
                             "backed mode, or drop backed mode.")
        if not self.normalize and self.panel != "all":
            raise ValueError(f"normalize=False (values already normalised) needs panel='all', not {self.panel!r}: "
                             "the variable-gene panels normalise raw counts themselves.")

    @classmethod
    def from_dict(cls, values: dict) -> "DataConfig":
        """Build from a mapping, refusing unknown keys and values of the wrong type."""
        return checked_dataclass(cls, values, "data")
