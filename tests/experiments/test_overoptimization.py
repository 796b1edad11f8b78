"""experiments/overopt_fits.py: best-of-n's analytic KL and the least-squares fits of Gao et
al.'s forms recover known (alpha, beta) from points computed here, not by the module."""

import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# experiments/ is scripts, not a package: import its modules from the folder.
sys.path.insert(0, os.path.join(REPO, "experiments"))
import overopt_fits  # noqa: E402


def test_bon_kl_values():
    assert overopt_fits.bon_kl(1) == 0.0
    assert overopt_fits.bon_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert overopt_fits.bon_kl(64) == pytest.approx(4.158883083359672 - 63 / 64, abs=1e-12)
    ks = [overopt_fits.bon_kl(n) for n in (1, 2, 4, 8, 16, 32, 64)]
    assert all(b > a for a, b in zip(ks, ks[1:], strict=False))  # grows with n
    with pytest.raises(ValueError):
        overopt_fits.bon_kl(0)


def test_fit_bon_recovers_exact_coefficients():
    d = np.sqrt([math.log(n) - (n - 1) / n for n in (1, 2, 4, 8, 16, 32, 64)])
    r = [x * 0.37 - 0.12 * x * x for x in d]  # R = d (0.37 - 0.12 d), written out
    alpha, beta = overopt_fits.fit_bon(d, r)
    assert alpha == pytest.approx(0.37, abs=1e-10)
    assert beta == pytest.approx(0.12, abs=1e-10)
    np.testing.assert_allclose(overopt_fits.bon_curve(d, alpha, beta), r, atol=1e-10)


def test_fit_rl_recovers_exact_coefficients_with_a_zero_point():
    d = np.array([0.0, 0.3, 0.6, 1.0, 1.5, 2.2, 3.0])
    r = [0.0] + [x * 0.5 - 0.2 * x * math.log(x) for x in d[1:]]  # R = d (0.5 - 0.2 ln d)
    alpha, beta = overopt_fits.fit_rl(d, r)
    assert alpha == pytest.approx(0.5, abs=1e-10)
    assert beta == pytest.approx(0.2, abs=1e-10)
    curve = overopt_fits.rl_curve(d, alpha, beta)
    assert curve[0] == 0.0
    np.testing.assert_allclose(curve, r, atol=1e-10)


def test_fits_with_noise_stay_close():
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 3.0, 400)
    noisy = d * (0.4 - 0.15 * d) + rng.normal(0, 0.01, d.shape)
    alpha, beta = overopt_fits.fit_bon(d, noisy)
    assert abs(alpha - 0.4) < 0.01 and abs(beta - 0.15) < 0.01
    noisy = d * (0.4 - 0.15 * np.log(d)) + rng.normal(0, 0.01, d.shape)
    alpha, beta = overopt_fits.fit_rl(d, noisy)
    assert abs(alpha - 0.4) < 0.01 and abs(beta - 0.15) < 0.01


def test_too_few_points_give_nan_and_bad_input_raises():
    assert all(math.isnan(x) for x in overopt_fits.fit_bon([0.0, 0.5], [0.0, 0.1]))
    assert all(math.isnan(x) for x in overopt_fits.fit_rl([0.0, 0.5, 0.5], [0.0, 0.1, 0.1]))
    with pytest.raises(ValueError):
        overopt_fits.fit_bon([0.1, -0.2], [0.0, 0.1])
    with pytest.raises(ValueError):
        overopt_fits.fit_rl([0.1, 0.2], [0.0])
