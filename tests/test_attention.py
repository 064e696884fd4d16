"""The prior-structured exact attention (`attn_implementation="grn_structured"`) against eager and sdpa."""

import itertools

import anndata as ad
import pytest
import torch
from conftest import CELLTYPIST_SAMPLE, OMNIPATH_TABLE, shared_data_or_skip, tiny_config
from test_modeling import make
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from modeling_scgrn import ScGrnModel, ScGrnTokenizer
from modeling_scgrn.grn.network import GeneRegulatoryNetwork
from modeling_scgrn.model.kernels import (
    DEVICE_ATTENTION,
    attention_on,
    eager_attention_forward,
)
from modeling_scgrn.model.masks import (
    build_attention_mask,
    build_structured_plan,
    edge_keys,
)

MASK_OPTIONS = [
    dict(),
    dict(grn_self_loops=False),
    dict(cls_attends_all=False),
    dict(all_attend_cls=False),
    dict(grn_dense_last_layers=1),
]


@pytest.mark.parametrize("grn_direction", ["regulator_to_target", "target_to_regulator", "both"])
@pytest.mark.parametrize("options", MASK_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("grn_mode", ["grn", "shuffled"])
def test_structured_matches_eager_forward_and_backward(tokenizer, edge_tensor, batch, grn_direction, options, grn_mode):
    outputs, grads = [], []
    for implementation in ["eager", "grn_structured"]:
        model = make(ScGrnModel, tokenizer, edge_tensor, grn_mode=grn_mode, grn_direction=grn_direction,
                     attn_implementation=implementation, **options)
        assert model.config._attn_implementation == implementation
        out = model(**batch).last_hidden_state
        out[batch["attention_mask"].bool()].pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(outputs[0][real], outputs[1][real], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=2e-4, rtol=1e-4, msg=name)  # sums over tokens of values ~10


def test_the_default_follows_the_device_and_keeps_other_choices(tokenizer, edge_tensor):
    assert ScGrnModel(tiny_config(tokenizer)).config._attn_implementation == "grn_auto"
    assert attention_on("grn_auto", "cpu") == DEVICE_ATTENTION["cpu"] == "grn_structured"
    assert attention_on("grn_auto", torch.device("cuda", 1)) == DEVICE_ATTENTION["cuda"]
    assert attention_on("grn_auto", "meta") == "grn_structured"  # device types not in the table: plain torch ops
    for implementation in ["eager", "sdpa", "flex_attention"]:
        assert ScGrnModel(tiny_config(tokenizer, attn_implementation=implementation)).config._attn_implementation \
            == implementation
        assert attention_on(implementation, "cuda") == implementation


@pytest.mark.parametrize("kernel", ["grn_structured", "sdpa", "eager"])
def test_the_default_runs_the_kernel_chosen_for_the_device(tokenizer, edge_tensor, batch, monkeypatch, kernel):
    """With the table pointing this device at `kernel`, the default builds that kernel's mask form and runs that
    kernel: bit for bit the model that names it, forward and backward."""
    monkeypatch.setitem(DEVICE_ATTENTION, "cpu", kernel)
    from modeling_scgrn.model.kernels import OWN_KERNELS

    called = []

    def recording(name, function):
        return lambda *args, **kwargs: called.append(name) or function(*args, **kwargs)

    for name, function in list(OWN_KERNELS.items()):  # scgrn's kernels, which never go through the registry
        monkeypatch.setitem(OWN_KERNELS, name, recording(name, function))
    original = ALL_ATTENTION_FUNCTIONS.get_interface
    monkeypatch.setattr(ALL_ATTENTION_FUNCTIONS, "get_interface",
                        lambda name, default: called.append(name) or original(name, default))
    results = []
    for implementation in [kernel, None]:
        model = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation=implementation, grn_dense_last_layers=1)
        masks = model.build_attention_masks(batch["input_ids"], batch["attention_mask"], boolean=False)
        out = model(**batch).last_hidden_state
        out[batch["attention_mask"].bool()].pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                        [type(m) for m in masks]))
    assert called.count("grn_auto") == 2 and called.count(kernel) == 4  # 2 layers, each model
    (want, want_grads, want_forms), (got, got_grads, got_forms) = results
    assert got_forms == want_forms
    assert torch.equal(got, want)
    assert all(torch.equal(got_grads[n], g) for n, g in want_grads.items())


