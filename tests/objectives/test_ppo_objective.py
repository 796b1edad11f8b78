"""PPO as an online objective (align_jax/objectives/ppo.py) on samples of the real sampler:
the prepared rewards, GAE returns and whitened advantages against numpy, the adaptive KL
coefficient, one epoch × one minibatch being exactly on-policy, several updates changing
both models, and a sharded step equal to one device.

One tiny policy samples 4 prompts of 1-5 tokens twice each at T = 0.9; a value model (the
policy's shape, scalar head) and a reference of other seeds; rewards are fixed numbers.
"""

import jax
import numpy as np
import pytest
from tiny_runs import TINY_MODEL, assert_trees_close, make_mesh

from align_jax import models, objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import token_logprobs
from align_jax.models import apply_model, init_params
from align_jax.objectives.ppo import value_model
from align_jax.rollout import Sampler, SamplingParams
from align_jax.rollout.rows import training_rows
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer, per_model
from align_jax.training.rl_step import RLStep

PROMPTS = [[1], [1, 5, 9], [1, 7, 3, 11, 4], [1, 20]]
G, T, PROMPT_LEN, TEMP, EOS, PAD = 2, 6, 6, 0.9, 3, 0
WIDTH = PROMPT_LEN + T
SCORES = np.array([0.5, -0.5, 1.0, 0.0, 2.0, -1.0, 0.25, 1.0], np.float32)


def ppo_config(**objective):
    cfg = objectives.config_for("ppo")
    cfg.model = model_config(**{**TINY_MODEL, "vocab_size": 64, "init_std": 0.2})
    cfg.data.batch_size = len(PROMPTS)
    cfg.rollout.update(max_new_tokens=T, temperature=TEMP, top_k=0, top_p=1.0)
    cfg.objective.update({"num_generations": G, "ppo_epochs": 1, "num_minibatches": 1,
                          "value_learning_rate": 0.05, **objective})  # fmt: skip
    cfg.optimizer.update(
        name="sgd", learning_rate=0.2, schedule="constant", warmup_steps=0, momentum=0.0,
        weight_decay=0.0, grad_clip_norm=0.0,
    )  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def rollout():
    """(graphdefs {policy, value}, host params {policy, value, reference}, training batch)."""
    cfg = ppo_config()
    mesh = make_mesh()
    graphdef, policy, _ = init_params(cfg.model, mesh, DEFAULT_RULES, 0)
    value_graphdef, value, _ = init_params(value_model(cfg).model, mesh, DEFAULT_RULES, 1)
    _, reference, _ = init_params(cfg.model, mesh, DEFAULT_RULES, 2)
    sampler = Sampler(graphdef, mesh, DEFAULT_RULES, eos_id=EOS, pad_id=PAD)
    sp = SamplingParams(max_new_tokens=T, temperature=TEMP, top_k=0, top_p=1.0, n=G)
    # the first seed whose samples include one ending with eos and one truncated
    for seed in range(200):
        out = sampler.generate(policy, PROMPTS, sp, seed=seed, prompt_len=PROMPT_LEN)
        lengths = out["mask"].sum(axis=1)
        ends = np.array([n > 0 and out["tokens"][i, n - 1] == EOS for i, n in enumerate(lengths)])
        if ends.any() and not ends.all():
            break
    else:
        pytest.fail("no seed in 200 gave both endings")
    batch = training_rows(
        [PROMPTS[j] for j in out["prompt_index"]], out["tokens"], out["mask"], out["logprobs"],
        width=WIDTH, pad_id=PAD,
    )  # fmt: skip
    batch["rewards"] = SCORES
    batch["has_eos"] = ends.astype(np.int32)
    params = jax.device_get({"policy": policy, "value": value, "reference": reference})
    return {"policy": graphdef, "value": value_graphdef}, params, batch


