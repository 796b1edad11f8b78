"""GRPO-family policy losses and aggregation against numpy written from docs/objectives.md:
per-token losses, the four aggregations by hand and by ragged slicing, gradient
accumulation equal to one batch, CISPO's gradient in closed form."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import (
    GRPO_LOSS_TYPES,
    aggregate_token_loss,
    grpo_loss,
    grpo_loss_terms,
    grpo_per_token_loss,
    rollout_correction_weights,
    sampler_mismatch,
)


@pytest.fixture(scope="module")
def rollout():
    """Right-padded completions: B = 6, T = 5, lengths 5, 3, 0 (empty), 1, 4, 2."""
    rng = np.random.default_rng(10)
    lengths = np.array([5, 3, 0, 1, 4, 2])
    mask = np.arange(5)[None, :] < lengths[:, None]
    logps = -rng.uniform(0.05, 3.0, (6, 5))
    # shift whole sequences so sequence-level ratios leave the clip range too
    old = logps + rng.normal(0.0, 0.3, (6, 5)) + np.array([-0.4, 0.5, 0, 0, 0.3, -0.3])[:, None]
    ref = logps + rng.normal(0.0, 0.5, (6, 5))
    sampler = old + rng.normal(0.0, 0.2, (6, 5))
    per_token = rng.normal(0.0, 1.0, (6, 5))
    adv = np.array([1.2, -0.7, 0.3, -1.5, 0.8, -0.2])
    return dict(
        lengths=lengths,
        mask=mask,
        logps=logps,
        old=old,
        ref=ref,
        sampler=sampler,
        adv=adv,
        per_token=per_token,
    )


def reference_tokens(
    lp,
    old,
    adv,
    mask,
    *,
    eps_low,
    eps_high,
    delta=None,
    beta=0.0,
    ref=None,
    seq=False,
    cispo=False,
    weights=None,
):
    log_ratio = np.where(mask, lp - old, 0.0)
    if seq:
        n = np.maximum(mask.sum(1), 1)
        log_ratio = np.repeat((log_ratio.sum(1) / n)[:, None], lp.shape[1], 1)
    ratio = np.exp(log_ratio)
    clipped = np.clip(ratio, 1 - eps_low, 1 + eps_high)
    a = adv[:, None]
    if cispo:
        loss = -clipped * a * lp
        region = (ratio < 1 - eps_low) | (ratio > 1 + eps_high)
    else:
        capped = ratio if delta is None else np.minimum(ratio, delta)
        loss = -np.minimum(capped * a, clipped * a)
        region = ((capped < 1 - eps_low) & (a < 0)) | ((capped > 1 + eps_high) & (a > 0))
    if weights is not None:
        loss = loss * weights
    if beta:
        x = ref - lp
        loss = loss + beta * (np.exp(x) - 1 - x)
    return np.where(mask, loss, 0.0), region


CASES = {
    "clip": dict(eps_low=0.2, eps_high=0.28, delta=1.5, beta=0.04),
    "clip_seq": dict(eps_low=0.2, eps_high=0.28, delta=1.5, beta=0.04, seq=True),
    "cispo": dict(eps_low=0.2, eps_high=0.28, beta=0.04, cispo=True),
    "cispo_seq": dict(eps_low=0.3, eps_high=0.4, seq=True, cispo=True),
}


def jax_kwargs(case):
    return dict(
        beta=case.get("beta", 0.0),
        epsilon_low=case["eps_low"],
        epsilon_high=case["eps_high"],
        delta=case.get("delta"),
        importance_sampling_level="sequence" if case.get("seq") else "token",
        policy_loss="cispo" if case.get("cispo") else "clip",
    )


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("with_weights", [False, True])
def test_per_token_loss(rollout, name, with_weights):
    d, case = rollout, CASES[name]
    m = d["mask"]
    weights = np.where(m, np.linspace(0.5, 2.0, 30).reshape(6, 5), 0.0) if with_weights else None
    got, info = grpo_per_token_loss(
        d["logps"],
        d["old"],
        d["adv"],
        m,
        ref_logps_bt=d["ref"],
        is_weights_bt=weights,
        **jax_kwargs(case),
    )
    want, region = reference_tokens(
        d["logps"], d["old"], d["adv"], m, ref=d["ref"], weights=weights, **case
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    clipped = np.broadcast_to(info["clipped"], m.shape)
    np.testing.assert_array_equal(clipped[m], region[m])
    assert region[m].any() and not region[m].all()  # the data exercise the clip range


def test_ratio_one_on_policy(rollout):
    """logps == old logps (or old=None, mu = 1): ratio exactly 1, nothing clipped."""
    lp, m = jnp.asarray(rollout["logps"], jnp.float32), rollout["mask"]
    adv = jnp.asarray(rollout["adv"], jnp.float32)
    for old in (lp, None):
        for level in ("token", "sequence"):
            clip, info = grpo_per_token_loss(
                lp, old, adv, m, epsilon_high=0.28, importance_sampling_level=level
            )
            np.testing.assert_array_equal(clip, np.where(m, -np.asarray(adv)[:, None], 0.0))
            for key in ("low_clipped", "high_clipped", "clipped"):
                assert not np.asarray(info[key]).any()
            cispo, _ = grpo_per_token_loss(lp, old, adv, m, policy_loss="cispo")
            want = np.where(m, -np.asarray(adv)[:, None] * np.asarray(lp), 0.0)
            np.testing.assert_array_equal(cispo, want)
        _, _, metrics = grpo_loss(lp, old, adv, m, epsilon_high=0.28)
        for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
            assert float(metrics[key][0]) == 0.0
            assert float(metrics[key][1]) == m.sum()


def test_single_update_gradient_is_policy_gradient(rollout):
    lp, m = jnp.asarray(rollout["logps"], jnp.float32), rollout["mask"]
    adv = jnp.asarray(rollout["adv"], jnp.float32)
    loss_fn = jax.jit(partial(grpo_loss, epsilon_low=0.2, epsilon_high=0.28, loss_type="bnpo"))

    def loss(x):
        num, den, _ = loss_fn(x, None, adv, m)
        return num / den

    n = m.sum()
    want_loss = float(-(np.asarray(adv)[:, None] * m).sum() / n)
    assert float(loss(lp)) == pytest.approx(want_loss, rel=1e-5)
    # -A / N on every completion token
    want = -np.asarray(adv)[:, None] * m / n
    np.testing.assert_allclose(jax.grad(loss)(lp), want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_cispo_gradient_closed_form(rollout, seq, beta):
    """d/d log pi_t of the bnpo mean: (-sg(clip(r)) A w + beta (1 - e^(ref - lp))) / N."""
    d, m = rollout, rollout["mask"]
    weights = np.where(m, np.linspace(0.5, 2.0, 30).reshape(6, 5), 0.0)
    kw = dict(epsilon_low=0.1, epsilon_high=0.2, beta=beta, policy_loss="cispo")
    kw["importance_sampling_level"] = "sequence" if seq else "token"

    def loss(x):
        num, den, _ = grpo_loss(
            x,
            d["old"],
            d["adv"],
            m,
            ref_logps_bt=d["ref"],
            is_weights_bt=weights,
            loss_type="bnpo",
            **kw,
        )
        return num / den

    got = jax.grad(loss)(jnp.asarray(d["logps"], jnp.float32))
    log_ratio = np.where(m, d["logps"] - d["old"], 0.0)
    if seq:
        log_ratio = np.repeat((log_ratio.sum(1) / np.maximum(m.sum(1), 1))[:, None], 5, 1)
    weight = np.clip(np.exp(log_ratio), 0.9, 1.2)
    assert (weight != np.exp(log_ratio))[m].any()  # some weights are truncated
    want = -weight * d["adv"][:, None] * weights + beta * (1 - np.exp(d["ref"] - d["logps"]))
    np.testing.assert_allclose(got, np.where(m, want, 0.0) / m.sum(), rtol=1e-4, atol=1e-7)


def test_clip_gradient_matches_finite_differences(rollout):
    d, m = rollout, rollout["mask"]
    case = dict(eps_low=0.2, eps_high=0.28, beta=0.04)

    def numpy_loss(x):
        tokens, _ = reference_tokens(x, d["old"], d["adv"], m, ref=d["ref"], **case)
        return tokens.sum() / m.sum()

    def jax_loss(x):
        num, den, _ = grpo_loss(x, d["old"], d["adv"], m, ref_logps_bt=d["ref"], **jax_kwargs(case))
        return num / den

    got = jax.grad(jax_loss)(jnp.asarray(d["logps"], jnp.float32))
    numeric = np.zeros_like(d["logps"])
    h = 1e-6
    for idx in np.ndindex(numeric.shape):
        step = np.zeros_like(numeric)
        step[idx] = h
        numeric[idx] = (numpy_loss(d["logps"] + step) - numpy_loss(d["logps"] - step)) / (2 * h)
    np.testing.assert_allclose(got, numeric, rtol=1e-3, atol=1e-5)


def test_aggregations_by_hand():
    loss = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = np.array([[True, True, True], [True, False, False]])
    want = {
        "grpo": (2.0 + 4.0) / 2,
        "bnpo": 10.0 / 4,
        "dr_grpo": 10.0 / (2 * 3),
        "dapo": 10.0 / 4,
    }
    for loss_type, expected in want.items():
        got = aggregate_token_loss(loss, mask, loss_type=loss_type)
        assert float(got) == pytest.approx(expected, rel=1e-6), loss_type
    dr = aggregate_token_loss(loss, mask, loss_type="dr_grpo", max_completion_length=10)
    assert float(dr) == pytest.approx(10.0 / 20, rel=1e-6)
    # a rollout batch of 4 sequences and 10 tokens: 2 rows here divide by 2 * 10 / 4 = 5
    num, den = grpo_loss_terms(loss, mask, rollout_tokens=10, rollout_sequences=4)
    assert (float(num), float(den)) == (10.0, 5.0)


def reference_aggregate(loss, lengths, loss_type, *, length=None, rollout=None):
    """Ragged slices of the right-padded rows: each row's first n tokens."""
    rows = [loss[b, :n] for b, n in enumerate(lengths)]
    total = sum(float(r.sum()) for r in rows)
    if loss_type == "grpo":
        return np.mean([r.mean() if len(r) else 0.0 for r in rows])
    if loss_type == "dr_grpo":
        return total / (len(rows) * (length or loss.shape[1]))
    if loss_type == "dapo" and rollout is not None:
        return total / (len(rows) * rollout[0] / rollout[1])
    return total / max(sum(lengths), 1)


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_aggregations_ragged(rollout, loss_type):
    d = rollout
    kw = dict(max_completion_length=8) if loss_type == "dr_grpo" else {}
    if loss_type == "dapo":
        kw = dict(rollout_tokens=40, rollout_sequences=12)
    got = aggregate_token_loss(jnp.asarray(d["per_token"]), d["mask"], loss_type=loss_type, **kw)
    rollout_counts = (40, 12) if loss_type == "dapo" else None
    want = reference_aggregate(
        d["per_token"],
        d["lengths"],
        loss_type,
        length=kw.get("max_completion_length"),
        rollout=rollout_counts,
    )
    assert float(got) == pytest.approx(want, rel=1e-5)
    # the scalar is the pieces divided
    num, den = grpo_loss_terms(jnp.asarray(d["per_token"]), d["mask"], loss_type=loss_type, **kw)
    assert float(got) == pytest.approx(float(num) / float(den), rel=1e-6)
    # a padding row (valid_b False) changes nothing, whatever its mask says
    padded = np.concatenate([d["per_token"], np.full((1, 5), 7.0)])
    mask = np.concatenate([d["mask"], np.ones((1, 5), bool)])
    valid = np.arange(7) < 6
    with_padding = aggregate_token_loss(
        jnp.asarray(padded), mask, loss_type=loss_type, valid_b=valid, **kw
    )
    assert float(with_padding) == pytest.approx(float(got), rel=1e-6)


