"""SERGIO's technical noise (outlier genes, library size, dropout, UMI sampling) with draws fixed per gene and cell.

The four steps and their settings are those of SERGIO (Dibaeinia & Sinha 2020) as sergio-rs 0.2.3 applies them.
sergio-rs draws from one stream that skips zero entries (no Poisson draw for a zero, no Bernoulli draw where the
dropout probability is exactly 0 or 1), so a gene silenced by a knockout shifts the draws of every gene after it:
a knockout of a gene that regulates nothing then "changes" most genes on counts. Here every random number comes
from a fixed-shape block (one uniform or normal per gene, per cell, per entry) and counts are Poisson quantiles of
their entry's uniform, so an entry's draws never depend on which other entries are zero, and a small change of
its rate moves its count by at most a step. The dropout midpoint (a percentile of the whole matrix in SERGIO) can
be held at the control's value, so that conditions compared with each other share one dropout curve.
"""

from __future__ import annotations

import numpy as np

OUTLIER_PROBABILITY = 0.01  # SERGIO: a gene is an outlier with probability 0.01, scaled by LogNormal(mu, 1)
# SERGIO's fitted settings: (outlier_mu, library_mu, library_sigma, dropout_shape, dropout_percentile)
NOISE_TABLE = {"DS1": (0.8, 4.8, 0.3, 20.0, 82.0), "DS2": (0.8, 6.0, 0.4, 12.0, 80.0),
               "DS3": (0.8, 7.0, 0.4, 8.0, 80.0), "DS4": (3.0, 6.0, 0.3, 8.0, 74.0),
               "DS5": (3.0, 6.0, 0.4, 8.0, 82.0), "DS6": (5.0, 4.5, 0.7, 8.0, 45.0),
               "DS7": (3.0, 4.4, 0.8, 8.0, 85.0), "DS8": (4.5, 10.8, 0.55, 2.0, 92.0),
               "DS13": (0.8, 3.6, 0.4, 8.0, 70.0), "DS14": (0.8, 5.0, 0.4, 4.0, 80.0)}


def noise_settings(parameters, n_genes: int) -> tuple[float, float, float, float, float]:
    """`(outlier_mu, library_mu, library_sigma, dropout_shape, dropout_percentile)` of `parameters`
    (`SimulationParameters`): a fitted setting, or "10x" with the library size scaled to `n_genes`."""
    if parameters.noise in NOISE_TABLE:
        return NOISE_TABLE[parameters.noise]
    library_mu = float(np.log(parameters.umis_per_gene * n_genes))
    return (parameters.outlier_mu, library_mu, parameters.library_sigma, parameters.dropout_shape,
            parameters.dropout_percentile)


def technical_noise(expression: np.ndarray, parameters, seed: int, *,
                    dropout_midpoint: float | None = None) -> tuple[np.ndarray, float]:
    """UMI counts from clean `(genes, cells)` expression. Returns `(counts, dropout_midpoint)`: counts `(genes,
    cells)` (integers as floats), and the log-scale dropout midpoint used (the `dropout_percentile` of the
    library-scaled matrix unless `dropout_midpoint` is given: pass the control's to compare conditions)."""
    from scipy import stats

    genes, cells = expression.shape
    outlier_mu, library_mu, library_sigma, shape, percentile = noise_settings(parameters, genes)
    rng = np.random.default_rng(seed)
    outlier = rng.random(genes) < OUTLIER_PROBABILITY
    outlier_factor = np.exp(outlier_mu + rng.standard_normal(genes))
    library = np.exp(library_mu + library_sigma * rng.standard_normal(cells))
    dropout_draw, count_draw = rng.random((genes, cells)), rng.random((genes, cells))

    values = np.where(outlier[:, None], expression * outlier_factor[:, None], expression)
    total = values.sum(axis=0)
    values = values * np.divide(library, total, out=np.zeros(cells), where=total > 0)[None, :]
    log_values = np.log1p(values)
    if dropout_midpoint is None:
        dropout_midpoint = float(np.percentile(log_values, percentile))
    kept = 1.0 / (1.0 + np.exp(-shape * (log_values - dropout_midpoint)))
    values = np.where(dropout_draw < 1.0 - kept, 0.0, values)
    counts = np.where(values > 0, stats.poisson.ppf(count_draw, np.maximum(values, 1e-300)), 0.0)
    return counts, dropout_midpoint
