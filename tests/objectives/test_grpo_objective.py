"""GRPO as an online objective (align_jax/objectives/grpo.py, align_jax/training/rl_step.py) on
samples of the real sampler: the trainer's log-probs equal the sampler's, advantages per
estimator, μ passes over strided minibatches equal sequential train steps, sharded equals one
device, the reference for β > 0, and the config checks.

One tiny model samples 4 prompts of 1-5 tokens twice each (G = 2) at T = 0.9; the rows of
align_jax/rollout/rows.py carry the samples to every test. Programs are shared where the
shapes allow: one prepare program serves every estimator, one forward every comparison.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_runs import TINY_MODEL, assert_trees_close, make_mesh

from align_jax import models, objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import (
    group_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    token_logprobs,
)
from align_jax.models import apply_model, init_params
from align_jax.rollout import Sampler, SamplingParams
from align_jax.rollout.rows import completion_view, training_rows
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer
from align_jax.training.rl_step import RLStep, make_rl_updates

PROMPTS = [[1], [1, 5, 9], [1, 7, 3, 11, 4], [1, 20]]
G, T, PROMPT_LEN, TEMP, EOS, PAD = 2, 6, 6, 0.9, 3, 0
WIDTH = PROMPT_LEN + T
ROWS = len(PROMPTS) * G
REWARDS = np.array([0.5, 0.5, 1.0, 0.0, 2.0, -1.0, 0.25, 1.0], np.float32)  # group 0 is flat
LR = 0.2  # plain SGD: large enough that later updates are off-policy and some clip
UPDATES = dict(num_iterations=2, num_minibatches=2)
# prepare_fn's estimator options, all traced into one program (their forward passes are shared)
CASES = {
    "grpo_group": dict(advantage_estimator="grpo", scale_rewards="group"),
    "grpo_batch": dict(advantage_estimator="grpo", scale_rewards="batch"),
    "grpo_none": dict(advantage_estimator="grpo", scale_rewards="none"),
    "rloo": dict(advantage_estimator="rloo"),
    "reinforce_pp": dict(advantage_estimator="reinforce_pp", reward_kl_coef=0.0),
    "reinforce_pp_baseline": dict(advantage_estimator="reinforce_pp_baseline"),
    "masked": dict(mask_truncated_completions=True),
    "updates": UPDATES,
}


def grpo_config(**objective):
    cfg = objectives.config_for("grpo")
    cfg.model = model_config(**{**TINY_MODEL, "vocab_size": 64, "init_std": 0.2})
    cfg.data.batch_size = len(PROMPTS)
    cfg.rollout.update(max_new_tokens=T, temperature=TEMP, top_k=0, top_p=1.0)
    cfg.objective.update({"num_generations": G, **objective})
    cfg.optimizer.update(
        name="sgd", learning_rate=LR, schedule="constant", warmup_steps=0, momentum=0.0,
        weight_decay=0.0, grad_clip_norm=0.0,
    )  # fmt: skip
    return cfg


class Rollout(NamedTuple):
    graphdef: object
    params: dict  # host arrays: every mesh starts from these
    samples: dict  # the sampler's output
    batch: dict  # training rows + rewards + has_eos, as the online batch source makes them


@pytest.fixture(scope="module")
def rollout():
    cfg = grpo_config()
    mesh = make_mesh()
    graphdef, params, _ = init_params(cfg.model, mesh, DEFAULT_RULES, 0)
    sampler = Sampler(graphdef, mesh, DEFAULT_RULES, eos_id=EOS, pad_id=PAD)
    sp = SamplingParams(max_new_tokens=T, temperature=TEMP, top_k=0, top_p=1.0, n=G)
    # The first seed (one compiled program, any seed) whose samples end with eos in two
    # groups, one of them (not the flat group 0) a short one next to a truncated one:
    # ragged rows, has_eos both ways, and a group whose advantages do not cancel over tokens.
    for seed in range(200):
        out = sampler.generate(params, PROMPTS, sp, seed=seed, prompt_len=PROMPT_LEN)
        lengths = out["mask"].sum(axis=1)
        ends = np.array([n > 0 and out["tokens"][i, n - 1] == EOS for i, n in enumerate(lengths)])
        short = (ends & (lengths < T)).reshape(-1, G)[1:]
        truncated = ~ends.reshape(-1, G)[1:]
        if ends.reshape(-1, G).any(axis=1).sum() >= 2 and (short.any(1) & truncated.any(1)).any():
            break
    else:
        pytest.fail("no seed in 200 gave the samples this file needs")
    prompt_ids = [PROMPTS[j] for j in out["prompt_index"]]
    batch = training_rows(
        prompt_ids, out["tokens"], out["mask"], out["logprobs"], width=WIDTH, pad_id=PAD
    )
    batch["rewards"] = REWARDS
    batch["has_eos"] = ends.astype(np.int32)
    return Rollout(graphdef, jax.device_get(params), out, batch)


_FORWARD = {}


def forward_logps(graphdef, params, tokens, positions, segment_ids):
    """log softmax(logits / T) of each row's next tokens [N, W-1]: one plain forward pass,
    jitted once for every layout of this file (all [N, W])."""
    if "fn" not in _FORWARD:

        def fn(params, tokens, positions, segment_ids):
            logits = apply_model(
                graphdef, params, tokens[:, :-1], positions[:, :-1], segment_ids[:, :-1]
            )
            return token_logprobs(logits, tokens[:, 1:], temperature=TEMP)

        _FORWARD["fn"] = jax.jit(fn)
    return np.asarray(_FORWARD["fn"](params, tokens, positions, segment_ids))


def plain_logps(graphdef, params, batch):
    """The rows' log-probs from a forward with the model's defaults (arange positions, no
    segment ids: causal attention alone keeps right padding out of the real tokens)."""
    tokens = batch["tokens"]
    arange = np.broadcast_to(np.arange(WIDTH, dtype=np.int32), tokens.shape)
    return forward_logps(graphdef, params, tokens, arange, np.ones_like(tokens))


@pytest.fixture(scope="module")
def prepared(rollout):
    """{case: (prepared batch, prepare metrics)} on one device, host arrays."""
    built = {k: objectives.build(grpo_config(**o), rollout.graphdef) for k, o in CASES.items()}
    mesh = make_mesh()

    @jax.jit
    def prepare_all(params, batch):
        return {k: obj.prepare_fn(params, None, batch, {})[:2] for k, obj in built.items()}

    with parallel.sharding_context(mesh, DEFAULT_RULES):
        return jax.device_get(prepare_all(rollout.params, rollout.batch))


def init_state(cfg, objective, mesh, params):
    """(train state on `mesh` from host `params`, its shardings, tx, schedule)."""
    _, shapes, axes = models.abstract_params(cfg.model)
    shardings = models.param_shardings(shapes, axes, mesh, DEFAULT_RULES)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.total_steps * objective.updates_per_step)
    state_sh = step_lib.state_shardings(tx, shapes, shardings, mesh)
    state = step_lib.init_state(tx, jax.device_put(params, shardings), state_sh)
    return state, state_sh, tx, schedule


def run_rl_step(rollout, mesh, frozen=None, **objective):
    """One `RLStep` (prepare + updates) of the rollout batch on `mesh`: (state, metrics)."""
    cfg = grpo_config(**objective)
    obj = objectives.build(cfg, rollout.graphdef)
    state, state_sh, tx, schedule = init_state(cfg, obj, mesh, rollout.params)
    batch_sh = step_lib.batch_shardings(rollout.batch, mesh, DEFAULT_RULES)
    frozen_sh = None if frozen is None else {"reference": state_sh["params"]}
    step = RLStep(obj, tx, schedule, 1, state_sh, batch_sh, mesh, DEFAULT_RULES, frozen_sh)
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        batch = jax.device_put(rollout.batch, batch_sh)
        return step(state, batch, jax.random.key(0), frozen)


# ----------------------------------------------------------------------------- 1. the invariant


def test_prepared_old_logps_equal_the_samplers(rollout, prepared):
    """Prepared where later updates read them (μ × minibatches > 1); with one update, its
    own forward is at the rollout's parameters and nothing is prepared."""
    assert "old_logps" not in prepared["grpo_group"][0]
    assert "mismatch/abs_logp_diff_max" not in prepared["grpo_group"][1]
    batch, samples = rollout.batch, rollout.samples
    old, metrics = prepared["updates"]
    mask = samples["mask"] > 0
    got = completion_view(old["old_logps"], batch["completion_mask"], T)
    diff = np.abs(np.where(mask, got - samples["logprobs"], 0.0))
    assert diff.max() < 2e-5, diff.max()  # measured 1.4e-6
    assert np.all(old["old_logps"][batch["completion_mask"] == 0] == 0)
    assert float(metrics["mismatch/abs_logp_diff_max"]) == pytest.approx(diff.max(), abs=1e-6)
    # the tolerance tells alignment apart: one token off, the log-probs differ by far more
    off_by_one = np.where(mask[:, 1:], got[:, 1:] - samples["logprobs"][:, :-1], 0.0)
    assert np.abs(off_by_one).max() > 0.1


