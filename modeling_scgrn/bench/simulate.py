"""Cells simulated from a real regulatory network (known truth), with `sergio-rs`.

`sergio-rs` (GPL-3, on PyPI) is a Rust implementation of SERGIO (Dibaeinia & Sinha 2020, Cell Systems 11:252): it
integrates stochastic differential equations in which each target's production is a sum of Hill functions of its
regulators, master regulators have per-cell-type production rates, and technical noise (outlier genes, library
size, dropout, UMI sampling) is added afterwards. It is an optional extra (`pip install "scgrn[simulate]"`),
imported only inside these functions; the model files shipped with the weights never import this module.

Knockouts (`simulate_knockouts`) integrate the same equations in `dynamics` with the control's parameters, since
sergio-rs cannot hold a gene at zero without changing every other edge's half-response; technical noise, for
corpora and knockouts alike, is `technical_noise` (SERGIO's four steps with draws fixed per gene and cell).

The network is a connected, acyclic piece of a real prior (CollecTRI by default): real gene symbols and the prior's
signs, every true edge taken from the prior. Hubs are avoided on purpose: when every gene hangs on the same few
high-degree TFs, true edges are no more correlated than random pairs (measured by `regulation_signal`).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .dynamics import integrate, network_dynamics
from .technical_noise import NOISE_TABLE, technical_noise


SIMULATION_KEY = "scgrn_simulation"
NOISE_SETTINGS = tuple(NOISE_TABLE)  # SERGIO's fitted settings, DS1..DS14


@dataclass
class SimulationParameters:
    """Every setting of a simulation; stored in `adata.uns["scgrn_simulation"]["parameters"]` so that a knockout
    (or another chunk) rebuilds exactly the same network and cell types.

    The defaults were chosen by `regulation_signal` (true edges stand out from random pairs, across and within
    cell types) and give about 10x-like sparsity on 1,000-2,000 genes."""

    n_genes: int = 200
    n_cell_types: int = 10
    seed: int = 0
    min_targets: int = 15  # a regulator's out-degree in the whole prior: moderate TFs, no hubs
    max_targets: int = 150
    targets_per_regulator: int = 40  # at most this many of a regulator's targets join the subnetwork
    k_range: tuple[float, float] = (1.0, 5.0)  # |interaction strength|; the sign comes from the prior
    hill_n: int = 2
    decay: float = 0.8
    master_low: tuple[float, float] = (0.5, 1.5)  # master-regulator production rates: low and high states
    master_high: tuple[float, float] = (3.0, 6.0)
    noise_s: int = 1  # intrinsic (biological) noise
    dt: float = 0.01
    safety_iter: int = 150
    scale_iter: int = 100  # steps between recorded cells: 10 leaves cells of a type correlated along one trajectory
    # technical noise: "10x" (SERGIO's 10x Chromium estimates, library size scaled to the gene count), one of
    # sergio-rs's settings (DS1..DS14, fitted on 100-gene networks: too sparse for more genes), or "none"
    noise: str = "10x"
    umis_per_gene: float = 4.0  # "10x": mean library size = umis_per_gene * n_genes (SERGIO's 10x fit: 403/100)
    library_sigma: float = 0.4
    dropout_shape: float = 8.0
    dropout_percentile: float = 65.0  # SERGIO's 10x fits: 45-82; 65 gives ~65% zeros on 1,000 genes
    outlier_mu: float = 3.0

    def __post_init__(self):
        self.k_range, self.master_low, self.master_high = (tuple(map(float, r)) for r in
                                                           (self.k_range, self.master_low, self.master_high))
        if self.n_genes < 3:
            raise ValueError(f"n_genes={self.n_genes}: a network needs at least 3 genes.")
        if self.n_cell_types < 1:
            raise ValueError(f"n_cell_types={self.n_cell_types} must be at least 1.")
        if self.noise not in (*NOISE_SETTINGS, "10x", "none"):
            raise ValueError(f"noise={self.noise!r}; use '10x', one of {NOISE_SETTINGS} or 'none'.")


def _sergio():
    try:
        import sergio_rs
    except ImportError:
        raise ImportError('simulation needs sergio-rs (GPL-3, optional): pip install "scgrn[simulate]"') from None
    return sergio_rs


# ---------------------------------------------------------------------------------------------------- network
def select_subnetwork(network, n_genes: int, *, seed: int = 0, min_targets: int = 15, max_targets: int = 150,
                      targets_per_regulator: int = 40) -> tuple[pd.DataFrame, dict]:
    """A connected, acyclic subnetwork of `network` (a `GeneRegulatoryNetwork`) with exactly `n_genes` genes.

    Regulators are TFs with `min_targets`..`max_targets` targets in the whole prior (hubs hide the regulation).
    Growth starts from a random such TF and keeps adding one whose gene is already in (a TF regulated by another:
    a layer deeper) or, failing that, one sharing targets with the genes in; each brings up to
    `targets_per_regulator` of its targets. The edges are every prior edge among the genes from a chosen regulator;
    edges that close a cycle (into a regulator chosen earlier) are dropped and counted: a cyclic network makes
    SERGIO hang. Returns `(edges, report)`: edges `source, target, sign` and the counts."""
    rng = np.random.default_rng(seed)
    prior = network.edges[["source", "target", "weight"]].astype({"source": str, "target": str})
    degree = prior.groupby("source").size()
    moderate = sorted(degree[(degree >= min_targets) & (degree <= max_targets)].index)
    if not moderate:
        raise ValueError(f"the prior has no regulator with {min_targets}-{max_targets} targets.")
    targets_of = {tf: group["target"].to_numpy() for tf, group in prior[prior["source"].isin(moderate)]
                  .groupby("source")}
    genes: dict[str, None] = {}  # insertion-ordered set
    regulators: list[str] = []
    while len(genes) < n_genes:
        candidates = [tf for tf in moderate if tf not in regulators]
        if not candidates:
            raise ValueError(f"the prior's moderate regulators reach only {len(genes)} genes; ask for fewer than "
                             f"{n_genes}, or widen min_targets/max_targets.")
        inside = [tf for tf in candidates if tf in genes]
        touching = [tf for tf in candidates if tf not in genes and genes and np.isin(targets_of[tf], list(genes)).any()]
        # half the time a layer deeper, otherwise a new root beside the genes in: several master regulators
        pool = inside if inside and (rng.random() < 0.5 or not touching) else (touching or inside or candidates)
        regulator = str(rng.choice(pool))
        regulators.append(regulator)
        genes.setdefault(regulator)
        new = [t for t in targets_of[regulator] if t not in genes]
        for target in rng.permutation(new)[:min(targets_per_regulator, n_genes - len(genes))]:
            genes.setdefault(str(target))
    order = {tf: i for i, tf in enumerate(regulators)}
    edges = prior[prior["source"].isin(regulators) & prior["target"].isin(list(genes))]
    into_earlier = edges["target"].map(order).le(edges["source"].map(order))
    edges = edges[~into_earlier.to_numpy()]
    edges = pd.DataFrame({"source": edges["source"].to_numpy(), "target": edges["target"].to_numpy(),
                          "sign": np.where(edges["weight"].to_numpy() < 0, -1, 1)})
    isolated = sorted(set(genes) - set(edges["source"]) - set(edges["target"]))
    report = {"genes": len(genes), "regulators": len(regulators), "edges": int(len(edges)),
              "cycle_edges_dropped": int(into_earlier.sum()), "isolated_genes": len(isolated),
              "master_regulators": len(set(edges["source"]) - set(edges["target"]))}
    return edges.reset_index(drop=True), report


def parametrize(edges: pd.DataFrame, parameters: SimulationParameters) -> pd.DataFrame:
    """Interaction strengths: |k| uniform in `k_range` (seeded), sign from the prior. Adds the column `weight`."""
    rng = np.random.default_rng(parameters.seed + 1)
    strength = rng.uniform(*parameters.k_range, size=len(edges))
    return edges.assign(weight=edges["sign"].to_numpy() * strength)


ANCHOR = "__anchor__"  # a sink every master regulator touches by a negligible edge; never in the output


def master_regulators(edges: pd.DataFrame) -> list[str]:
    """Genes with targets and no regulator, in order of first appearance."""
    regulated = set(edges["target"])
    return [gene for gene in pd.unique(edges["source"]) if gene not in regulated]


def _sergio_network(edges: pd.DataFrame, parameters: SimulationParameters):
    """SERGIO's network and master-regulator profile. Every master regulator is first tied to `ANCHOR` by an edge of
    k = 1e-9, in a fixed order, so that the profile's random production rates belong to the masters in the order of
    `master_regulators`, whatever order the edges come in."""
    sergio = _sergio()
    grn = sergio.GRN()
    anchor = sergio.Gene(ANCHOR, parameters.decay)
    for master in master_regulators(edges):
        grn.add_interaction(sergio.Gene(master, parameters.decay), anchor, 1e-9, None, parameters.hill_n)
    for source, target, weight in edges[["source", "target", "weight"]].itertuples(index=False):
        grn.add_interaction(sergio.Gene(source, parameters.decay), sergio.Gene(target, parameters.decay),
                            float(weight), None, parameters.hill_n)
    grn.set_mrs()
    profile = sergio.MrProfile.from_random(grn, parameters.n_cell_types, parameters.master_low,
                                           parameters.master_high, parameters.seed)
    return grn, profile


# ---------------------------------------------------------------------------------------------------- simulation
def _run_sergio(grn, profile, parameters: SimulationParameters, cells_per_type: int, seed: int) -> pd.DataFrame:
    """SERGIO's steady-state cells: a (genes x cells) float frame, cells ordered type by type."""
    sergio = _sergio()
    sim = sergio.Sim(grn, cells_per_type, parameters.safety_iter, parameters.scale_iter, parameters.dt,
                     parameters.noise_s, seed)
    frame = sim.simulate(profile)
    return frame.to_pandas().set_index("Genes")


