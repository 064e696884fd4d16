import pytest
import torch
from conftest import tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from modeling_scgrn import (
    ScGrnConfig,
    ScGrnForCellClassification,
    ScGrnForMaskedExpressionModeling,
    ScGrnModel,
)
from modeling_scgrn.model.kernels import _SwiGLU
from modeling_scgrn.model.masks import edge_keys, lookup_pairs
from modeling_scgrn.model.modeling_scgrn import ScGrnMLP

HEADS = [ScGrnModel, ScGrnForMaskedExpressionModeling, ScGrnForCellClassification]


def make(model_class, tokenizer, edge_tensor, **overrides):
    torch.manual_seed(0)
    model = model_class(tiny_config(tokenizer, **overrides))
    model.set_grn_edges(edge_tensor)
    return model.eval()


def labels_for(model, batch):
    if isinstance(model, ScGrnForCellClassification):
        return {"labels": torch.tensor([0, 1, 2])}
    if isinstance(model, ScGrnForMaskedExpressionModeling):
        labels = torch.full_like(batch["input_ids"], -100)
        labels[:, 2] = batch["expression_bins"][:, 2]
        return {"labels": labels}
    return {}


@pytest.mark.parametrize("model_class", HEADS)
@pytest.mark.parametrize("value_encoding", ["binned", "continuous"])
def test_forward_backward_every_head(model_class, value_encoding, tokenizer, edge_tensor, batch):
    model = make(model_class, tokenizer, edge_tensor, value_encoding=value_encoding).train()
    inputs = dict(batch)
    extra = labels_for(model, batch)
    if value_encoding == "continuous" and "labels" in extra and model_class is ScGrnForMaskedExpressionModeling:
        labels = torch.full(batch["input_ids"].shape, float("nan"))
        labels[:, 2] = batch["expression_values"][:, 2]
        extra = {"labels": labels}
    out = model(**inputs, **extra)
    if model_class is ScGrnModel:
        loss = out.last_hidden_state.pow(2).mean()
        assert out.pooler_output.shape == (3, 32)
    else:
        loss = out.loss
        assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("value_encoding", ["binned", "continuous"])
def test_pretraining_loss_trains_the_pooled_cell_embedding(value_encoding, tokenizer, edge_tensor, batch):
    """The masked-value loss of the token head alone never reaches the pooled state (its gradient there is exactly
    0: the diagnosis of issue 26); the cell decoder (the default) gives it one, and its loss is part of `loss`."""
    gradients = {}
    for decoder in ("none", "mvc"):
        model = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, value_encoding=value_encoding,
                     cell_decoder=decoder).train()
        pooled = {}
        model.scgrn.register_forward_hook(lambda module, args, output: pooled.update(state=output.pooler_output))
        labels = torch.full(batch["input_ids"].shape, -100 if value_encoding == "binned" else float("nan"))
        labels[:, 2:4] = batch["expression_bins" if value_encoding == "binned" else "expression_values"][:, 2:4]
        out = model(**batch, labels=labels.long() if value_encoding == "binned" else labels)
        pooled["state"].retain_grad()
        out.loss.backward()
        grad = pooled["state"].grad  # None: the loss does not depend on the pooled state at all
        gradients[decoder] = 0.0 if grad is None else grad.abs().sum().item()
        if decoder == "mvc":
            torch.testing.assert_close(out.loss, out.token_loss + model.config.cell_decoder_weight * out.cell_loss)
            assert out.cell_logits.shape[:2] == batch["input_ids"].shape
    assert ScGrnForMaskedExpressionModeling.config_class().cell_decoder == "mvc"
    assert gradients["none"] == 0.0 and gradients["mvc"] > 0.0


def test_token_loss_weight_scales_the_token_heads_term(tokenizer, edge_tensor, batch):
    """`token_loss_weight` multiplies the token head's masked-value loss in `loss` (default 1); at 0 the token head
    gets no gradient while the cell decoder still trains the encoder."""
    assert ScGrnConfig().token_loss_weight == 1.0
    labels = torch.full(batch["input_ids"].shape, -100)
    labels[:, 2:4] = batch["expression_bins"][:, 2:4]
    for weight in (0.0, 0.25):
        torch.manual_seed(0)
        model = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, token_loss_weight=weight).train()
        out = model(**batch, labels=labels)
        torch.testing.assert_close(out.loss, weight * out.token_loss + out.cell_loss)
        out.loss.backward()
        head = sum(p.grad.abs().sum().item() for p in model.head.parameters() if p.grad is not None)
        encoder = model.scgrn.embeddings.gene_embeddings.weight.grad.abs().sum().item()
        assert (head == 0.0) == (weight == 0.0) and encoder > 0.0