def test_positions_count_real_tokens(rollout):
    """RoPE depends on position differences only, and padding is masked by segment ids: the
    sampler's own left-padded layout read with arange positions gives its log-probs to
    rounding too. What the positions guard is a row whose real tokens have a gap (a prompt
    block padded to its slots, then the completion): arange counts the gap, the explicit
    positions (real tokens only) do not."""
    samples, params, graphdef = rollout.samples, rollout.params, rollout.graphdef
    mask = samples["mask"]
    index = samples["prompt_index"]
    arange = np.broadcast_to(np.arange(WIDTH, dtype=np.int32), (ROWS, WIDTH))

    # the sampler's layout: [pad..., prompt | completion, pad...]
    left = np.zeros((ROWS, WIDTH), np.int32)
    left_seg = np.zeros((ROWS, WIDTH), np.int32)
    # a gapped layout: [prompt, pad... | completion, pad...]
    gap = np.zeros((ROWS, WIDTH), np.int32)
    gap_seg = np.zeros((ROWS, WIDTH), np.int32)
    for row, j in enumerate(index):
        p = len(PROMPTS[j])
        left[row, PROMPT_LEN - p : PROMPT_LEN] = PROMPTS[j]
        left_seg[row, PROMPT_LEN - p : PROMPT_LEN] = 1
        gap[row, :p] = PROMPTS[j]
        gap_seg[row, :p] = 1
    for layout, seg in ((left, left_seg), (gap, gap_seg)):
        layout[:, PROMPT_LEN:] = samples["tokens"]
        seg[:, PROMPT_LEN:] = mask
    counted = np.maximum(np.cumsum(gap_seg, axis=1) - 1, 0).astype(np.int32)

    def completion_logps(tokens, positions, segment_ids):
        return forward_logps(graphdef, params, tokens, positions, segment_ids)[:, PROMPT_LEN - 1 :]

    def max_diff(logps, first=0):
        # from completion token `first` on (in the gapped layout the first completion token is
        # read off a padding slot, wrong whatever the positions)
        d = np.where(mask > 0, logps - samples["logprobs"], 0.0)[:, first:]
        return float(np.abs(d).max())

    assert max_diff(completion_logps(left, arange, left_seg)) < 2e-5  # measured 1.9e-6
    assert max_diff(completion_logps(gap, counted, gap_seg), first=1) < 2e-5
    wrong = max_diff(completion_logps(gap, arange, gap_seg), first=1)
    assert wrong > 0.5, wrong  # measured 3.1
    # every row's prompt is shorter than its slots, so every row's gap shifts its positions
    assert all(len(PROMPTS[j]) < PROMPT_LEN for j in index)