def _in_subprocess(function, args, timeout: float | None):
    """Run `function(*args)` in a child process with a timeout: SERGIO can spin forever on a bad network, and a
    panic inside it must not take the caller down."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout
    from concurrent.futures.process import BrokenProcessPool

    if timeout is None:
        return function(*args)
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    try:
        return pool.submit(_guarded, function, *args).result(timeout)
    except FutureTimeout:
        _kill_workers(pool)
        raise TimeoutError(f"the simulation ran past {timeout:.0f} s; use fewer genes or cells, or a larger "
                           "timeout.") from None
    except BrokenProcessPool:
        raise RuntimeError("sergio-rs crashed while simulating (its message is above).") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _kill_workers(pool) -> None:
    """Stop a process pool's workers now (a stuck SERGIO run ignores cancellation)."""
    for process in list(pool._processes.values()):
        process.kill()


def silenced_genes(edges: pd.DataFrame, knocked_out) -> list[str]:
    """Genes whose production stops when `knocked_out` genes do: the knocked-out genes, then, in cascade, every
    regulated gene whose regulators are all silenced and all activate it (in SERGIO a regulated gene's production
    is the sum of its regulators' Hill terms, with no basal rate; a silenced repressor's term is its full strength,
    so a gene it represses is de-repressed, not silenced)."""
    silenced, frontier = set(knocked_out), set(knocked_out)
    while frontier:
        alive = edges[~edges["source"].isin(silenced) | (edges["sign"] < 0)]
        orphans = set(edges.loc[edges["source"].isin(frontier), "target"]) - set(alive["target"]) - silenced
        silenced |= orphans
        frontier = orphans
    return sorted(silenced)