def test_the_contrastive_term_is_nt_xent_between_views_and_trains_the_pooled_state(tokenizer, edge_tensor, batch):
    """`contrastive_weight > 0`: rows sharing a `cell_index` are views of one cell; the term is SimCLR's NT-Xent on the
    projected, unit-length pooled states (checked against a direct computation), it is added to `loss` at its
    weight, it alone gives the pooled state a gradient, and without `cell_index` (evaluation) it is left out."""
    model = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, cell_decoder="none",
                 contrastive_weight=0.5, contrastive_temperature=0.2).train()
    views = {key: value.repeat(2, *[1] * (value.dim() - 1)) for key, value in batch.items()}
    cells = len(batch["input_ids"])
    views["expression_bins"][cells:, 2] = model.config.mask_bin_id  # the second view hides another value
    labels = torch.full(views["input_ids"].shape, -100)
    labels[:, 3] = views["expression_bins"][:, 3]
    pooled = {}
    model.scgrn.register_forward_hook(lambda module, args, output: pooled.update(state=output.pooler_output))
    out = model(**views, labels=labels, cell_index=torch.arange(cells).repeat(2))
    pooled["state"].retain_grad()
    out.contrastive_loss.backward(retain_graph=True)
    assert pooled["state"].grad.abs().sum() > 0
    torch.testing.assert_close(out.loss, model.value_loss(out.logits, labels) + 0.5 * out.contrastive_loss)
    z = torch.nn.functional.normalize(model.cell_contrast.projection(pooled["state"].detach()), dim=-1)
    similarity = z @ z.T / 0.2
    similarity.fill_diagonal_(float("-inf"))
    partner = torch.arange(2 * cells).roll(cells)
    expected = torch.nn.functional.cross_entropy(similarity, partner)
    torch.testing.assert_close(out.contrastive_loss.detach(), expected)
    assert model(**views, labels=labels).contrastive_loss is None
    alone = model(**batch, labels=labels[:cells], cell_index=torch.arange(cells))  # no other view: no term
    assert alone.contrastive_loss is None and torch.isfinite(alone.loss)
    with pytest.raises(ValueError, match="contrastive_temperature=0"):
        tiny_config(tokenizer, contrastive_weight=1.0, contrastive_temperature=0)