def test_rl_step_on_policy_does_not_clip(rollout, prepared):
    state, metrics = run_rl_step(rollout, make_mesh())
    metrics = jax.device_get(metrics)
    for name in ("low", "high", "region"):
        assert float(metrics[f"clip_ratio/{name}_mean"]) == 0.0, name
    assert float(metrics["mismatch/abs_logp_diff_max"]) < 2e-5
    assert float(metrics["mismatch/k3_kl"]) < 1e-9
    assert int(state["step"]) == 1
    # ratio 1: the dapo loss is -Σ A over the rollout's completion tokens / their count
    batch = prepared["grpo_group"][0]
    want = -np.sum(batch["advantages"] * batch["loss_mask"]) / batch["loss_mask"].sum()
    assert abs(want) > 0.01
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(metrics["grad_norm"]) > 0
    assert metrics["time/reference"] > 0 and metrics["time/update"] > 0


# ----------------------------------------------------------------------------- 2. advantages


def test_advantages_per_estimator(rollout, prepared):
    rewards = jnp.asarray(REWARDS)
    mask = rollout.batch["completion_mask"]
    per_row = {
        "grpo_group": group_advantages(rewards, group_size=G, scale_rewards="group"),
        "grpo_batch": group_advantages(rewards, group_size=G, scale_rewards="batch"),
        "grpo_none": group_advantages(rewards, group_size=G, scale_rewards="none"),
        "rloo": rloo_advantages(rewards, group_size=G),
    }
    per_token = {
        "reinforce_pp": reinforce_pp_advantages(rewards, jnp.asarray(mask), kl_coef=0.0),
        "reinforce_pp_baseline": reinforce_pp_baseline_advantages(
            rewards, jnp.asarray(mask), group_size=G
        ),
    }
    want = {k: np.asarray(v)[:, None] * mask for k, v in per_row.items()}
    want.update({k: np.asarray(v) for k, v in per_token.items()})
    for case, expected in want.items():
        got = prepared[case][0]["advantages"]
        assert got.shape == mask.shape, case
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=case)
        assert np.all(got[mask == 0] == 0), case
        np.testing.assert_array_equal(prepared[case][0]["loss_mask"], mask, err_msg=case)
    # the estimators differ on these rewards: each case is its own
    assert len({np.round(v, 4).tobytes() for v in want.values()}) == len(want)
    assert np.all(want["grpo_group"][:2] == 0)  # the flat group has no advantage
    assert "ref_logps" not in prepared["grpo_group"][0]


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rollout_correction_weights_the_sampler_mismatch(rollout, level):
    """A sampler whose log-probs sit d below the trainer's on every token of row i gets
    truncated importance weights min(e^d, cap) per token, or min(e^(Σ d), cap) per row."""
    batch = dict(rollout.batch)
    mask = batch["completion_mask"] > 0
    offsets = np.linspace(-0.6, 0.9, ROWS).astype(np.float32)  # per row; some rows cap at 2
    batch["sampler_logps"] = np.where(mask, batch["sampler_logps"] - offsets[:, None], 0.0)
    cap = 2.0
    objective = objectives.build(
        grpo_config(rollout_correction=level, rollout_correction_cap=cap), rollout.graphdef
    )
    with parallel.sharding_context(make_mesh(), DEFAULT_RULES):
        prepare = jax.jit(objective.prepare_fn)
        got, metrics, _ = jax.device_get(prepare(rollout.params, None, batch, {}))
    per_row = offsets if level == "token" else offsets * mask.sum(axis=1)
    want = np.where(mask, np.minimum(np.exp(per_row), cap)[:, None], 0.0)
    np.testing.assert_allclose(got["is_weights"], want, rtol=1e-4, atol=1e-6)
    assert (want[mask] == cap).any() and (want[mask] < 1).any()
    # the old log-probs are prepared (the weights read them) and the mismatch is measured
    assert float(metrics["mismatch/abs_logp_diff_max"]) == pytest.approx(
        np.abs(offsets[mask.any(axis=1)]).max(), abs=1e-4
    )


