"""The GRN-masked Transformer: a pre-LayerNorm, SwiGLU encoder over a cell's gene tokens whose attention follows a
gene regulatory network stored in the model.

Shipped next to the weights for `trust_remote_code` loading: it imports only torch, transformers, numpy and its
sibling files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_scgrn import MASK_RULE_FIELDS, ScGrnConfig
from .controls import control_edges, not_gene_pairs
from .heads import (
    ScGrnCellContrast,
    ScGrnCellDecoder,
    ScGrnGeneDetection,
    depth_penalty,
    gene_positions,
    visible_values,
)
from .kernels import (
    AUTO_ATTENTION,
    OWN_KERNELS,
    _SwiGLU,
    attention_on,
    eager_attention_forward,
    flex_compile_scope,
    is_plain_linear,
)
from .masks import (
    BOOLEAN_MASKS,
    StructuredAttentionPlan,
    block_mask_to_dense,
    edge_keys,
    mask_form,
    regulators_first_order,
)
from .outputs import ScGrnCellClassificationOutput, ScGrnMaskedExpressionOutput, ScGrnModelOutput
from .sizing import check_model_fits

logger = logging.get_logger(__name__)


class ScGrnEmbeddings(nn.Module):
    """Gene identity embedding + expression value embedding, LayerNorm-ed with `config.embedding_layer_norm`; no
    positions (a cell is a set of genes)."""

    def __init__(self, config: ScGrnConfig):
        super().__init__()
        self.value_encoding = config.value_encoding
        self.gene_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.value_encoding == "binned":
            # bin 0 = no value ([CLS], padding), 1..n_bins = detected, n_bins + 1 = masked
            self.value_embeddings = nn.Embedding(config.n_bins + 2, config.hidden_size, padding_idx=0)
        else:
            self.value_embeddings = nn.Sequential(
                nn.Linear(1, config.hidden_size), ACT2FN[config.hidden_act], nn.Linear(config.hidden_size, config.hidden_size)
            )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.embedding_layer_norm \
            else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, expression_values: torch.Tensor | None, expression_bins: torch.Tensor | None
    ) -> torch.Tensor:
        if self.value_encoding == "binned":
            if expression_bins is None:
                raise ValueError("value_encoding='binned' needs `expression_bins` (the tokenizer returns them).")
            values = self.value_embeddings(expression_bins.long())
        else:
            if expression_values is None:
                raise ValueError("value_encoding='continuous' needs `expression_values` (log1p-normalised).")
            values = self.value_embeddings(expression_values.to(self.gene_embeddings.weight.dtype).unsqueeze(-1))
        embedded = self.gene_embeddings(input_ids) + values
        return self.dropout(embedded if self.layer_norm is None else self.layer_norm(embedded))


class ScGrnAttention(nn.Module):
    """Multi-head self-attention whose kernel is picked by `attn_implementation`: scgrn's own kernels
    (`kernels.OWN_KERNELS`) from this copy of the code, any other name from transformers' registry."""

    def __init__(self, config: ScGrnConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        name = self.config._attn_implementation
        # kernels.attention_function, written out: our kernels from this copy (the registry is per process), others
        # from it; transformers' set_attn_implementation looks for this literal registry call in the source
        attention_interface: Callable = OWN_KERNELS.get(name) or ALL_ATTENTION_FUNCTIONS.get_interface(
            name, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            output_attentions=output_attentions,
        )
        return self.o_proj(output.reshape(batch, length, -1)), weights


class ScGrnMLP(nn.Module):
    """Gated linear unit feed-forward (SwiGLU with `hidden_act="silu"`).

    When training SwiGLU, the same computation runs through `_SwiGLU`, which keeps only x, gate(x) and up(x) for
    the backward pass (about 45% less activation memory in the feed-forward at intermediate = 8/3 x hidden).
    Projections that are not plain `nn.Linear` or carry hooks (adapters such as LoRA, quantised
    layers, DeepSpeed ZeRO-3 parameter gathering) keep the module path."""

    def __init__(self, config: ScGrnConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.swiglu = config.hidden_act in ("silu", "swish")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        if self.swiglu and torch.is_grad_enabled() and all(is_plain_linear(p) for p in projections):
            return _SwiGLU.apply(hidden_states, *(p.weight for p in projections))
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class ScGrnLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ScGrnConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = ScGrnAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ScGrnMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(self.input_layernorm(hidden_states), attention_mask, output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
        return hidden_states, weights


class ScGrnPreTrainedModel(PreTrainedModel):
    config_class = ScGrnConfig
    config: ScGrnConfig
    base_model_prefix = "scgrn"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScGrnLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # what a model of this class is for: "encoder", "masked_expression" or "cell_classification"; the tools read it
    # instead of guessing from attribute names
    task = "encoder"

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Without an explicit choice, `"grn_auto"`: at each forward pass, the kernel chosen for the inputs' device
        (`kernels.DEVICE_ATTENTION`; today the prior-structured exact `"grn_structured"` on CPU and CUDA, which
        hands dense blocks and mask options it does not cover to `sdpa`). `"grn_structured"`, `"eager"`, `"sdpa"`,
        `"flex_attention"` (with a block mask built from the prior) and any registered function stay selectable by
        `attn_implementation`."""
        if requested_attention is None:
            return AUTO_ATTENTION
        known = {"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()}
        if requested_attention not in known and "/" not in requested_attention and "|" not in requested_attention:
            raise ValueError(  # transformers' own first sentence, which callers match
                f'Specified `attn_implementation="{requested_attention}"` is not supported; choose '
                "'grn_auto' (the default: the kernel chosen for the inputs' device), 'grn_structured' (exact and "
                "prior-structured), 'sdpa', 'flex_attention' or 'eager' (the only one returning attention weights).")
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation; an edge buffer that no checkpoint fills (a model built from a config alone,
        a checkpoint without `grn_edges`, `to_empty()` + `init_weights()`) becomes all `[PAD]` ids, which the
        encoder refuses to run on instead of reading uninitialised memory as a prior."""
        super()._init_weights(module)
        if isinstance(module, ScGrnModel):
            init.constant_(module.grn_edges, self.config.pad_token_id)
        if isinstance(module, ScGrnForMaskedExpressionModeling) and hasattr(module, "gene_means"):
            init.zeros_(module.gene_means)
        if isinstance(module, ScGrnGeneDetection):
            init.zeros_(module.gene_detection)
            init.zeros_(module.detection_depth)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize; a smaller vocabulary also drops (and counts, in a warning) the GRN edges whose
        genes it no longer holds, since their keys would alias onto other gene pairs."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.base_model.drop_edges_outside_vocabulary()
        return embeddings

    def _head_output(self, output: ModelOutput, encoded: ScGrnModelOutput, return_dict: bool | None):
        """A head's output with the encoder's hidden states and attentions, as a tuple unless `return_dict`."""
        for name in ("hidden_states", "attentions"):
            if encoded.get(name) is not None:
                output[name] = encoded[name]  # item assignment: ModelOutput keeps keys only for set fields
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def set_grn_edges(self, grn_edges: torch.Tensor) -> torch.Tensor:
        """Attach a prior to the encoder; see [`ScGrnModel.set_grn_edges`]."""
        return self.base_model.set_grn_edges(grn_edges)

    def push_to_hub(self, repo_id: str, *, tokenizer=None, network=None, **options):
        """Publish a complete scgrn repo: weights with the GRN edge buffer, `tokenizer`, the prior `network`
        (`GeneRegulatoryNetwork`) as Parquet + provenance, modeling code and model card. Options: `private`,
        `revision`, `create_pr`, `token`, `commit_message`, `evaluation`, `training_data`. Needs scgrn installed
        (`modeling_scgrn.hub.push_to_hub`); nothing is uploaded unless the repo would be complete."""
        try:  # inside try: transformers' remote-code import scan skips it, so loading never needs scgrn
            from modeling_scgrn.hub.publish import push_to_hub
        except ImportError as error:
            raise ImportError("publishing a complete scgrn repo needs the scgrn package installed.") from error
        return push_to_hub(self, tokenizer, network, repo_id, **options)


class ScGrnModel(ScGrnPreTrainedModel):
    """The encoder. Holds the GRN as a `(2, num_grn_edges)` int64 buffer `grn_edges` (regulator, target vocabulary
    ids), saved in `model.safetensors` with the weights; attach a network with [`set_grn_edges`]."""

    def __init__(self, config: ScGrnConfig):
        check_model_fits(config)
        super().__init__(config)
        self.embeddings = ScGrnEmbeddings(config)
        self.layers = nn.ModuleList([ScGrnLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.register_buffer("grn_edges", torch.zeros(2, config.num_grn_edges, dtype=torch.int64), persistent=True)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.gene_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.gene_embeddings = value

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        c = self.config
        return (c.pad_token_id, c.cls_token_id, c.mask_token_id, c.unk_token_id)

    def set_grn_edges(self, grn_edges: torch.Tensor) -> torch.Tensor:
        """Attach a prior: `(2, E)` regulator -> target vocabulary ids.

        Self edges and duplicates are dropped; for `grn_mode="random"`/`"shuffled"` the sparsity-matched control
        (seeded by `grn_control_seed`) replaces the prior, so the stored edges are exactly what the mask uses.
        Updates `config.num_grn_edges`. Returns the stored edges.
        """
        grn_edges = torch.as_tensor(grn_edges, dtype=torch.int64)
        if grn_edges.ndim != 2 or grn_edges.shape[0] != 2:
            raise ValueError(f"grn_edges must have shape (2, num_edges), got {tuple(grn_edges.shape)}.")
        if not_gene_pairs(grn_edges, self.special_token_ids, self.config.vocab_size).any():
            raise ValueError(f"grn_edges must link genes only: ids in [{len(self.special_token_ids)}, "
                             f"{self.config.vocab_size}), not special tokens or ids outside the vocabulary.")
        panel = torch.arange(len(self.special_token_ids), self.config.vocab_size)
        edges = control_edges(grn_edges, self.config.grn_mode, panel, self.config.grn_control_seed)
        if edges.shape[1] == 0 and self.config.grn_mode != "dense":
            raise ValueError(
                "the GRN has no edge between two distinct genes of the vocabulary, so every gene could attend only "
                "to itself; use a prior that covers the gene panel or grn_mode='dense'."
            )
        self.grn_edges = edges.to(self.embeddings.gene_embeddings.weight.device)
        self.config.num_grn_edges = int(edges.shape[1])
        return self.grn_edges

    def mask_rules(self) -> dict:
        """The config's mask rules, as the builders of `masks.py` take them (under the config's own names)."""
        c = self.config
        return dict(vocab_size=c.vocab_size, cls_token_id=c.cls_token_id, special_token_ids=self.special_token_ids,
                    **{name: getattr(c, name) for name in MASK_RULE_FIELDS})

    def build_attention_masks(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, boolean: bool = True
    ) -> list:
        """The boolean `(batch, 1, L, L)` mask of each block (the same object where blocks share a mask). With
        `boolean=False`, what each block's attention receives, in the form its kernel on the inputs' device takes
        ([`mask_form`] of [`attention_on`]): with `"grn_structured"`, GRN blocks get the equivalent
        [`StructuredAttentionPlan`] (never materialised as L x L); with `"flex_attention"`, every block gets the
        equivalent flex `BlockMask`; dense blocks of other kernels get the cheapest exact form
        ([`dense_attention_mask`]: `None` without padding, else a key-padding mask)."""
        c = self.config
        form = BOOLEAN_MASKS if boolean else mask_form(attention_on(c._attn_implementation, input_ids.device))
        rules = self.mask_rules()
        num_grn = self.num_grn_layers
        dense = [form.dense(input_ids, attention_mask, rules)] if num_grn < c.num_hidden_layers else []
        if num_grn == 0:
            return dense * c.num_hidden_layers
        edges = self.checked_grn_edges().to(input_ids.device)
        grn = form.grn(input_ids, attention_mask, edges, edge_keys(edges, c.vocab_size), rules)
        return [grn] * num_grn + dense * c.grn_dense_last_layers

    def checked_grn_edges(self) -> torch.Tensor:
        """The stored edges, refused when they cannot be a prior: none, any special-token or out-of-vocabulary id
        (an unset buffer is all `[PAD]`: a model built from a config alone, or a checkpoint without `grn_edges`).
        Checked once per buffer content, so a forward pass on an accelerator does not wait for it again."""
        edges, c = self.grn_edges, self.config
        stamp = (edges.data_ptr(), edges._version, edges.device, tuple(edges.shape))
        if getattr(self, "_checked_edges_stamp", None) == stamp:
            return edges
        how = ("attach a prior with model.set_grn_edges(...) (or scgrn's attach_grn), load the weights with "
               "from_pretrained, or use grn_mode='dense'")
        if edges.shape[1] == 0:
            raise ValueError(f"grn_mode={c.grn_mode!r} but the model holds no GRN edges; {how}.")
        if edges.is_meta:
            raise ValueError(f"the model's GRN edges are on the meta device (never loaded); {how}.")
        unset = bool((edges == c.pad_token_id).all())
        bad = int(not_gene_pairs(edges, self.special_token_ids, c.vocab_size).sum())
        if unset or bad:
            what = ("unset (every id is [PAD]: built from a config without weights, or loaded from a checkpoint "
                    "without grn_edges)" if unset else
                    f"invalid ({bad} of {edges.shape[1]} edges hold a special-token or out-of-vocabulary id)")
            raise ValueError(f"the model's GRN edge buffer is {what}, so it has no prior to follow; {how}.")
        self._checked_edges_stamp = stamp
        return edges

    def drop_edges_outside_vocabulary(self) -> int:
        """Remove stored edges with an id at or beyond `config.vocab_size` (after the vocabulary shrank); returns
        how many were dropped."""
        inside = (self.grn_edges < self.config.vocab_size).all(0)
        dropped = int((~inside).sum())
        if dropped:
            warnings.warn(f"dropped {dropped} of {inside.numel()} GRN edges whose genes are outside the resized "
                          f"vocabulary of {self.config.vocab_size} tokens.", stacklevel=3)
            self.grn_edges = self.grn_edges[:, inside]
            self.config.num_grn_edges = int(self.grn_edges.shape[1])
        return dropped

    @property
    def num_grn_layers(self) -> int:
        """How many blocks (the first ones) follow the prior; the rest are dense."""
        c = self.config
        return 0 if c.grn_mode == "dense" else c.num_hidden_layers - c.grn_dense_last_layers

    def forward(
        self,
        input_ids: torch.LongTensor,
        expression_values: torch.FloatTensor | None = None,
        expression_bins: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attention_masks: bool = False,
        return_dict: bool | None = None,
    ) -> ScGrnModelOutput | tuple:
        r"""
        Args:
            input_ids: `(batch, L)` gene token ids, `[CLS]` first.
            expression_values: `(batch, L)` log1p-normalised expression (continuous encoding).
            expression_bins: `(batch, L)` per-cell expression bins in `[0, n_bins + 1]` (binned encoding).
            attention_mask: `(batch, L)` 1 for real tokens, 0 for padding.
            output_attentions: return attention probabilities; needs `attn_implementation="eager"` (other kernels
                warn and return none, as transformers' models do).
            output_attention_masks: return the boolean mask of each block.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            # as transformers' models do: a warning, and no weights, so generic callers (pipelines, common tests) run
            logger.warning_once(
                f"output_attentions=True needs the eager attention (this model uses "
                f"{self.config._attn_implementation!r}, which returns no weights), so no attentions are returned; "
                "call model.set_attn_implementation('eager') or load with attn_implementation='eager'."
            )
            output_attentions = False
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        token_inputs = (input_ids, attention_mask, expression_values, expression_bins)
        order, kernel = None, attention_on(self.config._attn_implementation, input_ids.device)
        if mask_form(kernel).reorders_tokens and self.num_grn_layers > 0:
            # regulators first makes the flex block mask sparse; outputs are put back in the input order below
            order = regulators_first_order(input_ids, self.grn_edges[0].to(input_ids.device), self.config.cls_token_id)
            token_inputs = tuple(None if t is None else t.gather(1, order) for t in token_inputs)
        masks = self.build_attention_masks(token_inputs[0], token_inputs[1], boolean=False)
        hidden_states = self.embeddings(token_inputs[0], *token_inputs[2:])
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        with flex_compile_scope(kernel, hidden_states.device):
            for layer, mask in zip(self.layers, masks):
                hidden_states, weights = layer(hidden_states, mask, output_attentions)
                if output_hidden_states:
                    all_hidden += (hidden_states,)
                if output_attentions:
                    all_attentions += (weights,)
        hidden_states = self.norm(hidden_states)
        restore = None if order is None else torch.argsort(order, dim=1)
        if restore is not None:
            hidden_states = _gather_tokens(hidden_states, restore)
            all_hidden = None if all_hidden is None else tuple(_gather_tokens(h, restore) for h in all_hidden)
        pooled = self.pool(hidden_states, input_ids, attention_mask)
        output = ScGrnModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            hidden_states=all_hidden,
            attentions=all_attentions,
            attention_masks=tuple(_boolean_masks(masks, input_ids, restore)) if output_attention_masks else None,
        )
        return output if return_dict else output.to_tuple()

    def pool(self, hidden_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Cell embedding `(batch, hidden)`: the `[CLS]` state, or the mean over real gene tokens."""
        if self.config.pooling == "cls":
            return hidden_states[:, 0]
        genes = gene_positions(input_ids, attention_mask, self.config.cls_token_id)
        genes = genes.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * genes).sum(1) / genes.sum(1).clamp(min=1.0)


def _gather_tokens(states: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`states[b, order[b, i]]` for `(batch, L, ...)` states and a `(batch, L)` order."""
    return states.gather(1, order.view(*order.shape, *[1] * (states.ndim - 2)).expand_as(states))


def _boolean_masks(masks: list, input_ids: torch.Tensor, restore: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The `(batch, 1, L, L)` boolean mask of each block for `(batch, L)` `input_ids`, in the input's token order
    (`restore` undoes the token order the masks were built in)."""
    converted = {}
    batch, length = input_ids.shape

    def dense(mask) -> torch.Tensor:
        if mask is None:  # a dense block without padding
            boolean = torch.ones(batch, 1, length, length, dtype=torch.bool, device=input_ids.device)
        elif isinstance(mask, torch.Tensor):
            boolean = mask.expand(batch, 1, length, length).clone()  # key-padding masks are (batch, 1, 1, L)
        elif isinstance(mask, StructuredAttentionPlan):
            boolean = mask.to_dense_mask()
        else:
            boolean = block_mask_to_dense(mask)
        if restore is not None:
            rows = restore[:, None, :, None].expand_as(boolean)
            boolean = boolean.gather(2, rows).gather(3, restore[:, None, None, :].expand_as(boolean))
        return boolean

    for mask in masks:  # blocks that share a mask object share its conversion
        if id(mask) not in converted:
            converted[id(mask)] = dense(mask)
    return [converted[id(mask)] for mask in masks]


class ScGrnForMaskedExpressionModeling(ScGrnPreTrainedModel):
    """Predicts the expression of masked gene tokens (the gene's identity stays visible, its value is hidden), from
    each token's final state and, with `config.cell_decoder="mvc"`, also from the pooled cell embedding."""

    task = "masked_expression"

    def __init__(self, config: ScGrnConfig):
        super().__init__(config)
        self.scgrn = ScGrnModel(config)
        out_features = config.n_bins + 1 if config.value_encoding == "binned" else 1
        self.head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            ACT2FN[config.hidden_act],
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
            nn.Linear(config.hidden_size, out_features),
        )
        self.cell_decoder = ScGrnCellDecoder(config, out_features) if config.cell_decoder != "none" else None
        self.cell_contrast = ScGrnCellContrast(config) if config.contrastive_weight > 0 else None
        if self.config.uses_gene_means:
            # each gene's training mean of its log1p value, saved with the weights (set_gene_means)
            self.register_buffer("gene_means", torch.zeros(config.vocab_size), persistent=True)
        # which genes a cell detects, from the pooled state (pretraining sets its panel: `set_panel`)
        self.gene_detection_decoder = ScGrnGeneDetection(config) if config.detection_weight > 0 else None
        self.post_init()

    def set_gene_means(self, means: torch.Tensor) -> None:
        """Each gene's mean log1p value over the training cells (`(vocab_size,)`), which `value_baseline` starts
        every prediction from."""
        if not self.config.uses_gene_means:
            raise ValueError("value_baseline='none' and no residual cell decoder: this model keeps no gene means.")
        self.gene_means.copy_(torch.as_tensor(means, dtype=self.gene_means.dtype).reshape(self.gene_means.shape))

    def cell_offset(self, input_ids: torch.Tensor, expression_values: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`(batch,)` how far each row's visible genes (real, not `[CLS]`, not masked) sit above their training
        means on average: the per-cell part of `value_baseline`."""
        means = self.gene_means.to(expression_values.dtype)[input_ids]
        visible = visible_values(input_ids, expression_values, attention_mask, cls_token_id=self.config.cls_token_id,
                                 mask_value=self.config.mask_value)
        return ((expression_values - means) * visible).sum(1) / visible.sum(1).clamp(min=1)

    def value_baseline(self, input_ids: torch.Tensor, expression_values: torch.Tensor,
                       attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`(batch, L)` the trivial prediction of every token's value: the gene's training mean plus the cell's
        offset (`cell_offset`)."""
        means = self.gene_means.to(expression_values.dtype)[input_ids]
        return means + self.cell_offset(input_ids, expression_values, attention_mask)[:, None]

    def value_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The masked-value loss: mean squared error of log1p values (continuous; NaN labels are not scored) or
        cross-entropy over bins (binned; -100 labels are not scored)."""
        if self.config.value_encoding == "continuous":
            scored = ~torch.isnan(labels)
            return nn.functional.mse_loss(logits[scored], labels[scored].to(logits.dtype))
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().long(), ignore_index=-100)

    def forward(
        self,
        input_ids: torch.LongTensor,
        expression_values: torch.FloatTensor | None = None,
        expression_bins: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        cell_index: torch.LongTensor | None = None,
        cell_genes: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ScGrnMaskedExpressionOutput | tuple:
        r"""
        Args:
            labels: the true values of masked tokens. Binned: `(batch, L)` long bins in `[0, n_bins]`, -100 where not
                masked. Continuous: `(batch, L)` float log1p values, NaN where not masked.
            cell_index: `(batch,)` which cell each row is; rows that share one are views of that cell, masked
                differently (the pretraining collator's `views=2`), for the contrastive term.
            cell_genes: `(batch, L')` each row's cell's token ids before any view left genes out (padded), for the
                gene-detection decoder (`config.detection_weight > 0`; the pretraining collator passes them).
        """
        outputs = self.scgrn(input_ids, expression_values=expression_values, expression_bins=expression_bins,
                             attention_mask=attention_mask, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True)
        continuous = self.config.value_encoding == "continuous"
        uses_means = self.config.uses_gene_means
        trivial = self.value_baseline(input_ids, expression_values, attention_mask) if uses_means else 0.0
        start = trivial if self.config.value_baseline != "none" else 0.0
        logits = self.head(outputs.last_hidden_state)
        logits = logits.squeeze(-1) + start if continuous else logits
        cell_logits = None
        if self.cell_decoder is not None:
            genes = self.scgrn.embeddings.gene_embeddings(input_ids)
            cell_logits = self.cell_decoder(outputs.pooler_output, genes)
            cell_start = trivial if self.config.cell_decoder == "mvc_residual" else start
            cell_logits = cell_logits.squeeze(-1) + cell_start if continuous else cell_logits
        loss = token_loss = cell_loss = None
        if labels is not None:
            token_loss = self.value_loss(logits, labels)
            loss = self.config.token_loss_weight * token_loss
            if cell_logits is not None:
                cell_loss = self.value_loss(cell_logits, labels)
                loss = loss + self.config.cell_decoder_weight * cell_loss
        contrast = None
        if self.cell_contrast is not None and cell_index is not None:
            contrast = self.cell_contrast(outputs.pooler_output, cell_index)
            loss = loss if contrast is None or loss is None else loss + self.config.contrastive_weight * contrast
        depth_loss = None if labels is None else depth_penalty(self.config, outputs.pooler_output, input_ids,
                                                                 expression_values, attention_mask)
        loss = loss if depth_loss is None else loss + self.config.depth_decorrelation_weight * depth_loss
        detection_logits = detection_loss = None
        if self.gene_detection_decoder is not None and cell_genes is not None:
            detection_logits, detection_loss = self.gene_detection_decoder(
                outputs.pooler_output, self.scgrn.embeddings.gene_embeddings.weight, cell_genes, input_ids)
            if loss is not None and detection_loss is not None:
                loss = loss + self.config.detection_weight * detection_loss
        output = ScGrnMaskedExpressionOutput(loss=loss, logits=logits, cell_logits=cell_logits,
                                             token_loss=token_loss if cell_loss is not None else None,
                                             cell_loss=cell_loss, contrastive_loss=contrast, depth_loss=depth_loss,
                                             detection_loss=detection_loss, detection_logits=detection_logits)
        return self._head_output(output, outputs, return_dict)


class ScGrnForCellClassification(ScGrnPreTrainedModel):
    """Cell-type classifier: pooled cell embedding -> dropout -> linear -> `num_labels` logits."""

    task = "cell_classification"

    def __init__(self, config: ScGrnConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.scgrn = ScGrnModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        expression_values: torch.FloatTensor | None = None,
        expression_bins: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        class_weights: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ScGrnCellClassificationOutput | tuple:
        r"""
        Args:
            labels: `(batch,)` class indices in `[0, num_labels)`; `(batch, num_labels)` 0/1 floats for
                `problem_type="multi_label_classification"`; `(batch,)` or `(batch, num_labels)` targets for
                `"regression"` (see [`loss`]).
            class_weights: optional `(num_labels,)` weights of the cross-entropy (for imbalanced cell types).
        """
        outputs = self.scgrn(input_ids, expression_values=expression_values, expression_bins=expression_bins,
                             attention_mask=attention_mask, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True)
        pooled = outputs.pooler_output
        if self.training and labels is not None and self.config.classifier_mixup_alpha > 0:
            logits, loss = self._mixup_loss(pooled, labels, class_weights)
        else:
            logits = self.classifier(self.dropout(pooled))
            loss = None if labels is None else self.loss(logits, labels, class_weights)
        output = ScGrnCellClassificationOutput(loss=loss, logits=logits, cell_embeddings=pooled)
        return self._head_output(output, outputs, return_dict)

    def _mixup_loss(self, pooled: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None):
        """Manifold mixup (`config.classifier_mixup_alpha`): the logits of the batch's embeddings mixed with a
        shuffled copy's, one `lam ~ Beta(alpha, alpha)` per batch drawn from torch's generator (so seeded runs and
        resumes repeat it), and the loss mixed the same way."""
        alpha = torch.tensor(float(self.config.classifier_mixup_alpha))
        lam = torch.distributions.Beta(alpha, alpha).sample().to(pooled.device, pooled.dtype)
        partner = torch.randperm(pooled.shape[0], device=pooled.device)
        logits = self.classifier(self.dropout(lam * pooled + (1 - lam) * pooled[partner]))
        loss = lam * self.loss(logits, labels, class_weights) + (1 - lam) * self.loss(logits, labels[partner],
                                                                                      class_weights)
        return logits, loss

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None):
        """The loss of `config.problem_type`, chosen as transformers' sequence-classification heads choose it when
        unset (one label: regression; integer labels: single-label; otherwise multi-label) and then recorded in
        the config: cross-entropy (weighted by `class_weights`), mean squared error, or binary cross-entropy on
        logits for `(batch, num_labels)` 0/1 labels."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        problem = self.config.problem_type
        if class_weights is not None and problem != "single_label_classification":
            raise ValueError(f"class_weights apply to single_label_classification, not {problem!r}.")
        if problem == "regression":
            predicted = logits.squeeze(-1) if self.num_labels == 1 else logits
            return nn.functional.mse_loss(predicted.float(), labels.float().view_as(predicted))
        if problem == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
        return nn.functional.cross_entropy(logits.float(), labels.long(), weight=weight)


__all__ = [
    "ScGrnPreTrainedModel",
    "ScGrnModel",
    "ScGrnForMaskedExpressionModeling",
    "ScGrnForCellClassification",
    "ScGrnModelOutput",
    "ScGrnMaskedExpressionOutput",
    "ScGrnCellClassificationOutput",
]