def _guarded(function, *args):
    """Call `function` in a worker; a Rust panic (not picklable) comes back as a RuntimeError with its message."""
    try:
        return function(*args)
    except BaseException as error:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise RuntimeError(f"sergio-rs failed: {error}") from None


def network_genes(edges: pd.DataFrame) -> list[str]:
    """The genes of a simulated network in the order of its cells' columns."""
    return list(pd.unique(edges[["source", "target"]].values.ravel()))


def _simulate_chunk(edges: pd.DataFrame, parameters: SimulationParameters, cells_per_type: int, seed: int):
    genes = network_genes(edges)
    grn, profile = _sergio_network(edges, parameters)
    expression = _run_sergio(grn, profile, parameters, cells_per_type, seed).reindex(genes).to_numpy()
    counts = _technical_noise(expression, parameters, seed)[0]
    return genes, np.asarray(counts, dtype=np.float32).T, expression.astype(np.float32).T


def _technical_noise(expression: np.ndarray, parameters: SimulationParameters, seed: int,
                     dropout_midpoint: float | None = None) -> tuple[np.ndarray, float | None]:
    """(genes x cells) counts from the clean expression (`technical_noise`), or the expression itself with
    `noise="none"`; and the dropout midpoint used."""
    if parameters.noise == "none":
        return expression, None
    return technical_noise(expression, parameters, seed, dropout_midpoint=dropout_midpoint)


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def _cells(edges, parameters: SimulationParameters, n_cells: int, chunk: int, keep_expression=False,
           timeout: float | None = None):
    """One chunk of cells as AnnData: `n_cells` split evenly over the cell types."""
    cells_per_type = -(-n_cells // parameters.n_cell_types)
    genes, counts, expression = _in_subprocess(
        _simulate_chunk, (edges, parameters, cells_per_type, _chunk_seed(parameters.seed, chunk)), timeout)
    return _as_anndata(genes, counts, expression, parameters, n_cells, chunk, keep_expression)


def _as_anndata(genes, counts: np.ndarray, expression: np.ndarray, parameters: SimulationParameters, n_cells: int,
                chunk: int, keep_expression: bool):
    """AnnData of `n_cells` of a chunk's `(cells, genes)` counts and expression (cells type by type, as many per
    type): the same cells are kept for the same chunk."""
    import anndata as ad

    cells_per_type = counts.shape[0] // parameters.n_cell_types
    cell_type = np.repeat([f"type_{t}" for t in range(parameters.n_cell_types)], cells_per_type)
    keep = np.sort(np.random.default_rng(_chunk_seed(parameters.seed, chunk)).permutation(len(cell_type))[:n_cells])
    if parameters.noise != "none":
        counts = np.rint(counts)
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_type[keep],
                                                    categories=[f"type_{t}" for t in range(parameters.n_cell_types)])},
                       index=[f"chunk{chunk}_cell{i}" for i in keep])
    adata = ad.AnnData(sp.csr_matrix(counts[keep]), obs=obs, var=pd.DataFrame(index=genes))
    if keep_expression:
        adata.layers["expression"] = expression[keep]
    return adata