def forwards(graphdefs, params, batch):
    """(policy log-probs at T, reference log-probs at T, values) [N, W-1], plain jitted."""

    @jax.jit
    def fn(params, batch):
        args = (batch["tokens"][:, :-1], batch["positions"][:, :-1], batch["segment_ids"][:, :-1])
        targets = batch["tokens"][:, 1:]
        logp = token_logprobs(apply_model(graphdefs["policy"], params["policy"], *args), targets,
                              temperature=TEMP)  # fmt: skip
        ref = token_logprobs(apply_model(graphdefs["policy"], params["reference"], *args),
                             targets, temperature=TEMP)  # fmt: skip
        return logp, ref, apply_model(graphdefs["value"], params["value"], *args)

    return [np.asarray(x, np.float64) for x in fn(params, batch)]


def numpy_targets(logp, ref, values, batch, *, kl_coef, gamma, lam, missing_eos=0.0):
    """Per-token rewards (k1), GAE by the textbook loop over each row, whitened advantages."""
    mask = batch["completion_mask"] > 0
    n_rows, width = mask.shape
    adv = np.zeros((n_rows, width))
    ret = np.zeros((n_rows, width))
    for i in range(n_rows):
        idx = np.flatnonzero(mask[i])  # a row's completion tokens are contiguous
        score = SCORES[i] - (missing_eos if not batch["has_eos"][i] else 0.0)
        r = -kl_coef * (logp[i, idx] - ref[i, idx])
        r[-1] += score
        v = values[i, idx]
        running = 0.0
        for j in reversed(range(len(idx))):
            next_v = v[j + 1] if j + 1 < len(idx) else 0.0
            running = r[j] + gamma * next_v - v[j] + gamma * lam * running
            adv[i, idx[j]] = running
            ret[i, idx[j]] = running + v[j]
    flat = adv[mask]
    white = np.where(mask, (adv - flat.mean()) / np.sqrt(flat.var(ddof=1) + 1e-8), 0.0)
    return white, ret


def prepare(graphdefs, params, batch, mesh=None, state=None, micro_batches=1, **objective):
    cfg = ppo_config(**objective)
    cfg.rollout.prepare_micro_batches = micro_batches
    obj = objectives.build(cfg, graphdefs["policy"])
    state = state or obj.initial_state()
    with parallel.sharding_context(mesh or make_mesh(), DEFAULT_RULES):
        trained = {"policy": params["policy"], "value": params["value"]}
        out = jax.jit(obj.prepare_fn)(trained, {"reference": params["reference"]}, batch, state)
    return jax.device_get(out)


@pytest.mark.parametrize(
    "options",
    [
        dict(gamma=1.0, lam=0.95, kl_coef=0.05),
        dict(gamma=0.9, lam=0.8, kl_coef=0.3, missing_eos_penalty=1.5),
    ],  # fmt: skip
    ids=["trl_defaults", "discounted_with_missing_eos_penalty"],
)
def test_prepared_advantages_and_returns_against_numpy(rollout, options):
    graphdefs, params, batch = rollout
    logp, ref, values = forwards(graphdefs, params, batch)
    out, metrics, _ = prepare(graphdefs, params, batch, **options)
    mask = batch["completion_mask"] > 0
    want_adv, want_ret = numpy_targets(
        logp, ref, values, batch, kl_coef=options["kl_coef"], gamma=options["gamma"],
        lam=options["lam"], missing_eos=options.get("missing_eos_penalty", 0.0),
    )  # fmt: skip
    np.testing.assert_allclose(out["returns"], want_ret, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["advantages"], want_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["old_values"], np.where(mask, values, 0.0), atol=1e-5)
    kl = np.where(mask, logp - ref, 0.0).sum(axis=1).mean()
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-5)
    assert float(metrics["non_score_reward"]) == pytest.approx(-options["kl_coef"] * kl, rel=1e-4)
    assert float(metrics["kl_coef"]) == pytest.approx(options["kl_coef"])
    resid = (want_ret - values)[mask]
    explained = 1 - resid.var() / want_ret[mask].var()
    assert float(metrics["explained_variance"]) == pytest.approx(explained, rel=1e-3, abs=1e-4)


