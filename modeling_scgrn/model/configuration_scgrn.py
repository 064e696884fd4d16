"""Configuration of the scgrn model: every hyperparameter of the GRN-masked Transformer, with its default.

This file is shipped next to the weights for `trust_remote_code` loading: it imports only transformers.
"""

from transformers import PretrainedConfig

GRN_MODES = ("grn", "dense", "rewired", "random", "shuffled")  # the prior, no mask, then the three controls
GRN_DIRECTIONS = ("regulator_to_target", "target_to_regulator", "both")
VALUE_ENCODINGS = ("binned", "continuous")
POOLINGS = ("cls", "mean")
# how pretraining reaches the pooled cell embedding: "mvc" (scGPT's masked value prediction from the cell embedding)
# predicts every masked value from the pooled state and the gene's identity alone; "mvc_residual" predicts what the
# trivial predictor (gene mean + cell offset) leaves, so the pooled state need not carry depth; "none": tokens only
CELL_DECODERS = ("none", "mvc", "mvc_residual")
# what each masked-value prediction starts from: nothing, or the trivial predictor the objective otherwise rewards
# learning (the gene's training mean plus the cell's offset over its visible genes), so the heads learn the rest
VALUE_BASELINES = ("none", "gene_mean_cell_offset")
ISOLATED_GENE_POLICIES = ("self", "dense")
DEFAULT_N_BINS = 51  # expression bins per cell: the model's, the tokenizer's and DataConfig's default
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
# The fields the mask rule reads for each cell (`masks.mask_rule` takes them under these names).
MASK_RULE_FIELDS = ("grn_direction", "grn_self_loops", "cls_attends_all", "all_attend_cls", "isolated_genes", "grn_hops")
# The fields that say how the network becomes the mask: the model card, `grn_provenance.json` and
# `hub.architecture_of` read them from here.
MASK_FIELDS = ("grn_mode", *MASK_RULE_FIELDS, "grn_dense_last_layers", "grn_control_seed", "num_grn_edges")
# The fields that shape the network (a model of the same architecture, fresh weights, has these).
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "value_encoding", "n_bins", "pooling")

# The one table of heads: transformers Auto class -> class in modeling_scgrn.py. The Auto registration
# (`modeling_scgrn/model/__init__.py`), each saved config's `auto_map` and the Hub's completeness check all read it.
AUTO_HEADS = {
    "AutoModel": "ScGrnModel",
    "AutoModelForMaskedLM": "ScGrnForMaskedExpressionModeling",
    "AutoModelForSequenceClassification": "ScGrnForCellClassification",
}


