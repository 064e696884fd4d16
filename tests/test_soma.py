"""Streaming cells from TileDB-SOMA: a local experiment built with tiledbsoma.io.from_anndata from two real datasets
(the celltypist sample and pbmc68k_reduced), read as pretraining reads it."""

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CELLTYPIST_SAMPLE, OMNIPATH_TABLE, shared_data_or_skip, torchrun
from safetensors.torch import load_file

from modeling_scgrn.cells.collators import _pad_cells
from modeling_scgrn.cells.reading import pbmc68k_reduced_counts
from modeling_scgrn.cells.tokenize import tokenize_anndata
from modeling_scgrn.train.training import TrainingConfig
from modeling_scgrn.workflows.pretrain import run_pretraining

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_dropout_prob=0.1, value_encoding="continuous")


def soma_or_skip():
    """The soma module; skipped without the extra outside CI, a failure in CI (which installs it)."""
    try:
        import tiledbsoma  # noqa: F401
        import tiledbsoma_ml  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("tiledbsoma is not installed; CI installs the soma extra")
        pytest.skip("the soma extra (tiledbsoma, tiledbsoma-ml) is not installed")
    from modeling_scgrn.cells import soma

    return soma


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The two datasets as .h5ad files of raw counts, and a SOMA experiment holding both."""
    import anndata

    soma = soma_or_skip()
    folder = tmp_path_factory.mktemp("soma")
    sample = anndata.read_h5ad(shared_data_or_skip(CELLTYPIST_SAMPLE))
    pbmc = pbmc68k_reduced_counts()
    pbmc.obs = pbmc.obs[["bulk_labels"]]
    pbmc.write_h5ad(folder / "pbmc68k.h5ad")
    uri = soma.write_experiment(folder / "experiment", {"celltypist_sample": sample, "pbmc68k": pbmc})
    return {"uri": uri, "celltypist_sample": CELLTYPIST_SAMPLE, "pbmc68k": folder / "pbmc68k.h5ad"}


@pytest.fixture(scope="module")
def network(collectri_prior):
    return collectri_prior


@pytest.fixture(scope="module")
def folder(files, network, tmp_path_factory):
    soma = soma_or_skip()
    output = tmp_path_factory.mktemp("soma_data") / "data"
    soma.prepare_soma(soma.SomaSource(files["uri"]), network, output, max_length=64, validation_cells=100,
                      sample_cells=300)
    return output


def test_tokens_equal_those_read_from_h5ad(files):
    import anndata

    soma = soma_or_skip()
    pbmc = anndata.read_h5ad(files["pbmc68k"])
    from modeling_scgrn import ScGrnTokenizer

    tokenizer = ScGrnTokenizer.from_genes(list(pbmc.var_names), n_bins=51)
    stream = soma.stream_soma(files["uri"], tokenizer, max_length=100, epochs=1, batch_size=16,
                              obs_columns=("obs_id",))
    streamed = {cell["obs_id"]: cell for cell in stream}
    assert len(streamed) == 559 + 700  # both datasets, every cell once
    # the stream holds integers compacted (ids of this 2,000-odd gene vocabulary in 2 bytes, bins in 1)
    some = next(iter(streamed.values()))
    assert (some["input_ids"].dtype, some["expression_bins"].dtype, some["expression_values"].dtype) == (
        np.uint16, np.uint8, np.float32)
    for name in ("celltypist_sample", "pbmc68k"):
        adata = anndata.read_h5ad(files[name])
        dataset, _ = tokenize_anndata(adata, tokenizer, max_length=100, show_progress=False)
        cells = []
        for i, cell_name in enumerate(adata.obs_names):
            cell = streamed[f"{name}:{cell_name}"]
            cells.append(cell)
            expected = dataset[i]
            for column in ("input_ids", "expression_values", "expression_bins"):
                assert np.array_equal(cell[column].astype(np.float64), np.asarray(expected[column], np.float64)), column
            assert cell["length"] == expected["length"]
        # and training sees the same padded int64 / float32 batches as from the Arrow dataset
        streamed_batch = _pad_cells(cells[:32], tokenizer.pad_token_id)
        arrow_batch = _pad_cells([dataset.with_format("numpy")[i] for i in range(32)], tokenizer.pad_token_id)
        for key, value in arrow_batch.items():
            assert streamed_batch[key].dtype == value.dtype and torch.equal(streamed_batch[key], value), key


def test_query_filters_cells_and_one_epoch_visits_each_cell_once(files):
    soma = soma_or_skip()
    from modeling_scgrn import ScGrnTokenizer

    cells = soma.query_cells(soma.SomaSource(files["uri"], obs_filter="dataset == 'pbmc68k'"))
    assert len(cells) == 700 and cells.source.gene_column == "var_id"
    tokenizer = ScGrnTokenizer.from_genes(cells.gene_names[:2000], n_bins=51)
    stream = soma.SomaCellStream(cells, tokenizer, batch_size=16, epochs=2, shuffle_chunk_size=32, io_batches=4,
                                 max_length=32)
    order = [cell["soma_joinid"] for cell in stream]
    first, second = order[:700], order[700:]
    assert sorted(first) == sorted(second) == cells.joinids.tolist()
    assert first != second  # each epoch in a new order
    assert first != sorted(first)  # shuffled, not in storage order


def joinids_of(cells):
    return [int(c["soma_joinid"]) for c in cells]


def shard_order(stream, rank, world_size, workers, monkeypatch):
    """The batches (as joinids) process `rank` of `world_size` reads through `workers` DataLoader workers, worked
    out in this process: each worker's own batches (tiledbsoma-ml reads the worker from WORKER/NUM_WORKERS),
    taken in turn as a DataLoader takes them."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("NUM_WORKERS", str(workers))
    own = []
    for worker in range(workers):
        monkeypatch.setenv("WORKER", str(worker))
        own.append([joinids_of(unit) for unit in stream.units()])
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    order = []
    while any(own):
        order.extend(batches.pop(0) for batches in own if batches)
    return order