def test_prepare_over_micro_batches_on_a_sharded_mesh_gives_the_same_targets(rollout):
    """`rollout.prepare_micro_batches=4`: the policy, reference and value forwards each run
    as a `lax.map` over 4 micro-batches of 2 rows, and the targets are the numpy ones."""
    graphdefs, params, batch = rollout
    options = dict(gamma=0.9, lam=0.8, kl_coef=0.3)
    mesh = make_mesh(data=2, tensor=2)
    cfg = ppo_config(**options)
    cfg.rollout.prepare_micro_batches = 4
    obj = objectives.build(cfg, graphdefs["policy"])
    trained = {"policy": params["policy"], "value": params["value"]}
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        jaxpr = jax.make_jaxpr(obj.prepare_fn)(
            trained, {"reference": params["reference"]}, batch, obj.initial_state()
        ).jaxpr
    lengths = [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert lengths.count(4) == 3, lengths
    out, _, _ = prepare(graphdefs, params, batch, mesh=mesh, micro_batches=4, **options)
    logp, ref, values = forwards(graphdefs, params, batch)
    want_adv, want_ret = numpy_targets(logp, ref, values, batch, **options)
    mask = batch["completion_mask"] > 0
    np.testing.assert_allclose(out["old_logps"], np.where(mask, logp, 0.0), atol=2e-5)
    np.testing.assert_allclose(out["old_values"], np.where(mask, values, 0.0), atol=1e-5)
    np.testing.assert_allclose(out["returns"], want_ret, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["advantages"], want_adv, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", [1e-3, 1e3], ids=["kl_above_target", "kl_below_target"])
def test_the_adaptive_kl_coefficient_moves_toward_its_target(rollout, target):
    """Ziegler et al.'s controller, one update per rollout batch of N completions: the
    coefficient grows while the KL is above the target and shrinks below it, by
    `1 + clip(KL / target − 1, ±0.2) · N / horizon`; the used coefficient is the old one."""
    graphdefs, params, batch = rollout
    state = {"kl_coef": np.float32(0.1)}
    _, metrics, new = prepare(graphdefs, params, batch, state=state, adaptive_kl=True,
                              kl_target=target, kl_horizon=40.0)  # fmt: skip
    kl = float(metrics["kl"])
    assert kl > 1e-3 and abs(kl) < 1e3  # the sampled KL lies between the two targets
    error = np.clip(kl / target - 1.0, -0.2, 0.2)
    want = 0.1 * (1 + error * len(SCORES) / 40.0)
    assert float(new["kl_coef"]) == pytest.approx(want, rel=1e-6)
    assert (float(new["kl_coef"]) > 0.1) == (target < kl)
    assert float(metrics["kl_coef"]) == pytest.approx(0.1)
    # not adaptive: the coefficient stays
    _, _, same = prepare(graphdefs, params, batch, state=state)
    assert float(same["kl_coef"]) == pytest.approx(0.1)


def run_step(rollout, mesh, **objective):
    """One `RLStep` (prepare + updates) on `mesh`: (host state, host metrics)."""
    graphdefs, params, batch = rollout
    cfg = ppo_config(**objective)
    obj = objectives.build(cfg, graphdefs["policy"])
    shapes, shardings = {}, {}
    for name, model_cfg in (("policy", cfg.model), ("value", obj.value_model.model)):
        _, shapes[name], axes = models.abstract_params(model_cfg)
        shardings[name] = models.param_shardings(shapes[name], axes, mesh, DEFAULT_RULES)
    total = obj.updates_per_step
    value_opt = cfg.optimizer.copy_and_resolve_references()
    value_opt.learning_rate = obj.value_model.learning_rate
    tx = per_model({"policy": make_optimizer(cfg.optimizer, total)[0],
                    "value": make_optimizer(value_opt, total)[0]})  # fmt: skip
    schedule = make_optimizer(cfg.optimizer, total)[1]
    state_sh = step_lib.state_shardings(tx, shapes, shardings, mesh, obj.initial_state())
    trained = jax.device_put({"policy": params["policy"], "value": params["value"]}, shardings)
    state = step_lib.init_state(tx, trained, state_sh, obj.initial_state())
    batch_sh = step_lib.batch_shardings(batch, mesh, DEFAULT_RULES)
    frozen_sh = {"reference": shardings["policy"]}
    step = RLStep(obj, tx, schedule, 1, state_sh, batch_sh, mesh, DEFAULT_RULES, frozen_sh)
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        frozen = {"reference": jax.device_put(params["reference"], shardings["policy"])}
        state, metrics = step(state, jax.device_put(batch, batch_sh), jax.random.key(0), frozen)
    return jax.device_get(state), jax.device_get(metrics)


def test_one_epoch_one_minibatch_is_on_policy(rollout):
    """The ratio is exactly 1 and nothing is clipped: the policy loss is −mean(A) over the
    completion tokens and the value loss ½ mean((V − R)²); both models move."""
    graphdefs, params, batch = rollout
    state, metrics = run_step(rollout, make_mesh())
    out, _, _ = prepare(graphdefs, params, batch)
    mask = batch["completion_mask"] > 0
    assert float(metrics["pg_clipfrac"]) == 0.0 and float(metrics["vf_clipfrac"]) == 0.0
    assert float(metrics["ratio"]) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics["approx_kl"]) < 1e-10
    pg = -out["advantages"][mask].mean()
    vf = 0.5 * np.square(out["old_values"] - out["returns"])[mask].mean()
    assert float(metrics["pg_loss"]) == pytest.approx(pg, abs=1e-5)
    assert float(metrics["vf_loss"]) == pytest.approx(vf, rel=1e-4)
    assert float(metrics["loss"]) == pytest.approx(pg + 0.1 * vf, rel=1e-4, abs=1e-5)
    for name in ("policy", "value"):
        moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state["params"][name],
                             params[name])  # fmt: skip
        assert max(jax.tree.leaves(moved)) > 1e-3, name
    assert int(state["step"]) == 1


