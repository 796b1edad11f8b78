"""Reward model and PPO pieces against numpy loops written from docs/objectives.md."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import (
    adaptive_kl_coef,
    bradley_terry_loss,
    gae,
    kl_penalty,
    masked_whiten,
    per_token_rewards,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.fixture(scope="module")
def rollout():
    """Right-padded completions: B = 4, T = 6, lengths 6, 4, 1, 3."""
    rng = np.random.default_rng(10)
    lengths = np.array([6, 4, 1, 3])
    mask = np.arange(6)[None, :] < lengths[:, None]
    logps = -rng.uniform(0.05, 3.0, (4, 6))
    old_logps = logps + rng.normal(0.0, 0.3, (4, 6))
    ref_logps = logps + rng.normal(0.0, 0.5, (4, 6))
    values = rng.normal(0.0, 1.0, (4, 6))
    rewards = rng.normal(0.0, 1.0, (4, 6))
    return dict(
        mask=mask, logps=logps, old=old_logps, ref=ref_logps, values=values, rewards=rewards
    )


def test_bradley_terry_reward_loss():
    rc, rr = np.array([1.0, -0.5, 2.0, 0.3]), np.array([0.0, 0.5, -1.0, 0.3])
    margin = np.array([0.5, 0.0, 1.0, 0.2])
    got = bradley_terry_loss(
        jnp.asarray(rc), jnp.asarray(rr), margin_b=jnp.asarray(margin), center_coef=0.01
    )
    want = -log_sigmoid(rc - rr - margin) + 0.01 * (rc + rr) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # by hand: r_c - r_r = 1, no margin: log(1 + e^-1)
    plain = bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0]))
    assert float(plain[0]) == pytest.approx(0.31326168751822286, rel=1e-6)


def test_kl_estimators(rollout):
    lp, ref = rollout["logps"], rollout["ref"]
    x = ref - lp
    want = {"k1": lp - ref, "k2": 0.5 * (lp - ref) ** 2, "k3": np.exp(x) - 1 - x}
    for name, expected in want.items():
        np.testing.assert_allclose(
            kl_penalty(lp, ref, estimator=name), expected, rtol=1e-5, atol=1e-7
        )
    assert (np.asarray(kl_penalty(lp, ref, estimator="k3")) >= 0).all()
    # by hand: pi = 1/2, pi_ref = 1/4 -> x = log(1/2): 1/2 - 1 + log 2
    k3 = kl_penalty(jnp.log(0.5), jnp.log(0.25), estimator="k3")
    assert float(k3) == pytest.approx(0.5 - 1 + np.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(lp, ref, estimator="k4")


def test_per_token_rewards(rollout):
    mask, lp, ref = rollout["mask"], rollout["logps"], rollout["ref"]
    scores = np.array([1.0, -2.0, 0.5, 3.0])
    has_eos = np.array([True, False, True, False])
    got, kl = per_token_rewards(
        scores,
        lp,
        ref,
        mask,
        kl_coef=0.1,
        kl_estimator="k3",
        has_eos_b=has_eos,
        missing_eos_penalty=1.5,
    )
    x = ref - lp
    want = -0.1 * (np.exp(x) - 1 - x) * mask
    for b in range(4):
        last = mask[b].sum() - 1
        want[b, last] += scores[b] - (0.0 if has_eos[b] else 1.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kl, (np.exp(x) - 1 - x) * mask, rtol=1e-5, atol=1e-7)


def reference_gae(rewards, values, mask, gamma, lam):
    """TRL's PPO loop, on rewards and values zeroed past each sequence's end."""
    rewards, values = rewards * mask, values * mask
    batch, length = rewards.shape
    advantages = np.zeros_like(rewards)
    last = np.zeros(batch)
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages * mask, (advantages + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_loop(rollout, gamma, lam):
    r, v, m = rollout["rewards"], rollout["values"], rollout["mask"]
    adv, ret = gae(jnp.asarray(r), jnp.asarray(v), m, gamma=gamma, lam=lam)
    want_adv, want_ret = reference_gae(r, v, m, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)


def test_gae_lambda_one_is_reward_to_go_minus_value(rollout):
    r, v, m = rollout["rewards"], rollout["values"], rollout["mask"]
    adv, ret = gae(jnp.asarray(r), jnp.asarray(v), m, gamma=1.0, lam=1.0)
    reward_to_go = np.flip(np.cumsum(np.flip(r * m, 1), 1), 1)
    np.testing.assert_allclose(adv, (reward_to_go - v) * m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, reward_to_go * m, rtol=1e-5, atol=1e-6)


def test_masked_whiten(rollout):
    x, m = rollout["values"] * 3 + 2, rollout["mask"]
    got = np.asarray(masked_whiten(jnp.asarray(x), m))
    sel = x[m]
    np.testing.assert_allclose(
        got[m], (sel - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), rtol=1e-5
    )
    assert (got[~m] == 0).all()
    kept = np.asarray(masked_whiten(jnp.asarray(x), m, shift_mean=False))
    np.testing.assert_allclose(kept[m], got[m] + sel.mean(), rtol=1e-5)


def test_ppo_losses(rollout):
    lp, old, m = rollout["logps"], rollout["old"], rollout["mask"]
    adv = rollout["rewards"]
    values, returns = rollout["values"], rollout["values"] + rollout["rewards"]
    old_values = values + np.random.default_rng(11).normal(0, 0.4, values.shape)
    ratio = np.exp(lp - old)
    pg_want = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
    pg, pg_clipped = ppo_policy_loss(lp, old, adv, clip_eps=0.2)
    np.testing.assert_allclose(pg, pg_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pg_clipped, (-adv * np.clip(ratio, 0.8, 1.2) > -adv * ratio))
    vclip = np.clip(values, old_values - 0.2, old_values + 0.2)
    vf_want = 0.5 * np.maximum((values - returns) ** 2, (vclip - returns) ** 2)
    vf, _ = ppo_value_loss(values, old_values, returns, clip_eps=0.2)
    np.testing.assert_allclose(vf, vf_want, rtol=1e-5, atol=1e-6)
    loss, metrics = ppo_loss(lp, old, adv, values, old_values, returns, m, vf_coef=0.1)
    masked = lambda a: (a * m).sum() / m.sum()
    assert float(loss) == pytest.approx(masked(pg_want) + 0.1 * masked(vf_want), rel=1e-5)
    assert float(metrics["approx_kl"]) == pytest.approx(masked(0.5 * (lp - old) ** 2), rel=1e-5)
    # ratio 1 (on-policy): the loss is -A and nothing is clipped
    on_policy, clipped = ppo_policy_loss(lp, lp, adv)
    np.testing.assert_allclose(on_policy, -adv, rtol=1e-6)
    assert float(np.sum(clipped)) == 0.0


def test_adaptive_kl_coef():
    # KL 9 vs target 6: error clip(0.5) = 0.2 -> 0.2 * (1 + 0.2 * 256 / 10000)
    assert float(adaptive_kl_coef(0.2, 9.0, 256)) == pytest.approx(0.201024, rel=1e-6)
    # KL 5.4: error -0.1 -> 0.2 * (1 - 0.1 * 100 / 1000)
    assert float(adaptive_kl_coef(0.2, 5.4, 100, horizon=1000)) == pytest.approx(0.198, rel=1e-5)


def test_padding_values_never_leak(rollout):
    """Whatever sits in padding positions (here nan and -inf) leaves the outputs unchanged."""
    m = rollout["mask"]
    dirty = {k: np.where(m, rollout[k], np.nan) for k in ("logps", "ref", "values", "rewards")}
    dirty["logps"] = np.where(m, dirty["logps"], -np.inf)
    scores = np.array([1.0, -2.0, 0.5, 3.0])
    jitted_gae = jax.jit(partial(gae, gamma=0.99, lam=0.9))

    def outputs(d):
        return (
            per_token_rewards(scores, d["logps"], d["ref"], m, kl_estimator="k3")[0],
            *jitted_gae(d["rewards"], d["values"], m),
            masked_whiten(jnp.asarray(d["values"]), m),
        )

    for clean, got in zip(outputs(rollout), outputs(dirty), strict=True):
        np.testing.assert_array_equal(clean, got)
