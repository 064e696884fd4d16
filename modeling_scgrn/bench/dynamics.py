"""SERGIO's steady-state dynamics written out in numpy, so that a knockout keeps the control network's parameters.

Every corpus is simulated by sergio-rs. For a knockout it cannot serve: it re-derives each interaction's
half-response `h` from the steady state of the network it is given (so deleting a gene changes the parameters of
every edge below it), and a gene cannot be held at zero (a regulated gene has no basal rate, and a zero-rate
regulator gives `h = 0`, a division by zero). A knocked-out gene must instead act as expression 0 in its targets'
Hill terms with the control's `h`: an activated target loses that input, a repressed target is de-repressed to the
edge's full strength |k|, and the change travels down the network by the same dynamics.

This module integrates the same chemical Langevin equation as sergio-rs 0.2.3 (SERGIO, Dibaeinia & Sinha 2020,
Eq. 3: `dx = (P(x) - decay x) dt + s sqrt(dt) (sqrt(P) N1 + sqrt(decay x) N2)`, clipped at 0; `P` a master
regulator's per-cell-type rate, or the sum of its regulators' Hill terms `k x^n / (x^n + h^n)` for an activator and
`|k| h^n / (x^n + h^n)` for a repressor), from the same starting steady state, and records cells at random time
points after a burn-in exactly as sergio-rs does. The parameters come from sergio-rs itself: its steady state of
the control network gives the master regulators' rates and every `h`. Several conditions (the control and each
knockout) are integrated side by side on the same random numbers, so that their difference is the knockout's effect
and not two independent noise draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class NetworkDynamics:
    """The control network as SERGIO parametrises it, genes indexed by position in `genes`.

    `source`, `target`, `strength` (k: > 0 activates, < 0 represses), `half_response` (h): one entry per edge;
    `masters` (gene indices) with `rates` `(masters, cell_types)`; `decay`, `hill_n` as in the simulation."""

    genes: list[str]
    source: np.ndarray
    target: np.ndarray
    strength: np.ndarray
    half_response: np.ndarray
    masters: np.ndarray
    rates: np.ndarray
    decay: float
    hill_n: int

    @property
    def n_cell_types(self) -> int:
        return self.rates.shape[1]

    def index(self, names) -> np.ndarray:
        position = {g: i for i, g in enumerate(self.genes)}
        return np.array([position[g] for g in names], dtype=int)


def network_dynamics(edges, steady_state: np.ndarray, genes: list[str], decay: float,
                     hill_n: int) -> NetworkDynamics:
    """The parameters of the control network from its `(genes, cell_types)` `steady_state` (sergio-rs's, in the
    order of `genes`) and `edges` (`source, target, weight`): a master regulator's rate is its steady state times
    `decay`; an edge's `h` is the mean over cell types of its regulator's steady state (SERGIO's rule)."""
    position = {g: i for i, g in enumerate(genes)}
    source = edges["source"].map(position).to_numpy(int)
    target = edges["target"].map(position).to_numpy(int)
    masters = np.setdiff1d(np.unique(source), np.unique(target))
    return NetworkDynamics(genes=list(genes), source=source, target=target,
                           strength=edges["weight"].to_numpy(float),
                           half_response=steady_state[source].mean(axis=1), masters=masters,
                           rates=steady_state[masters] * decay, decay=float(decay), hill_n=int(hill_n))


def _hill_terms(dynamics: NetworkDynamics, regulator_values: np.ndarray, edges=slice(None)) -> np.ndarray:
    """`(edges, columns)` Hill terms of the `edges` (all, or a selection) for their regulators' values
    `(edges, columns)`."""
    n, h = dynamics.hill_n, dynamics.half_response[edges, None]
    powered = regulator_values ** n
    bound = powered / (powered + h ** n)
    k = dynamics.strength[edges, None]
    return np.where(k > 0, k * bound, np.abs(k) * (1.0 - bound))


def _incidence(dynamics: NetworkDynamics) -> sp.csr_matrix:
    """`(genes, edges)` 0/1 matrix summing edge terms into their targets."""
    edges = len(dynamics.source)
    return sp.csr_matrix((np.ones(edges), (dynamics.target, np.arange(edges))), shape=(len(dynamics.genes), edges))


def _regulated_order(dynamics: NetworkDynamics) -> list[int]:
    """Regulated genes, each after all of its regulators (the network is acyclic)."""
    regulators = {int(t): set() for t in dynamics.target}
    for s, t in zip(dynamics.source, dynamics.target):
        regulators[int(t)].add(int(s))
    done, order = set(int(m) for m in dynamics.masters), []
    while regulators:
        ready = sorted(t for t, r in regulators.items() if r <= done)
        if not ready:
            raise ValueError("the network has a cycle; SERGIO's steady state needs an acyclic network.")
        order += ready
        done |= set(ready)
        for t in ready:
            del regulators[t]
    return order


def knockout_steady_state(dynamics: NetworkDynamics, knocked=()) -> np.ndarray:
    """`(genes, cell_types)` steady state with `knocked` (gene indices) held at 0 and the control's parameters,
    computed down the network as sergio-rs does: SERGIO's starting point for each condition. With nothing knocked
    out it is the control's steady state."""
    knocked = set(int(g) for g in knocked)
    state = np.zeros((len(dynamics.genes), dynamics.n_cell_types))
    state[dynamics.masters] = dynamics.rates / dynamics.decay
    state[sorted(knocked)] = 0.0
    for gene in _regulated_order(dynamics):
        if gene not in knocked:
            into = dynamics.target == gene
            terms = _hill_terms(dynamics, state[dynamics.source[into]], into)
            state[gene] = terms.sum(axis=0) / dynamics.decay
    return state


def integrate(dynamics: NetworkDynamics, conditions, cells_per_type: int, *, safety_iter: int, scale_iter: int,
              dt: float, noise_s: float, seed: int) -> np.ndarray:
    """Cells of every condition on shared random numbers. `conditions`: one collection of knocked-out gene indices
    per condition (empty: the control). Returns `(conditions, cell_types * cells_per_type, genes)` clean
    expression, cells ordered type by type, cell j of type t recorded at the same time point in every condition.

    As in sergio-rs: `cells_per_type * scale_iter + safety_iter` Euler-Maruyama steps from the steady state, each
    cell the state at a uniformly drawn step after the first `safety_iter`."""
    conditions = [sorted(set(int(g) for g in c)) for c in conditions]
    genes, types, count = len(dynamics.genes), dynamics.n_cell_types, len(conditions)
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, cells_per_type * scale_iter, size=(types, cells_per_type)) + safety_iter
    state = np.concatenate([knockout_steady_state(dynamics, c) for c in conditions], axis=1)  # (genes, C*T)
    silenced = np.zeros((genes, count * types), dtype=bool)
    for c, knocked in enumerate(conditions):
        silenced[knocked, c * types:(c + 1) * types] = True
    master_rates = np.tile(dynamics.rates, (1, count))
    incidence = _incidence(dynamics)
    cells = np.zeros((count, types * cells_per_type, genes), dtype=np.float32)
    wanted = _recording_plan(steps, cells_per_type)
    sqrt_dt = np.sqrt(dt)
    for t, columns in wanted.get(0, []):  # a burn-in of 0 steps records the steady state itself
        cells[:, columns, :] = state[:, t::types].T[:, None, :]
    for step in range(1, int(steps.max()) + 1):
        production = np.asarray(incidence @ _hill_terms(dynamics, state[dynamics.source]))
        production[dynamics.masters] = master_rates
        production = np.where(silenced, 0.0, np.maximum(production, 0.0))
        draws = rng.standard_normal((2, genes, types))
        noise = (np.sqrt(production) * np.tile(draws[0], (1, count)) +
                 np.sqrt(dynamics.decay * state) * np.tile(draws[1], (1, count)))
        state = np.maximum(state + (production - dynamics.decay * state) * dt + noise_s * sqrt_dt * noise, 0.0)
        if step in wanted:
            for t, columns in wanted[step]:
                cells[:, columns, :] = state[:, t::types].T[:, None, :]
    return cells


def _recording_plan(steps: np.ndarray, cells_per_type: int) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Step -> [(cell type, cell positions recorded at that step)]."""
    plan: dict[int, list[tuple[int, np.ndarray]]] = {}
    for t in range(steps.shape[0]):
        for step in np.unique(steps[t]):
            plan.setdefault(int(step), []).append((t, t * cells_per_type + np.flatnonzero(steps[t] == step)))
    return plan
