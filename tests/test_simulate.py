"""Cells simulated from a real network with sergio-rs (optional extra): determinism, counts, the true network's
relation to the prior, knockouts, chunked corpora, and the script's errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import OMNIPATH_TABLE, shared_data_or_skip

pytest.importorskip("sergio_rs")

from modeling_scgrn.bench.dynamics import knockout_steady_state  # noqa: E402
from modeling_scgrn.bench.knockouts import downstream  # noqa: E402
from modeling_scgrn.bench.simulate import (  # noqa: E402
    SimulationParameters,
    control_dynamics,
    knockout_effects,
    master_regulators,
    regulation_signal,
    select_subnetwork,
    sergio_steady_state,
    silenced_genes,
    simulate_cells,
    simulate_corpus,
    simulate_knockout,
    simulate_knockouts,
    simulation_parameters,
    true_edges,
)
from modeling_scgrn.grn.network import GeneRegulatoryNetwork  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prior(collectri_prior):
    return collectri_prior


@pytest.fixture(scope="module")
def cells(prior):
    return simulate_cells(prior, n_genes=40, n_cells=150, n_cell_types=3, seed=1, keep_expression=True,
                          targets_per_regulator=10)


def test_simulation_is_deterministic_raw_counts_with_the_requested_cell_types(prior, cells):
    again = simulate_cells(prior, n_genes=40, n_cells=150, n_cell_types=3, seed=1, targets_per_regulator=10)
    assert sp.issparse(cells.X) and cells.X.format == "csr"
    assert np.array_equal(cells.X.toarray(), again.X.toarray())
    values = cells.X.data
    assert values.min() >= 0 and np.array_equal(values, np.rint(values)) and values.max() > 1
    assert cells.n_vars == 40 and cells.n_obs == 150
    assert cells.obs["cell_type"].value_counts().to_dict() == {"type_0": 50, "type_1": 50, "type_2": 50}
    other = simulate_cells(prior, n_genes=40, n_cells=150, n_cell_types=3, seed=2, targets_per_regulator=10)
    assert not np.array_equal(other.X.toarray()[:, :5], cells.X.toarray()[:, :5])
    parameters = cells.uns["scgrn_simulation"]["parameters"]
    assert parameters["seed"] == 1 and parameters["n_genes"] == 40


def test_true_network_is_a_connected_acyclic_piece_of_the_prior_with_its_signs(prior, cells):
    edges = true_edges(cells)
    table = prior.edges[["source", "target", "weight"]]
    prior_sign = {(s, t): np.sign(w) for s, t, w in table.itertuples(index=False)}
    assert all((s, t) in prior_sign for s, t in zip(edges["source"], edges["target"]))
    assert all(prior_sign[(s, t)] == sign for s, t, sign in edges[["source", "target", "sign"]].itertuples(index=False))
    assert set(edges["source"]) | set(edges["target"]) == set(cells.var_names)
    # acyclic: repeatedly peel genes without a regulator
    remaining = edges.copy()
    while len(remaining):
        roots = set(remaining["source"]) - set(remaining["target"])
        assert roots, "the simulated network has a cycle"
        remaining = remaining[~remaining["source"].isin(roots)]
    # connected, ignoring direction
    component, frontier = set(), {edges["source"].iloc[0]}
    while frontier:
        component |= frontier
        touching = edges[edges["source"].isin(frontier) | edges["target"].isin(frontier)]
        frontier = (set(touching["source"]) | set(touching["target"])) - component
    assert component == set(cells.var_names)


def test_subnetwork_drops_cycle_edges_and_counts_them():
    table = pd.DataFrame({"source": ["A", "A", "B", "B", "C", "C"], "target": ["B", "X", "A", "Y", "A", "Z"],
                          "weight": [1, 1, -1, 1, 1, 1]})
    network = GeneRegulatoryNetwork.from_dataframe(table)
    edges, report = select_subnetwork(network, 6, seed=0, min_targets=1, max_targets=5)
    assert report["cycle_edges_dropped"] >= 1 and report["genes"] == 6
    assert not any((t, s) in set(zip(edges["source"], edges["target"])) for s, t in zip(edges["source"], edges["target"]))


def test_knockout_silences_its_cascade_and_leaves_other_masters_alone(cells):
    edges = true_edges(cells)
    masters = master_regulators(edges)
    assert len(masters) >= 2  # the fixture's network has several programs
    knocked = max(masters, key=lambda m: (edges["source"] == m).sum())
    pair = simulate_knockouts(cells, [knocked], keep_expression=True)
    control, ko = pair["control"], pair[knocked]
    assert ko is not control and list(ko.var_names) == list(cells.var_names) and ko.n_obs == cells.n_obs
    silenced = silenced_genes(edges, [knocked])
    assert knocked in silenced
    assert np.all(ko[:, silenced].layers["expression"] == 0)
    assert np.all(ko[:, silenced].X.toarray() == 0)
    effects = knockout_effects(control, ko, layer="expression")
    assert effects.loc["all", knocked] < -3
    reach = set(downstream(edges, knocked)) | {knocked}
    for other in set(masters) - {knocked}:  # same rates and the same random numbers: not moved at all
        assert effects.loc["all", other] == 0
    untouched = [g for g in cells.var_names if g not in reach]
    assert np.array_equal(ko[:, untouched].layers["expression"], control[:, untouched].layers["expression"])
    assert ko.uns["scgrn_simulation"]["knockout"] == [knocked]
    assert np.array_equal(simulate_knockout(cells, knocked).X.toarray(), ko.X.toarray())
    with pytest.raises(ValueError, match="not genes"):
        simulate_knockout(cells, ["NOT_A_GENE"])


def test_numpy_dynamics_start_from_sergio_rs_steady_state_and_match_its_cells(cells):
    edges, parameters = true_edges(cells), simulation_parameters(cells)
    dynamics = control_dynamics(cells)
    assert np.allclose(knockout_steady_state(dynamics), sergio_steady_state(edges, parameters), rtol=1e-9)
    control = simulate_knockouts(cells, [], keep_expression=True)["control"]
    assert list(control.var_names) == list(cells.var_names)
    assert control.obs["cell_type"].value_counts().to_dict() == cells.obs["cell_type"].value_counts().to_dict()

    def type_means(adata):
        frame = pd.DataFrame(adata.layers["expression"], columns=adata.var_names)
        return frame.groupby(adata.obs["cell_type"].to_numpy()).mean().to_numpy().ravel()

    assert np.corrcoef(type_means(cells), type_means(control))[0, 1] > 0.9  # same equations, other draws
    zeros = [1 - (adata.X != 0).mean() for adata in (cells, control)]
    assert abs(zeros[0] - zeros[1]) < 0.05


def _hand_made(rows, n_cell_types=2, seed=0):
    """A simulation record for a hand-written network `[(source, target, k), ...]` (an activator k > 0)."""
    import anndata as ad
    from dataclasses import asdict

    edges = pd.DataFrame(rows, columns=["source", "target", "weight"])
    edges.insert(2, "sign", np.sign(edges["weight"]).astype(int))
    genes = list(pd.unique(edges[["source", "target"]].values.ravel()))
    parameters = asdict(SimulationParameters(n_genes=len(genes), n_cell_types=n_cell_types, seed=seed))
    adata = ad.AnnData(np.zeros((n_cell_types, len(genes)), dtype=np.float32), var=pd.DataFrame(index=genes))
    adata.uns["scgrn_simulation"] = {"edges": edges, "parameters": {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in parameters.items()},
                                     "chunk": 0, "knockout": []}
    return adata


# a master M activating a repressor R of T, a chain M -> A -> B, and a leaf L that regulates nothing
SMALL_NETWORK = [("M", "R", 3.0), ("R", "T", -4.0), ("M", "A", 3.0), ("A", "B", 3.0), ("M", "L", 2.0)]


def test_a_knocked_out_repressor_de_represses_its_target():
    network = _hand_made(SMALL_NETWORK)
    result = simulate_knockouts(network, ["R", "A"], 400, keep_expression=True)
    control, no_repressor, no_activator = result["control"], result["R"], result["A"]
    clean = knockout_effects(control, no_repressor, layer="expression")
    assert (no_repressor[:, "R"].layers["expression"] == 0).all()
    # de-repressed in every cell type (least where R was low already), not silenced; on counts too
    assert (clean.loc[:, "T"] > 0.1).all() and clean.loc["all", "T"] > 0.5, clean["T"]
    assert knockout_effects(control, no_repressor).loc["all", "T"] > 0.2  # six genes share each library
    for gene in ("M", "A", "B", "L"):  # not downstream of R: the very same values
        assert np.array_equal(no_repressor[:, gene].layers["expression"], control[:, gene].layers["expression"])
    assert silenced_genes(true_edges(network), ["R"]) == ["R"]
    assert silenced_genes(true_edges(network), ["A"]) == ["A", "B"]
    assert (no_activator[:, ["A", "B"]].layers["expression"] == 0).all()  # B loses its only (activating) input
    assert np.array_equal(no_activator[:, "T"].layers["expression"], control[:, "T"].layers["expression"])


def test_a_knockout_of_a_gene_without_targets_changes_nothing_else():
    network = _hand_made(SMALL_NETWORK)
    result = simulate_knockouts(network, ["L"], 400, keep_expression=True)
    control, knocked = result["control"], result["L"]
    others = [g for g in network.var_names if g != "L"]
    assert np.array_equal(knocked[:, others].layers["expression"], control[:, others].layers["expression"])
    counts = knockout_effects(control, knocked).loc["all", others]
    # only the library share that L held moves to the other genes; no noise draw moves with L's zeros
    assert counts.abs().max() < 0.25, counts
    same = (knocked[:, others].X.toarray() == control[:, others].X.toarray()).mean()
    assert same > 0.8, same


def test_simulator_is_guarded_by_a_timeout(prior):
    with pytest.raises(TimeoutError, match="ran past"):
        simulate_cells(prior, n_genes=40, n_cells=3000, n_cell_types=3, seed=1, timeout=0.05)


def test_regulation_signal_reports_correlations_and_sparsity(cells):
    signal = regulation_signal(cells)
    assert 0 < signal["zero_fraction"] < 1 and signal["true_edges"] == len(true_edges(cells))
    for key in ("true_edges_abs_r", "random_pairs_abs_r", "true_edges_abs_r_within_type"):
        assert 0 <= signal[key] <= 1


def test_corpus_is_simulated_in_chunks_and_joined(prior, tmp_path):
    import anndata as ad

    output = tmp_path / "corpus.h5ad"
    summary = simulate_corpus(prior, output, 250, chunk_cells=100, num_proc=2, n_genes=30, n_cell_types=2, seed=2,
                              show_progress=False)
    corpus = ad.read_h5ad(output)
    assert corpus.n_obs == 250 and summary["chunks"] == 3 and corpus.obs_names.is_unique
    first = simulate_cells(prior, n_genes=30, n_cells=100, n_cell_types=2, seed=2, chunk=0)
    assert np.array_equal(corpus.X[:100].toarray(), first.X.toarray())
    assert len(true_edges(corpus)) == len(true_edges(first))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.h5ad"]  # no chunk or temporary left
    with pytest.raises(FileExistsError, match="--overwrite"):
        simulate_corpus(prior, output, 100, n_genes=30)
    single = simulate_corpus(prior, tmp_path / "one_chunk.h5ad", 60, chunk_cells=100, n_genes=30, n_cell_types=2,
                             seed=2, show_progress=False)  # n_cells <= chunk_cells: one chunk, no join to make
    assert single["chunks"] == 1 and ad.read_h5ad(tmp_path / "one_chunk.h5ad").n_obs == 60
    (tmp_path / "one_chunk.h5ad").unlink()
    with pytest.raises(TimeoutError, match="ran past"):  # a stuck chunk is stopped, and nothing is left behind
        simulate_corpus(prior, tmp_path / "slow.h5ad", 3000, chunk_cells=3000, n_genes=40, chunk_timeout=0.05,
                        show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.h5ad"]


def test_script_refuses_bad_output_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "data" / "simulate_cells.py"), "--prior",
                             str(shared_data_or_skip(OMNIPATH_TABLE)), "--output", str(tmp_path / "cells.csv")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --output") and "Traceback" not in result.stderr


@pytest.mark.parametrize("arguments,words", [
    (["--n_cell_types", "500", "--n_cells", "50"], "n_cells=50 cannot hold 500 cell types"),
    (["--noise", "bogus"], "noise='bogus'; use '10x'"),
    (["--n_cells", "25", "--chunk_cells", "10", "--n_cell_types", "8"], "the last chunk would hold 5 cells"),
])
def test_script_refuses_arguments_that_cannot_give_a_corpus_before_simulating(tmp_path, arguments, words):
    import time

    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "data" / "simulate_cells.py"), "--prior",
                             str(shared_data_or_skip(OMNIPATH_TABLE)), "--output", str(tmp_path / "cells.h5ad"),
                             "--n_genes", "30", *arguments], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {words}")
    assert list(tmp_path.iterdir()) == [] and time.perf_counter() - start < 30
