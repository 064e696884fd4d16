"""Bad input, tried as a user would, through every script and the public API: each case gets one line
`error: ...` naming the problem, exit status 2, no traceback, and leaves every folder as it was."""

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import OMNIPATH_TABLE, load_script, shared_data_or_skip

from modeling_scgrn import ScGrnForCellClassification, ScGrnTokenizer
from modeling_scgrn.cells.prepared import prepare_cells
from modeling_scgrn.cells.reading import pbmc68k_reduced_counts
from modeling_scgrn.grn.attach import new_config
from modeling_scgrn.grn.network import GeneRegulatoryNetwork
from modeling_scgrn.hub.model_folder import load_pretrained
from modeling_scgrn.train.training import TrainingConfig
from modeling_scgrn.workflows.pretrain import run_pretraining

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "tokenize": ROOT / "data" / "tokenize_cells.py",
    "pretrain": ROOT / "pretrain" / "run.py",
    "finetune": ROOT / "finetune" / "run.py",
    "compare": ROOT / "finetune" / "compare.py",
    "interpret": ROOT / "finetune" / "interpret.py",
    "push": ROOT / "finetune" / "push_to_hub.py",
    "fetch_prior": ROOT / "data" / "fetch_prior.py",
    "perturb": ROOT / "finetune" / "perturb.py",
    "simulate": ROOT / "data" / "simulate_cells.py",
}
TINY = ["--set", "model.hidden_size=16", "--set", "model.num_hidden_layers=1", "--set", "model.num_attention_heads=2",
        "--set", "model.intermediate_size=32", "--set", "training.report_to=none", "--set", "training.show_progress=false"]


