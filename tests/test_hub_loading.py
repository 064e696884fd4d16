"""A saved model folder loads by repo id from a Hugging Face cache laid out as a download leaves it, offline,
both with scgrn installed (Auto classes) and without it (trust_remote_code)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import EDGES, tiny_config
from safetensors.torch import load_file, save_file

from modeling_scgrn import ScGrnForCellClassification
from modeling_scgrn.grn.network import GeneRegulatoryNetwork
from modeling_scgrn.hub.model_folder import save_model_folder

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, tokenizer, edge_tensor, batch):
    torch.manual_seed(0)
    model = ScGrnForCellClassification(tiny_config(tokenizer, id2label={0: "B", 1: "T", 2: "NK"},
                                                   label2id={"B": 0, "T": 1, "NK": 2})).eval()
    network = GeneRegulatoryNetwork.from_dataframe(
        __import__("pandas").DataFrame(EDGES, columns=["source", "target"]), provenance={"resource": "hand-made"})
    from modeling_scgrn.grn.attach import attach_grn

    attach_grn(model, network, tokenizer)
    folder = save_model_folder(model, tokenizer, network, tmp_path / "folder", plot=False)
    home = tmp_path / "hf_home"
    repo = home / "hub" / "models--org--scgrn"
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    with torch.no_grad():
        expected = model(**batch)
    save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / "inputs.safetensors"))
    save_file({"logits": expected.logits, "embeddings": expected.cell_embeddings.contiguous()}, str(tmp_path / "expected.safetensors"))
    return tmp_path, home


LOADER = textwrap.dedent(
    """
    import sys
    from safetensors.torch import load_file, save_file
    BLOCK_SCGRN = {block}
    if BLOCK_SCGRN:
        sys.modules["modeling_scgrn"] = None  # as if scgrn were not installed
    else:
        import modeling_scgrn  # noqa: F401  registers the Auto classes
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    kwargs = dict(trust_remote_code=True) if BLOCK_SCGRN else {{}}
    classifier = AutoModelForSequenceClassification.from_pretrained("org/scgrn", **kwargs).eval()
    base = AutoModel.from_pretrained("org/scgrn", **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained("org/scgrn", **kwargs)
    assert type(classifier).__module__.startswith("transformers_modules" if BLOCK_SCGRN else "modeling_scgrn")
    inputs = load_file(sys.argv[1])
    with torch.no_grad():
        logits = classifier(**inputs).logits
        embeddings = base(**inputs).pooler_output
    ids = tokenizer("G0 G3")["input_ids"]
    save_file({{"logits": logits, "embeddings": embeddings.contiguous(), "ids": torch.tensor(ids)}}, sys.argv[2])
    """
)


@pytest.mark.parametrize("without_scgrn", [False, True])
def test_load_by_repo_id_offline(hub_cache, without_scgrn):
    tmp_path, home = hub_cache
    script = tmp_path / "load.py"
    script.write_text(LOADER.format(block=without_scgrn))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = load_file(str(tmp_path / "expected.safetensors")), load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(got["logits"], expected["logits"])
    assert torch.equal(got["embeddings"], expected["embeddings"])
    assert got["ids"].tolist() == [1, 4, 7]


def test_model_folder_contents(hub_cache):
    tmp_path, home = hub_cache
    folder = home / "hub" / "models--org--scgrn" / "snapshots" / REVISION
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([
        "README.md", "config.json", "configuration_scgrn.py", "controls.py", "grn_edges.parquet", "heads.py", "kernels.py",
        "masks.py", "grn_provenance.json", "model.safetensors", "modeling_scgrn.py", "outputs.py", "prior_report.json",
        "sizing.py", "tokenization_scgrn.py", "tokenizer.json", "tokenizer_config.json",
    ])
    assert all((folder / n).stat().st_size > 0 for n in names)
    weights = load_file(str(folder / "model.safetensors"))
    assert weights["scgrn.grn_edges"].shape == (2, len(EDGES))
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and "gene-regulatory-network" in card.data.tags
    assert "grn_direction" in card.text and "regulator_to_target" in card.text
    loaded = GeneRegulatoryNetwork.load(folder)
    assert len(loaded) == len(EDGES) and loaded.provenance["resource"] == "hand-made"
    for module in ("modeling_scgrn.py", "configuration_scgrn.py", "controls.py", "heads.py", "kernels.py",
                   "masks.py", "outputs.py", "sizing.py", "tokenization_scgrn.py"):
        text = (folder / module).read_text()
        for heavy in ("anndata", "pandas", "scanpy", "scipy"):
            assert f"import {heavy}" not in text, (module, heavy)
