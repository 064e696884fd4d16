"""A model for a prior: a config sized to the tokenizer, and the prior's edges put into the model."""

from __future__ import annotations

import inspect

import torch

from ..model.configuration_scgrn import DEFAULT_N_BINS, ScGrnConfig
from ..model.tokenization_scgrn import ScGrnTokenizer
from .network import GeneRegulatoryNetwork


def attach_grn(model, network: GeneRegulatoryNetwork, tokenizer: ScGrnTokenizer) -> torch.Tensor:
    """Put `network`'s edges among the tokenizer's genes into the model (for a control `grn_mode`, "random",
    "shuffled" or "rewired", the control replaces them). Returns the stored `(2, E)` vocabulary-id edges."""
    return model.set_grn_edges(network.to_vocab_edges(tokenizer))


def new_config(tokenizer: ScGrnTokenizer, **options) -> ScGrnConfig:
    """A config sized to the tokenizer (vocabulary, special ids, bins); `options` set every other field."""
    check_model_options(options)
    n_bins = options.pop("n_bins", None)
    if n_bins is not None and tokenizer.n_bins and n_bins != tokenizer.n_bins:
        raise ValueError(f"n_bins={n_bins} differs from the tokenizer's n_bins={tokenizer.n_bins}.")
    return ScGrnConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        mask_token_id=tokenizer.mask_token_id,
        unk_token_id=tokenizer.unk_token_id,
        n_bins=tokenizer.n_bins or n_bins or DEFAULT_N_BINS,
        **options,
    )


def check_model_options(options: dict) -> dict:
    """Refuse model options that `ScGrnConfig` does not define (before any work starts)."""
    known = set(inspect.signature(ScGrnConfig.__init__).parameters) - {"self", "kwargs"}
    known |= {"num_labels", "id2label", "label2id", "attn_implementation", "problem_type"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; see ScGrnConfig for the options.")
    return options


def adjacency(network: GeneRegulatoryNetwork, tokenizer) -> torch.Tensor:
    """`(vocab, vocab)` boolean regulator -> target matrix of `network` over the tokenizer's ids."""
    edges = network.to_vocab_edges(tokenizer)
    matrix = torch.zeros(len(tokenizer), len(tokenizer), dtype=torch.bool)
    matrix[edges[0], edges[1]] = True
    return matrix
