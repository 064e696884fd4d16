"""The checks transformers runs on every model, applied to every scgrn head: save/load round trip, bf16 loading,
resizing the vocabulary both ways, gradient checkpointing, batching and padding invariance, `problem_type`, short
cells, and two remote-code repos in one process."""

import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from conftest import EDGES, tiny_config
from safetensors.torch import load_file, save_file

from modeling_scgrn import (
    ScGrnConfig,
    ScGrnForCellClassification,
    ScGrnForMaskedExpressionModeling,
    ScGrnModel,
)
from modeling_scgrn.grn.attach import attach_grn
from modeling_scgrn.grn.network import GeneRegulatoryNetwork
from modeling_scgrn.hub.model_folder import save_model_folder

HEADS = [ScGrnModel, ScGrnForMaskedExpressionModeling, ScGrnForCellClassification]
IMPLEMENTATIONS = ["grn_structured", "sdpa", "eager"]


def network():
    return GeneRegulatoryNetwork.from_dataframe(pd.DataFrame(EDGES, columns=["source", "target"]),
                                                provenance={"resource": "hand-made"})


def build(head, tokenizer, edge_tensor, **overrides):
    torch.manual_seed(0)
    model = head(tiny_config(tokenizer, **overrides))
    model.set_grn_edges(edge_tensor)
    return model.eval()


def first_output(output):
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


@pytest.mark.parametrize("head", HEADS)
def test_save_and_load_round_trip_is_exact(head, tokenizer, edge_tensor, batch, tmp_path):
    model = build(head, tokenizer, edge_tensor)
    model.save_pretrained(tmp_path)
    loaded = head.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.base_model.grn_edges, model.base_model.grn_edges)
    with torch.no_grad():
        assert torch.equal(first_output(loaded(**batch)), first_output(model(**batch)))


@pytest.mark.parametrize("head", HEADS)
def test_bf16_load_runs_in_bf16(head, tokenizer, edge_tensor, batch, tmp_path):
    model = build(head, tokenizer, edge_tensor)
    model.save_pretrained(tmp_path)
    loaded = head.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert loaded.base_model.embeddings.gene_embeddings.weight.dtype == torch.bfloat16
    assert loaded.base_model.grn_edges.dtype == torch.int64  # the prior stays exact
    with torch.no_grad():
        reference, low = first_output(model(**batch)), first_output(loaded(**batch))
    assert low.dtype == torch.bfloat16 or head is ScGrnForCellClassification
    real = batch["attention_mask"].bool() if reference.ndim >= 2 and reference.shape[:2] == batch["input_ids"].shape \
        else slice(None)
    assert torch.allclose(low.float()[real], reference[real], atol=0.15, rtol=0.05)


@pytest.mark.parametrize("head", HEADS)
def test_resize_up_keeps_the_prior_and_down_drops_edges_outside(head, tokenizer, edge_tensor, batch):
    model = build(head, tokenizer, edge_tensor)
    vocabulary = model.config.vocab_size
    model.resize_token_embeddings(vocabulary + 5)
    assert model.config.vocab_size == vocabulary + 5
    assert torch.equal(model.base_model.grn_edges, edge_tensor)
    model.resize_token_embeddings(vocabulary)
    # drop the last gene of the vocabulary: the edges that name it must go, the others stay
    last = vocabulary - 1
    touching = int((edge_tensor == last).any(0).sum())
    extra = torch.tensor([[last], [int(edge_tensor[0, 0])]])
    model.set_grn_edges(torch.cat([edge_tensor, extra], 1))
    with pytest.warns(UserWarning, match=f"dropped {touching + 1} of"):
        model.resize_token_embeddings(vocabulary - 1)
    kept = model.base_model.grn_edges
    assert kept.shape[1] == edge_tensor.shape[1] - touching and int(kept.max()) < vocabulary - 1
    assert model.config.num_grn_edges == kept.shape[1]
    # no key aliasing: the plan of a batch equals the boolean mask built from the kept edges alone
    ids = batch["input_ids"].clamp(max=vocabulary - 2)
    with torch.no_grad():
        masks = model.base_model(ids, batch["expression_values"], batch["expression_bins"], batch["attention_mask"],
                                 output_attention_masks=True).attention_masks
    model.base_model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model.base_model(ids, batch["expression_values"], batch["expression_bins"],
                                     batch["attention_mask"], output_attention_masks=True).attention_masks
    assert all(torch.equal(a, b) for a, b in zip(masks, reference))