def test_all_empty_batch_is_zero():
    loss, mask = jnp.ones((2, 3)), np.zeros((2, 3), bool)
    for loss_type in GRPO_LOSS_TYPES:
        assert float(aggregate_token_loss(loss, mask, loss_type=loss_type)) == 0.0


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
@pytest.mark.parametrize("micro_batches", [2, 3])
def test_accumulation_equals_one_batch(rollout, loss_type, micro_batches):
    """Rows i::k per micro-batch, as the train step splits: sums of (num, den) and of the
    metric pairs equal the whole batch's, and so do the gradients."""
    d, m = rollout, rollout["mask"]
    kw = dict(loss_type=loss_type, epsilon_high=0.28, beta=0.04, delta=1.5)
    if loss_type == "dapo":
        kw.update(rollout_tokens=float(m.sum()), rollout_sequences=6.0)
    arrays = (d["logps"], d["old"], d["adv"], m, d["ref"])

    def loss_and_metrics(lp, rows):
        others = [a[rows] for a in arrays[1:]]
        num, den, metrics = grpo_loss(lp[rows], *others[:3], ref_logps_bt=others[3], **kw)
        return num, den, metrics

    def total(lp, splits):
        parts = [loss_and_metrics(lp, rows) for rows in splits]
        num = sum(p[0] for p in parts)
        den = sum(p[1] for p in parts)
        metrics = {k: sum(jnp.stack(p[2][k]) for p in parts) for k in parts[0][2]}
        return num / den, metrics

    lp = jnp.asarray(d["logps"], jnp.float32)
    whole = [np.arange(6)]
    split = [np.arange(6)[i::micro_batches] for i in range(micro_batches)]

    def value_and_grad(splits):
        return jax.jit(jax.value_and_grad(partial(total, splits=splits), has_aux=True))(lp)

    (loss_whole, metrics_whole), grad_whole = value_and_grad(whole)
    (loss_split, metrics_split), grad_split = value_and_grad(split)
    # float32 sums in another order: equal to rounding
    assert float(loss_split) == pytest.approx(float(loss_whole), rel=1e-5, abs=1e-7)
    for key, pair in metrics_whole.items():
        np.testing.assert_allclose(metrics_split[key], pair, rtol=1e-6)
    assert metrics_whole["clip_ratio/region_mean"][0] > 0  # clipping happens in the data
    np.testing.assert_allclose(grad_split, grad_whole, rtol=1e-5, atol=1e-8)