def test_mask_truncated_completions_drops_rows_without_eos(rollout, prepared):
    batch = rollout.batch
    mask, has_eos = batch["completion_mask"], batch["has_eos"]
    got = prepared["masked"][0]
    np.testing.assert_array_equal(got["loss_mask"], mask * has_eos[:, None])
    assert 0 < has_eos.sum() < ROWS
    np.testing.assert_array_equal(got["rollout_tokens"], np.full(ROWS, got["loss_mask"].sum()))
    np.testing.assert_array_equal(got["rollout_sequences"], np.full(ROWS, ROWS))
    # the advantages still cover every completion token; the loss mask drops the rows
    np.testing.assert_array_equal(got["advantages"], prepared["grpo_group"][0]["advantages"])
    unmasked = prepared["grpo_group"][0]["rollout_tokens"]
    np.testing.assert_array_equal(unmasked, np.full(ROWS, mask.sum()))


# ----------------------------------------------------------------------------- 3, 4. μ, M, mesh


@pytest.fixture(scope="module")
def scanned_updates(rollout, prepared):
    """`make_rl_updates` with μ = 2 passes × M = 2 minibatches, jitted, on one device, from
    the prepared batch: (host params after, host metrics, step)."""
    cfg = grpo_config(**UPDATES)
    obj = objectives.build(cfg, rollout.graphdef)
    mesh = make_mesh()
    state, state_sh, tx, schedule = init_state(cfg, obj, mesh, rollout.params)
    batch = prepared["updates"][0]
    batch_sh = step_lib.batch_shardings(batch, mesh, DEFAULT_RULES)
    updates = make_rl_updates(obj, tx, schedule)
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        fn = step_lib.jit_train_step(updates, state_sh, batch_sh, mesh)
        state, metrics = fn(state, jax.device_put(batch, batch_sh), jax.random.key(1), None)
    return jax.device_get(state["params"]), jax.device_get(metrics), int(state["step"])