def test_processes_and_workers_get_disjoint_cells_that_cover_the_epoch(files, monkeypatch):
    soma = soma_or_skip()
    from modeling_scgrn import ScGrnTokenizer

    cells = soma.query_cells(soma.SomaSource(files["uri"]))
    tokenizer = ScGrnTokenizer.from_genes(cells.gene_names[:3000], n_bins=51)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the default block size fits the shards it is built for
    stream = soma.SomaCellStream(cells, tokenizer, batch_size=16, epochs=1, io_batches=4, max_length=16,
                                 num_workers=3)
    shards = [shard_order(stream, rank, 2, 3, monkeypatch) for rank in (0, 1)]
    seen = [joinid for shard in shards for batch in shard for joinid in batch]
    assert len(seen) == len(set(seen)) == len(cells)  # disjoint, and together every cell
    # whole blocks go to shards in turn: each of a process's 3 worker shards holds at most one block more
    assert abs(len(shards[0]) - len(shards[1])) <= 3 * stream.units_per_block
    # a small experiment over six shards: blocks of one batch, so that a shard's window can hold 16 of them
    assert stream.shuffle_chunk_size == 16


def test_a_stream_resumed_at_a_position_repeats_and_skips_nothing(files, monkeypatch):
    soma = soma_or_skip()
    from modeling_scgrn import ScGrnTokenizer

    cells = soma.query_cells(soma.SomaSource(files["uri"]))
    tokenizer = ScGrnTokenizer.from_genes(cells.gene_names[:3000], n_bins=51)
    options = dict(batch_size=8, epochs=1, io_batches=3, max_length=16, seed=5, num_workers=2)
    straight = shard_order(soma.SomaCellStream(cells, tokenizer, **options), 0, 1, 2, monkeypatch)
    assert len(straight) == -(-len(cells) // 8)
    for position in (1, 7, 40):  # inside a read of three batches, the other worker's turn, and further on
        stream = soma.SomaCellStream(cells, tokenizer, **options)
        stream.load_state_dict({**stream.state_dict(), "position": position})
        assert shard_order(stream, 0, 1, 2, monkeypatch) == straight[position:]
    # a real DataLoader with two (spawned) workers reads the same batches in the same order
    stream.load_state_dict({**stream.state_dict(), "position": 7})
    assert list(stream.loader(joinids_of)) == straight[7:]
    other = soma.SomaCellStream(cells, tokenizer, **{**options, "batch_size": 4})
    with pytest.raises(ValueError, match="batch_size 8 -> 4"):
        other.load_state_dict(stream.state_dict())


def test_pretraining_killed_and_resumed_trains_on_the_cells_and_weights_of_an_uninterrupted_run(folder, tmp_path):
    from modeling_scgrn.cells import collators

    options = {"max_steps": 10, "checkpoint_steps": 4, "per_device_batch_size": 8, "logging_steps": 5, "seed": 3,
               "show_progress": False, "report_to": "none", "mixed_precision": "no"}
    original = collators.DataCollatorForMaskedExpression.pad
    seen = {"straight": [], "crashed": [], "resumed": []}

    def recording(run, crash_at=None):
        def pad(self, features):
            if crash_at is not None and len(seen[run]) + 1 == crash_at:
                raise KeyboardInterrupt("killed")
            seen[run].append([int(f["soma_joinid"]) for f in features])
            return original(self, features)
        return pad

    try:
        collators.DataCollatorForMaskedExpression.pad = recording("straight")
        summary = run_pretraining(folder, TrainingConfig.from_dict(options, output_dir=tmp_path / "straight"),
                                  model_options=TINY_MODEL)
        collators.DataCollatorForMaskedExpression.pad = recording("crashed", crash_at=7)
        with pytest.raises(KeyboardInterrupt):
            run_pretraining(folder, TrainingConfig.from_dict(options, output_dir=tmp_path / "crashed"),
                            model_options=TINY_MODEL)
        collators.DataCollatorForMaskedExpression.pad = recording("resumed")
        training = TrainingConfig.from_dict(
            {**options, "resume_from_checkpoint": "latest"}, output_dir=tmp_path / "crashed")
        run_pretraining(folder, training, model_options=TINY_MODEL)
    finally:
        collators.DataCollatorForMaskedExpression.pad = original
    state = json.loads((tmp_path / "crashed" / "checkpoints" / "step_00000008" / "scgrn_run_state.json").read_text())
    assert state["stream"]["position"] == 8 and state["stream"]["world_size"] == 1
    # the checkpoint at step 4 is where the resumed run reads on: batches 5 and 6 are trained again (their updates
    # were lost with the crash), nothing else is repeated and nothing skipped
    assert seen["crashed"] == seen["straight"][:6]
    assert seen["resumed"] == seen["straight"][4:]
    flat = [j for batch in seen["straight"][:10] for j in batch]  # then come the validation batches
    assert len(flat) == len(set(flat)) == 80  # 10 batches of 8 distinct cells (of 1,159 training cells)
    validation = set(json.loads((folder / "soma_source.json").read_text())["validation_joinids"])
    assert not validation & set(flat)
    assert validation == {j for batch in seen["straight"][10:] for j in batch}
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "step_00000010" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "crashed" / "checkpoints" / "step_00000010" / "model.safetensors"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    assert set(summary["baselines"]) == {"gene_mean", "gene_mean_cell_offset", "cell_value_distribution"}


TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from modeling_scgrn import ScGrnForMaskedExpressionModeling
    from modeling_scgrn.cells.collators import DataCollatorForMaskedExpression
    from modeling_scgrn.cells.prepared import load_prepared
    from modeling_scgrn.grn.attach import attach_grn, new_config
    from modeling_scgrn.cells.soma import SomaCellStream, training_cells
    from modeling_scgrn.train.training import TrainingConfig, train

    folder, output, model_options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    dataset, tokenizer, network, _ = load_prepared(folder, streamed=True)
    cells, _ = training_cells(folder)
    epoch = SomaCellStream(cells, tokenizer, batch_size=16, epochs=1, max_length=64)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mine = [int(cell["soma_joinid"]) for cell in epoch]
    model = ScGrnForMaskedExpressionModeling(new_config(tokenizer, **model_options))
    attach_grn(model, network, tokenizer)
    collator = DataCollatorForMaskedExpression.from_config(model.config)
    trained = []

    def recording(features):
        trained.append([int(f["soma_joinid"]) for f in features])
        return collator.pad(features)

    stream = SomaCellStream(cells, tokenizer, batch_size=8, max_length=64)
    config = TrainingConfig(output_dir=output, max_steps=4, per_device_batch_size=8, show_progress=False,
                            report_to="none", mixed_precision="no", seed=0)
    result = train(model, stream, recording, config, batch_transform=collator.mask)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{output}/weights{rank}.safetensors")
    json.dump({"epoch": mine, "trained": trained[:4], "world_size": result.num_processes},
              open(f"{output}/rank{rank}.json", "w"))
    """
)


def test_two_processes_stream_disjoint_cells_and_train_together(folder, tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    output = tmp_path / "out"
    output.mkdir()
    result = torchrun([script, folder, output, json.dumps(TINY_MODEL)], port=29531, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((output / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    cells = json.loads((folder / "soma_source.json").read_text())["train_cells"]
    epoch = ranks[0]["epoch"] + ranks[1]["epoch"]
    assert len(epoch) == len(set(epoch)) == cells  # disjoint, and together every training cell
    trained = [set(j for batch in r["trained"] for j in batch) for r in ranks]
    assert len(trained[0]) == len(trained[1]) == 32 and not trained[0] & trained[1]
    first, second = (load_file(str(output / f"weights{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(first[name], second[name]) for name in first)


def run_script(*arguments, cwd=ROOT):
    return subprocess.run([sys.executable, "pretrain/run.py", *arguments], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "SCGRN_DEBUG": ""})


@pytest.mark.parametrize("case", ["bad_uri", "empty_query", "missing_layer", "bad_filter", "missing_measurement"])
def test_bad_soma_sources_give_one_line(case, files, tmp_path):
    soma_or_skip()
    arguments = {"bad_uri": ["--soma", str(tmp_path / "no_such_experiment")],
                 "empty_query": ["--soma", files["uri"], "--obs_filter", "dataset == 'no such dataset'"],
                 "missing_layer": ["--soma", files["uri"], "--layer", "counts"],
                 "bad_filter": ["--soma", files["uri"], "--obs_filter", "tissue == 'blood'"],
                 "missing_measurement": ["--soma", files["uri"], "--measurement", "ATAC"]}[case]
    result = run_script(*arguments, "--prior", str(OMNIPATH_TABLE), "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"bad_uri": "is not a TileDB-SOMA experiment", "empty_query": "the query matches no cells",
                "missing_layer": "has no X layer 'counts'; its layers are ['raw']",
                "bad_filter": "Column tissue does not exist in schema'); write it as a TileDB value filter",
                "missing_measurement": "has no measurement 'ATAC'; it has ['RNA']"}[case]
    assert expected in errors[0]
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_a_soma_folder_refuses_finetuning_and_a_changed_experiment(folder, files, tmp_path):
    from modeling_scgrn.workflows.finetune import run_finetuning

    with pytest.raises(ValueError, match="streams its training cells from a SOMA experiment"):
        run_finetuning(folder, TrainingConfig.from_dict({}, output_dir=tmp_path / "ft"), label_column="bulk_labels",
                       pretrained=None, model_options={})
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    described = json.loads((changed / "soma_source.json").read_text())
    described["source"]["obs_filter"] = "dataset == 'pbmc68k'"
    (changed / "soma_source.json").write_text(json.dumps(described))
    with pytest.raises(ValueError, match="now matches other training cells"):
        run_pretraining(changed, TrainingConfig.from_dict({"max_steps": 1}, output_dir=tmp_path / "pt"),
                        model_options=TINY_MODEL)


def test_pretrain_script_streams_with_two_processes(files, tmp_path):
    """What the README shows: the script with --soma under torchrun; the data folder is written once (by the first
    process, the other waiting), then both train on their own cells."""
    soma_or_skip()
    output = tmp_path / "run"
    result = torchrun(
        ["pretrain/run.py", "--soma", files["uri"], "--prior", OMNIPATH_TABLE, "--max_length", "64",
         "--obs_filter", "dataset == 'pbmc68k'", "--output_dir", output, "--validation_cells", "50",
         "--set", "model.hidden_size=32", "--set", "model.num_hidden_layers=1", "--set", "model.intermediate_size=64",
         "--set", "training.max_steps=4", "--set", "training.report_to=none", "--set", "training.show_progress=false"],
        port=29533, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["final_step"] == 4
    described = json.loads((output / "data" / "soma_source.json").read_text())
    assert described["train_cells"] == 650 and described["source"]["obs_filter"] == "dataset == 'pbmc68k'"
    assert str(tmp_path) not in (output / "model" / "README.md").read_text()  # no local path in the card
    assert [p.name for p in output.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_a_prior_aware_panel_is_chosen_from_the_experiment(files, network):
    soma = soma_or_skip()
    from modeling_scgrn.cells.config import DataConfig
    from modeling_scgrn.grn.coverage import prior_report

    cells = soma.query_cells(soma.SomaSource(files["uri"], obs_filter="dataset == 'celltypist_sample'"))
    ranked, report = soma.soma_gene_panel(cells, network, DataConfig(panel="ranked", n_top_genes=500),
                                          sample_cells=400)
    hvg, _ = soma.soma_gene_panel(cells, network, DataConfig(panel="hvg", n_top_genes=500), sample_cells=400)
    assert len(ranked) == len(hvg) == 500 and report["chosen_on_cells"] == 400
    assert prior_report(network, ranked)["edges_in_panel"] > 2 * prior_report(network, hvg)["edges_in_panel"]
    everything, _ = soma.soma_gene_panel(cells, network, DataConfig(panel="all"))
    assert len(everything) == len(set(cells.gene_names)) == 32_787  # the two datasets' genes, joined by name


def test_a_bad_source_under_torchrun_ends_every_process_with_one_line(tmp_path):
    """The first process finds the experiment missing and says so once; the other, waiting for the data folder,
    ends without a traceback of its own (torchrun still prints its launcher's summary)."""
    soma_or_skip()
    prior = shared_data_or_skip(OMNIPATH_TABLE)
    result = torchrun(["pretrain/run.py", "--soma", tmp_path / "missing", "--prior", prior, "--output_dir",
                       tmp_path / "run"], port=29535, cwd=ROOT)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'missing'} is not a TileDB-SOMA experiment (DoesNotExistError); give the folder "
        "tiledbsoma.io.from_anndata wrote, or a Census release with --census."]
    assert "Connection closed by peer" not in result.stderr and "[rank1]" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_endless_stream_over_a_tiny_experiment_reads_cells_twice_without_crashing(tmp_path, monkeypatch):
    """A read of 16 batches of 16 cells reaches into the next epochs of a 64-cell experiment and holds each cell
    several times (TileDB's indexer refused that: "There are duplicate keys"); so does any shard smaller than one
    read. With 1 and 2 processes and 1 and 2 workers, every batch holds cells of the experiment, each cell's tokens
    are the same whenever it comes back, and every cell comes."""
    import itertools

    soma = soma_or_skip()
    from modeling_scgrn import ScGrnTokenizer

    tiny = pbmc68k_reduced_counts()[:64].copy()
    uri = soma.write_experiment(tmp_path / "tiny", {"tiny": tiny})
    cells = soma.query_cells(soma.SomaSource(uri))
    tokenizer = ScGrnTokenizer.from_genes(cells.gene_names, n_bins=51)
    for world_size, workers in ((1, 1), (2, 1), (1, 2), (2, 2)):
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        monkeypatch.setenv("NUM_WORKERS", str(workers))
        tokens, seen = {}, set()
        for rank, worker in itertools.product(range(world_size), range(workers)):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORKER", str(worker))
            stream = soma.stream_soma(uri, tokenizer, max_length=32, num_workers=workers)  # endless, 16 x 16
            for unit in itertools.islice(stream.units(), 24):
                assert len(unit) == 16
                for cell in unit:
                    joinid = int(cell["soma_joinid"])
                    assert list(tokens.setdefault(joinid, list(cell["input_ids"]))) == list(cell["input_ids"])
                    seen.add(joinid)
        assert seen == set(cells.joinids.tolist()), (world_size, workers)
    for name in ("RANK", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("WORLD_SIZE", "1")
    stream = soma.stream_soma(uri, tokenizer, max_length=32, num_workers=2)  # a real DataLoader, two workers
    batches = list(itertools.islice(stream.loader(joinids_of), 10))
    assert len(batches) == 10 and all(set(b) <= set(cells.joinids.tolist()) for b in batches)


def test_reads_in_any_order_or_gene_order_give_the_same_counts(files):
    soma = soma_or_skip()
    import dataclasses

    cells = soma.query_cells(soma.SomaSource(files["uri"]))
    chosen = np.array([700, 3, 1200, 4, 5, 3])  # unsorted, with a repeat
    matrix, obs = soma.read_block(cells, chosen)
    assert obs["soma_joinid"].tolist() == chosen.tolist()
    one_by_one = [soma.read_block(cells, [c])[0].toarray() for c in chosen]
    assert np.array_equal(matrix.toarray(), np.vstack(one_by_one))
    genes = np.random.default_rng(0).permutation(len(cells.var_joinids))[:500]  # a subset, out of order
    subset = dataclasses.replace(cells, var_joinids=cells.var_joinids[genes],
                                 gene_names=[cells.gene_names[g] for g in genes])
    assert np.array_equal(soma.read_block(subset, chosen)[0].toarray(), matrix.toarray()[:, genes])


def test_shuffle_quality_against_a_random_order_and_an_old_checkpoint_refused(files):
    soma = soma_or_skip()
    from modeling_scgrn import ScGrnTokenizer

    cells = soma.query_cells(soma.SomaSource(files["uri"]))
    tokenizer = ScGrnTokenizer.from_genes(cells.gene_names[:3000], n_bins=51)
    # the two datasets were appended one after the other: joinids below 559 are the celltypist sample's
    labels = (np.arange(int(cells.joinids.max()) + 1) >= 559).astype(int)
    default = soma.SomaCellStream(cells, tokenizer, batch_size=16)
    mixed = soma.shuffle_quality(default, labels, n_batches=60)
    assert mixed["random_order"] > 1.9 and mixed["ratio"] >= 0.8, mixed  # both datasets in nearly every batch
    unmixed = soma.SomaCellStream(cells, tokenizer, batch_size=16, shuffle_chunk_size=640, io_batches=1)
    assert soma.shuffle_quality(unmixed, labels, n_batches=60)["ratio"] < mixed["ratio"]
    batches = default.batch_joinids(10)
    assert [len(b) for b in batches] == [16] * 10
    assert [joinids_of(unit) for unit in itertools.islice(default.units(), 10)] == [b.tolist() for b in batches]
    old = {**default.state_dict(), "order": 1}
    with pytest.raises(ValueError, match="earlier version of scgrn's order"):
        default.load_state_dict(old)