def test_dapo_and_bnpo_differ_across_minibatches(rollout):
    """Two optimizer steps on one rollout batch (rows 0-2, then 3-5): bnpo divides each by
    its own tokens, dapo by the rollout batch's tokens over its 2 steps."""
    d, m = rollout, rollout["mask"]
    loss = jnp.asarray(d["per_token"])
    total_tokens = m.sum()
    for rows in (np.arange(3), np.arange(3, 6)):
        step_sum = (d["per_token"][rows] * m[rows]).sum()
        bnpo = aggregate_token_loss(loss[rows], m[rows], loss_type="bnpo")
        dapo = aggregate_token_loss(
            loss[rows], m[rows], rollout_tokens=total_tokens, rollout_sequences=6
        )
        assert float(bnpo) == pytest.approx(step_sum / m[rows].sum(), rel=1e-5)
        assert float(dapo) == pytest.approx(step_sum / (total_tokens / 2), rel=1e-5)
        assert m[rows].sum() != total_tokens / 2  # the two really differ here


def test_grpo_loss_metrics(rollout):
    d, m = rollout, rollout["mask"]
    case = CASES["clip"]
    num, den, metrics = grpo_loss(
        d["logps"],
        d["old"],
        d["adv"],
        m,
        ref_logps_bt=d["ref"],
        loss_type="grpo",
        **jax_kwargs(case),
    )
    tokens, region = reference_tokens(d["logps"], d["old"], d["adv"], m, ref=d["ref"], **case)
    assert float(num) / float(den) == pytest.approx(
        reference_aggregate(tokens, d["lengths"], "grpo"), rel=1e-5
    )
    assert float(den) == 6.0
    assert tuple(map(float, metrics["clip_ratio/region_mean"])) == (region[m].sum(), m.sum())
    x = d["ref"] - d["logps"]
    kl_sum, kl_count = metrics["kl"]
    assert float(kl_sum) == pytest.approx((np.exp(x) - 1 - x)[m].sum(), rel=1e-5)
    assert float(kl_count) == m.sum()
    # sequence level: the flags are per sequence, counted over sequences (TRL)
    seq_case = CASES["clip_seq"]
    _, _, seq_metrics = grpo_loss(
        d["logps"], d["old"], d["adv"], m, ref_logps_bt=d["ref"], **jax_kwargs(seq_case)
    )
    _, seq_region = reference_tokens(d["logps"], d["old"], d["adv"], m, ref=d["ref"], **seq_case)
    got = tuple(map(float, seq_metrics["clip_ratio/region_mean"]))
    assert got == (seq_region[:, 0].sum(), 6.0)