_SEQUENTIAL = {}  # the jitted train step, compiled once for every order


def sequential_updates(rollout, prepared, order):
    """The train step of the μ = 2, M = 2 objective on the prepared batch's strided
    minibatches (rows i::2), one call per entry of `order`: (host params, [metrics])."""
    cfg = grpo_config(**UPDATES)
    obj = objectives.build(cfg, rollout.graphdef)
    mesh = make_mesh()
    state, _, tx, schedule = init_state(cfg, obj, mesh, rollout.params)
    if "fn" not in _SEQUENTIAL:
        _SEQUENTIAL["fn"] = jax.jit(step_lib.make_train_step(obj, tx, schedule))
    batch = prepared["updates"][0]
    history = []
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        for i in order:
            minibatch = {k: v[i::2] for k, v in batch.items()}
            state, metrics = _SEQUENTIAL["fn"](state, minibatch, jax.random.key(2), None)
            history.append(jax.device_get(metrics))
    return jax.device_get(state["params"]), history


def max_abs_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_passes_over_minibatches_equal_sequential_train_steps(rollout, prepared, scanned_updates):
    params, metrics, steps = scanned_updates
    assert steps == 4
    by_hand, history = sequential_updates(rollout, prepared, order=[0, 1, 0, 1])
    diff = max_abs_diff(params, by_hand)
    assert diff < 2e-6, diff  # measured 0: the same arithmetic in the same order
    for name in ("loss", "grad_norm", "entropy", "clip_ratio/region_mean", "clip_ratio/high_mean",
                 "clip_ratio/low_mean", "learning_rate"):  # fmt: skip
        want = np.mean([h[name] for h in history])
        assert float(metrics[name]) == pytest.approx(want, rel=1e-5, abs=1e-7), name
    assert float(metrics["param_norm"]) == pytest.approx(float(history[-1]["param_norm"]), 1e-6)
    # Later updates are off-policy: their ratios move away from 1 and some clip; the first
    # update's ratio is 1.
    assert history[0]["clip_ratio/region_mean"] == 0
    assert sum(h["clip_ratio/region_mean"] for h in history[1:]) > 0
    # Order and count matter at this learning rate: neither swapped minibatches nor a single
    # pass come near the scanned result.
    swapped, _ = sequential_updates(rollout, prepared, order=[1, 0, 1, 0])
    one_pass, _ = sequential_updates(rollout, prepared, order=[0, 1])
    assert max_abs_diff(params, swapped) > max(1000 * diff, 1e-3)
    assert max_abs_diff(params, one_pass) > max(1000 * diff, 1e-3)


def test_sharded_rl_step_equals_one_device(rollout, prepared, scanned_updates):
    params, metrics, _ = scanned_updates
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state, sharded = run_rl_step(rollout, mesh, **UPDATES)
    # the parameters really are split over the 8 devices
    qkv = [x for x in jax.tree.leaves(state["params"]) if x.ndim >= 2]
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in qkv)  # fmt: skip
    assert_trees_close(jax.device_get(state["params"]), params, rel=1e-5)
    sharded = jax.device_get(sharded)
    for name in ("loss", "grad_norm", "entropy", "param_norm", "clip_ratio/region_mean"):
        assert float(sharded[name]) == pytest.approx(float(metrics[name]), rel=1e-5), name
    for name, value in prepared["updates"][1].items():
        assert float(sharded[name]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), name


