"""SimPO, CPO, ORPO and KTO against float64 numpy written from the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import cpo_loss, kto_loss, kto_reference_point, orpo_loss, simpo_loss

B = 6


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numeric_grad(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(1)
    chosen_len = rng.integers(2, 40, B).astype(np.float64)
    rejected_len = rng.integers(2, 40, B).astype(np.float64)
    chosen = -chosen_len * rng.uniform(0.05, 2.0, B)
    rejected = -rejected_len * rng.uniform(0.05, 2.0, B)
    nll = rng.uniform(0.5, 3.0, B)
    return chosen, rejected, chosen_len, rejected_len, nll


def test_simpo(pairs):
    c, r, lc, lr, _ = pairs
    beta, gamma, eps = 2.5, 1.4, 0.1
    losses, chosen_rewards, rejected_rewards = simpo_loss(
        *f32(c, r),
        chosen_lengths=lc,
        rejected_lengths=lr,
        beta=beta,
        gamma=gamma,
        label_smoothing=eps,
    )
    z = beta * (c / lc - r / lr) - gamma
    np.testing.assert_allclose(
        losses, -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(chosen_rewards, beta * c / lc, rtol=1e-5)
    np.testing.assert_allclose(rejected_rewards, beta * r / lr, rtol=1e-5)
    # by hand: Lc/|yc| = -2, Lr/|yr| = -3, beta = 2, gamma = 1 -> z = 1 -> log(1 + e^-1)
    one, _, _ = simpo_loss(
        jnp.array([-4.0]),
        jnp.array([-9.0]),
        chosen_lengths=jnp.array([2]),
        rejected_lengths=jnp.array([3]),
    )
    assert float(one[0]) == pytest.approx(0.31326168751822286, rel=1e-6)


def test_cpo(pairs):
    c, r, _, _, nll = pairs
    beta, alpha = 0.1, 0.7
    losses, chosen_rewards, _ = cpo_loss(*f32(c, r), chosen_nll=nll, beta=beta, alpha=alpha)
    np.testing.assert_allclose(losses, -log_sigmoid(beta * (c - r)) + alpha * nll, rtol=1e-5)
    np.testing.assert_allclose(chosen_rewards, beta * c, rtol=1e-5)
    # TRL's NLL is one batch token-mean scalar: mean over pairs then equals TRL's loss
    scalar, _, _ = cpo_loss(*f32(c, r), chosen_nll=1.5, beta=beta)
    np.testing.assert_allclose(
        float(scalar.mean()), (-log_sigmoid(beta * (c - r))).mean() + 1.5, rtol=1e-5
    )
    bare, _, _ = cpo_loss(*f32(c, r), beta=beta)
    np.testing.assert_allclose(bare, -log_sigmoid(beta * (c - r)), rtol=1e-5)


def reference_orpo(c, r, lc, lr, nll, lam):
    pc, pr = np.exp(c / lc), np.exp(r / lr)
    log_odds = np.log(pc / (1 - pc)) - np.log(pr / (1 - pr))
    return nll - lam * log_sigmoid(log_odds)


def test_orpo(pairs):
    c, r, lc, lr, nll = pairs
    losses, chosen_rewards, _ = orpo_loss(
        *f32(c, r), chosen_lengths=lc, rejected_lengths=lr, chosen_nll=nll, beta=0.25
    )
    np.testing.assert_allclose(losses, reference_orpo(c, r, lc, lr, nll, 0.25), rtol=1e-5)
    np.testing.assert_allclose(chosen_rewards, 0.25 * c / lc, rtol=1e-5)
    # p near 1 (mean log-prob -1e-4) and near 0 stay accurate: log(1 - p) via expm1
    c2, r2 = np.array([-1e-4, -20.0]), np.array([-30.0, -2e-4])
    ones = np.ones(2)
    got, _, _ = orpo_loss(*f32(c2, r2), chosen_lengths=ones, rejected_lengths=ones)
    np.testing.assert_allclose(got, reference_orpo(c2, r2, ones, ones, 0.0, 0.1), rtol=1e-4)


def test_reference_free_gradients(pairs):
    c, r, lc, lr, nll = pairs

    def simpo_np(x):
        z = 2.0 * (x / lc - r / lr) - 1.0
        return (-log_sigmoid(z)).mean()

    def orpo_np(x):
        return reference_orpo(x, r, lc, lr, nll, 0.1).mean()

    def simpo_jax(x):
        return simpo_loss(x, jnp.asarray(r), chosen_lengths=lc, rejected_lengths=lr)[0].mean()

    def orpo_jax(x):
        out = orpo_loss(x, jnp.asarray(r), chosen_lengths=lc, rejected_lengths=lr, chosen_nll=nll)
        return out[0].mean()

    x = jnp.asarray(c, jnp.float32)
    np.testing.assert_allclose(jax.grad(simpo_jax)(x), numeric_grad(simpo_np, c), rtol=1e-3)
    np.testing.assert_allclose(jax.grad(orpo_jax)(x), numeric_grad(orpo_np, c), rtol=1e-3)


@pytest.fixture(scope="module")
def unpaired():
    rng = np.random.default_rng(2)
    logps = -rng.uniform(5.0, 50.0, 8)
    ref_logps = logps + rng.normal(0.0, 4.0, 8)
    desirable = np.array([True, False, True, True, False, False, True, False])
    kl_logps = -rng.uniform(5.0, 50.0, 8)
    ref_kl_logps = kl_logps - rng.uniform(0.0, 2.0, 8)  # policy above reference: mean KL > 0
    return logps, ref_logps, desirable, kl_logps, ref_kl_logps


def test_kto(unpaired):
    logps, ref_logps, desirable, kl_logps, ref_kl_logps = unpaired
    beta, wd, wu = 0.1, 1.0, 1.33
    losses, rewards, z0 = kto_loss(
        *f32(logps, ref_logps),
        desirable,
        kl_logps=kl_logps,
        ref_kl_logps=ref_kl_logps,
        beta=beta,
        desirable_weight=wd,
        undesirable_weight=wu,
    )
    want_z0 = max(np.mean(kl_logps - ref_kl_logps), 0.0)
    assert float(z0) == pytest.approx(want_z0, rel=1e-5)
    rho = logps - ref_logps
    want = np.where(
        desirable,
        wd * (1 - sigmoid(beta * (rho - want_z0))),
        wu * (1 - sigmoid(beta * (want_z0 - rho))),
    )
    np.testing.assert_allclose(losses, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewards, beta * rho, rtol=1e-5)
    # TRL concatenates desirable then undesirable losses: the same mean
    trl_order = np.concatenate([want[desirable], want[~desirable]])
    assert float(losses.mean()) == pytest.approx(trl_order.mean(), rel=1e-5)


def test_kto_reference_point_is_clamped_and_detached(unpaired):
    logps, ref_logps, desirable, kl_logps, _ = unpaired
    # policy below the reference on average: z0 clamps to 0
    assert float(kto_reference_point(jnp.asarray(kl_logps), jnp.asarray(kl_logps + 1.0))) == 0.0

    def total(kl_x):
        losses, _, _ = kto_loss(
            *f32(logps, ref_logps),
            desirable,
            kl_logps=kl_x,
            ref_kl_logps=jnp.asarray(kl_logps - 1.0),
        )
        return losses.sum()

    np.testing.assert_array_equal(jax.grad(total)(jnp.asarray(kl_logps, jnp.float32)), 0.0)
    # an externally reduced reference point gives the same losses
    a, _, _ = kto_loss(*f32(logps, ref_logps), desirable, reference_point=0.7)
    b, _, _ = kto_loss(
        *f32(logps, ref_logps), desirable, kl_logps=kl_logps, ref_kl_logps=kl_logps - 0.7
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_apo_zero_unpaired_and_errors(unpaired):
    logps, ref_logps, desirable, kl_logps, ref_kl_logps = unpaired
    # no reference point at all, even when KL log-probs are passed (TRL skips that pass)
    losses, _, z0 = kto_loss(
        *f32(logps, ref_logps),
        desirable,
        kl_logps=kl_logps,
        ref_kl_logps=ref_kl_logps,
        loss_type="apo_zero_unpaired",
    )
    rho = logps - ref_logps
    want = np.where(desirable, 1 - sigmoid(0.1 * rho), 1 - sigmoid(-0.1 * rho))
    np.testing.assert_allclose(losses, want, rtol=1e-5, atol=1e-6)
    assert float(z0) == 0.0
    with pytest.raises(ValueError, match="kl_logps"):
        kto_loss(*f32(logps, ref_logps), desirable)
    with pytest.raises(ValueError, match="loss_type"):
        kto_loss(*f32(logps, ref_logps), desirable, reference_point=0.0, loss_type="bco")
