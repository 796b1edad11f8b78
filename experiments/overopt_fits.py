"""The functional forms of Gao et al., "Scaling Laws for Reward Model Overoptimization"
(arXiv 2210.10760), and their least-squares fits (numpy only; experiments/overoptimization.py
uses them).

The x-axis is d = sqrt(KL(policy || initial policy)), in sqrt-nats. The gold reward's change
from the initial policy, R(d) = gold(d) - gold(0), follows

- best-of-n: R(d) = d (alpha - beta d);
- RL:        R(d) = d (alpha - beta ln d)   (0 at d = 0).

Both are linear in (alpha, beta), so one least-squares solve fits each. Best-of-n's KL to
the sampling policy is analytic: KL(n) = ln n - (n - 1) / n (`bon_kl`).
"""

from __future__ import annotations

import math

import numpy as np


def bon_kl(n: int) -> float:
    """KL(best-of-n || sampling policy) in nats: ln n - (n - 1) / n."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _d_ln_d(d: np.ndarray) -> np.ndarray:
    """d ln d, with its limit 0 at d = 0."""
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * np.log(safe), 0.0)


def _fit(features: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Least-squares (alpha, beta) of r ~ features @ (alpha, beta); NaNs where the points do
    not determine both (fewer than two distinct d > 0)."""
    if np.linalg.matrix_rank(features) < 2:
        return math.nan, math.nan
    (alpha, beta), *_ = np.linalg.lstsq(features, r, rcond=None)
    return float(alpha), float(beta)


def _points(d, r) -> tuple[np.ndarray, np.ndarray]:
    d, r = np.asarray(d, np.float64), np.asarray(r, np.float64)
    if d.shape != r.shape or d.ndim != 1:
        raise ValueError(f"d and R must be 1-D and the same length: {d.shape} vs {r.shape}")
    if np.any(d < 0):
        raise ValueError("d = sqrt(KL) must be >= 0")
    return d, r


def fit_bon(d, r) -> tuple[float, float]:
    """(alpha, beta) of the best-of-n form R(d) = d (alpha - beta d)."""
    d, r = _points(d, r)
    return _fit(np.stack([d, -(d**2)], axis=1), r)


def fit_rl(d, r) -> tuple[float, float]:
    """(alpha, beta) of the RL form R(d) = d (alpha - beta ln d)."""
    d, r = _points(d, r)
    return _fit(np.stack([d, -_d_ln_d(d)], axis=1), r)


def bon_curve(d, alpha: float, beta: float) -> np.ndarray:
    d = np.asarray(d, np.float64)
    return d * (alpha - beta * d)


def rl_curve(d, alpha: float, beta: float) -> np.ndarray:
    d = np.asarray(d, np.float64)
    return alpha * d - beta * _d_ln_d(d)
