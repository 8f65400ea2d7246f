"""The project's two statistics: one confidence interval and one moving average."""

from __future__ import annotations

import math

import numpy as np


def ci95(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Half-width of the 95 % confidence interval of the mean (Student's t; 0 for one sample)."""
    from scipy import stats
    x = np.asarray(x, dtype=float)
    n = x.shape[axis]
    if n < 2:
        return np.zeros(np.delete(x.shape, axis))
    return stats.t.ppf(0.975, n - 1) * x.std(axis=axis, ddof=1) / math.sqrt(n)


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` samples (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=float), 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)