def test_depth_correlation_is_the_squared_correlation_with_the_depth_the_tokens_show(tokenizer, edge_tensor, batch):
    """`depth_decorrelation_weight > 0`: the penalty is the mean squared Pearson correlation between the pooled
    state's dimensions and (log genes shown, mean visible value), added to `loss` at its weight, with a gradient on the
    pooled state; masked values, padding and `[CLS]` do not count as depth; negative weights are refused."""
    from modeling_scgrn.model.heads import depth_correlation, token_depth

    generator = torch.Generator().manual_seed(0)
    depth = torch.randn(64, 2, generator=generator)
    linear = torch.cat([depth[:, :1], -3 * depth[:, :1] + 1], 1)  # both dimensions are depth, up to sign and scale
    assert depth_correlation(linear, depth[:, :1]) == pytest.approx(1.0, abs=1e-5)
    assert depth_correlation(torch.randn(64, 8, generator=generator), depth) < 0.1
    assert depth_correlation(torch.ones(64, 8), depth) == 0.0 and depth_correlation(depth[:2], depth[:2]) is None
    values = torch.tensor([[0.0, 1.0, 3.0, -1.0, 9.0], [0.0, 2.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[tokenizer.cls_token_id, 5, 6, 7, 8], [tokenizer.cls_token_id, 5, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    shown = token_depth(ids, values, mask, cls_token_id=tokenizer.cls_token_id, mask_value=-1.0)
    torch.testing.assert_close(shown, torch.tensor([[torch.log(torch.tensor(3.0)), 2.0], [0.0, 2.0]]))

    model = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, value_encoding="continuous",
                 depth_decorrelation_weight=2.0).train()
    labels = torch.full(batch["input_ids"].shape, float("nan"))
    labels[:, 2] = batch["expression_values"][:, 2]
    pooled = {}
    model.scgrn.register_forward_hook(lambda module, args, output: pooled.update(state=output.pooler_output))
    out = model(**batch, labels=labels)
    pooled["state"].retain_grad()
    out.depth_loss.backward(retain_graph=True)
    assert pooled["state"].grad.abs().sum() > 0 and 0 < out.depth_loss < 1
    expected = depth_correlation(pooled["state"].detach(), token_depth(
        batch["input_ids"], batch["expression_values"], batch["attention_mask"], cls_token_id=tokenizer.cls_token_id,
        mask_value=-1.0))
    torch.testing.assert_close(out.depth_loss.detach(), expected)
    torch.testing.assert_close(out.loss, out.token_loss + out.cell_loss + 2.0 * out.depth_loss)
    assert model(**batch).depth_loss is None  # inference: no labels, no penalty
    with pytest.raises(ValueError, match="depth_decorrelation_weight=-1"):
        tiny_config(tokenizer, depth_decorrelation_weight=-1)


def test_the_gene_detection_decoder_scores_the_genes_an_input_leaves_out(tokenizer, edge_tensor, batch):
    """`detection_weight > 0`: from the pooled state and the cell's centred log gene count, a logit per panel gene
    (genes with a training detection share above 0); its binary cross-entropy over the panel genes the input does
    not show, against whether the cell's full token list (`cell_genes`) holds them (checked against a direct
    computation), is added to `loss` at its weight and alone gives the pooled state a gradient; shown genes are
    not scored; without `cell_genes` (inference) it is left out; an empty panel and negative weights are refused."""
    from modeling_scgrn.cells.collators import drop_gene_tokens
    from modeling_scgrn.model.heads import cell_gene_targets

    ids = torch.tensor([[1, 7, 9, 0], [1, 8, 0, 0]])
    genes = torch.tensor([[False, True, True, False], [False, True, False, False]])
    targets = cell_gene_targets(ids, genes, 12)
    assert targets.shape == (2, 12) and targets.sum() == 3
    assert targets[0, [7, 9]].tolist() == [1.0, 1.0] and targets[1, 8] == 1.0 and targets[:, :2].sum() == 0

    model = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, cell_decoder="none",
                 detection_weight=0.5).train()
    draw = torch.rand(batch["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    view = drop_gene_tokens(dict(batch), 0.5, draw, tokenizer.pad_token_id)  # about half of each cell's genes
    labels = torch.full(view["input_ids"].shape, -100)
    labels[:, 1] = view["expression_bins"][:, 1]
    with pytest.raises(ValueError, match="empty panel"):
        model(**view, labels=labels, cell_genes=batch["input_ids"])
    shares = torch.zeros(model.config.vocab_size)
    panel = torch.tensor(sorted(set(batch["input_ids"][:, 1:].flatten().tolist()) - {tokenizer.pad_token_id}))
    shares[panel] = torch.linspace(0.2, 0.9, len(panel))
    shares[panel[0]] = 0.0  # a gene no training cell detected: outside the panel
    model.gene_detection_decoder.set_panel(shares, 1.0)
    assert model.gene_detection_decoder.panel_gene_ids.tolist() == panel[1:].tolist()
    pooled = {}
    model.scgrn.register_forward_hook(lambda module, args, output: pooled.update(state=output.pooler_output))
    out = model(**view, labels=labels, cell_genes=batch["input_ids"])
    pooled["state"].retain_grad()
    out.detection_loss.backward(retain_graph=True)
    assert pooled["state"].grad.abs().sum() > 0
    assert out.detection_logits.shape == (len(batch["input_ids"]), len(panel) - 1)

    def held(tokens, mask):
        return cell_gene_targets(tokens, mask.bool() & (tokens != tokenizer.cls_token_id), model.config.vocab_size)

    in_cell, shown = held(batch["input_ids"], batch["attention_mask"]), held(view["input_ids"], view["attention_mask"])
    scored = shown[:, panel[1:]] == 0
    assert (in_cell - shown)[:, panel[1:]].sum() > 0  # some detected genes are hidden, and so scored
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.detection_logits.detach()[scored],
                                                                    in_cell[:, panel[1:]][scored])
    torch.testing.assert_close(out.detection_loss.detach(), expected)
    torch.testing.assert_close(out.loss, model.value_loss(out.logits, labels) + 0.5 * out.detection_loss)
    assert model(**view, labels=labels).detection_loss is None
    with pytest.raises(ValueError, match="detection_weight=-1"):
        tiny_config(tokenizer, detection_weight=-1)
    assert make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor).gene_detection_decoder is None


def test_the_residual_cell_decoder_starts_from_the_trivial_predictor(tokenizer, edge_tensor, batch):
    """`cell_decoder="mvc_residual"`: the decoder's prediction is added to each gene's mean plus the cell's offset
    (the token head's is not), and its loss still trains the pooled state."""
    model = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, value_encoding="continuous",
                 cell_decoder="mvc_residual").eval()
    plain = make(ScGrnForMaskedExpressionModeling, tokenizer, edge_tensor, value_encoding="continuous",
                 cell_decoder="mvc").eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "gene_means"})
    model.set_gene_means(torch.linspace(0.5, 2.0, model.config.vocab_size))
    values = batch["expression_values"].clone()
    values[:, 2:4] = model.config.mask_value
    inputs = {**batch, "expression_values": values}
    with torch.no_grad():
        out, reference = model(**inputs), plain(**inputs)
    trivial = model.value_baseline(batch["input_ids"], values, batch["attention_mask"])
    torch.testing.assert_close(out.cell_logits, reference.cell_logits + trivial)
    torch.testing.assert_close(out.logits, reference.logits)  # the token head reads no baseline
    with pytest.raises(ValueError, match="keeps no gene means"):
        plain.set_gene_means(torch.zeros(plain.config.vocab_size))


