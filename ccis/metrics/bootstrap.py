"""95 % bootstrap intervals of per-image rates, alone and as paired differences.

A rate here is the mean over a few columns (attributes, or one column of wins) of each
column's share of hits among the images that state it (NaN: not stated); a column of
shares in [0, 1] instead of hits gives its mean, in percent, the same way. The bootstrap
resamples images with replacement; a paired difference resamples the *same* images (the
same training masks) for both generators, so mask-to-mask variation cancels out.
Percentile intervals, a seeded generator: equal inputs give equal intervals.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def _rates(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per resample (rows: R × n indices), the mean over columns of column hit rates (%)."""
    picked = matrix[rows]  # R × n × k
    with np.errstate(invalid="ignore"):
        per_column = np.nanmean(picked, axis=1)  # R × k (NaN where no image states it)
        return 100.0 * np.nanmean(per_column, axis=1)


def rate(matrix: np.ndarray) -> float:
    """The rate of ``matrix`` (n × k of 1/0/NaN) over all its images, in percent."""
    matrix = _as_matrix(matrix)
    return float(_rates(matrix, np.arange(len(matrix))[None, :])[0])


def _as_matrix(values) -> np.ndarray:
    matrix = np.asarray(values, dtype=float)
    return matrix[:, None] if matrix.ndim == 1 else matrix


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def _resample_rows(n: int, resamples: int, seed: int) -> np.ndarray:
    if n == 0:
        raise ValueError("a bootstrap needs at least one image")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def rate_interval(
    values, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`rate` over images."""
    matrix = _as_matrix(values)
    return _interval(_rates(matrix, _resample_rows(len(matrix), resamples, seed)), level)


def paired_difference(
    first, second, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """``rate(first) − rate(second)`` and its paired bootstrap interval.

    Row ``i`` of both is the same image (mask); both resample the same rows.
    """
    a, b = _as_matrix(first), _as_matrix(second)
    if a.shape != b.shape:
        raise ValueError(f"paired rates need the same images: shapes {a.shape} and {b.shape}")
    rows = _resample_rows(len(a), resamples, seed)
    low, high = _interval(_rates(a, rows) - _rates(b, rows), level)
    return rate(a) - rate(b), low, high