def simulate_cells(network, n_genes: int = 200, n_cells: int = 1000, n_cell_types: int = 10, seed: int = 0, *,
                   chunk: int = 0, keep_expression: bool = False, timeout: float | None = 600.0,
                   **options):
    """Cells simulated by SERGIO from a connected, acyclic `n_genes`-gene piece of `network` (a
    `GeneRegulatoryNetwork`, e.g. CollecTRI from `GeneRegulatoryNetwork.read(prior, "collectri")`).

    `options` set the other `SimulationParameters` (interaction strengths, master-regulator rates, noise).
    `chunk` selects an independent batch of cells of the same network and cell types (for corpora simulated in
    pieces). The same arguments give identical cells. `timeout` (seconds, None: none) guards the simulator.

    Returns AnnData with raw integer UMI counts in `X` (CSR; float `expression` before technical noise in
    `layers["expression"]` with `keep_expression`), `obs["cell_type"]`, and `uns["scgrn_simulation"]`: `edges` (the
    true network: `source, target, sign, weight`, every edge from the prior), `parameters`, `subnetwork` (what
    building it dropped) and `chunk`."""
    parameters = checked_parameters(n_cells, n_genes=n_genes, n_cell_types=n_cell_types, seed=seed, **options)
    edges, report = select_subnetwork(network, parameters.n_genes, seed=parameters.seed,
                                      min_targets=parameters.min_targets, max_targets=parameters.max_targets,
                                      targets_per_regulator=parameters.targets_per_regulator)
    edges = parametrize(edges, parameters)
    adata = _cells(edges, parameters, n_cells, chunk, keep_expression=keep_expression, timeout=timeout)
    adata.uns[SIMULATION_KEY] = {"edges": edges, "parameters": _plain(asdict(parameters)), "subnetwork": report,
                                 "chunk": int(chunk), "knockout": [],
                                 "prior": {k: v for k, v in network.provenance.items() if k in
                                           ("resource", "source_file", "sha256", "n_edges")}}
    return adata