def script(name):
    return load_script(SCRIPTS[name], f"scgrn_script_{name}")


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time (what 'untouched' means here)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real inputs a user would have: the OmniPath table, pbmc68k as an .h5ad, a tokenized data folder, a pretrained
    model folder and its run, an empty and a truncated .h5ad, a model folder with truncated weights."""
    root = tmp_path_factory.mktemp("world")
    prior = shared_data_or_skip(OMNIPATH_TABLE)
    adata = pbmc68k_reduced_counts()
    adata.write_h5ad(root / "pbmc.h5ad")
    adata[:0].write_h5ad(root / "empty.h5ad")
    (root / "truncated.h5ad").write_bytes((root / "pbmc.h5ad").read_bytes()[:5000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = GeneRegulatoryNetwork.read(prior, "collectri")
        prepare_cells(str(root / "pbmc.h5ad"), network, root / "data", label_column="bulk_labels", max_length=64)
        training = TrainingConfig(max_steps=2, report_to="none", show_progress=False, mixed_precision="no",
                                  output_dir=str(root / "pretrain"))
        run_pretraining(root / "data", training, model_options=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    broken = root / "broken_model"
    broken.mkdir()
    for item in (root / "pretrain" / "model").iterdir():
        if item.is_file():
            data = item.read_bytes()
            (broken / item.name).write_bytes(data[: len(data) // 2] if item.name == "model.safetensors" else data)
    (root / "bad.yaml").write_text("training: [1, 2\n")  # a YAML syntax error
    (root / "wrong_section.yaml").write_text("training: 5\n")
    (root / "config.toml").write_text("[training]\nmax_steps = 2\n")
    (root / "a_folder").mkdir()
    no_config = root / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((root / "pretrain" / "model" / "model.safetensors").read_bytes())
    return {"root": root, "prior": str(prior), "h5ad": str(root / "pbmc.h5ad"), "data": str(root / "data"),
            "pretrain": str(root / "pretrain"), "model": str(root / "pretrain" / "model")}


def busy_folder(tmp_path) -> Path:
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "my_notes.txt").write_text("a user's file")
    return folder


# (script, arguments (formatted with the world and {out}, {busy}), words the message must contain)
CASES = [
    ("tokenize", ["--input", "{root}/missing.h5ad", "--prior", "{prior}", "--output_dir", "{out}"], "does not exist"),
    ("tokenize", ["--input", "{root}/truncated.h5ad", "--prior", "{prior}", "--output_dir", "{out}"], "corrupt or truncated"),
    ("tokenize", ["--input", "{root}/empty.h5ad", "--prior", "{prior}", "--output_dir", "{out}"], "0 cells"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{root}/missing.parquet", "--output_dir", "{out}"], "does not exist"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--label_column", "cell_typ", "--output_dir", "{out}"],
     "no obs column"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--no_normalize", "--output_dir", "{out}"],
     "drop --no_normalize"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--output_dir", "{busy}"], "not empty"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--output_dir", "{h5ad}"], "is a file"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--output_dir", "{root}", "--overwrite"],
     "would delete the input"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--tokenizer", "{root}/nothing", "--output_dir", "{out}"],
     "holds no scgrn tokenizer"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{prior}", "--resource", "trrust", "--output_dir", "{out}"],
     "resource='trrust'"),
    ("pretrain", ["--data", "{root}/missing", "--output_dir", "{out}"], "does not exist"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "model.hiden_size=8"],
     "unknown model option(s) ['hiden_size']"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "optim.lr=1"], "unknown section"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "training.view_gene_dropout=0.5"],
     "the model has none; give it model.contrastive_weight > 0"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "model.depth_decorrelation_weight=-1"],
     "depth_decorrelation_weight=-1 must not be negative"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "model.detection_weight=-1"],
     "detection_weight=-1 must not be negative"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "model.detection_weight=1", "--set",
                  "training.view_gene_dropout=0"], "but view_gene_dropout=0 leaves none out"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "training.gene_dropout=0.3"],
     "finetuning options, which pretraining does not read"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--set", "training.reinit_layers=1",
                  "--output_dir", "{out}"], "this run trains from scratch"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}", "--set",
                  "training.reinit_layers=2", "--output_dir", "{out}"], "more than the 1 encoder layers"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}", "--set",
                  "training.reinit_layers=1", "--set", "training.freeze_encoder=true", "--output_dir", "{out}"],
     "random and frozen"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}", "--set",
                  "model.classifier_mixup_alpha=-0.4", "--output_dir", "{out}"], "must not be negative"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--set", "training.learning_rate=fast"],
     "expects float"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--config", "{root}/missing.yaml"], "missing.yaml"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{busy}"], "not empty"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--config", "{root}/bad.yaml"], "is not valid YAML"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--config", "{root}/wrong_section.yaml"],
     "section(s) ['training'] of"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--config", "{root}/config.toml"],
     "is neither YAML (.yaml, .yml) nor JSON"),
    ("tokenize", ["--input", "{h5ad}", "--prior", "{root}/a_folder", "--output_dir", "{out}"], "is a folder"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--resume_from_checkpoint", "latest"],
     "no run to resume"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{out}", "--model", "{root}/nowhere/model"],
     "no model folder"),
    ("pretrain", ["--data", "{data}", "--output_dir", "{root}", "--overwrite"], "would delete the input"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "runs/x/model",
                  "--output_dir", "{out}"], "no model folder at runs/x/model"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{root}/no_config",
                  "--output_dir", "{out}"], "has no config.json"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{root}/broken_model",
                  "--output_dir", "{out}"], "damaged or truncated"),
    ("finetune", ["--data", "{data}", "--label_column", "cell_type", "--output_dir", "{out}"], "no label column"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}",
                  "--output_dir", "{pretrain}"], "not empty"),
    ("finetune", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}",
                  "--output_dir", "{pretrain}", "--resume_from_checkpoint", "latest"], "holds a pretrain run"),
    ("compare", ["--data", "{root}/missing", "--label_column", "bulk_labels", "--output_dir", "{out}"],
     "does not exist"),
    ("compare", ["--data", "{data}", "--label_column", "bulk_labels", "--output_dir", "{busy}"], "not empty"),
    ("compare", ["--data", "{data}", "--label_column", "bulk_labels", "--output_dir", "{out}", "--seeds", "0", "0"],
     "seeds [0, 0] must be given, each once"),
    ("interpret", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{root}/missing",
                   "--output_dir", "{out}"], "no model folder"),
    ("interpret", ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}", "--split", "holdout",
                   "--output_dir", "{out}"], "no split 'holdout'"),
    ("push", ["--model", "{root}/missing", "--repo_id", "org/model"], "is not a folder"),
    ("push", ["--model", "{model}", "--repo_id", "not a repo"], "not a valid Hub repo id"),
    ("push", ["--model", "{root}/no_config", "--repo_id", "org/model"], "has no tokenizer"),
]


@pytest.mark.parametrize("name,arguments,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_script_bad_input_is_one_line_and_touches_nothing(world, tmp_path, capsys, name, arguments, expected):
    busy = busy_folder(tmp_path)
    values = {**world, "out": str(tmp_path / "out"), "busy": str(busy)}
    watched = [world["root"], busy]
    before = [snapshot(folder) for folder in watched]
    with pytest.raises(SystemExit) as exit_info:
        script(name).main([a.format(**values) for a in arguments] + (TINY if name in ("pretrain", "finetune") else []))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2, captured.err[-2000:]
    assert len(lines) == 1 and expected in lines[0], captured.err[-2000:]
    assert "Traceback" not in captured.err
    assert [snapshot(folder) for folder in watched] == before
    assert not (tmp_path / "out").exists()  # a failed run leaves nothing behind


def run_script(name, *arguments, env=None, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPTS[name]), *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_unreachable_hub_is_one_line(world):
    # a closed port on this machine: the connection is refused at once
    result = run_script("push", "--model", world["model"], "--repo_id", "org/model",
                        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_not_a_real_token"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not reach the Hub at http://127.0.0.1:9")


def test_traceback_only_with_debug(world, tmp_path):
    plain = run_script("pretrain", "--data", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "a"))
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'missing'} does not exist; create it with data/tokenize_cells.py."]
    for extra, env in (["--debug"], None), ([], {"SCGRN_DEBUG": "1"}):
        debug = run_script("pretrain", "--data", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "b"),
                           *extra, env=env)
        assert debug.returncode != 0 and "Traceback" in debug.stderr and "ValueError" in debug.stderr


# the options each script used to name otherwise: refused with the new name (scgrn is not released: no shims)
RENAMED = [("tokenize", "--output", "--output_dir"), ("pretrain", "--h5ad", "--input"),
           ("pretrain", "--init_from", "--model"), ("finetune", "--h5ad", "--input"),
           ("finetune", "--pretrained", "--model"), ("perturb", "--cells", "--input"),
           ("perturb", "--output", "--output_dir"), ("push", "--folder", "--model")]


@pytest.mark.parametrize("name,old,new", RENAMED, ids=[f"{c[0]}{c[1]}" for c in RENAMED])
def test_renamed_options_are_refused_with_their_new_name(tmp_path, capsys, name, old, new):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main([old, str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {old} is now {new}; run the command again with {new}"]
    assert not list(tmp_path.iterdir())


def test_every_script_names_the_same_thing_the_same_way():
    """Raw cells are --input, a model folder --model, a written folder --output_dir, in every script that has one."""
    for name in SCRIPTS:
        text = run_script(name, "--help", timeout=30).stdout
        for old in ("--h5ad", "--cells", "--pretrained", "--init_from", "--folder"):
            assert old not in text, (name, old)


def test_help_answers_within_a_second():
    for name in SCRIPTS:
        start = time.perf_counter()
        result = run_script(name, "--help", timeout=30)
        elapsed = time.perf_counter() - start
        assert result.returncode == 0 and "usage:" in result.stdout, name
        assert elapsed < 1.0, f"{name} --help took {elapsed:.2f} s"


def test_accelerate_launch_gives_one_message(world, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPTS["finetune"]), "--data", world["data"],
         "--label_column", "cell_type", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("error: the dataset has no label column 'cell_type'")
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_after_success(world, tmp_path, capsys):
    output = busy_folder(tmp_path)
    script("tokenize").main(["--input", "pbmc68k_reduced", "--prior", world["prior"], "--output_dir", str(output),
                             "--max_length", "32", "--overwrite"])
    assert sorted(p.name for p in output.iterdir()) == ["dataset", "prior", "prior_report.json", "tokenizer"]
    assert not list(tmp_path.glob(".busy*"))  # nothing left beside it
    umask = os.umask(0)
    os.umask(umask)
    for folder in (output, output / "dataset", output / "tokenizer"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, folder


def test_failed_overwrite_brings_the_old_folder_back(world, tmp_path, capsys):
    output = busy_folder(tmp_path)
    with pytest.raises(SystemExit):
        script("tokenize").main(["--input", "pbmc68k_reduced", "--prior", world["prior"], "--output_dir", str(output),
                                 "--label_column", "no_such_column", "--overwrite"])
    assert [p.name for p in output.iterdir()] == ["my_notes.txt"]
    assert not list(tmp_path.glob(".busy*"))


def test_a_failed_benchmark_keeps_the_units_it_finished_and_can_be_resumed(tmp_path):
    from modeling_scgrn.storage.folders import check_output_folder, output_folder, write_run_manifest

    output = tmp_path / "known_truth"
    for finished in (False, True):
        with pytest.raises(RuntimeError), output_folder(output, "known_truth") as folder:
            write_run_manifest(folder, "known_truth")
            if finished:  # an hour of pretrained arms, then a crash: resumable, so kept
                (folder / "progress.json").write_text('{"done": [[0, "grn"]]}')
            raise RuntimeError("the third arm ran out of memory")
        assert output.exists() == finished
    check_output_folder(output, resume=True, task="known_truth")
    with pytest.raises(ValueError, match="holds a known_truth run, not a pretrain run"):
        check_output_folder(output, resume=True, task="pretrain")


def test_published_folder_holds_no_local_path(world):
    model = Path(world["model"])
    root = str(Path(world["root"]).resolve())
    for path in model.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".txt", ".py", ".parquet", ".safetensors"):
            assert root.encode() not in path.read_bytes(), path.name
    card = (model / "README.md").read_text()
    assert "pbmc.h5ad (sha256 " in card


def test_finetuning_a_pretrained_model_says_in_one_line_that_the_head_is_new(world, caplog):
    with caplog.at_level("WARNING"):
        load_pretrained(ScGrnForCellClassification, world["model"], num_labels=3)
    messages = [r.getMessage() for r in caplog.records]
    # a pretrained model has two pretraining heads: the token head and the cell decoder (cell_decoder="mvc")
    assert len(messages) == 1 and "new head (classifier)" in messages[0]
    assert "not used: its cell_decoder, head weights" in messages[0]
    assert "\x1b[" not in messages[0]


def test_api_bad_inputs(world, tmp_path):
    tokenizer = ScGrnTokenizer.from_pretrained(world["model"])
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['hiden_size'\]"):
        new_config(tokenizer, hiden_size=8)
    with pytest.raises(ValueError, match="is not empty"):
        prepare_cells("pbmc68k_reduced", GeneRegulatoryNetwork.read(world["prior"]), world["root"])
    ensembl = pbmc68k_reduced_counts()[:20]
    ensembl.var_names = [f"ENSG{i:011d}" for i in range(ensembl.n_vars)]
    with pytest.raises(ValueError, match="name genes by Ensembl IDs but the model's vocabulary by symbols"):
        tokenizer.check_coverage(list(ensembl.var_names[:-5]) + list(tokenizer.get_vocab())[-5:])


def test_prepare_cells_takes_an_anndata_object(world, tmp_path):
    adata = anndata.AnnData(sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (40, 30)).astype(np.float32)),
                            obs=pd.DataFrame({"kind": ["a", "b"] * 20}, index=[f"c{i}" for i in range(40)]),
                            var=pd.DataFrame(index=["SPI1", "CEBPB", "IRF8", "GATA1", "TAL1", "KLF1"] +
                                             [f"GENE{i}" for i in range(24)]))
    network = GeneRegulatoryNetwork.from_dataframe(pd.DataFrame(
        [("SPI1", "CEBPB"), ("CEBPB", "IRF8"), ("GATA1", "TAL1"), ("TAL1", "KLF1")], columns=["source", "target"]))
    report = prepare_cells(adata, network, tmp_path / "data", label_column="kind", max_length=16)
    assert report["cells"] == 40 and report["sources"] == [{"name": "AnnData object (40 cells x 30 genes)"}]


def _error_line(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_a_second_run_into_a_locked_folder_is_refused_and_a_stale_lock_is_reported(world, tmp_path, capsys):
    from modeling_scgrn.storage.folders import lock_path

    out = tmp_path / "run"
    arguments = ["--data", world["data"], "--output_dir", str(out), *TINY, "--set", "training.max_steps=2"]
    holding = ("import sys; from modeling_scgrn.storage.folders import folder_lock\n"
               f"with folder_lock({str(out)!r}):\n    print('held', flush=True)\n    sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", holding], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # another process holds the folder, as a run does for its lifetime
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _error_line(capsys, lambda: script("pretrain").main(arguments))
        assert f"output folder {out} is in use by another run (pid {holder.pid} on host" in line
        line = _error_line(capsys, lambda: script("tokenize").main(
            ["--input", world["h5ad"], "--prior", world["prior"], "--output_dir", str(out)]))
        assert "is in use by another run" in line
        assert not out.exists()
    finally:
        holder.communicate("", timeout=60)
    assert not lock_path(out).exists()  # released when its run ends
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    lock_path(out).write_text(json.dumps({"pid": int(ended.stdout), "host": socket.gethostname()}))
    line = _error_line(capsys, lambda: script("pretrain").main(arguments))
    assert "that is no longer running" in line and f"delete {lock_path(out)}" in line
    assert lock_path(out).exists() and not out.exists()  # reported, never taken over


def test_a_symlinked_or_dot_output_folder_keeps_the_real_error_and_works(world, tmp_path, capsys, monkeypatch):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    line = _error_line(capsys, lambda: script("pretrain").main(
        ["--data", str(tmp_path / "missing"), "--output_dir", str(link), *TINY]))
    assert "does not exist; create it with data/tokenize_cells.py" in line and "Errno" not in line
    assert link.resolve() == target and list(target.iterdir()) == []  # the user's empty folder, as it was
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    script("pretrain").main(["--data", world["data"], "--output_dir", ".", *TINY, "--set", "training.max_steps=2"])
    assert (here / "model" / "model.safetensors").is_file()
    before = snapshot(here)
    for name, arguments in (("pretrain", ["--data", world["data"], *TINY]),
                            ("tokenize", ["--input", world["h5ad"], "--prior", world["prior"]])):
        main, given = script(name).main, [*arguments, "--output_dir", ".", "--overwrite"]
        line = _error_line(capsys, lambda main=main, given=given: main(given))
        assert "holds the folder this command runs in" in line
    assert snapshot(here) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "link", "target"]  # nothing left beside it


@pytest.fixture(scope="module")
def classifier(world):
    """A finetuned classifier folder from the world's pretrained model (two steps: only its head's kind matters)."""
    from modeling_scgrn.workflows.finetune import run_finetuning

    training = TrainingConfig(max_steps=2, report_to="none", show_progress=False, mixed_precision="no",
                              output_dir=str(world["root"] / "finetune"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_finetuning(world["data"], training, label_column="bulk_labels", pretrained=world["model"])
    return str(world["root"] / "finetune" / "model")


def test_a_model_whose_head_is_not_the_tasks_is_refused_not_run_with_a_random_head(world, classifier, tmp_path,
                                                                                      capsys):
    perturb = ["--input", world["h5ad"], "--genes", "SPI1", "--max_cells", "5", "--output_dir", str(tmp_path / "o")]
    line = _error_line(capsys, lambda: script("perturb").main([*perturb, "--model", classifier]))
    assert "holds ScGrnForCellClassification, not a trained ScGrnForMaskedExpressionModeling" in line
    line = _error_line(capsys, lambda: script("perturb").main([*perturb, "--model", world["model"],
                                                                "--classifier", world["model"]]))
    assert "not a trained ScGrnForCellClassification: its classifier head would be random" in line
    assert not (tmp_path / "o").exists()


def test_a_classifier_of_another_gene_order_or_a_doubled_gene_is_refused(world, classifier, tmp_path, capsys):
    vocabulary_file = Path(classifier) / "tokenizer.json"
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for item in Path(classifier).iterdir():
        if item.is_file():
            (shuffled / item.name).write_bytes(item.read_bytes())
    tokenizer = json.loads(vocabulary_file.read_text())
    vocab = tokenizer["model"]["vocab"]
    genes = [g for g in vocab if not g.startswith("[")]
    order = sorted(genes)  # the same genes and size, another order
    tokenizer["model"]["vocab"] = {**{g: i for g, i in vocab.items() if g.startswith("[")},
                                   **{g: vocab[o] for g, o in zip(genes, order)}}
    (shuffled / "tokenizer.json").write_text(json.dumps(tokenizer))
    perturb = ["--input", world["h5ad"], "--genes", "SPI1", "--max_cells", "5", "--output_dir", str(tmp_path / "o"),
               "--model", world["model"], "--classifier", str(shuffled)]
    line = _error_line(capsys, lambda: script("perturb").main(perturb))
    assert "was trained on another gene vocabulary" in line
    tokenizer["model"]["vocab"] = {**vocab, genes[1]: vocab[genes[0]]}  # two genes on one id
    (shuffled / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="does not give each of its tokens its own id"):
        ScGrnTokenizer.from_pretrained(shuffled)


def test_log_normalised_cells_and_special_tokens_are_refused_by_the_tools(world, tmp_path, capsys):
    import scanpy as sc

    from modeling_scgrn import tl
    from modeling_scgrn.model.modeling_scgrn import ScGrnForMaskedExpressionModeling

    model = ScGrnForMaskedExpressionModeling.from_pretrained(world["model"])
    tokenizer = ScGrnTokenizer.from_pretrained(world["model"])
    cells = anndata.read_h5ad(world["h5ad"])[:20].copy()
    logged = cells.copy()
    sc.pp.normalize_total(logged)
    sc.pp.log1p(logged)
    for verb in (lambda a: tl.embed(a, model, tokenizer), lambda a: tl.perturb(a, model, tokenizer, ["SPI1"])):
        with pytest.raises(ValueError, match=r"looks like normalised or log data. adata.X must hold raw counts"):
            verb(logged)
        with pytest.raises(ValueError, match="0 cells"):
            verb(cells[:0])
    with pytest.raises(ValueError, match=r"\['\[CLS\]'\] are special tokens, not genes"):
        tl.perturb(cells, model, tokenizer, ["[CLS]"])
    other = ScGrnTokenizer.from_genes(list(cells.var_names[:50]))
    with pytest.raises(ValueError, match="the tokenizer has 54 tokens but the model's vocabulary has"):
        tl.embed(cells, model, other)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one line, before anything is read
        script("perturb").main(["--input", world["h5ad"], "--genes", "SPI1", "--max_cells", "-690", "--model",
                                world["model"], "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: argument --max_cells: -690 is below 1" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


# The systematic sweep: every numeric option of every script gets a wrong type and an out-of-range value, every
# option with choices an unknown one, and every file or folder option a path that does not exist. Each case must
# end in one line naming the option, exit status 2, no traceback, and nothing written.
SWEPT = {**SCRIPTS, **{name: ROOT / "benchmarks" / f"{name}.py" for name in ("knockout", "known_truth", "objectives")}}
BASE = {  # arguments that are valid together; each case changes one option
    "tokenize": ["--input", "{h5ad}", "--prior", "{prior}", "--output_dir", "{out}"],
    "pretrain": ["--data", "{data}", "--output_dir", "{out}", *TINY],
    "finetune": ["--data", "{data}", "--label_column", "bulk_labels", "--output_dir", "{out}", *TINY],
    "compare": ["--data", "{data}", "--label_column", "bulk_labels", "--output_dir", "{out}"],
    "interpret": ["--data", "{data}", "--label_column", "bulk_labels", "--model", "{model}", "--output_dir", "{out}"],
    "perturb": ["--input", "{h5ad}", "--model", "{model}", "--genes", "SPI1", "--output_dir", "{out}"],
    "push": ["--model", "{model}", "--repo_id", "org/model"],
    "simulate": ["--prior", "{prior}", "--output", "{out}/cells.h5ad"],
    "knockout": ["--corpus", "{h5ad}", "--model", "grn={model}", "--output_dir", "{out}"],
    "known_truth": ["--prior", "{prior}", "--output_dir", "{out}"],
    "objectives": ["--input", "{h5ad}", "--prior", "{prior}", "--output_dir", "{out}"],
}
# file and folder options, and what replaces a conflicting part of the base (a source group takes one member)
PATHS = {
    "tokenize": ["--input", "--prior", "--tokenizer"], "pretrain": ["--data", "--config", "--model"],
    "finetune": ["--data", "--config", "--model", "--architecture_from"],
    "compare": ["--data", "--config", "--pretrain_config"], "interpret": ["--data", "--model", "--dense_model"],
    "perturb": ["--input", "--model", "--classifier", "--prior"], "push": ["--model"], "simulate": ["--prior"],
    "knockout": ["--corpus"], "known_truth": ["--prior", "--corpus", "--pretrain_config", "--finetune_config"],
    "objectives": ["--input", "--prior", "--config", "--variants"],
}


def parser_of(name):
    """The script's argparse parser, as its parse_arguments builds it."""
    import argparse

    class Built(Exception):
        pass

    def capture(self, *args, **kwargs):
        raise Built(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        module = load_script(SWEPT[name], f"swept_{name}")
        module.parse_arguments([])
    except Built as built:
        return built.args[0], module
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{name} built no parser")


def sweep_cases():
    cases = []
    for name in BASE:
        parser, module = parser_of(name)
        shared = getattr(module, "shared", None)
        for action in parser._actions:
            option = next((o for o in action.option_strings if o.startswith("--")), None)
            if option is None:
                continue
            if shared is not None and action.type in (shared.count, shared.seed, shared.count_or_zero):
                low = "0" if action.type is shared.count else "-1"
                cases += [(name, option, "many", "argument " + option), (name, option, low, "argument " + option)]
            elif action.type in (int, float):  # checked by the config dataclass it fills (DataConfig)
                cases += [(name, option, "many", "argument " + option), (name, option, "-5", option[2:])]
            elif action.choices:
                cases.append((name, option, "not-a-choice", "invalid choice"))
        cases += [(name, option, "{root}/missing/thing", "missing/thing") for option in PATHS[name]]  # named
    return cases


def with_option(arguments: list, option: str, value: str) -> list:
    """`arguments` with `option` set to `value` (replaced where the base gives it)."""
    if option in arguments:
        arguments = list(arguments)
        arguments[arguments.index(option) + 1] = value
        return arguments
    if option == "--input" and "--data" in arguments:  # one source at a time; tokenizing needs a prior
        at = arguments.index("--data")
        return [*arguments[:at], *arguments[at + 2:], option, value, "--prior", "{prior}"]
    return [*arguments, option, value]


@pytest.mark.parametrize("name,option,value,words", sweep_cases(), ids=lambda v: str(v)[:30])
def test_every_option_refuses_a_wrong_value_in_one_line_and_writes_nothing(world, tmp_path, capsys, name, option,
                                                                           value, words):
    values = {**world, "out": str(tmp_path / "out")}
    arguments = [a.format(**values) for a in with_option(BASE[name], option, value)]
    before = snapshot(world["root"])
    module = load_script(SWEPT[name], f"swept_{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(arguments)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert words in lines[0], lines[0]
    assert snapshot(world["root"]) == before and not (tmp_path / "out").exists()


def test_a_typo_in_a_local_model_path_is_not_looked_up_on_the_hub(world, tmp_path, capsys, monkeypatch):
    (tmp_path / "runs" / "pbmc").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a lookup would fail slowly, not with this line
    start = time.perf_counter()
    line = _error_line(capsys, lambda: script("finetune").main(
        ["--data", world["data"], "--label_column", "bulk_labels", "--model", "runs/pbmk", "--output_dir", "out",
         *TINY]))
    assert "there is no model folder at runs/pbmk (its parent folder runs/ exists here" in line and "'pbmc'" in line
    assert time.perf_counter() - start < 10 and not (tmp_path / "out").exists()


def test_a_config_that_contradicts_the_architecture_asked_for_is_refused(world, tmp_path, capsys):
    """finetune/configs/pbmc68k.yaml names its architecture (hidden 64): with a pretrained model of another width,
    or with --architecture_from one, finetuning says so instead of loading a mismatch or training another model."""
    config = str(ROOT / "finetune" / "configs" / "pbmc68k.yaml")
    common = ["--data", world["data"], "--label_column", "bulk_labels", "--config", config,
              "--output_dir", str(tmp_path / "out"), "--set", "training.max_steps=2"]
    line = _error_line(capsys, lambda: script("finetune").main([*common, "--model", world["model"]]))
    assert "the model options set hidden_size=64" in line and "has hidden_size=16" in line
    line = _error_line(capsys, lambda: script("finetune").main([*common, "--architecture_from", world["model"]]))
    assert "has hidden_size=16" in line and "but the model options set hidden_size=64" in line
    assert not (tmp_path / "out").exists()