# ----------------------------------------------------------------------------- 5. reference


def test_frozen_models_follow_beta_and_reward_kl():
    graphdef = models.abstract_params(grpo_config().model)[0]
    frozen = lambda **o: objectives.build(grpo_config(**o), graphdef).frozen_models  # noqa: E731
    assert frozen() == ()
    assert frozen(beta=0.04) == ("reference",)
    assert frozen(advantage_estimator="reinforce_pp", reward_kl_coef=0.01) == ("reference",)
    assert frozen(advantage_estimator="reinforce_pp_baseline", reward_kl_coef=0.01) == (
        "reference",
    )
    assert frozen(advantage_estimator="reinforce_pp") == ()


def test_beta_prepares_reference_logps_and_kl(rollout):
    cfg = grpo_config(beta=0.1)
    obj = objectives.build(cfg, rollout.graphdef)
    mesh = make_mesh()

    @jax.jit
    def prepare_and_score(params, frozen, batch):
        prepared, _, _ = obj.prepare_fn(params, frozen, batch, {})
        _, (_, metrics) = obj.loss_fn(params, frozen, prepared, None)
        return prepared, metrics

    batch, graphdef = rollout.batch, rollout.graphdef
    mask = batch["completion_mask"] > 0
    policy = plain_logps(graphdef, rollout.params, batch)
    same = jax.tree.map(np.copy, rollout.params)
    other = jax.device_get(init_params(cfg.model, mesh, DEFAULT_RULES, 1)[1])
    kls = []
    for reference in (same, other):
        with parallel.sharding_context(mesh, DEFAULT_RULES):
            out, metrics = jax.device_get(
                prepare_and_score(rollout.params, {"reference": reference}, batch)
            )
        want = np.where(mask, plain_logps(graphdef, reference, batch), 0.0)
        np.testing.assert_allclose(out["ref_logps"], want, atol=2e-5)
        kl_sum, tokens = metrics["kl"]
        assert float(tokens) == mask.sum()
        # k3 = e^(ref - logp) - (ref - logp) - 1 over completion tokens
        delta = (want - policy)[mask]
        k3 = float(np.mean(np.expm1(delta) - delta))
        assert float(kl_sum / tokens) == pytest.approx(k3, rel=1e-3, abs=1e-7)
        kls.append(float(kl_sum / tokens))
    assert kls[0] < 1e-7  # reference == policy
    assert kls[1] > 0.05  # another initialisation


def test_reinforce_pp_folds_the_reference_kl_into_per_token_rewards(rollout):
    """reward_kl_coef β: r_t = −β (log π_old − log π_ref) on completion tokens, plus the
    reward at each row's last one; returns-to-go; whitened over all completion tokens
    (Bessel variance + 1e-8), computed here in numpy from separate forwards."""
    beta = 0.05
    cfg = grpo_config(advantage_estimator="reinforce_pp", reward_kl_coef=beta)
    obj = objectives.build(cfg, rollout.graphdef)
    assert obj.frozen_models == ("reference",)
    mesh = make_mesh()
    batch, graphdef = rollout.batch, rollout.graphdef
    reference = jax.device_get(init_params(cfg.model, mesh, DEFAULT_RULES, 1)[1])
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        out, _, _ = jax.device_get(
            jax.jit(obj.prepare_fn)(rollout.params, {"reference": reference}, batch, {})
        )
    mask = batch["completion_mask"] > 0
    logp = np.where(mask, plain_logps(graphdef, rollout.params, batch), 0.0)
    ref = np.where(mask, plain_logps(graphdef, reference, batch), 0.0)
    rewards = np.where(mask, -beta * (logp - ref), 0.0)
    for i in range(ROWS):
        if mask[i].any():
            rewards[i, np.flatnonzero(mask[i])[-1]] += REWARDS[i]
    returns = np.where(mask, np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1], 0.0)
    values = returns[mask]
    want = np.where(mask, (returns - values.mean()) / np.sqrt(values.var(ddof=1) + 1e-8), 0.0)
    np.testing.assert_allclose(out["advantages"], want, atol=2e-4)
    assert np.abs(logp - ref)[mask].max() > 0.1  # the KL term is not negligible here


