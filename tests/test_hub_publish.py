"""Publishing goes through huggingface_hub's own create_repo/upload_folder; a local server on 127.0.0.1 answers
the Hub's HTTP endpoints and records what arrives."""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import torch
from conftest import EDGES, tiny_config

from modeling_scgrn import ScGrnForCellClassification
from modeling_scgrn.grn.attach import attach_grn
from modeling_scgrn.grn.network import GeneRegulatoryNetwork
from modeling_scgrn.hub.model_folder import save_model_folder
from modeling_scgrn.hub.publish import push_model_folder, push_to_hub


class FakeHub(BaseHTTPRequestHandler):
    received: list = []

    def log_message(self, *args):
        pass

    def _reply(self, payload, status=200):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, self.headers.get("authorization"), body))
        if self.path == "/api/repos/create":
            request = json.loads(body)
            self._reply({"url": f"http://{self.headers['host']}/{request.get('organization')}/{request['name']}"})
        elif self.path == "/api/validate-yaml":
            self._reply({})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            host = f"http://{self.headers['host']}"
            self._reply({"commitUrl": f"{host}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40,
                         "pullRequestUrl": f"{host}/{repo}/discussions/1"})
        elif "/branch/" in self.path:
            self._reply({})
        elif self.path.endswith("/discussions"):
            self._reply({"num": 1})
        else:
            self._reply({"error": f"unexpected {self.path}"}, status=404)

    def do_GET(self):
        self.received.append((self.path, self.headers.get("authorization"), b""))
        if "/discussions/1" in self.path:
            repo = self.path.split("/api/models/")[1].split("/discussions/")[0]
            self._reply({
                "title": "Upload", "num": 1, "author": {"name": "tester"}, "createdAt": "2026-11-24T00:00:00Z",
                "status": "draft", "repo": {"name": repo, "type": "model"}, "isPullRequest": True, "events": [],
                "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [], "diff": "",
            })
        else:
            self._reply({"error": f"unexpected {self.path}"}, status=404)


@pytest.fixture
def fake_hub():
    FakeHub.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def model_folder(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = ScGrnForCellClassification(tiny_config(tokenizer))
    network = GeneRegulatoryNetwork.from_dataframe(pd.DataFrame(EDGES, columns=["source", "target"]),
                                                   provenance={"resource": "hand-made", "organism": "human"})
    attach_grn(model, network, tokenizer)
    return save_model_folder(model, tokenizer, network, tmp_path / "model", plot=False,
                             evaluation={"test_accuracy": 0.5}), model, network


def committed_files(received):
    files = {}
    for path, _, body in received:
        if "/commit/" in path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_push_uploads_the_complete_folder(fake_hub, model_folder, monkeypatch):
    folder, _, _ = model_folder
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    info = push_model_folder(folder, "org/scgrn", private=True, endpoint=fake_hub)
    files = committed_files(FakeHub.received)
    expected = sorted(p.name for p in folder.iterdir())
    assert sorted(files) == expected
    assert {"model.safetensors", "grn_edges.parquet", "grn_provenance.json", "README.md", "tokenizer.json",
            "modeling_scgrn.py", "config.json"} <= set(files)
    assert all(len(content) > 0 for content in files.values())
    for name in ("grn_edges.parquet", "grn_provenance.json", "model.safetensors"):
        assert hashlib.sha256(files[name]).digest() == hashlib.sha256((folder / name).read_bytes()).digest()
    create = [json.loads(b) for p, _, b in FakeHub.received if p == "/api/repos/create"][0]
    assert create.get("visibility", "private" if create.get("private") else None) == "private" and create["name"] == "scgrn" and create["organization"] == "org"
    assert all(auth == "Bearer hf_test_token" for _, auth, _ in FakeHub.received)
    from huggingface_hub import ModelCard

    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert "| test_accuracy | 0.5000 |" in card.text
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForSequenceClassification"].endswith(
        "ScGrnForCellClassification")
    assert info.oid == "a" * 40