class ScGrnConfig(PretrainedConfig):
    r"""
    Configuration of [`ScGrnModel`] and its heads.

    A cell is a sequence `[CLS] g_1 ... g_L` of gene tokens (no positions: gene identity is the position), each
    carrying an expression value. Attention between two genes is allowed only where the gene regulatory network
    (GRN) stored in the model links them; how the network becomes the mask is fully described by the `grn_*`,
    `cls_*` and `isolated_genes` fields below, and written into the model card.

    Args:
        vocab_size (`int`, defaults to 64):
            Number of tokens in the gene vocabulary, special tokens included.
        pad_token_id (`int`, defaults to 0): id of `[PAD]`.
        cls_token_id (`int`, defaults to 1): id of `[CLS]`, the first token of every cell.
        mask_token_id (`int`, defaults to 2): id of `[MASK]` (reserved; masked-expression modelling masks the
            value, never the gene identity).
        unk_token_id (`int`, defaults to 3): id of `[UNK]` (the tokenizer drops unknown genes instead of using it).
        hidden_size (`int`, defaults to 256): width of the residual stream.
        num_hidden_layers (`int`, defaults to 4): number of pre-LayerNorm Transformer blocks.
        num_attention_heads (`int`, defaults to 8): attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 688): inner width of the SwiGLU feed-forward (about 8/3 x hidden).
        hidden_act (`str`, defaults to `"silu"`): gate activation of the gated linear unit (SiLU gives SwiGLU).
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on embeddings and on each residual branch.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        classifier_dropout (`float`, defaults to 0.1): dropout before the cell classification layer.
        classifier_mixup_alpha (`float`, defaults to 0.0): finetuning with mixup on the pooled cell embedding
            (manifold mixup, Verma et al. 2019): in training, each batch's embeddings are mixed with those of a
            shuffled copy of the batch, `lam * e_i + (1 - lam) * e_j` with one `lam ~ Beta(alpha, alpha)` per
            batch, and the loss is `lam * loss(y_i) + (1 - lam) * loss(y_j)`; 0 turns it off, 0.2-0.4 is usual.
            Evaluation and inference are unchanged.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        initializer_range (`float`, defaults to 0.02): standard deviation of the normal weight initialisation.
        embedding_layer_norm (`bool`, defaults to `False`): a LayerNorm on each token's summed gene and value
            embedding before the first block, as BERT and scGPT normalise theirs. Without it a token enters at the
            initialisation's scale (about 0.16 in norm at hidden 64) while every block adds outputs of unit-scale
            LayerNorm inputs, so within a few hundred steps the blocks' shared, cell-wide terms swamp which genes a
            cell holds (measured: `benchmarks/README.md`, "Where the encoder loses cell type"). `False` keeps the
            architecture of models saved before it existed.
        value_encoding (`str`, defaults to `"binned"`): `"binned"` embeds per-cell expression bins
            (`expression_bins`, integers in `[0, n_bins]`, 0 meaning no value, e.g. for `[CLS]`);
            `"continuous"` projects log1p-normalised values (`expression_values`) through a small MLP.
        n_bins (`int`, defaults to 51): number of expression bins for detected genes when `value_encoding="binned"`;
            bin `n_bins + 1` marks a masked value.
        mask_value (`float`, defaults to -1.0): value given to masked genes when `value_encoding="continuous"`
            (log1p values are never negative, so -1 is unambiguous).
        pooling (`str`, defaults to `"cls"`): cell embedding = final `[CLS]` state (`"cls"`) or the mean of the
            final gene states over non-padding genes (`"mean"`).
        cell_decoder (`str`, defaults to `"mvc"`): a second pretraining head that predicts each masked value from
            the pooled cell embedding and the gene's own embedding only (scGPT's MVC), so that pretraining trains
            the cell embedding (the token head alone leaves its gradient at exactly 0); `"mvc_residual"` (continuous
            values only) adds its prediction to the gene's training mean plus the cell's offset over its visible
            genes, so the cell embedding is trained on what distinguishes cells beyond depth; `"none"` drops it.
        cell_decoder_weight (`float`, defaults to 1.0): weight of the cell decoder's loss beside the token head's.
        token_loss_weight (`float`, defaults to 1.0): weight of the token head's masked-value loss (the head that
            reads each masked gene's final state); 0 leaves it untrained, so the terms on the pooled embedding (cell
            decoder, contrastive, detection) alone train the encoder.
        value_baseline (`str`, defaults to `"none"`): with `"gene_mean_cell_offset"` (continuous values only), every
            masked-value prediction is the gene's training mean (`gene_means`, set by pretraining) plus the cell's
            offset over its visible genes, plus what the head adds: the shortcut is given, not learnt, and the cell
            embedding need not carry depth.
        contrastive_weight (`float`, defaults to 0.0): weight of a contrastive term on the pooled cell embedding
            (SimCLR's NT-Xent between two differently masked views of each cell; the pretraining collator then
            makes two views of every cell); 0 leaves it out.
        contrastive_temperature (`float`, defaults to 0.1): temperature of that term's cosine similarities.
        depth_decorrelation_weight (`float`, defaults to 0.0): weight of a pretraining penalty on the squared
            correlation, across the batch, between each dimension of the pooled cell embedding and the cell's depth
            as its tokens show it (log genes shown; mean visible value); 0 leaves it out. It keeps each dimension
            apart from depth, not every direction: measured, the embedding still predicts depth jointly
            (`benchmarks/README.md`, "Pretraining objectives"), so it is an experiment, not shipped.
        detection_weight (`float`, defaults to 0.0): weight of a gene-detection decoder on the pooled cell
            embedding: from it and the cell's depth (the log of how many genes it detects), predict, for every gene
            of the panel (each gene some training cell detects; pretraining sets it) that the input does not show,
            whether the cell detects it (binary cross-entropy). The masked-value terms score detected genes only,
            whose values in sparse cells mostly carry depth; this one asks which other genes a cell expresses, what
            PCA of the counts reads, with depth given to the decoder. It needs inputs that leave genes out
            (`view_gene_dropout`); the pretraining collator then passes each cell's full gene set (`cell_genes`).
            Measured on simulated cells it does not teach the embedding cell type (`benchmarks/README.md`, "Which
            genes a cell detects"), so it is an experiment, not shipped. 0 leaves it out.
        grn_mode (`str`, defaults to `"grn"`): which edges form the mask. `"grn"`: the prior network;
            `"dense"`: no constraint (the unconstrained Transformer baseline); `"random"`: uniform random edges
            among the prior's genes, as many as the prior has (seeded by `grn_control_seed`);
            `"shuffled"`: degree-preserving rewiring of the prior (every gene keeps its in- and out-degree);
            `"rewired"`: the same rewiring with none of the prior's own edges left, so the same genes regulate and
            are regulated, as often, in the same cells, but along wrong edges (the control matched to what cells
            see; compare per-cell active pairs in `finetune/compare.py`).
        grn_direction (`str`, defaults to `"regulator_to_target"`): direction of information flow along an edge
            TF -> target. `"regulator_to_target"`: a target's query attends to its regulators' keys (the target
            reads its regulators); `"target_to_regulator"`: a regulator reads its targets; `"both"`: either.
        grn_self_loops (`bool`, defaults to `True`): every gene attends to itself. If `False`, `all_attend_cls`
            must be `True` so that no gene is left with nothing to attend to.
        cls_attends_all (`bool`, defaults to `True`): the `[CLS]` query attends to every gene of the cell (so the
            cell embedding sees the whole cell); if `False` it attends to itself only.
        all_attend_cls (`bool`, defaults to `True`): every gene may attend to the `[CLS]` key (a global channel).
        isolated_genes (`str`, defaults to `"self"`): what a gene with no prior partner among the cell's genes
            attends to: `"self"` (itself and `[CLS]` per the options above) or `"dense"` (every gene of the cell).
        grn_dense_last_layers (`int`, defaults to 0): the last k blocks attend densely (a per-layer schedule;
            0 keeps the same mask in every block). The mask is always the same for every head of a block.
        grn_hops (`int`, defaults to 1): k-hop expansion of the prior within each cell: allow pairs joined by a
            directed path of at most `grn_hops` prior edges through genes present in the cell (A + A^2 + ...).
        grn_control_seed (`int`, defaults to 0): seed of the `"random"` and `"shuffled"` controls.
        num_grn_edges (`int`, defaults to 0): number of edges in the stored edge buffer (set when a network is
            attached; needed to rebuild the buffer's shape before weights load).
        num_labels / id2label / label2id: cell-type classes of [`ScGrnForCellClassification`] (from
            `PretrainedConfig`).
    """

    model_type = "scgrn"

    def __init__(
        self,
        vocab_size: int = 64,
        pad_token_id: int = 0,
        cls_token_id: int = 1,
        mask_token_id: int = 2,
        unk_token_id: int = 3,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int = 688,
        hidden_act: str = "silu",
        hidden_dropout_prob: float = 0.1,
        attention_dropout: float = 0.0,
        classifier_dropout: float = 0.1,
        classifier_mixup_alpha: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        embedding_layer_norm: bool = False,
        value_encoding: str = "binned",
        n_bins: int = DEFAULT_N_BINS,
        mask_value: float = -1.0,
        pooling: str = "cls",
        cell_decoder: str = "mvc",
        cell_decoder_weight: float = 1.0,
        token_loss_weight: float = 1.0,
        value_baseline: str = "none",
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.1,
        depth_decorrelation_weight: float = 0.0,
        detection_weight: float = 0.0,
        grn_mode: str = "grn",
        grn_direction: str = "regulator_to_target",
        grn_self_loops: bool = True,
        cls_attends_all: bool = True,
        all_attend_cls: bool = True,
        isolated_genes: str = "self",
        grn_dense_last_layers: int = 0,
        grn_hops: int = 1,
        grn_control_seed: int = 0,
        num_grn_edges: int = 0,
        **kwargs,
    ):
        _check_choice("value_encoding", value_encoding, VALUE_ENCODINGS)
        _check_choice("pooling", pooling, POOLINGS)
        _check_objective(value_encoding, cell_decoder, cell_decoder_weight, value_baseline, token_loss_weight)
        _check_contrastive(contrastive_weight, contrastive_temperature, depth_decorrelation_weight, detection_weight)
        _check_mask(grn_mode, grn_direction, isolated_genes, grn_self_loops, all_attend_cls)
        _check_mask_schedule(grn_dense_last_layers, num_hidden_layers, grn_hops)
        _check_sizes(hidden_size, num_attention_heads, n_bins, classifier_mixup_alpha)
        _check_special_tokens(vocab_size, pad_token_id, cls_token_id, mask_token_id, unk_token_id)

        self.vocab_size = vocab_size
        self.cls_token_id = cls_token_id
        self.mask_token_id = mask_token_id
        self.unk_token_id = unk_token_id
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout = attention_dropout
        self.classifier_dropout = classifier_dropout
        self.classifier_mixup_alpha = classifier_mixup_alpha
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.embedding_layer_norm = embedding_layer_norm
        self.value_encoding = value_encoding
        self.n_bins = n_bins
        self.mask_value = mask_value
        self.pooling = pooling
        self.cell_decoder = cell_decoder
        self.cell_decoder_weight = cell_decoder_weight
        self.token_loss_weight = token_loss_weight
        self.value_baseline = value_baseline
        self.contrastive_weight = contrastive_weight
        self.contrastive_temperature = contrastive_temperature
        self.depth_decorrelation_weight = depth_decorrelation_weight
        self.detection_weight = detection_weight
        self.grn_mode = grn_mode
        self.grn_direction = grn_direction
        self.grn_self_loops = grn_self_loops
        self.cls_attends_all = cls_attends_all
        self.all_attend_cls = all_attend_cls
        self.isolated_genes = isolated_genes
        self.grn_dense_last_layers = grn_dense_last_layers
        self.grn_hops = grn_hops
        self.grn_control_seed = grn_control_seed
        self.num_grn_edges = num_grn_edges
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        _check_choice("problem_type", self.problem_type, (None, *PROBLEM_TYPES))

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' lookup, refusing a local folder without `config.json` (transformers would return an empty
        dict, and so a default config that matches no saved model)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            raise OSError(f"{pretrained_model_name_or_path} has no config.json: it is not a saved scgrn model "
                          "(save one with save_pretrained, or point at the model/ folder a run wrote).")
        return config_dict, kwargs

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mask_bin_id(self) -> int:
        """Bin id that marks a masked expression value (binned encoding)."""
        return self.n_bins + 1

    @property
    def uses_gene_means(self) -> bool:
        """Whether a masked-value prediction starts from the trivial predictor (gene mean + cell offset), which needs
        the gene means pretraining sets (`value_baseline`, or the residual cell decoder)."""
        return self.value_baseline != "none" or self.cell_decoder == "mvc_residual"

    def mask_description(self) -> dict:
        """The exact mask construction, as written into the model card and `grn_provenance.json`."""
        return {**{name: getattr(self, name) for name in MASK_FIELDS}, "same_mask_for_all_heads": True}