@pytest.mark.parametrize("options", [dict(grn_hops=2), dict(isolated_genes="dense"), dict(grn_mode="dense")])
def test_structured_falls_back_to_the_boolean_mask_where_rows_can_be_dense(tokenizer, edge_tensor, batch, options):
    eager = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="eager", **options)
    structured = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="grn_structured", **options)
    masks = structured.build_attention_masks(batch["input_ids"], batch["attention_mask"], boolean=False)
    assert all(isinstance(m, torch.Tensor) for m in masks)
    with torch.no_grad():
        a, b = eager(**batch).last_hidden_state, structured(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


def test_structured_blocks_report_their_boolean_masks(tokenizer, edge_tensor, batch):
    eager = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="eager", grn_dense_last_layers=1)
    structured = make(ScGrnModel, tokenizer, edge_tensor, grn_dense_last_layers=1)
    plans = structured.build_attention_masks(batch["input_ids"], batch["attention_mask"], boolean=False)
    assert type(plans[0]).__name__ == "StructuredAttentionPlan" and isinstance(plans[1], torch.Tensor)
    expected = eager(**batch, output_attention_masks=True).attention_masks
    for got, want in zip(structured(**batch, output_attention_masks=True).attention_masks, expected):
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def real_cells():
    """6 real cells of the celltypist sample at up to 2,048 tokens (~1,800 detected genes each) and the CollecTRI edges
    among its 32,786 genes."""
    adata = ad.read_h5ad(shared_data_or_skip(CELLTYPIST_SAMPLE))[:6]
    network = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE))
    tokenizer = ScGrnTokenizer.from_genes(list(adata.var_names), n_bins=5)
    batch = tokenizer(adata, max_length=2048)
    edges = torch.as_tensor(network.to_vocab_edges(tokenizer))
    return tokenizer, batch, edges


@pytest.mark.parametrize(
    "direction,self_loops,cls_attends_all,all_attend_cls",
    list(itertools.product(["regulator_to_target", "target_to_regulator", "both"], [True, False], [True, False],
                           [True])) + [("both", True, True, False)],
)
def test_plan_is_the_reference_mask_on_real_cells_and_collectri(real_cells, direction, self_loops, cls_attends_all,
                                                                all_attend_cls):
    tokenizer, batch, edges = real_cells
    special = tuple(tokenizer.all_special_ids)
    options = dict(vocab_size=len(tokenizer), cls_token_id=tokenizer.cls_token_id, special_token_ids=special,
                   grn_direction=direction, grn_self_loops=self_loops, cls_attends_all=cls_attends_all,
                   all_attend_cls=all_attend_cls)
    reference = build_attention_mask(batch["input_ids"], batch["attention_mask"], edges, dense=False, **options)
    plan = build_structured_plan(batch["input_ids"], batch["attention_mask"], keys=edge_keys(edges, len(tokenizer)),
                                 regulators=torch.unique(edges[0]), **options)
    assert torch.equal(plan.to_dense_mask(), reference)
    # the point of the plan: far fewer scored pairs than L^2
    length = batch["input_ids"].shape[1]
    scored = plan.scored_pairs
    assert scored < reference.shape[0] * length**2 / 20