def checked_parameters(n_cells: int, **arguments) -> SimulationParameters:
    """The simulation's parameters from `simulate_cells`' arguments, refused before any cell is simulated when they
    cannot give a corpus: bad parameters (`SimulationParameters`), or fewer cells than cell types."""
    parameters = SimulationParameters(**{k: v for k, v in arguments.items()
                                         if k not in ("chunk", "keep_expression", "timeout")})
    if n_cells < parameters.n_cell_types:
        raise ValueError(f"n_cells={n_cells} cannot hold {parameters.n_cell_types} cell types (each needs cells); "
                         "simulate more cells or fewer types.")
    return parameters


def _plain(parameters: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in parameters.items()}


def _record(adata) -> dict:
    if SIMULATION_KEY not in adata.uns:
        raise ValueError("these cells carry no uns['scgrn_simulation']; simulate them with simulate_cells.")
    return adata.uns[SIMULATION_KEY]


def simulation_parameters(adata) -> SimulationParameters:
    """The `SimulationParameters` stored by `simulate_cells` in `adata.uns["scgrn_simulation"]`."""
    return SimulationParameters(**{k: tuple(v) if isinstance(v, (list, np.ndarray)) else v
                                   for k, v in _record(adata)["parameters"].items()})


def true_edges(adata) -> pd.DataFrame:
    """The true network of simulated cells: `source, target, sign, weight`."""
    return pd.DataFrame(_record(adata)["edges"])


def resimulate(simulation, n_cells: int | None = None, *, chunk: int | None = None, keep_expression: bool = False,
               timeout: float | None = 600.0):
    """More cells of the network and cell types of `simulation` (from `simulate_cells`), e.g. a fresh `chunk`
    never used for training. For knocked-out cells and their paired control, see `simulate_knockouts`."""
    edges, parameters = true_edges(simulation), simulation_parameters(simulation)
    chunk = _default_chunk(simulation) if chunk is None else int(chunk)
    adata = _cells(edges, parameters, n_cells or simulation.n_obs, chunk, keep_expression=keep_expression,
                   timeout=timeout)
    adata.uns[SIMULATION_KEY] = {**simulation.uns[SIMULATION_KEY], "knockout": [], "chunk": chunk}
    return adata


def _default_chunk(simulation) -> int:
    chunks = simulation.uns[SIMULATION_KEY]["chunk"]
    return int(chunks) if np.isscalar(chunks) else int(np.ravel(chunks)[0])


def sergio_steady_state(edges: pd.DataFrame, parameters: SimulationParameters,
                        timeout: float | None = 600.0) -> np.ndarray:
    """sergio-rs's `(genes, cell_types)` steady state of the network (its starting point: the first recorded time
    point of a run without burn-in or noise), genes in the order of `network_genes`. sergio-rs runs in a child
    process (`timeout`), as for every simulation: its polars thread pool, once started here, would deadlock later
    forks."""
    return _in_subprocess(_sergio_steady_state, (edges, parameters), timeout)