def _check_objective(value_encoding: str, cell_decoder: str, cell_decoder_weight: float, value_baseline: str,
                     token_loss_weight: float = 1.0) -> None:
    """The pretraining objective's options: a known cell decoder and value baseline, the baseline on continuous
    values only, weights that are not negative."""
    _check_choice("cell_decoder", cell_decoder, CELL_DECODERS)
    _check_choice("value_baseline", value_baseline, VALUE_BASELINES)
    if value_baseline != "none" and value_encoding != "continuous":
        raise ValueError(f"value_baseline={value_baseline!r} needs value_encoding='continuous' (bins are ranks "
                         "within each cell, already free of depth).")
    if cell_decoder == "mvc_residual" and value_encoding != "continuous":
        raise ValueError("cell_decoder='mvc_residual' needs value_encoding='continuous' (bins are ranks within each "
                         "cell, already free of depth); use 'mvc'.")
    for name, weight in {"cell_decoder_weight": cell_decoder_weight, "token_loss_weight": token_loss_weight}.items():
        if weight < 0:
            raise ValueError(f"{name}={weight} must not be negative.")


def _check_contrastive(contrastive_weight: float, contrastive_temperature: float,
                       depth_decorrelation_weight: float = 0.0, detection_weight: float = 0.0) -> None:
    """The weights of the terms on the pooled embedding are not negative; the temperature is positive."""
    for name, weight in {"contrastive_weight": contrastive_weight,
                         "depth_decorrelation_weight": depth_decorrelation_weight,
                         "detection_weight": detection_weight}.items():
        if weight < 0:
            raise ValueError(f"{name}={weight} must not be negative (0 leaves the term out).")
    if not contrastive_temperature > 0:
        raise ValueError(f"contrastive_temperature={contrastive_temperature} must be positive, e.g. 0.1.")