def test_structured_attention_gradients_are_exact():
    from modeling_scgrn.model.kernels import _StructuredAttention

    generator = torch.Generator().manual_seed(0)
    batch, length, heads, dim = 2, 5, 2, 3
    q, k, v = (torch.randn(batch, length, heads, dim, dtype=torch.float64, generator=generator, requires_grad=True)
               for _ in range(3))
    cls_position = torch.tensor([0, 2])  # [CLS] need not be first
    self_allowed = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    cls_allowed = torch.tensor([[0, 1, 0, 0, 0], [1, 1, 0, 0, 1]], dtype=torch.bool)
    # edge pairs (flat cell * L + position; never a self or [CLS] pair, as in a plan): cell 0 row 2 reads only
    # edges, cell 0 row 4 reads nothing at all
    pair_query = torch.tensor([1, 2, 2, 3, 5, 6, 6, 9])
    pair_key = torch.tensor([3, 1, 3, 1, 8, 9, 8, 6])

    def attend(a, b, c):
        return _StructuredAttention.apply(a, b, c, pair_query, pair_key, self_allowed, cls_allowed, cls_position,
                                          0.7, 0.0)

    assert torch.autograd.gradcheck(attend, (q, k, v))
    out = attend(q, k, v)
    assert torch.all(out[0, 4] == 0)  # nothing allowed: zeros, as eager gives
    # the same numbers as eager with the equivalent boolean mask
    mask = torch.diag_embed(self_allowed)
    mask |= cls_allowed[:, :, None] & (torch.arange(length)[None, None, :] == cls_position[:, None, None])
    mask.view(-1)[(pair_query * length + pair_key % length)] = True
    want, _ = eager_attention_forward(torch.nn.Module().eval(), q.transpose(1, 2), k.transpose(1, 2),
                                      v.transpose(1, 2), mask[:, None], 0.7)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("options", [dict(), dict(grn_direction="both"), dict(grn_dense_last_layers=1)],
                         ids=["default", "both", "dense_last"])
def test_structured_carries_forward_mode_derivatives_as_eager_does(tokenizer, edge_tensor, batch, options):
    # tl.regulatory_edges' gradient score runs forward-mode AD through the model's own kernel: the structured
    # kernel's plain-op path (and eager where it would call sdpa, which has no forward-mode formula)
    import torch.autograd.forward_ad as forward_ad

    values = batch["expression_values"]
    direction = torch.zeros_like(values)
    direction[:, 3] = 1.0  # d / d (gene 3's input value), every cell
    tangents = []
    for implementation in ["eager", "grn_structured"]:
        model = make(ScGrnModel, tokenizer, edge_tensor, value_encoding="continuous",
                     attn_implementation=implementation, **options)
        with torch.no_grad(), forward_ad.dual_level():
            inputs = {**batch, "expression_values": forward_ad.make_dual(values, direction)}
            tangents.append(forward_ad.unpack_dual(model(**inputs).last_hidden_state).tangent)
    real = batch["attention_mask"].bool()
    assert tangents[0][real].abs().max() > 1e-3  # the input moves the states
    torch.testing.assert_close(tangents[0][real], tangents[1][real], atol=1e-5, rtol=1e-4)


def test_structured_trains_with_attention_dropout(tokenizer, edge_tensor, batch):
    model = make(ScGrnModel, tokenizer, edge_tensor, attention_dropout=0.5).train()
    torch.manual_seed(1)
    first = model(**batch).last_hidden_state
    second = model(**batch).last_hidden_state
    assert not torch.equal(first, second)  # dropout is active
    second.pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("implementation", ["grn_structured", "sdpa"])
def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, edge_tensor, batch, implementation):
    grads = []
    for checkpointing in (False, True):
        model = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation=implementation).train()
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
            assert model.layers[0].gradient_checkpointing
        model(**batch).last_hidden_state.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


FLEX_OPTIONS = [
    dict(),
    dict(grn_direction="target_to_regulator", grn_self_loops=False),
    dict(grn_direction="both", cls_attends_all=False, all_attend_cls=False),
    dict(grn_dense_last_layers=1),
    dict(grn_hops=2),  # rows that depend on the whole cell: mask_mod reads the boolean mask
    dict(grn_mode="dense"),
]


