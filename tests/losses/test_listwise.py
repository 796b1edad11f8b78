"""Soft labels, score-derived pairwise labels and Plackett–Luce, against numpy and identities."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import (
    dpo_loss,
    plackett_luce_loss,
    scores_to_soft_labels,
    soft_label_dpo_loss,
    soft_pairwise_loss,
)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(3)
    c, r = -rng.uniform(5, 40, 5), -rng.uniform(5, 40, 5)
    rc, rr = c + rng.normal(0, 3, 5), r + rng.normal(0, 3, 5)
    return [jnp.asarray(a, jnp.float32) for a in (c, r, rc, rr)], (c, r, rc, rr)


def test_soft_labels_match_reference(pairs):
    args, (c, r, rc, rr) = pairs
    q = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    losses, chosen_rewards, _ = soft_label_dpo_loss(*args, jnp.asarray(q), beta=0.3)
    z = 0.3 * ((c - rc) - (r - rr))
    np.testing.assert_allclose(
        losses, -q * log_sigmoid(z) - (1 - q) * log_sigmoid(-z), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(chosen_rewards, 0.3 * (c - rc), rtol=1e-5)


def test_soft_label_identities(pairs):
    args, _ = pairs
    c, r, rc, rr = args
    ones = jnp.ones(5)
    hard, _, _ = dpo_loss(*args, beta=0.2)
    soft, _, _ = soft_label_dpo_loss(*args, ones, beta=0.2)
    np.testing.assert_allclose(soft, hard, rtol=1e-6)  # q = 1 is DPO
    smoothed, _, _ = dpo_loss(*args, beta=0.2, label_smoothing=0.15)
    soft, _, _ = soft_label_dpo_loss(*args, 0.85 * ones, beta=0.2)
    np.testing.assert_allclose(soft, smoothed, rtol=1e-6)  # q = 1 - eps is cDPO
    # q = 1/2: swapping chosen and rejected changes nothing
    half, _, _ = soft_label_dpo_loss(c, r, rc, rr, 0.5 * ones, beta=0.2)
    swapped, _, _ = soft_label_dpo_loss(r, c, rr, rc, 0.5 * ones, beta=0.2)
    np.testing.assert_allclose(half, swapped, rtol=1e-6)
    # q and 1 - q with the pair swapped are the same preference
    a, _, _ = soft_label_dpo_loss(c, r, rc, rr, 0.8 * ones, beta=0.2)
    b, _, _ = soft_label_dpo_loss(r, c, rr, rc, 0.2 * ones, beta=0.2)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_scores_to_soft_labels():
    s = np.array([[1.0, 0.0, -2.0], [0.5, 0.5, 3.0]])
    q = scores_to_soft_labels(jnp.asarray(s), tau=0.5)
    want = np.array(
        [
            [[sigmoid((s[b, i] - s[b, j]) / 0.5) for j in range(3)] for i in range(3)]
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(q, want, rtol=1e-6)
    np.testing.assert_allclose(q + np.swapaxes(q, 1, 2), 1.0, rtol=1e-6)
    # sigma((1 - 0) / 0.5) = sigma(2), by hand
    assert float(q[0, 0, 1]) == pytest.approx(0.8807970779778823, rel=1e-6)


def test_soft_pairwise_loss():
    rng = np.random.default_rng(4)
    logps, ref_logps = -rng.uniform(5, 30, (3, 4)), -rng.uniform(5, 30, (3, 4))
    scores = rng.normal(0, 1, (3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [0, 1, 0, 0]], bool)
    beta, tau = 0.2, 0.7
    got = soft_pairwise_loss(
        jnp.asarray(logps),
        jnp.asarray(ref_logps),
        jnp.asarray(scores),
        beta=beta,
        tau=tau,
        mask_bk=mask,
    )
    want = []
    for b in range(3):
        terms = []
        for i, j in itertools.combinations(range(4), 2):
            if mask[b, i] and mask[b, j]:
                z = beta * ((logps[b, i] - ref_logps[b, i]) - (logps[b, j] - ref_logps[b, j]))
                q = sigmoid((scores[b, i] - scores[b, j]) / tau)
                terms.append(-q * log_sigmoid(z) - (1 - q) * log_sigmoid(-z))
        want.append(np.mean(terms) if terms else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # K = 2 is soft-label DPO with q = sigma((s_1 - s_2) / tau)
    k2 = soft_pairwise_loss(
        jnp.asarray(logps[:, :2]),
        jnp.asarray(ref_logps[:, :2]),
        jnp.asarray(scores[:, :2]),
        beta=beta,
        tau=tau,
    )
    q = sigmoid((scores[:, 0] - scores[:, 1]) / tau)
    soft, _, _ = soft_label_dpo_loss(
        *[jnp.asarray(a) for a in (logps[:, 0], logps[:, 1], ref_logps[:, 0], ref_logps[:, 1])],
        jnp.asarray(q),
        beta=beta,
    )
    np.testing.assert_allclose(k2, soft, rtol=1e-5)


def reference_pl(logps, ref_logps, mask, beta):
    out = []
    for b in range(len(logps)):
        u = [beta * (logps[b, k] - ref_logps[b, k]) for k in range(logps.shape[1]) if mask[b, k]]
        out.append(-sum(u[k] - np.log(np.sum(np.exp(u[k:]))) for k in range(len(u))))
    return np.array(out)


def test_plackett_luce_matches_reference():
    rng = np.random.default_rng(5)
    logps, ref_logps = -rng.uniform(5, 30, (4, 5)), -rng.uniform(5, 30, (4, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    losses, rewards = plackett_luce_loss(
        jnp.asarray(logps, jnp.float32), jnp.asarray(ref_logps, jnp.float32), beta=0.5, mask_bk=mask
    )
    np.testing.assert_allclose(losses, reference_pl(logps, ref_logps, mask, 0.5), rtol=1e-5)
    np.testing.assert_allclose(rewards, 0.5 * (logps - ref_logps), rtol=1e-5)
    # by hand, u = (1, 0, -1): -[1 - log(e + 1 + 1/e)] - [0 - log(1 + 1/e)]
    hand = -(1 - np.log(np.e + 1 + 1 / np.e)) - (0 - np.log(1 + 1 / np.e))
    one, _ = plackett_luce_loss(jnp.array([[1.0, 0.0, -1.0]]), jnp.zeros((1, 3)), beta=1.0)
    assert float(one[0]) == pytest.approx(hand, rel=1e-6)


def test_plackett_luce_k2_is_dpo_sigmoid():
    rng = np.random.default_rng(6)
    c, r = -rng.uniform(5, 40, 7), -rng.uniform(5, 40, 7)
    rc, rr = c + rng.normal(0, 3, 7), r + rng.normal(0, 3, 7)
    f = lambda *a: jnp.asarray(np.stack(a, 1), jnp.float32)
    pl, _ = plackett_luce_loss(f(c, r), f(rc, rr), beta=0.1)
    dpo, _, _ = dpo_loss(*[jnp.asarray(a, jnp.float32) for a in (c, r, rc, rr)], beta=0.1)
    np.testing.assert_allclose(pl, dpo, rtol=1e-5, atol=1e-6)
    # a masked entry is removed from the ranking: [c, x, r] with x masked is DPO on (c, r)
    junk = rng.normal(0, 50, 7)
    masked, _ = plackett_luce_loss(
        f(c, junk, r), f(rc, np.zeros(7), rr), beta=0.1, mask_bk=np.array([[1, 0, 1]] * 7, bool)
    )
    np.testing.assert_allclose(masked, dpo, rtol=1e-5, atol=1e-6)


def test_plackett_luce_gradient():
    rng = np.random.default_rng(7)
    logps, ref_logps = -rng.uniform(5, 30, (2, 4)), -rng.uniform(5, 30, (2, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    grad = jax.grad(
        lambda x: plackett_luce_loss(x, jnp.asarray(ref_logps), beta=0.3, mask_bk=mask)[0].sum()
    )(jnp.asarray(logps, jnp.float32))
    numeric = np.zeros_like(logps)
    h = 1e-5
    for idx in np.ndindex(logps.shape):
        step = np.zeros_like(logps)
        step[idx] = h
        numeric[idx] = (
            reference_pl(logps + step, ref_logps, mask, 0.3).sum()
            - reference_pl(logps - step, ref_logps, mask, 0.3).sum()
        ) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)
    assert float(grad[1, 3]) == 0.0  # a masked entry gets no gradient
