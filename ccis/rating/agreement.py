"""Krippendorff's α: agreement among raters beyond chance, with missing ratings allowed.

Following Krippendorff (2011, "Computing Krippendorff's alpha-reliability"): from the
reliability data (raters × units, NaN where a rater did not rate a unit), units rated by
fewer than two raters are dropped; each remaining unit ``u`` with ``m_u`` values adds
``n_uc · (n_uk − [c = k]) / (m_u − 1)`` to the coincidence matrix ``o_ck``; with the
value totals ``n_c`` and ``n = Σ n_c``,

    α = 1 − (n − 1) · Σ o_ck δ²_ck / Σ n_c n_k δ²_ck.

Ordinal δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²: the distance between two ranks grows
with how many values lie between them, not with their numeric difference. α = 1 is
perfect agreement, 0 is chance; it is undefined (NaN) when all values are equal.
"""

from __future__ import annotations

import numpy as np

LEVELS = ("nominal", "ordinal", "interval")


def _distances(values: np.ndarray, totals: np.ndarray, level: str) -> np.ndarray:
    """δ²_ck for the sorted distinct ``values`` with totals ``n_c``."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ordinal":
        cumulative = np.cumsum(totals)
        lo = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        hi = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        # Σ_{g=lo..hi} n_g = cumulative[hi] − cumulative[lo] + n_lo
        between = cumulative[hi] - cumulative[lo] + totals[lo]
        return (between - (totals[:, None] + totals[None, :]) / 2) ** 2
    raise ValueError(f"unknown level of measurement {level!r}; one of {', '.join(LEVELS)}")


def krippendorff_alpha(data: np.ndarray, level: str = "ordinal") -> float:
    """α of reliability data ``data`` (raters × units; NaN = not rated)."""
    data = np.asarray(data, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"reliability data must be raters × units, got shape {data.shape}")
    pairable = np.sum(~np.isnan(data), axis=0) >= 2
    data = data[:, pairable]
    if data.size == 0:
        return float("nan")
    values = np.unique(data[~np.isnan(data)])
    # counts[u, c]: how many raters gave unit u the value c.
    counts = np.stack([np.sum(data == v, axis=0) for v in values], axis=1).astype(float)
    m = counts.sum(axis=1)
    coincidence = (counts / (m - 1)[:, None]).T @ counts - np.diag(
        (counts / (m - 1)[:, None]).sum(axis=0)
    )
    totals = coincidence.sum(axis=1)
    n = totals.sum()
    delta = _distances(values, totals, level)
    observed = np.sum(coincidence * delta)
    expected = np.sum(np.outer(totals, totals) * delta) / (n - 1)
    if expected == 0:
        return float("nan")  # a single value throughout: agreement is undefined
    return float(1.0 - observed / expected)
