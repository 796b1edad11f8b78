"""DPO family: every loss_type against numpy written from docs/objectives.md, plus hand values.

The expected numbers never call align_jax: `ref_*` below are the docs/objectives.md formulas in
float64 numpy. Gradients are checked against central differences of those formulas.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import (
    DPO_LOSS_TYPES,
    combined_dpo_loss,
    dpo_loss,
    f_divergence_score,
    ld_logps,
    wpo_weights,
)

B = 6


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numeric_grad(f, x, h=1e-5):
    """Central differences of a float64 numpy function f: [B] -> scalar."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    chosen = -rng.uniform(5.0, 40.0, B)
    rejected = -rng.uniform(5.0, 40.0, B)
    ref_chosen = chosen + rng.normal(0.0, 3.0, B)
    ref_rejected = rejected + rng.normal(0.0, 3.0, B)
    chosen_len = rng.integers(3, 30, B).astype(np.float64)
    rejected_len = rng.integers(3, 30, B).astype(np.float64)
    return chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len


def reference_loss(loss_type, c, r, rc, rr, lc, lr, beta, eps, tau=0.05):
    """docs/objectives.md's table, term by term."""
    pc, pr = c - rc, r - rr
    d = pc - pr
    if loss_type == "sigmoid":
        return -(1 - eps) * log_sigmoid(beta * d) - eps * log_sigmoid(-beta * d)
    if loss_type == "robust":
        return (-(1 - eps) * log_sigmoid(beta * d) + eps * log_sigmoid(-beta * d)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return np.maximum(0.0, 1 - beta * d)
    if loss_type == "ipo":
        return (pc / lc - pr / lr - 1 / (2 * beta)) ** 2
    if loss_type == "sigmoid_norm":
        return -log_sigmoid(beta * (pc / lc - pr / lr))
    if loss_type == "exo_pair":
        z = beta * d
        return sigmoid(z) * (log_sigmoid(z) - np.log(1 - eps)) + sigmoid(-z) * (
            log_sigmoid(-z) - np.log(eps)
        )
    if loss_type == "nca_pair":
        return (
            -log_sigmoid(beta * pc) - 0.5 * log_sigmoid(-beta * pc) - 0.5 * log_sigmoid(-beta * pr)
        )
    if loss_type == "bco_pair":
        return -log_sigmoid(beta * pc) - log_sigmoid(-beta * pr)
    if loss_type == "sppo_hard":
        return (pc - 1 / (2 * beta)) ** 2 + (pr + 1 / (2 * beta)) ** 2
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            dd = np.sort(c - r) - np.sort(rc - rr)
        else:
            dd = np.sort(pc) - np.sort(pr)
        return -(1 - eps) * log_sigmoid(beta * dd) - eps * log_sigmoid(-beta * dd)
    if loss_type == "apo_zero":
        return 1 - sigmoid(beta * pc) + sigmoid(beta * pr)
    if loss_type == "apo_down":
        return sigmoid(beta * pc) + 1 - sigmoid(beta * d)
    if loss_type == "discopop":
        z = beta * d
        m = sigmoid(z / tau)
        return (1 - m) * (-log_sigmoid(z)) + m * np.exp(-z)
    raise AssertionError(loss_type)


def run(loss_type, batch, *, beta, eps):
    c, r, rc, rr, lc, lr = batch
    return dpo_loss(
        jnp.asarray(c, jnp.float32),
        jnp.asarray(r, jnp.float32),
        jnp.asarray(rc, jnp.float32),
        jnp.asarray(rr, jnp.float32),
        loss_type=loss_type,
        beta=beta,
        label_smoothing=eps,
        chosen_lengths=jnp.asarray(lc),
        rejected_lengths=jnp.asarray(lr),
    )


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_every_loss_type_matches_reference(batch, loss_type, beta):
    eps = 0.1 if loss_type in ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired") else 0.0
    losses, chosen_rewards, rejected_rewards = run(loss_type, batch, beta=beta, eps=eps)
    expected = reference_loss(loss_type, *batch, beta=beta, eps=eps)
    np.testing.assert_allclose(losses, expected, rtol=2e-5, atol=1e-5)
    c, r, rc, rr, _, _ = batch
    np.testing.assert_allclose(chosen_rewards, beta * (c - rc), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rejected_rewards, beta * (r - rr), rtol=1e-5, atol=1e-5)
    assert losses.shape == chosen_rewards.shape == rejected_rewards.shape == (B,)


def scalar_loss(loss_type, *, beta=0.5, eps=0.0, lengths=(2.0, 4.0)):
    # rho_c = 1, rho_r = -1, Delta = 2
    out = dpo_loss(
        jnp.array([-10.0]),
        jnp.array([-12.0]),
        jnp.array([-11.0]),
        jnp.array([-11.0]),
        loss_type=loss_type,
        beta=beta,
        label_smoothing=eps,
        chosen_lengths=jnp.array([lengths[0]]),
        rejected_lengths=jnp.array([lengths[1]]),
    )
    return float(out[0][0])


def test_hand_computed_scalars():
    # beta * Delta = 1: -log sigma(1) = log(1 + e^-1)
    assert scalar_loss("sigmoid") == pytest.approx(0.31326168751822286, rel=1e-6)
    # conservative DPO, eps = 0.25: 0.75 log(1 + e^-1) + 0.25 log(1 + e)
    assert scalar_loss("sigmoid", eps=0.25) == pytest.approx(
        0.75 * 0.31326168751822286 + 0.25 * 1.3132616875182228, rel=1e-6
    )
    assert scalar_loss("hinge", beta=0.1) == pytest.approx(0.8, rel=1e-6)  # relu(1 - 0.2)
    # rho_c/2 - rho_r/4 = 0.75; 1/(2 beta) = 1 -> (0.75 - 1)^2
    assert scalar_loss("ipo") == pytest.approx(0.0625, rel=1e-6)
    # bco_pair: -log sigma(0.5) - log sigma(0.5) = 2 log(1 + e^-0.5)
    assert scalar_loss("bco_pair") == pytest.approx(2 * 0.47407698418010663, rel=1e-6)
    # sppo_hard: (1 - 1)^2 + (-1 + 1)^2
    assert scalar_loss("sppo_hard") == pytest.approx(0.0, abs=1e-7)


def test_label_smoothing_zero_is_plain_dpo(batch):
    c, r, rc, rr, _, _ = batch
    losses, _, _ = run("sigmoid", batch, beta=0.1, eps=0.0)
    np.testing.assert_allclose(losses, -log_sigmoid(0.1 * ((c - rc) - (r - rr))), rtol=2e-5)
    robust, _, _ = run("robust", batch, beta=0.1, eps=0.0)
    np.testing.assert_allclose(robust, losses, rtol=1e-6)


def test_argument_errors(batch):
    x = jnp.zeros(B)
    with pytest.raises(ValueError, match="sigmoid.*hinge"):
        dpo_loss(x, x, x, x, loss_type="kto")
    for loss_type in ("ipo", "sigmoid_norm"):
        with pytest.raises(ValueError, match="chosen_lengths"):
            dpo_loss(x, x, x, x, loss_type=loss_type)
    with pytest.raises(ValueError, match="exo_pair"):
        dpo_loss(x, x, x, x, loss_type="exo_pair")  # label_smoothing = 0
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(x, x, x, x, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="f_divergence"):
        dpo_loss(x, x, x, x, f_divergence="kl")


def test_f_divergence_scores():
    rho = np.linspace(-3.0, 3.0, 13)
    expected = {
        "reverse_kl": rho,
        "forward_kl": 1 - np.exp(-rho),
        "js_divergence": np.log(2) + log_sigmoid(rho),
        "alpha_divergence": (1 - np.exp(-0.3 * rho)) / 0.3,
    }
    for name, want in expected.items():
        got = f_divergence_score(jnp.asarray(rho, jnp.float32), f_divergence=name, alpha=0.3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # alpha = 1 is forward KL; alpha -> 0 approaches reverse KL
    x = jnp.asarray(rho, jnp.float32)
    np.testing.assert_allclose(
        f_divergence_score(x, f_divergence="alpha_divergence", alpha=1.0),
        f_divergence_score(x, f_divergence="forward_kl"),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        f_divergence_score(x, f_divergence="alpha_divergence", alpha=1e-3), rho, atol=1e-2
    )
    # capped exponent keeps scores finite at extreme log-ratios
    assert np.isfinite(f_divergence_score(jnp.array([-500.0]), f_divergence="forward_kl")).all()


@pytest.mark.parametrize("f_divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergence_replaces_rho(batch, f_divergence):
    c, r, rc, rr, _, _ = batch
    # keep log-ratios moderate so exp(-rho) stays well inside float32
    c, r = rc + np.linspace(-2, 2, B), rr + np.linspace(1.5, -1.5, B)
    score = {
        "forward_kl": lambda p: 1 - np.exp(-p),
        "js_divergence": lambda p: np.log(2) + log_sigmoid(p),
        "alpha_divergence": lambda p: (1 - np.exp(-0.5 * p)) / 0.5,
    }[f_divergence]
    sc, sr = score(c - rc), score(r - rr)
    args = [jnp.asarray(a, jnp.float32) for a in (c, r, rc, rr)]
    kw = dict(beta=0.5, f_divergence=f_divergence)
    sig, _, _ = dpo_loss(*args, loss_type="sigmoid", **kw)
    np.testing.assert_allclose(sig, -log_sigmoid(0.5 * (sc - sr)), rtol=1e-5, atol=1e-6)
    # scores with their constants enter losses that use each score alone
    sppo, _, _ = dpo_loss(*args, loss_type="sppo_hard", **kw)
    np.testing.assert_allclose(sppo, (sc - 1.0) ** 2 + (sr + 1.0) ** 2, rtol=1e-5, atol=1e-6)
    # apo_zero keeps the plain log-ratio, as TRL
    apo, _, _ = dpo_loss(*args, loss_type="apo_zero", **kw)
    np.testing.assert_allclose(
        apo, 1 - sigmoid(0.5 * (c - rc)) + sigmoid(0.5 * (r - rr)), rtol=1e-5
    )


def test_combined_loss_is_weighted_sum(batch):
    c, r, rc, rr, _, _ = batch
    nll = np.linspace(0.5, 2.0, B)
    args = [jnp.asarray(a, jnp.float32) for a in (c, r, rc, rr)]
    losses, chosen_rewards, _ = combined_dpo_loss(
        *args,
        loss_types=("sigmoid", "bco_pair", "sft"),
        weights=(1.0, 0.5, 0.3),
        sft_nll=jnp.asarray(nll),
        beta=0.2,
    )
    expected = (
        reference_loss("sigmoid", c, r, rc, rr, 1, 1, 0.2, 0.0)
        + 0.5 * reference_loss("bco_pair", c, r, rc, rr, 1, 1, 0.2, 0.0)
        + 0.3 * nll
    )
    np.testing.assert_allclose(losses, expected, rtol=2e-5)
    np.testing.assert_allclose(chosen_rewards, 0.2 * (c - rc), rtol=1e-5)
    # a scalar SFT term (TRL's batch token mean) broadcasts to every pair
    scalar, _, _ = combined_dpo_loss(*args, loss_types=("sft",), sft_nll=1.25)
    np.testing.assert_allclose(scalar, np.full(B, 1.25))
    with pytest.raises(ValueError, match="sft_nll"):
        combined_dpo_loss(*args, loss_types=("sigmoid", "sft"))
    with pytest.raises(ValueError, match="weights"):
        combined_dpo_loss(*args, loss_types=("sigmoid", "hinge"), weights=(1.0,))


def token_batch(seed, batch_size=3, length=7, vocab=5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (batch_size, length, vocab))
    tokens = rng.integers(0, vocab, (batch_size, length))
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_logps = np.take_along_axis(logp_all, tokens[..., None], -1)[..., 0]
    lengths = rng.integers(1, length + 1, batch_size)
    mask = np.arange(length)[None, :] < lengths[:, None]
    return logits, token_logps, mask


def test_wpo_weights():
    c_logits, c_logps, c_mask = token_batch(1)
    r_logits, r_logps, r_mask = token_batch(2)

    def seq_weight(logits, logps, mask, aligned):
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        adjust = np.log((p**2).sum(-1)) if aligned else 0.0
        return np.exp(((logps - adjust) * mask).sum(-1) / mask.sum(-1))

    for aligned in (False, True):
        kw = dict(chosen_logits_btv=c_logits, rejected_logits_btv=r_logits) if aligned else {}
        got = wpo_weights(c_logps, c_mask, r_logps, r_mask, **kw)
        want = seq_weight(c_logits, c_logps, c_mask, aligned) * seq_weight(
            r_logits, r_logps, r_mask, aligned
        )
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # weights are constants for the optimiser
    grad = jax.grad(lambda x: wpo_weights(x, c_mask, r_logps, r_mask).sum())(
        jnp.asarray(c_logps, jnp.float32)
    )
    np.testing.assert_array_equal(grad, 0.0)


def test_ld_logps():
    _, c_logps, _ = token_batch(3, length=8)
    _, r_logps, _ = token_batch(4, length=6)
    # completions after a 2-token prompt, then padding: positions count completion tokens only
    c_mask = np.zeros((3, 8), bool)
    r_mask = np.zeros((3, 6), bool)
    for i, (lc, lr) in enumerate([(5, 3), (2, 4), (4, 4)]):
        c_mask[i, 2 : 2 + lc] = True
        r_mask[i, 2 : 2 + lr] = True
    alpha = 0.3

    def ld(logps, mask, shared):
        out = np.zeros(len(logps))
        for i in range(len(logps)):
            seen = 0
            for t in range(logps.shape[1]):
                if mask[i, t]:
                    seen += 1
                    out[i] += logps[i, t] * (1.0 if seen <= shared[i] else alpha)
        return out

    shared = np.minimum(c_mask.sum(1), r_mask.sum(1))
    got_c, got_r = ld_logps(c_logps, c_mask, r_logps, r_mask, alpha=alpha)
    np.testing.assert_allclose(got_c, ld(c_logps, c_mask, shared), rtol=1e-5)
    np.testing.assert_allclose(got_r, ld(r_logps, r_mask, shared), rtol=1e-5)
    # alpha = 1 is the plain summed log-prob
    full_c, full_r = ld_logps(c_logps, c_mask, r_logps, r_mask, alpha=1.0)
    np.testing.assert_allclose(full_c, (c_logps * c_mask).sum(1), rtol=1e-5)
    np.testing.assert_allclose(full_r, (r_logps * r_mask).sum(1), rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "discopop", "nca_pair", "exo_pair"])
def test_gradient_matches_finite_differences(batch, loss_type):
    _, r, rc, rr, lc, lr = batch
    c = rc + np.linspace(-1.0, 1.0, B)  # a moderate margin range, away from hinge kinks
    beta, eps = 0.3, 0.05

    def numpy_mean(x):
        return reference_loss(loss_type, x, r, rc, rr, lc, lr, beta, eps).mean()

    def jax_mean(x):
        losses, _, _ = dpo_loss(
            x,
            jnp.asarray(r, jnp.float32),
            jnp.asarray(rc, jnp.float32),
            jnp.asarray(rr, jnp.float32),
            loss_type=loss_type,
            beta=beta,
            label_smoothing=eps,
            chosen_lengths=jnp.asarray(lc),
            rejected_lengths=jnp.asarray(lr),
        )
        return losses.mean()

    got = jax.grad(jax_mean)(jnp.asarray(c, jnp.float32))
    np.testing.assert_allclose(got, numeric_grad(numpy_mean, c), rtol=1e-3, atol=1e-6)


def test_jit_and_extreme_inputs():
    f = jax.jit(partial(dpo_loss, loss_type="discopop", beta=1.0))
    losses, _, _ = f(
        jnp.array([-1.0, -300.0]), jnp.array([-300.0, -1.0]), jnp.zeros(2), jnp.zeros(2)
    )
    # z = +299: the exponential branch, e^-299 = 0. z = -299: the logistic branch,
    # -log sigma(-299) = 299; uncapped, e^299 = inf times a zero weight would give nan.
    np.testing.assert_allclose(losses, [0.0, 299.0], atol=1e-6)