@pytest.mark.parametrize("head", HEADS)
def test_gradient_checkpointing_gives_the_same_gradients(head, tokenizer, edge_tensor, batch):
    grads = []
    for checkpointing in (False, True):
        model = build(head, tokenizer, edge_tensor).train()
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        first_output(model(**batch)).float().square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_cell_alone_and_in_a_padded_batch_give_the_same_outputs(implementation, tokenizer, edge_tensor, batch):
    model = build(ScGrnForCellClassification, tokenizer, edge_tensor, attn_implementation=implementation)
    with torch.no_grad():
        together = model(**batch)
        for cell in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][cell].sum())
            alone = model(**{k: v[cell : cell + 1, :length] for k, v in batch.items()})
            assert torch.allclose(alone.logits, together.logits[cell : cell + 1], atol=1e-5)
            assert torch.allclose(alone.cell_embeddings, together.cell_embeddings[cell : cell + 1], atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_more_cells_than_tokens_per_cell(implementation, tokenizer, edge_tensor):
    """16 cells of at most 3 detected genes: the structured plan once failed whenever batch > length."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.cat([torch.tensor([tokenizer.cls_token_id]),
                                  torch.randperm(12, generator=generator)[:3] + len(tokenizer) - 12]) for _ in range(16)])
    attention_mask = torch.ones_like(ids)
    attention_mask[::3, -1] = 0  # some cells shorter still, so the batch carries padding
    ids = ids.masked_fill(attention_mask == 0, tokenizer.pad_token_id)
    bins = torch.randint(1, 6, ids.shape, generator=generator).masked_fill(attention_mask == 0, 0)
    bins[:, 0] = 0
    outputs = {}
    for name in (implementation, "eager"):
        model = build(ScGrnModel, tokenizer, edge_tensor, attn_implementation=name)
        with torch.no_grad():
            outputs[name] = model(ids, expression_bins=bins, attention_mask=attention_mask).last_hidden_state
    real = attention_mask.bool()
    assert torch.allclose(outputs[implementation][real], outputs["eager"][real], atol=1e-5)


def test_problem_types_follow_transformers(tokenizer, edge_tensor, batch):
    cells = batch["input_ids"].shape[0]
    single = build(ScGrnForCellClassification, tokenizer, edge_tensor)
    single(**batch, labels=torch.tensor([0, 2, 1]))
    assert single.config.problem_type == "single_label_classification"

    multi = build(ScGrnForCellClassification, tokenizer, edge_tensor)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    output = multi(**batch, labels=labels)
    assert multi.config.problem_type == "multi_label_classification"
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, labels)
    assert torch.allclose(output.loss, expected)

    regression = build(ScGrnForCellClassification, tokenizer, edge_tensor, num_labels=1)
    targets = torch.tensor([0.5, -1.0, 2.0])
    output = regression(**batch, labels=targets)
    assert regression.config.problem_type == "regression"
    assert torch.allclose(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(-1), targets))
    assert output.logits.shape == (cells, 1)

    with pytest.raises(ValueError, match="class_weights apply to single_label_classification"):
        multi(**batch, labels=labels, class_weights=torch.ones(3))
    with pytest.raises(ValueError, match="problem_type"):
        ScGrnConfig(problem_type="ranking")


@pytest.mark.parametrize("head", HEADS)
def test_misspelt_keyword_arguments_are_refused(head, tokenizer, edge_tensor, batch):
    model = build(head, tokenizer, edge_tensor)
    with pytest.raises(TypeError, match="output_attention"):
        model(**batch, output_attention=True)


def test_attn_implementation_typo_names_every_choice(tokenizer):
    with pytest.raises(ValueError, match="grn_structured.*sdpa.*flex_attention.*eager"):
        ScGrnModel(tiny_config(tokenizer, attn_implementation="grn_structurd"))


def test_config_from_a_folder_without_config_json_is_refused(tmp_path):
    with pytest.raises(OSError, match="has no config.json"):
        ScGrnConfig.from_pretrained(tmp_path)


TWO_REPOS = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_scgrn"] = None  # as if scgrn were not installed: each repo brings its own code
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification
    inputs = load_file(sys.argv[1])
    first = AutoModelForSequenceClassification.from_pretrained("org/scgrn-a", trust_remote_code=True).eval()
    second = AutoModelForSequenceClassification.from_pretrained("org/scgrn-b", trust_remote_code=True).eval()
    assert type(first).__module__ != type(second).__module__, "two copies of the code were expected"
    with torch.no_grad():
        save_file({"first": first(**inputs).logits, "second": second(**inputs).logits}, sys.argv[2])
    """
)


def test_two_remote_code_repos_live_in_one_process(tokenizer, edge_tensor, batch, tmp_path):
    home = tmp_path / "hf_home"
    expected = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = ScGrnForCellClassification(tiny_config(tokenizer)).eval()
        attach_grn(model, network(), tokenizer)
        folder = save_model_folder(model, tokenizer, network(), tmp_path / name, plot=False)
        repo = home / "hub" / f"models--org--scgrn-{name}"
        revision = f"{seed:040d}"
        shutil.copytree(folder, repo / "snapshots" / revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        with torch.no_grad():
            expected[name] = model(**batch).logits
    save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "load.py").write_text(TWO_REPOS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "inputs.safetensors"),
                             str(tmp_path / "out.safetensors")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(got["first"], expected["a"]) and torch.equal(got["second"], expected["b"])