def _sergio_steady_state(edges: pd.DataFrame, parameters: SimulationParameters) -> np.ndarray:
    sergio = _sergio()
    grn, profile = _sergio_network(edges, parameters)
    steady = sergio.Sim(grn, 1, 0, 1, parameters.dt, 0.0, 0).simulate(profile).to_pandas().set_index("Genes")
    return steady.reindex(network_genes(edges)).to_numpy(float)


def control_dynamics(simulation, timeout: float | None = 600.0):
    """The `NetworkDynamics` of `simulation`'s network, parametrised by sergio-rs itself: its steady state of the
    control network (`sergio_steady_state`) gives the master regulators' rates and every half-response."""
    edges, parameters = true_edges(simulation), simulation_parameters(simulation)
    steady = sergio_steady_state(edges, parameters, timeout)
    return network_dynamics(edges, steady, network_genes(edges), parameters.decay, parameters.hill_n)


def _knockout_name(knockout) -> tuple[str, tuple[str, ...]]:
    genes = (knockout,) if isinstance(knockout, str) else tuple(knockout)
    if not genes:
        raise ValueError("name at least one gene to knock out.")
    return "+".join(genes), genes


def simulate_knockouts(simulation, knockouts, n_cells: int | None = None, *, chunk: int | None = None,
                       keep_expression: bool = False, timeout: float | None = 600.0) -> dict:
    """Control cells and cells with each of `knockouts` (a gene, or a list of genes knocked out together) of the
    network and cell types of `simulation` (from `simulate_cells`), all on the same random numbers.

    A knocked-out gene is held at expression 0 and acts as 0 in its targets' regulation, with the control's
    parameters (`dynamics`): an activated target loses that input, a repressed one is de-repressed, and the change
    follows the network's dynamics downstream. Technical noise draws the same numbers for the same gene and cell in
    every condition, with the control's dropout curve. So `knockout_effects(result["control"], result[name])` is
    the knockout's effect, on counts or (`layer="expression"`) on the clean expression; a knockout of a gene that
    regulates nothing changes only that gene's own column. The control follows SERGIO's equations like `resimulate`'s
    cells but integrated here (`dynamics`), so its draws differ from sergio-rs's.

    Returns `{"control": AnnData, name: AnnData, ...}`, names joining a knockout's genes with "+"; each AnnData is
    like `simulate_cells`' with `uns["scgrn_simulation"]["knockout"]` listing its genes."""
    parameters = simulation_parameters(simulation)
    named = dict(_knockout_name(k) for k in ([knockouts] if isinstance(knockouts, str) else knockouts))
    unknown = sorted({g for genes in named.values() for g in genes} - set(simulation.var_names))
    if unknown:
        raise ValueError(f"{unknown} are not genes of this simulation.")
    chunk = _default_chunk(simulation) if chunk is None else int(chunk)
    n_cells = n_cells or simulation.n_obs
    seed = _chunk_seed(parameters.seed, chunk)
    dynamics = control_dynamics(simulation, timeout)
    expression = integrate(dynamics, [()] + [dynamics.index(g) for g in named.values()],
                           -(-n_cells // parameters.n_cell_types), safety_iter=parameters.safety_iter,
                           scale_iter=parameters.scale_iter, dt=parameters.dt, noise_s=parameters.noise_s, seed=seed)
    result, midpoint = {}, None
    for (name, genes), clean in zip([("control", ())] + list(named.items()), expression):
        counts, midpoint = _technical_noise(clean.T.astype(float), parameters, seed, midpoint)
        adata = _as_anndata(dynamics.genes, np.asarray(counts, dtype=np.float32).T, clean, parameters, n_cells,
                            chunk, keep_expression)
        adata.uns[SIMULATION_KEY] = {**simulation.uns[SIMULATION_KEY], "knockout": list(genes), "chunk": chunk}
        result[name] = adata
    return result


def simulate_knockout(simulation, genes, n_cells: int | None = None, *, chunk: int | None = None,
                      keep_expression: bool = False):
    """The cell types of `simulation` (from `simulate_cells`) with `genes` knocked out together: the knocked-out
    cells of `simulate_knockouts(simulation, [genes], ...)`, whose `"control"` is their paired control (same random
    numbers). Returns AnnData like `simulate_cells`, with `uns["scgrn_simulation"]["knockout"]` listing `genes`."""
    name, genes = _knockout_name(genes)
    return simulate_knockouts(simulation, [genes], n_cells, chunk=chunk, keep_expression=keep_expression)[name]


def knockout_effects(control, knocked, *, layer: str | None = None, pseudocount: float = 0.1) -> pd.DataFrame:
    """The true effect of a knockout, per cell type and over all cells: log2 fold change of each gene's mean
    library-size-normalised value (counts per 10,000; `layer="expression"` for the clean expression) between
    `knocked` and `control`. Returns a (groups x genes) DataFrame, the row `all` first."""
    def normalised_means(adata):
        matrix = adata.layers[layer] if layer else adata.X
        matrix = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        if layer is None:
            matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1) * 1e4
        frame = pd.DataFrame(matrix, columns=adata.var_names)
        means = frame.groupby(adata.obs["cell_type"].to_numpy(), observed=True).mean()
        return pd.concat([frame.mean().to_frame("all").T, means])

    before, after = normalised_means(control), normalised_means(knocked)
    return np.log2((after + pseudocount) / (before + pseudocount))