def test_errors(rollout):
    lp, m, adv = rollout["logps"], rollout["mask"], rollout["adv"]
    with pytest.raises(ValueError, match="ref_logps_bt"):
        grpo_loss(lp, None, adv, m, beta=0.1)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss(lp, None, adv, m, importance_sampling_level="prompt")
    with pytest.raises(ValueError, match="policy_loss"):
        grpo_loss(lp, None, adv, m, policy_loss="ppo")
    with pytest.raises(ValueError, match="delta"):
        grpo_loss(lp, None, adv, m, policy_loss="cispo", delta=2.0)
    with pytest.raises(ValueError, match="dapo"):
        aggregate_token_loss(jnp.asarray(lp), m, loss_type="token_mean")
    with pytest.raises(ValueError, match="rollout_sequences"):
        grpo_loss_terms(jnp.asarray(lp), m, rollout_tokens=10)


@pytest.mark.parametrize("name", ["clip", "cispo_seq"])
def test_padding_values_never_leak(rollout, name):
    """nan and -inf in padding positions change neither the loss nor its gradient."""
    d, m = rollout, rollout["mask"]
    dirty = {k: np.where(m, d[k], np.nan) for k in ("old", "ref", "sampler")}
    dirty["logps"] = np.where(m, d["logps"], -np.inf)
    kw = jax_kwargs(CASES[name])

    def loss(lp, arrays):
        weights = rollout_correction_weights(arrays["old"], arrays["sampler"], m, cap=1.1)
        weights = np.where(m, weights, arrays["old"])  # nan in padding when dirty
        num, den, metrics = grpo_loss(
            lp,
            arrays["old"],
            d["adv"],
            m,
            ref_logps_bt=arrays["ref"],
            is_weights_bt=weights,
            loss_type="grpo",
            **kw,
        )
        return num / den, metrics

    clean_lp = jnp.asarray(d["logps"], jnp.float32)
    dirty_lp = jnp.asarray(dirty["logps"], jnp.float32)
    clean, clean_metrics = loss(clean_lp, d)
    got, got_metrics = loss(dirty_lp, dirty)
    assert np.isfinite(float(clean)) and float(got) == float(clean)
    for key, pair in clean_metrics.items():
        np.testing.assert_array_equal(got_metrics[key], pair)
    grad_clean = jax.grad(lambda x: loss(x, d)[0])(clean_lp)
    grad_dirty = jax.grad(lambda x: loss(x, dirty)[0])(dirty_lp)
    np.testing.assert_array_equal(grad_dirty, grad_clean)
    mismatch = sampler_mismatch(dirty["old"], dirty["sampler"], m)
    for key, value in sampler_mismatch(d["old"], d["sampler"], m).items():
        assert float(mismatch[key]) == float(value)