# ----------------------------------------------------------------------------- 6. config checks


@pytest.mark.parametrize(
    "options, key",
    [
        (dict(advantage_estimator="ppo"), "config.objective.advantage_estimator"),
        (dict(num_minibatches=3), "config.objective.num_minibatches=3 does not divide the 8"),
        (dict(reward_kl_coef=0.1), "config.objective.reward_kl_coef"),
        (dict(policy_loss="cispo", delta=2.0), "config.objective.delta"),
        (dict(num_generations=1), "config.objective.num_generations=1"),
        (dict(advantage_estimator="rloo", num_generations=1), "config.objective.num_generations"),
        (dict(overlong_buffer=T + 1), "config.objective.overlong_buffer=7"),
        (dict(loss_type="sigmoid"), "config.objective.loss_type 'sigmoid' is not valid"),
    ],
)
def test_bad_options_name_their_key(options, key):
    graphdef = models.abstract_params(grpo_config().model)[0]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        objectives.build(grpo_config(**options), graphdef)


def test_good_options_build():
    # the neighbours of the bad options above are accepted
    graphdef = models.abstract_params(grpo_config().model)[0]
    for options in (
        dict(num_minibatches=4),
        dict(advantage_estimator="reinforce_pp", reward_kl_coef=0.1),
        dict(policy_loss="cispo"),
        dict(delta=2.0),
        dict(advantage_estimator="reinforce_pp", num_generations=1),
        dict(overlong_buffer=T),
        dict(loss_type="dr_grpo"),
    ):
        obj = objectives.build(grpo_config(**options), graphdef)
        assert obj.online and obj.batch_kind == "rollouts", options


# ----------------------------------------------------------------------------- 7. micro-batches


def scan_lengths(fn, *args):
    """Lengths of the top-level scans (`lax.map`s) of `fn`'s program."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"]


def test_prepare_over_micro_batches_gives_the_same_log_probs_on_a_sharded_mesh(rollout):
    """`rollout.prepare_micro_batches=4` runs each prepare forward as 4 micro-batches of 2
    rows (one `lax.map` of length 4 each, old and reference) with the same log-probs."""
    graphdef, batch = rollout.graphdef, rollout.batch
    mesh = make_mesh()
    reference = jax.device_get(init_params(grpo_config().model, mesh, DEFAULT_RULES, 1)[1])
    frozen = {"reference": reference}
    mask = batch["completion_mask"] > 0
    want = {
        "old_logps": np.where(mask, plain_logps(graphdef, rollout.params, batch), 0.0),
        "ref_logps": np.where(mask, plain_logps(graphdef, reference, batch), 0.0),
    }
    for k, sharded in ((1, make_mesh()), (4, make_mesh(data=2, tensor=2))):
        cfg = grpo_config(beta=0.1, **UPDATES)
        cfg.rollout.prepare_micro_batches = k
        obj = objectives.build(cfg, graphdef)
        prepare = lambda p, f, b, obj=obj: obj.prepare_fn(p, f, b, {})[0]  # noqa: E731
        with parallel.sharding_context(sharded, DEFAULT_RULES):
            lengths = scan_lengths(prepare, rollout.params, frozen, batch)
            out = jax.device_get(jax.jit(prepare)(rollout.params, frozen, batch))
        assert lengths.count(4) == (2 if k == 4 else 0), lengths
        for key, value in want.items():
            np.testing.assert_allclose(out[key], value, atol=2e-5, err_msg=f"{key} k={k}")


@pytest.mark.parametrize("k", [0, 3])
def test_prepare_micro_batches_must_divide_the_rows(k):
    cfg = grpo_config()
    cfg.rollout.prepare_micro_batches = k
    with pytest.raises(ValueError, match=rf"config\.rollout\.prepare_micro_batches={k}; .* 8 rows"):
        objectives.build(cfg, models.abstract_params(cfg.model)[0])