def test_classifier_mixup_mixes_embeddings_and_losses_in_training_only(tokenizer, edge_tensor, batch):
    """`classifier_mixup_alpha`: in training the logits are the classifier's of `lam * e + (1 - lam) * e[perm]` and
    the loss `lam * loss(y) + (1 - lam) * loss(y[perm])`, with lam and perm drawn from torch's generator in that
    order; in evaluation the output is the plain model's; alpha 0 is the plain model in training too."""
    mixed = make(ScGrnForCellClassification, tokenizer, edge_tensor, classifier_mixup_alpha=0.4)
    plain = make(ScGrnForCellClassification, tokenizer, edge_tensor)
    labels, weights = torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 0.5])
    with torch.no_grad():
        evaluated, reference = mixed(**batch, labels=labels), plain(**batch, labels=labels)
        torch.testing.assert_close(evaluated.logits, reference.logits)
        torch.testing.assert_close(evaluated.loss, reference.loss)
    torch.manual_seed(5)
    out = mixed.train()(**batch, labels=labels, class_weights=weights)
    with torch.no_grad():
        torch.manual_seed(5)
        lam = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample()
        partner = torch.randperm(3)
        embedding = reference.cell_embeddings
        logits = plain.classifier(lam * embedding + (1 - lam) * embedding[partner])
        expected = (lam * torch.nn.functional.cross_entropy(logits, labels, weight=weights)
                    + (1 - lam) * torch.nn.functional.cross_entropy(logits, labels[partner], weight=weights))
        assert 0 < lam < 1 and not torch.equal(partner, torch.arange(3))  # the seed mixes cells, so the check bites
        torch.testing.assert_close(out.logits.detach(), logits)
        torch.testing.assert_close(out.loss.detach(), expected)
        torch.testing.assert_close(out.cell_embeddings.detach(), embedding)  # the unmixed embedding is what is returned
        trained = plain.train()(**batch, labels=labels)
        torch.testing.assert_close(trained.loss, reference.loss)
    out.loss.backward()
    assert mixed.scgrn.embeddings.gene_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_class", HEADS)
def test_save_load_round_trip_keeps_outputs_and_grn(model_class, tokenizer, edge_tensor, batch, tmp_path):
    model = make(model_class, tokenizer, edge_tensor)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.base_model.grn_edges, model.base_model.grn_edges)
    assert reloaded.config.num_grn_edges == len({tuple(e) for e in edge_tensor.T.tolist()})
    with torch.no_grad():
        first, second = model(**batch), reloaded(**batch)
    key = "last_hidden_state" if model_class is ScGrnModel else "logits"
    assert torch.equal(first[key], second[key])


@pytest.mark.parametrize("value_encoding", ["binned", "continuous"])
def test_embedding_layer_norm_normalises_each_token_and_round_trips(value_encoding, tokenizer, edge_tensor, batch,
                                                                     tmp_path):
    """`embedding_layer_norm=True`: each token's summed gene and value embedding leaves the embeddings zero-mean and
    unit-variance over its features (the LayerNorm starts at weight 1, bias 0), where without it a token keeps the
    initialisation's small scale; the LayerNorm's weights save and reload with the model; the default is off."""
    assert ScGrnConfig().embedding_layer_norm is False
    inputs = dict(input_ids=batch["input_ids"], expression_values=batch["expression_values"],
                  expression_bins=batch["expression_bins"])
    plain = make(ScGrnModel, tokenizer, edge_tensor, value_encoding=value_encoding)
    assert plain.embeddings.layer_norm is None
    assert plain.embeddings(*inputs.values()).std(-1).max() < 0.1
    model = make(ScGrnModel, tokenizer, edge_tensor, value_encoding=value_encoding, embedding_layer_norm=True)
    embedded = model.embeddings(*inputs.values())
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(embedded.mean(-1)[real], torch.zeros(int(real.sum())), atol=1e-5, rtol=0)
    # unit variance up to the LayerNorm's epsilon (1e-5 beside a token variance of about 4e-4 at initialisation)
    torch.testing.assert_close(embedded.var(-1, unbiased=False)[real], torch.ones(int(real.sum())), atol=0.05, rtol=0)
    with torch.no_grad():
        model.embeddings.layer_norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    reloaded = ScGrnModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.embedding_layer_norm is True
    torch.testing.assert_close(reloaded.embeddings.layer_norm.weight, model.embeddings.layer_norm.weight)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, reloaded(**batch).last_hidden_state)


def test_auto_classes_load_saved_folder(tokenizer, edge_tensor, batch, tmp_path):
    model = make(ScGrnForCellClassification, tokenizer, edge_tensor)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ScGrnConfig)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, ScGrnModel)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(classifier, ScGrnForCellClassification)
    assert isinstance(AutoModelForMaskedLM.from_pretrained(tmp_path), ScGrnForMaskedExpressionModeling)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab() and loaded_tokenizer.n_bins == 5
    with torch.no_grad():
        assert torch.equal(classifier(**batch).logits, model(**batch).logits)
        assert torch.equal(base(**batch).pooler_output, model.scgrn(**batch).pooler_output)