def _check_mask(grn_mode: str, grn_direction: str, isolated_genes: str, grn_self_loops: bool,
                all_attend_cls: bool) -> None:
    """The mask's options: known choices, and every gene left something to attend to."""
    _check_choice("grn_mode", grn_mode, GRN_MODES)
    _check_choice("grn_direction", grn_direction, GRN_DIRECTIONS)
    _check_choice("isolated_genes", isolated_genes, ISOLATED_GENE_POLICIES)
    if not grn_self_loops and not all_attend_cls:
        raise ValueError(
            "grn_self_loops=False with all_attend_cls=False leaves genes without a prior partner nothing to "
            "attend to; set grn_self_loops=True or all_attend_cls=True."
        )


def _check_sizes(hidden_size: int, num_attention_heads: int, n_bins: int, classifier_mixup_alpha: float) -> None:
    if hidden_size % num_attention_heads != 0:
        raise ValueError(
            f"hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads}); "
            f"choose heads that divide the hidden size, e.g. num_attention_heads="
            f"{max(h for h in range(1, num_attention_heads + 1) if hidden_size % h == 0)}."
        )
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be at least 1.")
    if classifier_mixup_alpha < 0:
        raise ValueError(f"classifier_mixup_alpha={classifier_mixup_alpha} must not be negative (0 turns mixup "
                         "off; 0.2-0.4 is usual).")


def _check_special_tokens(vocab_size: int, pad: int, cls: int, mask: int, unk: int) -> None:
    special = {"pad": pad, "cls": cls, "mask": mask, "unk": unk}
    if len(set(special.values())) != 4 or max(special.values()) >= vocab_size or min(special.values()) < 0:
        raise ValueError(f"special token ids {special} must be distinct and lie in [0, vocab_size={vocab_size}).")


def _check_mask_schedule(grn_dense_last_layers: int, num_hidden_layers: int, grn_hops: int) -> None:
    if not 0 <= grn_dense_last_layers <= num_hidden_layers:
        raise ValueError(
            f"grn_dense_last_layers={grn_dense_last_layers} must lie in [0, num_hidden_layers={num_hidden_layers}]."
        )
    if grn_hops < 1:
        raise ValueError(f"grn_hops={grn_hops} must be at least 1.")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}.")


__all__ = ["ScGrnConfig"]
