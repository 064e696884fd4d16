"""How large a model a config asks for, judged before anything is allocated, so that an untrusted `config.json`
cannot make loading try to allocate terabytes or build 10**5 layers first.

Shipped next to the weights for `trust_remote_code` loading: it imports only torch and the standard library.
"""

from __future__ import annotations

import os

import torch

from .configuration_scgrn import ScGrnConfig


# The deepest encoder scgrn builds. Published Transformers stop near 100-200 layers; a config.json asking for 10**5
# tiny layers fits in memory but takes minutes and gigabytes of module objects to build (about 3 s per 1,000 here).
MAX_HIDDEN_LAYERS = 1024


def encoder_parameter_count(config: ScGrnConfig) -> int:
    """The encoder's parameter count from its config alone (within a few per cent: biases and norms are left out),
    so that a size is judged before anything is allocated."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    values = (config.n_bins + 2) * h if config.value_encoding == "binned" else h * h + 2 * h
    return config.vocab_size * h + values + layers * (4 * h * h + 3 * h * i)


def machine_memory_bytes() -> int | None:
    """The most memory one model could be placed in here: physical memory, or the largest accelerator's."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    if torch.cuda.is_available():
        memory = max(memory, *(torch.cuda.get_device_properties(d).total_memory
                               for d in range(torch.cuda.device_count())))
    return memory


def check_model_fits(config: ScGrnConfig) -> None:
    """Refuse, before allocating, a config whose float32 weights alone exceed this machine's memory (an untrusted
    `config.json` with `hidden_size` 10**6 would otherwise try to allocate terabytes), or deeper than
    `MAX_HIDDEN_LAYERS` (10**5 tiny layers fit in memory, but take minutes to build)."""
    if config.num_hidden_layers > MAX_HIDDEN_LAYERS:
        raise ValueError(
            f"this config asks for {config.num_hidden_layers:,} layers, more than scgrn builds ({MAX_HIDDEN_LAYERS:,}: "
            "published Transformers stop near 200); check num_hidden_layers in its config.json.")
    count, memory = encoder_parameter_count(config), machine_memory_bytes()
    if memory is not None and 4 * count > memory:
        raise ValueError(
            f"this config asks for about {count / 1e9:.1f} billion parameters ({4 * count / 2**30:.0f} GiB in "
            f"float32), more than this machine's {memory / 2**30:.0f} GiB of memory; check hidden_size "
            f"({config.hidden_size}), intermediate_size ({config.intermediate_size}), num_hidden_layers "
            f"({config.num_hidden_layers}) and vocab_size ({config.vocab_size}) in its config.json.")