def test_push_to_branch_and_pull_request(fake_hub, model_folder, monkeypatch, tokenizer):
    folder, model, network = model_folder
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    model.push_to_hub("org/scgrn", tokenizer=tokenizer, network=network, revision="dev", endpoint=fake_hub)
    paths = [p for p, _, _ in FakeHub.received]
    assert "/api/models/org/scgrn/branch/dev" in paths
    assert any(p.startswith("/api/models/org/scgrn/commit/dev") for p in paths)
    FakeHub.received = []
    info = push_to_hub(model, tokenizer, network, "org/scgrn", create_pr=True, endpoint=fake_hub)
    commit_path = [p for p, _, _ in FakeHub.received if "/commit/" in p][0]
    assert "/api/models/org/scgrn/discussions" in [p for p, _, _ in FakeHub.received]
    assert commit_path.startswith("/api/models/org/scgrn/commit/refs%2Fpr%2F1")
    assert "/discussions/1" in info.pr_url
    with pytest.raises(ValueError, match="pull requests against the default branch"):
        push_model_folder(folder, "org/scgrn", revision="dev", create_pr=True, endpoint=fake_hub)


def test_bad_pushes_upload_nothing(fake_hub, model_folder, monkeypatch, tmp_path, tokenizer):
    folder, model, network = model_folder
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        push_model_folder(folder, "org/sc grn!!", endpoint=fake_hub)
    with pytest.raises(ValueError, match="no namespace"):
        push_model_folder(folder, "scgrn", endpoint=fake_hub)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for item in folder.iterdir():
        if not item.name.startswith("tokenizer"):
            (no_tokenizer / item.name).write_bytes(item.read_bytes())
    with pytest.raises(ValueError, match="has no tokenizer"):
        push_model_folder(no_tokenizer, "org/scgrn", endpoint=fake_hub)
    (folder / "grn_edges.parquet").unlink()
    with pytest.raises(ValueError, match="has no GRN"):
        push_model_folder(folder, "org/scgrn", endpoint=fake_hub)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        push_to_hub(model, None, network, "org/scgrn", endpoint=fake_hub)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token"):
        push_to_hub(model, tokenizer, network, "org/scgrn", endpoint=fake_hub)
    assert FakeHub.received == []


def test_a_classifiers_card_lists_its_labels_and_says_what_it_does_not_record(tokenizer, tmp_path):
    network = GeneRegulatoryNetwork.from_dataframe(pd.DataFrame(EDGES, columns=["source", "target"]))
    labels = {0: "B cell", 1: "T cell", 2: "NK"}
    config = tiny_config(tokenizer, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = ScGrnForCellClassification(config)
    attach_grn(model, network, tokenizer)
    card = (save_model_folder(model, tokenizer, network, tmp_path / "m", plot=False) / "README.md").read_text()
    assert "Cell types this classifier predicts (3): `B cell`, `T cell`, `NK`" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert "these weights may be untrained" in card  # no training run and no evaluation recorded
    assert "read the baselines above" not in card and "this card records no baselines" in card
    assert "each attended pair is a prior edge" not in card and "edges at chance" in card.replace("\n  ", " ")
    assert card.count("Since 2026-12-07 the shipped pretraining puts a") == 1
    assert "- Cite: the source of this network (a custom prior" in card  # a plain edge list names no paper
    assert "- In the training cells: not measured (this folder was saved without them" in card


def test_a_card_cites_its_prior_and_says_its_licence_is_not_the_model_s(tokenizer, tmp_path):
    table = pd.DataFrame({"source": ["G0", "G1"], "target": ["G1", "G2"], "type": "transcriptional",
                          "sources": ["CollecTRI", "DoRothEA;CollecTRI"], "consensus_stimulation": True,
                          "consensus_inhibition": False})
    network = GeneRegulatoryNetwork.from_omnipath_table(table, "collectri")
    model = ScGrnForCellClassification(tiny_config(tokenizer))
    attach_grn(model, network, tokenizer)
    card = (save_model_folder(model, tokenizer, network, tmp_path / "m", plot=False) / "README.md").read_text()
    assert "- Cite: Müller-Dott S. et al." in card and "doi:10.1093/nar/gkad841" in card
    assert "doi:10.15252/msb.20209923" in card  # OmniPath, which serves the table
    assert "this model's licence covers its weights and code, not the prior" in card
    assert "check CollecTRI's before redistributing" in card
