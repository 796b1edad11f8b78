"""The DPO objective's options as a run uses them (`objectives.build` + `loss_fn`), checked
against the formulas applied by hand in numpy to log-probs the test computes itself (one
plain forward per model, log-softmax in float64): WPO weights (arXiv 2406.11827), LD-DPO
(2409.06411), f-divergence scores (2309.16240), label smoothing (conservative and robust
DPO) and the length-normalised types (ipo, sigmoid_norm).

Each case also checks that the option changes the loss by far more than the tolerance, so
a run that silently ignored it would fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.models import apply_model, init_params

BETA = 0.5
VOCAB = 64


def dpo_config(**objective):
    cfg = objectives.config_for("dpo")
    cfg.objective.update(loss_type="sigmoid", beta=BETA)
    cfg.objective.update(objective)
    # A larger init scale than the default makes next-token distributions far from uniform,
    # so WPO's weights are far from 1 and the policy/reference log-ratios are O(1).
    cfg.model = model_config(
        "tiny", vocab_size=VOCAB, d_model=32, head_dim=8, mlp_dim=64, init_std=0.2
    )
    return cfg


def pair_batch(b=8, length=14, seed=0):
    """Right-padded pairs; chosen and rejected completions of different lengths."""
    rng = np.random.default_rng(seed)
    pos = np.arange(length)[None]
    out = {}
    for side in ("chosen", "rejected"):
        n = rng.integers(7, length + 1, b)  # real tokens
        p = rng.integers(2, 5, b)  # prompt tokens (bos included)
        tokens = rng.integers(1, VOCAB, (b, length))
        out[f"{side}_tokens"] = np.where(pos < n[:, None], tokens, 0).astype(np.int32)
        out[f"{side}_segment_ids"] = (pos < n[:, None]).astype(np.int32)
        out[f"{side}_mask"] = ((pos >= p[:, None]) & (pos < n[:, None])).astype(np.float32)
    out.update(
        margin=np.zeros(b, np.float32),
        label=np.ones(b, np.float32),
        valid=np.ones(b, np.float32),
        index=np.arange(b, dtype=np.int32),
    )
    return out


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.fixture(scope="module")
def setup():
    """(graphdef, policy, reference, batch, side data): per side, the completion's
    per-token log-probs under both models, its target mask, and log Σ_v π(v)² per position
    (WPO's correction), all from one unsegmented forward of the padded rows (causal
    attention: a real position never sees the padding after it)."""
    cfg = dpo_config()
    one = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    graphdef, policy, _ = init_params(cfg.model, one, DEFAULT_RULES, 0)
    rng = np.random.default_rng(1)
    reference = jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + 0.05 * rng.standard_normal(x.shape), x.dtype),
        policy,
    )
    batch = pair_batch()
    forward = jax.jit(lambda params, tokens: apply_model(graphdef, params, tokens))
    sides = {}
    for side in ("chosen", "rejected"):
        tokens = batch[f"{side}_tokens"]
        targets = tokens[:, 1:]
        mask = batch[f"{side}_mask"][:, 1:].astype(np.float64)
        out = {"mask": mask}
        for name, params in (("policy", policy), ("reference", reference)):
            logp = log_softmax(forward(params, tokens[:, :-1]))
            out[name] = np.take_along_axis(logp, targets[..., None], -1)[..., 0] * mask
            if name == "policy":
                out["log_sum_p2"] = np.log(np.exp(2.0 * logp).sum(-1))
        sides[side] = out
    return graphdef, policy, reference, batch, sides


def run_objective(setup, batch=None, frozen="reference", **objective):
    graphdef, policy, reference, default_batch, _ = setup
    objective_fn = objectives.build(dpo_config(**objective), graphdef)
    frozen = {"reference": reference} if frozen == "reference" else frozen
    loss_sum, (count, metrics) = jax.jit(objective_fn.loss_fn)(
        policy, frozen, default_batch if batch is None else batch, None
    )
    metrics = {k: float(s) / float(c) for k, (s, c) in metrics.items()}
    return float(loss_sum), float(count), metrics, objective_fn


def sums(sides, model):
    return sides["chosen"][model].sum(-1), sides["rejected"][model].sum(-1)


def ld_sums(sides, model, alpha):
    """LD-DPO: the first min(|yc|, |yr|) completion tokens of each side in full, the rest
    times alpha, the tokens located by the mask (not by position)."""
    out = []
    for side in ("chosen", "rejected"):
        logps, rows = sides[side][model], []
        for i in range(len(logps)):
            public = int(min(sides["chosen"]["mask"][i].sum(), sides["rejected"]["mask"][i].sum()))
            where = np.flatnonzero(sides[side]["mask"][i])
            rows.append(logps[i, where[:public]].sum() + alpha * logps[i, where[public:]].sum())
        out.append(np.array(rows))
    return tuple(out)


def wpo_weights(sides):
    """w(yc) · w(yr), w(y) = exp(mean over completion tokens of log π(y_t) − log Σ_v π(v)²)."""
    weight = 1.0
    for side in ("chosen", "rejected"):
        s = sides[side]
        per_token = (s["policy"] - s["log_sum_p2"]) * s["mask"]
        weight = weight * np.exp(per_token.sum(-1) / s["mask"].sum(-1))
    return weight


def f_score(rho, kind, alpha=0.5):
    if kind == "reverse_kl":
        return rho
    if kind == "forward_kl":
        return 1.0 - np.exp(-rho)
    if kind == "js_divergence":
        return np.log(2.0) + log_sigmoid(rho)
    return (1.0 - np.exp(-alpha * rho)) / alpha  # alpha_divergence


def sigmoid_losses(chosen, rejected, ref_chosen, ref_rejected, *, eps=0.0, f="reverse_kl", a=0.5):
    delta = f_score(chosen - ref_chosen, f, a) - f_score(rejected - ref_rejected, f, a)
    return -(1.0 - eps) * log_sigmoid(BETA * delta) - eps * log_sigmoid(-BETA * delta)


def check(got, want, without, factor=100):
    """`got` equals the by-hand `want`, and the option's absence (`without`) is `factor`
    times the tolerance off."""
    assert got == pytest.approx(want, rel=2e-4, abs=1e-5)
    assert abs(without - want) > factor * (2e-4 * abs(want) + 1e-5), (want, without)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_sigmoid_and_robust(setup, eps):
    sides = setup[4]
    logps = (*sums(sides, "policy"), *sums(sides, "reference"))
    plain = sigmoid_losses(*logps).sum()

    got, count, metrics, _ = run_objective(setup, label_smoothing=eps)
    assert count == 8
    check(got, sigmoid_losses(*logps, eps=eps).sum(), plain)

    delta = (logps[0] - logps[2]) - (logps[1] - logps[3])
    robust = (-(1.0 - eps) * log_sigmoid(BETA * delta) + eps * log_sigmoid(-BETA * delta)) / (
        1.0 - 2.0 * eps
    )
    got, *_ = run_objective(setup, loss_type="robust", label_smoothing=eps)
    check(got, robust.sum(), plain)
    # Rewards are logged unsmoothed: β ρ.
    assert metrics["reward_margin"] == pytest.approx(np.mean(BETA * delta), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    "f_divergence, f_alpha",
    [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.3)],
)
def test_f_divergence_scores(setup, f_divergence, f_alpha):
    sides = setup[4]
    logps = (*sums(sides, "policy"), *sums(sides, "reference"))
    want = sigmoid_losses(*logps, f=f_divergence, a=f_alpha).sum()
    got, _, metrics, _ = run_objective(setup, f_divergence=f_divergence, f_alpha=f_alpha)
    check(got, want, sigmoid_losses(*logps).sum())
    if f_divergence == "alpha_divergence":
        # The other α convention ((1 − e^{−(1−α)ρ}) / (1−α)) differs at α ≠ 0.5.
        check(got, want, sigmoid_losses(*logps, f=f_divergence, a=1.0 - f_alpha).sum())
    # The logged rewards stay β ρ whatever the score.
    rho_c = logps[0] - logps[2]
    assert metrics["chosen_reward"] == pytest.approx(np.mean(BETA * rho_c), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm"])
def test_length_normalised_types(setup, loss_type):
    sides = setup[4]
    lc, lr = sums(sides, "policy")
    rc, rr = sums(sides, "reference")
    len_c, len_r = sides["chosen"]["mask"].sum(-1), sides["rejected"]["mask"].sum(-1)
    assert not np.array_equal(len_c, len_r)  # else normalising could not be told apart
    normalised = (lc - rc) / len_c - (lr - rr) / len_r
    unnormalised = (lc - rc) - (lr - rr)
    if loss_type == "ipo":
        want = np.square(normalised - 1.0 / (2.0 * BETA))
        without = np.square(unnormalised - 1.0 / (2.0 * BETA))
    else:
        want, without = -log_sigmoid(BETA * normalised), -log_sigmoid(BETA * unnormalised)
    got, _, metrics, _ = run_objective(setup, loss_type=loss_type)
    check(got, want.sum(), without.sum())
    # Rewards are logged unnormalised, as TRL does.
    assert metrics["reward_margin"] == pytest.approx(
        np.mean(BETA * unnormalised), rel=1e-4, abs=1e-5
    )


def test_wpo_weights_scale_each_pair(setup):
    sides = setup[4]
    logps = (*sums(sides, "policy"), *sums(sides, "reference"))
    weights = wpo_weights(sides)
    assert np.all(weights < 0.9)  # far from 1: skipping the weights is visible
    per_pair = sigmoid_losses(*logps)
    got, *_ = run_objective(setup, wpo=True)
    check(got, np.sum(weights * per_pair), per_pair.sum())
    # Without WPO's Σπ² correction (Eq. 2 alone) the weights would be exp(mean log π(y_t)).
    eq2 = np.exp(sides["chosen"]["policy"].sum(-1) / sides["chosen"]["mask"].sum(-1))
    eq2 *= np.exp(sides["rejected"]["policy"].sum(-1) / sides["rejected"]["mask"].sum(-1))
    check(got, np.sum(weights * per_pair), np.sum(eq2 * per_pair))


def test_wpo_weights_are_constants_in_the_gradient(setup):
    """With one valid pair, ∇(w ℓ) = w ∇ℓ exactly when w is gradient-stopped."""
    graphdef, policy, reference, batch, sides = setup
    one_pair = dict(batch, valid=np.eye(8, dtype=np.float32)[2])
    grads = {}
    for wpo in (False, True):
        objective = objectives.build(dpo_config(wpo=wpo), graphdef)
        grads[wpo] = jax.jit(
            jax.grad(
                lambda p, o=objective: o.loss_fn(p, {"reference": reference}, one_pair, None)[0]
            )
        )(policy)
    w = wpo_weights(sides)[2]
    flat_plain, flat_wpo = (
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads[k])]) for k in (False, True)
    )
    scale = np.abs(flat_plain).max()
    np.testing.assert_allclose(flat_wpo, w * flat_plain, rtol=1e-3, atol=1e-4 * w * scale)


def test_ld_alpha_desensitises_the_tail_of_both_models(setup):
    graphdef, policy, reference, batch, sides = setup
    alpha = 0.4
    ld = (*ld_sums(sides, "policy", alpha), *ld_sums(sides, "reference", alpha))
    plain = (*sums(sides, "policy"), *sums(sides, "reference"))
    got, _, metrics, objective = run_objective(setup, ld_alpha=alpha)
    check(got, sigmoid_losses(*ld).sum(), sigmoid_losses(*plain).sum())
    # LD applied to the policy only (reference left plain) is a different number.
    check(got, sigmoid_losses(*ld).sum(), sigmoid_losses(*ld[:2], *plain[2:]).sum())
    assert metrics["chosen_logps"] == pytest.approx(np.mean(ld[0]), rel=1e-4)
    assert metrics["rejected_reward"] == pytest.approx(
        np.mean(BETA * (ld[1] - ld[3])), rel=1e-4, abs=1e-5
    )
    # Precomputed reference log-probs are LD sums too, and give the same loss.
    ref_c, ref_r = objective.reference_logps_fn(reference, batch)
    np.testing.assert_allclose(ref_c, ld[2], rtol=1e-4)
    np.testing.assert_allclose(ref_r, ld[3], rtol=1e-4)
    pre = dict(batch, ref_chosen_logps=np.asarray(ref_c), ref_rejected_logps=np.asarray(ref_r))
    got_pre, *_ = run_objective(setup, batch=pre, frozen=None, ld_alpha=alpha)
    assert got_pre == pytest.approx(got, rel=1e-5)


def test_options_compose(setup):
    """LD sums feed the f-divergence scores, smoothing applies to their margin, and WPO's
    weights come from the policy's plain per-token log-probs."""
    sides = setup[4]
    alpha, eps = 0.2, 0.2
    ld = (*ld_sums(sides, "policy", alpha), *ld_sums(sides, "reference", alpha))
    plain = (*sums(sides, "policy"), *sums(sides, "reference"))
    weights = wpo_weights(sides)
    want = np.sum(weights * sigmoid_losses(*ld, eps=eps, f="js_divergence"))
    got, *_ = run_objective(
        setup, ld_alpha=alpha, label_smoothing=eps, f_divergence="js_divergence", wpo=True
    )
    # The WPO weights (~0.03 a pair) shrink the loss, and with it what LD changes: a smaller
    # margin over the tolerance than the single-option cases, still well clear of it.
    check(got, want, np.sum(weights * sigmoid_losses(*plain, eps=eps, f="js_divergence")), 10)
    check(got, want, np.sum(weights * sigmoid_losses(*ld, f="js_divergence")), 10)
    check(got, want, np.sum(sigmoid_losses(*ld, eps=eps, f="js_divergence")))