def allowed_by_hand(input_ids, attention_mask, edges):
    """The mask written out pair by pair (regulator_to_target, self loops, CLS both ways)."""
    edge_set = {tuple(e) for e in edges.T.tolist()}
    batch, length = input_ids.shape
    out = torch.zeros(batch, length, length, dtype=torch.bool)
    for b in range(batch):
        for i in range(length):
            for j in range(length):
                qi, kj = int(input_ids[b, i]), int(input_ids[b, j])
                real_i, real_j = bool(attention_mask[b, i]), bool(attention_mask[b, j])
                if not real_i:
                    out[b, i, j] = i == j
                elif not real_j:
                    out[b, i, j] = False
                elif i == 0 or j == 0 or i == j:
                    out[b, i, j] = True
                else:
                    out[b, i, j] = (kj, qi) in edge_set
    return out


def test_attention_is_exactly_zero_off_the_prior(tokenizer, edge_tensor, batch):
    model = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="eager")
    out = model(**batch, output_attentions=True, output_attention_masks=True)
    expected = allowed_by_hand(batch["input_ids"], batch["attention_mask"], edge_tensor)
    assert expected.sum() > expected.shape[0] * expected.shape[1]  # some real prior edges are present
    for weights, mask in zip(out.attentions, out.attention_masks):
        assert torch.equal(mask[:, 0], expected)
        assert weights.shape == (3, 4, *expected.shape[1:])
        assert torch.all(weights.masked_select(~expected[:, None].expand_as(weights)) == 0)
        assert torch.all(weights.masked_select(expected[:, None].expand_as(weights)) > 0)


def test_output_attentions_needs_eager_and_other_kernels_warn_and_return_none(tokenizer, edge_tensor, batch,
                                                                              caplog):
    from transformers.utils import logging as transformers_logging

    model = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="sdpa")
    transformers_logging.warning_once.cache_clear()  # said once per process: other tests may have said it
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            output = model(**batch, output_attentions=True)  # as transformers' models do: no raise, no weights
    finally:
        transformers_logging.disable_propagation()
    assert output.attentions is None and output.last_hidden_state.shape[0] == 3
    assert "needs the eager attention" in caplog.text
    model.set_attn_implementation("eager")
    assert len(model(**batch, output_attentions=True).attentions) == model.config.num_hidden_layers


def perturb_gene(batch, tokenizer, gene, cell=0):
    position = (batch["input_ids"][cell] == tokenizer.convert_tokens_to_ids(gene)).nonzero().item()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["expression_bins"][cell, position] = 1 if changed["expression_bins"][cell, position] != 1 else 5
    changed["expression_values"][cell, position] += 3.0
    return changed


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_unconnected_gene_does_not_reach_gene_in_one_layer(tokenizer, edge_tensor, batch, attn_implementation):
    # G3 reads only G1 (its regulator), itself and CLS; G7 has no path to G3, G1 does.
    g3 = (batch["input_ids"][0] == tokenizer.convert_tokens_to_ids("G3")).nonzero().item()
    for mode, gene, should_change in [("grn", "G7", False), ("grn", "G1", True), ("dense", "G7", True)]:
        model = make(ScGrnModel, tokenizer, edge_tensor, grn_mode=mode, attn_implementation=attn_implementation)
        with torch.no_grad():
            before = model(**batch, output_hidden_states=True).hidden_states[1][0, g3]
            after = model(**perturb_gene(batch, tokenizer, gene), output_hidden_states=True).hidden_states[1][0, g3]
        assert (not torch.equal(before, after)) == should_change, (mode, gene)


