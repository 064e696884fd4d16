"""The typed inputs of the workflow functions scripts call: `CellSource` (where a training run's cells come from),
`PerturbationOptions` and `InterpretationOptions` (checked where they are built, so Python callers get the scripts'
checks), and the scripts' `--help` reading their defaults from them."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_scgrn import CellSource, InterpretationOptions, PerturbationOptions, TrainingConfig, run_finetuning
from modeling_scgrn.options.typed import given_options
from modeling_scgrn.workflows.data import prepared_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("values,message", [
    (dict(data_dir="d", cells=["a.h5ad"], prior="p"), "not data_dir and cells"),
    (dict(cells=["a.h5ad"]), "need a prior"),
    (dict(), "no cells"),
    (dict(data_dir="d", panel="hvg"), "SOMA stream"),
])
def test_a_cell_source_names_what_is_wrong(values, message):
    with pytest.raises(ValueError, match=message):
        CellSource(**values)


def test_a_data_folder_is_used_as_it_is(tmp_path):
    assert prepared_data(tmp_path, tmp_path / "run") == tmp_path
    assert prepared_data(CellSource(data_dir=tmp_path), tmp_path / "run") == tmp_path
    assert not (tmp_path / "run").exists()  # nothing tokenized, nothing written


def test_finetuning_from_a_model_with_another_architecture_is_refused_before_tokenizing(tmp_path):
    source = CellSource(cells="pbmc68k_reduced", prior=tmp_path / "no_such_prior.parquet")
    with pytest.raises(ValueError, match="trains from scratch"):
        run_finetuning(source, TrainingConfig(output_dir=str(tmp_path / "run"), report_to="none"),
                       label_column="bulk_labels", pretrained="a", architecture_from="b")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("values,message", [
    (dict(mode="knockdown"), "not one of \\['delete', 'overexpress'\\]"),
    (dict(top=0), "top=0 must be a whole number of at least 1"),
    (dict(max_cells=-690), "max_cells=-690"),
    (dict(rounds=True), "rounds=True"),
    (dict(seed=-1), "seed=-1 must be a whole number of at least 0"),
])
def test_perturbation_options_are_checked_where_they_are_built(values, message):
    with pytest.raises(ValueError, match=message):
        PerturbationOptions(**values)
    assert PerturbationOptions(max_cells=None).max_cells is None  # all cells


def test_interpretation_options_are_checked_and_take_a_script_s_strings():
    with pytest.raises(ValueError, match="names no gene"):
        InterpretationOptions(regulators=[])
    with pytest.raises(ValueError, match="batch_size=0"):
        InterpretationOptions(batch_size=0)
    given = argparse.Namespace(data="d", regulators=("SPI1", "CEBPB"), top="3")  # no split: the default applies
    assert given_options(InterpretationOptions, given, "interpretation") == InterpretationOptions(
        regulators=["SPI1", "CEBPB"], top=3)
    with pytest.raises(ValueError, match="expects list"):
        given_options(InterpretationOptions, argparse.Namespace(regulators="SPI1"), "interpretation")


@pytest.mark.parametrize("script,option,default", [
    ("perturb.py", "--top", "default 25"), ("perturb.py", "--batch_size", "default 16"),
    ("interpret.py", "--max_cells_per_label", "default 200"), ("interpret.py", "--split", "default test"),
])
def test_script_help_states_the_options_own_default(script, option, default):
    text = subprocess.run([sys.executable, str(ROOT / "finetune" / script), "--help"], capture_output=True,
                          text=True, check=True).stdout
    described = " ".join(text.split())  # argparse wraps lines
    after = described[described.index(f"{option} {option.lstrip('-').upper()} "):]  # its help, not the usage line
    assert default in after[:300], after[:300]
    field = option.lstrip("-")
    options = PerturbationOptions() if script == "perturb.py" else InterpretationOptions()
    assert f"default {getattr(options, field)}" == default