# ---------------------------------------------------------------------------------------------------- checks
def log_normalised(adata) -> np.ndarray:
    """Dense `(cells, genes)` log1p of counts per 10,000."""
    matrix = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=float)
    return np.log1p(matrix / np.maximum(matrix.sum(1, keepdims=True), 1) * 1e4)


def abs_correlation(values: np.ndarray) -> np.ndarray:
    """`(genes, genes)` |Pearson r| between the columns of `values`; 0 for a gene constant in these cells."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(np.nan_to_num(np.corrcoef(values, rowvar=False)))


def regulation_signal(adata, edges: pd.DataFrame | None = None, *, n_random: int = 2000, seed: int = 0) -> dict:
    """Is the regulation visible in the data? Mean |Pearson r| of log1p-normalised expression over the true edges
    against as many random gene pairs, across all cells and within each cell type (averaged over types), beside
    the zero fraction. A prior cannot help where true edges look like random pairs."""
    edges = true_edges(adata) if edges is None else edges
    matrix = log_normalised(adata)
    index = {g: i for i, g in enumerate(adata.var_names)}
    true_pairs = np.array([[index[s], index[t]] for s, t in zip(edges["source"], edges["target"])])
    rng = np.random.default_rng(seed)
    random_pairs = rng.integers(0, adata.n_vars, size=(n_random, 2))
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]

    def mean_abs_r(values, pairs):
        return float(abs_correlation(values)[pairs[:, 0], pairs[:, 1]].mean())

    types = adata.obs["cell_type"].to_numpy()
    within = [(mean_abs_r(matrix[types == t], true_pairs), mean_abs_r(matrix[types == t], random_pairs))
              for t in np.unique(types) if (types == t).sum() > 2]
    return {"true_edges_abs_r": mean_abs_r(matrix, true_pairs), "random_pairs_abs_r": mean_abs_r(matrix, random_pairs),
            "true_edges_abs_r_within_type": float(np.mean([w[0] for w in within])),
            "random_pairs_abs_r_within_type": float(np.mean([w[1] for w in within])),
            "zero_fraction": float(1 - (adata.X != 0).sum() / np.prod(adata.shape)),
            "genes": int(adata.n_vars), "cells": int(adata.n_obs), "true_edges": int(len(edges))}


def signal_line(signal: dict) -> str:
    """The regulation check as one line."""
    return (f"true edges |r| {signal['true_edges_abs_r']:.3f} vs random pairs {signal['random_pairs_abs_r']:.3f} "
            f"across cells, {signal['true_edges_abs_r_within_type']:.3f} vs "
            f"{signal['random_pairs_abs_r_within_type']:.3f} within cell types; zero fraction "
            f"{signal['zero_fraction']:.1%} ({signal['cells']} cells x {signal['genes']} genes, "
            f"{signal['true_edges']} true edges)")


# ---------------------------------------------------------------------------------------------------- corpora
def _write_chunk(network, arguments: dict, chunk: int, n_cells: int, path: Path) -> Path:
    simulate_cells(network, n_cells=n_cells, chunk=chunk, timeout=None, **arguments).write_h5ad(path)
    return path


def simulate_corpus(network, output, n_cells: int, *, chunk_cells: int = 2_000, num_proc: int = 1,
                    overwrite: bool = False, show_progress: bool = True, chunk_timeout: float | None = 3600.0,
                    **arguments) -> dict:
    """A large simulated corpus written to the `.h5ad` file `output` in chunks of `chunk_cells` cells (independent
    seeds, the same network and cell types), `num_proc` at a time, so memory holds only a few chunks (each waited
    for at most `chunk_timeout` seconds: SERGIO can spin forever on a bad network); the chunks
    are joined on disk and the file appears only when complete. `arguments` go to `simulate_cells`. Returns a
    summary: cells, genes, seconds, cells per second, the subnetwork report and the regulation check of the first
    chunk."""
    import tempfile
    import time
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    import anndata as ad
    import h5py
    from anndata.experimental import concat_on_disk
    from anndata.io import write_elem
    from tqdm.auto import tqdm

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it, or choose another --output.")
    parameters = checked_parameters(n_cells, **arguments)  # here, not minutes later inside a chunk
    sizes = [min(chunk_cells, n_cells - start) for start in range(0, n_cells, chunk_cells)]
    if min(sizes) < parameters.n_cell_types:
        raise ValueError(f"the last chunk would hold {min(sizes)} cells, fewer than the {parameters.n_cell_types} "
                         "cell types; choose a chunk_cells that divides n_cells, or more cells.")
    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.chunks") as folder:
        # Paths, not strings: anndata's concat_on_disk of a single file calls Path methods on its inputs
        paths = [Path(folder) / f"chunk{c:05d}.h5ad" for c in range(len(sizes))]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(num_proc, mp_context=context) as pool:
            jobs = [pool.submit(_guarded, _write_chunk, network, arguments, c, size, path)
                    for c, (size, path) in enumerate(zip(sizes, paths))]
            for job in tqdm(jobs, desc="simulating chunks", unit="chunk", disable=not show_progress):
                try:
                    job.result(timeout=chunk_timeout)
                except FutureTimeout:
                    _kill_workers(pool)
                    raise TimeoutError(f"a chunk ran past {chunk_timeout:.0f} s; use smaller chunks or a larger "
                                       "chunk_timeout.") from None
        first = ad.read_h5ad(paths[0])
        temporary = Path(folder) / "joined.h5ad"
        concat_on_disk(paths, temporary, index_unique=None)
        with h5py.File(temporary, "a") as handle:
            if "uns" in handle:
                del handle["uns"]
            write_elem(handle, "uns", {SIMULATION_KEY: {**first.uns[SIMULATION_KEY],
                                                        "chunk": list(range(len(sizes)))}})
        signal = regulation_signal(first)
        temporary.replace(output)  # inside the folder's lifetime: a failure above leaves no partial output
    seconds = time.perf_counter() - start
    return {"output": output.name, "cells": int(n_cells), "genes": int(first.n_vars), "chunks": len(sizes),
            "seconds": round(seconds, 1), "cells_per_second": round(n_cells / seconds, 1),
            "subnetwork": first.uns[SIMULATION_KEY]["subnetwork"], "regulation_signal_first_chunk": signal}