@pytest.mark.parametrize("grn_mode", ["grn", "dense", "random", "shuffled", "rewired"])
@pytest.mark.parametrize("grn_direction", ["regulator_to_target", "target_to_regulator", "both"])
def test_eager_and_sdpa_agree(tokenizer, edge_tensor, batch, grn_mode, grn_direction):
    eager = make(ScGrnModel, tokenizer, edge_tensor, grn_mode=grn_mode, grn_direction=grn_direction,
                 attn_implementation="eager")
    sdpa = make(ScGrnModel, tokenizer, edge_tensor, grn_mode=grn_mode, grn_direction=grn_direction,
                attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        a, b = eager(**batch).last_hidden_state, sdpa(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


def test_padding_never_leaks(tokenizer, edge_tensor, batch):
    model = make(ScGrnModel, tokenizer, edge_tensor, pooling="mean")
    cell = {k: v[2:3, : int(batch["attention_mask"][2].sum())] for k, v in batch.items()}
    assert cell["attention_mask"].all() and batch["attention_mask"][2].sum() < batch["attention_mask"].shape[1]
    with torch.no_grad():
        alone = model(**cell)
        in_batch = model(**batch)
        garbage = {k: v.clone() for k, v in batch.items()}
        pad = garbage["attention_mask"] == 0
        garbage["expression_bins"][pad] = 3
        garbage["expression_values"][pad] = 9.0
        garbage["input_ids"][pad] = tokenizer.convert_tokens_to_ids("G0")  # real gene ids under padding
        with_garbage = model(**garbage)
    n = cell["input_ids"].shape[1]
    torch.testing.assert_close(in_batch.last_hidden_state[2, :n], alone.last_hidden_state[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(in_batch.pooler_output[2], alone.pooler_output[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(with_garbage.pooler_output, in_batch.pooler_output, atol=1e-6, rtol=1e-6)


def test_mask_lookup_matches_pairwise_lookup(tokenizer, edge_tensor):
    ids = torch.tensor([[1, 4, 5, 6, 8, 9, 10], [1, 7, 5, 4, 0, 0, 0]])
    keys = edge_keys(edge_tensor, len(tokenizer))
    found = lookup_pairs(keys, ids, ids, len(tokenizer))
    edge_set = {tuple(e) for e in edge_tensor.T.tolist()}
    for b in range(2):
        for i in range(7):
            for j in range(7):
                assert bool(found[b, i, j]) == ((int(ids[b, j]), int(ids[b, i])) in edge_set)


def test_mask_options(tokenizer, edge_tensor, batch):
    ids = batch["input_ids"]
    real = batch["attention_mask"].bool()
    plain = make(ScGrnModel, tokenizer, edge_tensor).build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    reverse = make(ScGrnModel, tokenizer, edge_tensor, grn_direction="target_to_regulator")
    reverse_mask = reverse.build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    genes = real.clone()
    genes[:, 0] = False
    gene_pairs = genes[:, :, None] & genes[:, None, :]
    assert torch.equal(reverse_mask & gene_pairs, (plain & gene_pairs).transpose(1, 2))
    both = make(ScGrnModel, tokenizer, edge_tensor, grn_direction="both").build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    assert torch.equal(both, plain | reverse_mask)

    # The last layer dense, the first still masked.
    scheduled = make(ScGrnModel, tokenizer, edge_tensor, grn_dense_last_layers=1)
    first, last = scheduled.build_attention_masks(ids, batch["attention_mask"])
    assert torch.equal(first[:, 0], plain)
    assert torch.equal(last[:, 0] & real[:, :, None], real[:, :, None] & real[:, None, :])

    # Two hops: G4 -> G0 -> G1, so G1 reads G4 too.
    two_hop = make(ScGrnModel, tokenizer, edge_tensor, grn_hops=2).build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    cell = ids[0].tolist()
    g1, g4 = cell.index(tokenizer.convert_tokens_to_ids("G1")), cell.index(tokenizer.convert_tokens_to_ids("G4"))
    assert not plain[0, g1, g4] and two_hop[0, g1, g4]

    # Isolated genes (G8 has no edge) read the whole cell under isolated_genes="dense".
    fallback = make(ScGrnModel, tokenizer, edge_tensor, isolated_genes="dense").build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    g8 = cell.index(tokenizer.convert_tokens_to_ids("G8"))
    assert plain[0, g8].sum() == 2 and torch.equal(fallback[0, g8], real[0])

    # No self loops: genes keep CLS and their regulators only.
    no_self = make(ScGrnModel, tokenizer, edge_tensor, grn_self_loops=False).build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    assert not no_self[0, g8, g8] and no_self[0, g8, 0]

    # CLS reads only itself when cls_attends_all=False.
    cls_alone = make(ScGrnModel, tokenizer, edge_tensor, cls_attends_all=False).build_attention_masks(ids, batch["attention_mask"])[0][:, 0]
    assert cls_alone[0, 0].sum() == 1


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "grn_structured"])
def test_dense_blocks_pass_no_pairwise_mask(tokenizer, edge_tensor, batch, attn_implementation):
    """Dense blocks give the kernel no L x L mask: nothing without padding (SDPA's unmasked kernel, O(L) memory), a
    (batch, 1, 1, L) key-padding mask with padding; the full mask only where rules depend on the query."""
    model = make(ScGrnModel, tokenizer, edge_tensor, grn_dense_last_layers=1, attn_implementation=attn_implementation)
    ids, valid = batch["input_ids"], batch["attention_mask"]
    full = {k: v[:2] for k, v in batch.items()}
    assert full["attention_mask"].all()
    assert model.build_attention_masks(full["input_ids"], full["attention_mask"], boolean=False)[1] is None
    key_mask = model.build_attention_masks(ids, valid, boolean=False)[1]
    assert key_mask.shape == (3, 1, 1, ids.shape[1]) and torch.equal(key_mask[:, 0, 0], valid.bool())
    # what the model reports equals the full boolean mask, whose padding rows (dense blocks) see every real token
    reported = model(**batch, output_attention_masks=True).attention_masks[1]
    boolean = model.build_attention_masks(ids, valid)[1]
    assert torch.equal(reported, boolean)
    assert torch.equal(boolean[:, 0], valid.bool()[:, None, :].expand(-1, ids.shape[1], -1))
    # outputs, padding rows included, equal those of the full mask handed to eager
    reference = make(ScGrnModel, tokenizer, edge_tensor, grn_dense_last_layers=1, attn_implementation="eager")
    reference.build_attention_masks = lambda input_ids, attention_mask, boolean=True: ScGrnModel.build_attention_masks(
        reference, input_ids, attention_mask, boolean=True)
    with torch.no_grad():
        for inputs in (batch, full):  # a key-padding mask, then no mask at all (not causal)
            torch.testing.assert_close(model(**inputs).last_hidden_state, reference(**inputs).last_hidden_state,
                                       atol=1e-5, rtol=1e-5)
    # [CLS] reading only itself depends on the query: the full mask again
    no_cls_row = make(ScGrnModel, tokenizer, edge_tensor, grn_mode="dense", cls_attends_all=False)
    masks = no_cls_row.build_attention_masks(full["input_ids"], full["attention_mask"], boolean=False)
    assert masks[0].shape == (2, 1, ids.shape[1], ids.shape[1]) and masks[0][0, 0, 0].sum() == 1


def test_config_errors():
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        ScGrnConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="grn_mode"):
        ScGrnConfig(grn_mode="sparse")
    with pytest.raises(ValueError, match="nothing to"):
        ScGrnConfig(grn_self_loops=False, all_attend_cls=False)
    with pytest.raises(ValueError, match=r"cell_decoder='gepc' is not one of \['none', 'mvc', 'mvc_residual'\]"):
        ScGrnConfig(cell_decoder="gepc")
    with pytest.raises(ValueError, match="cell_decoder='mvc_residual' needs value_encoding='continuous'"):
        ScGrnConfig(cell_decoder="mvc_residual", value_encoding="binned")
    with pytest.raises(ValueError, match="value_baseline='gene_mean_cell_offset' needs value_encoding='continuous'"):
        ScGrnConfig(value_baseline="gene_mean_cell_offset", value_encoding="binned")
    with pytest.raises(ValueError, match="cell_decoder_weight=-1 must not be negative"):
        ScGrnConfig(cell_decoder_weight=-1)
    with pytest.raises(ValueError, match="token_loss_weight=-0.5 must not be negative"):
        ScGrnConfig(token_loss_weight=-0.5)
    with pytest.raises(ValueError, match="classifier_mixup_alpha=-0.2 must not be negative"):
        ScGrnConfig(classifier_mixup_alpha=-0.2)


def test_model_without_prior_refuses_grn_mode(tokenizer, batch):
    model = ScGrnModel(tiny_config(tokenizer))
    with pytest.raises(ValueError, match="no GRN edges"):
        model(**batch)
    dense = ScGrnModel(tiny_config(tokenizer, grn_mode="dense"))
    assert dense(**batch).last_hidden_state.shape[0] == 3


def test_prior_with_only_self_edges_is_refused(tokenizer):
    model = ScGrnModel(tiny_config(tokenizer))
    with pytest.raises(ValueError, match="no edge between two distinct genes"):
        model.set_grn_edges(torch.tensor([[5, 6], [5, 6]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.set_grn_edges(torch.tensor([[5], [999]]))
    with pytest.raises(ValueError, match="not special tokens"):
        model.set_grn_edges(torch.tensor([[5, tokenizer.pad_token_id], [6, 7]]))


def _tiny_mlp(hidden_act="silu"):
    torch.manual_seed(0)
    config = ScGrnConfig(hidden_size=16, intermediate_size=24, hidden_act=hidden_act)
    return ScGrnMLP(config)


def _module_path(mlp, states):
    return mlp.down_proj(mlp.act_fn(mlp.gate_proj(states)) * mlp.up_proj(states))


def test_swiglu_training_path_equals_the_modules_and_keeps_less():
    mlp = _tiny_mlp()
    states = torch.randn(3, 7, 16, requires_grad=True)
    results = []
    for forward in (mlp, lambda x: _module_path(mlp, x)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = forward(states)
        out.pow(2).sum().backward()
        grads = [states.grad.clone()] + [p.grad.clone() for p in mlp.parameters()]
        states.grad = None
        mlp.zero_grad(set_to_none=True)
        weights = {p.untyped_storage().data_ptr() for p in mlp.parameters()}
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        activations = sum(n for ptr, n in storages.items() if ptr not in weights) // 4  # float32 values kept
        results.append((out.detach(), grads, activations))
    (fused, fused_grads, fused_kept), (plain, plain_grads, plain_kept) = results
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert fused_kept == 3 * 7 * (16 + 24 + 24)  # x, gate(x), up(x)
    assert plain_kept == 3 * 7 * (16 + 4 * 24)  # autograd also keeps silu(gate(x)) and the product
    assert fused_kept / plain_kept < 0.6
    double = _tiny_mlp().double()
    assert torch.autograd.gradcheck(lambda x, g, u, d: _SwiGLU.apply(x, g, u, d),
                                    (torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True),
                                     *(p.detach().clone().requires_grad_() for p in double.parameters())))


def test_swiglu_training_path_under_bf16_autocast_matches_nn_linear():
    mlp = _tiny_mlp()
    states = torch.randn(2, 5, 16, requires_grad=True)
    outputs = []
    for forward in (mlp, lambda x: _module_path(mlp, x)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(states)
        out.float().pow(2).sum().backward()
        outputs.append((out, states.grad.clone(), mlp.gate_proj.weight.grad.clone()))
        states.grad = None
        mlp.zero_grad(set_to_none=True)
    (fused, fused_x, fused_w), (plain, plain_x, plain_w) = outputs
    assert fused.dtype == plain.dtype == torch.bfloat16
    assert fused_x.dtype == torch.float32 and fused_w.dtype == torch.float32
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_x, plain_x, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused_w, plain_w, rtol=2e-2, atol=2e-2)


def test_swiglu_keeps_the_module_path_for_hooks_adapters_and_other_activations():
    mlp = _tiny_mlp()
    states = torch.randn(2, 4, 16, requires_grad=True)
    calls = []
    handle = mlp.up_proj.register_forward_hook(lambda module, args, out: calls.append(1))
    mlp(states)
    assert calls == [1]  # hooked projections (LoRA, ZeRO-3 gathering) run as modules
    handle.remove()
    mlp(states)
    assert calls == [1]  # the plain SwiGLU training path bypasses the modules
    gelu = _tiny_mlp("gelu")
    torch.testing.assert_close(gelu(states), _module_path(gelu, states))
    assert gelu(states).grad_fn.name() != "_SwiGLUBackward"


def test_custom_backward_passes_refuse_second_derivatives(tokenizer, edge_tensor, batch):
    mlp = _tiny_mlp()
    states = torch.randn(2, 4, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(mlp(states).pow(2).sum(), states, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|not differentiable|double backward"):
        grad.sum().backward()
    # gelu keeps the feed-forward on the module path, so only the structured attention's backward is custom here
    model = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="grn_structured", hidden_act="gelu")
    weight = model.layers[0].self_attn.q_proj.weight
    (grad,) = torch.autograd.grad(model(**batch).last_hidden_state.pow(2).sum(), weight, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|not differentiable|double backward"):
        grad.sum().backward()


def test_an_unset_or_invalid_edge_buffer_is_refused_instead_of_run(tokenizer, edge_tensor, batch, tmp_path):
    """The usual "same architecture, fresh weights", a checkpoint without `grn_edges`, and meta-device building
    all leave an edge buffer no prior filled: the model must refuse to run, never attend along [PAD] -> [PAD] or
    along uninitialised memory."""
    from safetensors.torch import load_file, save_file

    model = make(ScGrnModel, tokenizer, edge_tensor)
    model.save_pretrained(tmp_path / "saved")
    fresh = AutoModel.from_config(AutoConfig.from_pretrained(tmp_path / "saved"))
    assert fresh.config.num_grn_edges == edge_tensor.shape[1] and (fresh.grn_edges == 0).all()
    with pytest.raises(ValueError, match=r"edge buffer is unset \(every id is \[PAD\]"):
        fresh(**batch)
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    del weights["grn_edges"]
    save_file(weights, tmp_path / "saved" / "model.safetensors", metadata={"format": "pt"})
    for _ in range(2):  # uninitialised memory would differ from one load to the next; the refusal does not
        with pytest.raises(ValueError, match="edge buffer is unset"):
            ScGrnModel.from_pretrained(tmp_path / "saved")(**batch)
    with torch.device("meta"):
        meta = ScGrnModel(model.config)
    meta.to_empty(device="cpu")
    meta.init_weights()
    with pytest.raises(ValueError, match="edge buffer is unset"):
        meta(**batch)
    assert make(ScGrnModel, tokenizer, edge_tensor)(**batch).last_hidden_state.isfinite().all()
    model.grn_edges[1, 0] = tokenizer.cls_token_id  # an edit in place is checked again
    with pytest.raises(ValueError, match=r"invalid \(1 of 5 edges hold a special-token or out-of-vocabulary id"):
        model(**batch)
    model.grn_edges[1, 0] = 10_000
    with pytest.raises(ValueError, match="out-of-vocabulary"):
        model(**batch)


def test_a_config_too_large_for_the_machine_is_refused_before_allocating(tokenizer):
    import time

    from modeling_scgrn.model.sizing import encoder_parameter_count

    config = tiny_config(tokenizer)
    counted = sum(p.numel() for p in ScGrnModel(config).parameters())
    assert 0.9 < encoder_parameter_count(config) / counted <= 1.0
    start = time.perf_counter()
    for huge in ({"hidden_size": 10**6, "num_attention_heads": 1, "intermediate_size": 10**6},
                 {"intermediate_size": 10**11}):
        with pytest.raises(ValueError, match="more than this machine's .* GiB of memory"):
            AutoModel.from_config(tiny_config(tokenizer, **huge))
    # deep but small: would fit, and take minutes to build
    with pytest.raises(ValueError, match="asks for 100,000 layers, more than scgrn builds"):
        AutoModel.from_config(tiny_config(tokenizer, num_hidden_layers=10**5))
    assert time.perf_counter() - start < 5