def test_several_epochs_and_minibatches_clip_and_a_sharded_step_equals_one_device(rollout):
    """2 epochs × 2 minibatches at a large learning rate: later updates are off-policy and
    clip; the same step on a 2 × 2 × 2 mesh gives the same parameters, value model and
    optimizer states included, and the same metrics."""
    options = dict(ppo_epochs=2, num_minibatches=2, clip_eps=0.05, clip_eps_value=0.05)
    single, m1 = run_step(rollout, make_mesh(), **options)
    sharded, m8 = run_step(rollout, make_mesh(2, 2, 2), **options)
    assert int(single["step"]) == 4
    assert float(m1["pg_clipfrac"]) > 0 and float(m1["vf_clipfrac"]) > 0
    assert float(m1["approx_kl"]) > 1e-6
    assert_trees_close(sharded["params"], single["params"], rel=1e-4)
    assert_trees_close(sharded["opt_state"], single["opt_state"], rel=1e-4)
    for k in ("loss", "pg_loss", "vf_loss", "kl", "explained_variance"):
        assert float(m8[k]) == pytest.approx(float(m1[k]), rel=1e-4, abs=1e-6), k


def test_config_errors_name_the_key():
    graphdef = None
    for options, key in [
        (dict(kl_estimator="k4"), "kl_estimator"),
        (dict(ppo_epochs=0), "ppo_epochs"),
        (dict(num_minibatches=3), "num_minibatches"),
        (dict(lam=1.5), "lam"),
        (dict(vf_coef=-1.0), "vf_coef"),
    ]:
        with pytest.raises(ValueError, match=f"config.objective.{key}"):
            objectives.build(ppo_config(**options), graphdef)


def test_the_value_model_is_the_policys_shape_with_a_scalar_head_and_starts_where_configured():
    cfg = ppo_config()
    cfg.init_from = "runs/sft"
    assert value_model(cfg).init_from == "runs/sft"
    assert value_model(cfg).learning_rate == pytest.approx(0.05)
    cfg.rewards.reward_model = "runs/rm"
    assert value_model(cfg).init_from == "runs/rm"
    cfg.objective.value_from = "runs/other"
    cfg.objective.value_learning_rate = 0.0
    v = value_model(cfg)
    assert v.init_from == "runs/other" and v.learning_rate == pytest.approx(0.2)
    assert v.model.head == "scalar" and cfg.model.head == "lm"
    assert {k: v for k, v in v.model.items() if k != "head"} == {
        k: v for k, v in cfg.model.items() if k != "head"
    }