@pytest.mark.parametrize("options", FLEX_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_flex_attention_matches_eager_and_applies_the_prior(tokenizer, edge_tensor, batch, options):
    eager = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="eager", **options)
    flex = make(ScGrnModel, tokenizer, edge_tensor, attn_implementation="flex_attention", **options)
    assert flex.config._attn_implementation == "flex_attention"
    masks = flex.build_attention_masks(batch["input_ids"], batch["attention_mask"], boolean=False)
    assert all(type(m).__name__ == "BlockMask" for m in masks)  # never a boolean tensor added to the scores
    with torch.no_grad():
        want = eager(**batch, output_hidden_states=True, output_attention_masks=True)
        got = flex(**batch, output_hidden_states=True, output_attention_masks=True)
    real = batch["attention_mask"].bool()
    for a, b in zip(got.hidden_states + (got.last_hidden_state,), want.hidden_states + (want.last_hidden_state,)):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)  # outputs back in the input's order
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)
    for a, b in zip(got.attention_masks, want.attention_masks):
        assert torch.equal(a, b)


def test_flex_attention_on_real_cells_is_exact_and_block_sparse(real_cells):
    from modeling_scgrn.model.masks import (
        block_mask_to_dense,
        build_block_mask,
        regulators_first_order,
    )

    tokenizer, batch, edges = real_cells
    ids, valid = batch["input_ids"][:2, :1024], batch["attention_mask"][:2, :1024]
    options = dict(vocab_size=len(tokenizer), cls_token_id=tokenizer.cls_token_id,
                   special_token_ids=tuple(tokenizer.all_special_ids), dense=False)
    reference = build_attention_mask(ids, valid, edges, **options)
    in_expression_order = build_block_mask(ids, valid, edges, **options)
    assert torch.equal(block_mask_to_dense(in_expression_order), reference)
    order = regulators_first_order(ids, torch.unique(edges[0]), tokenizer.cls_token_id)
    assert torch.all(ids.gather(1, order)[:, 0] == tokenizer.cls_token_id)
    regulators_first = build_block_mask(ids.gather(1, order), valid.gather(1, order), edges, **options)
    # the same mask, only the layout differs; with regulators first most 128 x 128 blocks are empty
    restore = torch.argsort(order, dim=1)[:, None]
    moved = block_mask_to_dense(regulators_first)
    moved = moved.gather(2, restore[..., None].expand_as(moved)).gather(3, restore[:, :, None].expand_as(moved))
    assert torch.equal(moved, reference)
    assert regulators_first.sparsity() > 50 > in_expression_order.sparsity() + 25

    model = ScGrnModel(tiny_config(tokenizer, attn_implementation="flex_attention", hidden_size=64,
                                   num_attention_heads=4)).eval()
    model.set_grn_edges(edges)
    reference_model = ScGrnModel(tiny_config(tokenizer, attn_implementation="sdpa", hidden_size=64,
                                             num_attention_heads=4)).eval()
    reference_model.set_grn_edges(edges)
    reference_model.load_state_dict(model.state_dict())
    inputs = {k: v[:2, :1024] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).last_hidden_state, reference_model(**inputs).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_a_model_calls_its_own_kernels_whatever_the_registry_holds(tokenizer, edge_tensor, batch):
    """transformers' attention registry is one per process: another scgrn repo (of another version) loaded later
    re-registers "grn_structured" and "grn_auto". A model must still run the kernels of its own code."""
    from transformers.modeling_utils import AttentionInterface

    from modeling_scgrn.model.kernels import OWN_KERNELS

    calls = []

    def foreign(*args, **kwargs):
        calls.append(1)
        raise AssertionError("another repo's kernel ran")

    model = ScGrnModel(tiny_config(tokenizer)).eval()
    model.set_grn_edges(edge_tensor)
    expected = model(**batch).last_hidden_state
    saved = {name: ALL_ATTENTION_FUNCTIONS[name] for name in ("grn_structured", "grn_auto")}
    try:
        for name in saved:
            AttentionInterface.register(name, foreign)
        for implementation in ("grn_auto", "grn_structured"):
            model.set_attn_implementation(implementation)
            assert torch.equal(model(**batch).last_hidden_state, expected)
    finally:
        for name, function in saved.items():
            AttentionInterface.register(name, function)
    assert calls == [] and ALL_ATTENTION_FUNCTIONS["grn_structured"] is OWN_KERNELS["grn_structured"]
