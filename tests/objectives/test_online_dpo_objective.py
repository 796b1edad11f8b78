"""Online DPO's prepare pass (align_jax/objectives/online_dpo.py): each prompt's best and worst
completion by reward become the pair, and the reference's summed completion log-probs of both
sides equal a plain forward's, also over micro-batches of rows on a sharded mesh."""

import jax
import numpy as np
import pytest
from tiny_runs import TINY_MODEL, make_mesh

from align_jax import models, objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import token_logprobs
from align_jax.models import apply_model, init_params
from align_jax.rollout.rows import training_rows

PROMPTS = [[1, 5], [1, 7, 3], [1], [1, 20, 9, 4]]
G, T, WIDTH = 3, 5, 10
REWARDS = np.array([0.1, 0.9, 0.5, 1, 1, 1, -2, 0.0, 3, 2, 1, 0], np.float32)  # prompt 1 ties


def online_dpo_config(micro_batches=1):
    cfg = objectives.config_for("online_dpo")
    cfg.model = model_config(**{**TINY_MODEL, "vocab_size": 64, "init_std": 0.2})
    cfg.data.batch_size = len(PROMPTS)
    cfg.objective.num_generations = G
    cfg.rollout.update(max_new_tokens=T, prepare_micro_batches=micro_batches)
    return cfg


@pytest.fixture(scope="module")
def rollout():
    rng = np.random.default_rng(0)
    rows = len(PROMPTS) * G
    completions = rng.integers(4, 64, size=(rows, T)).astype(np.int32)
    lengths = rng.integers(1, T + 1, size=rows)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    prompts = [p for p in PROMPTS for _ in range(G)]
    batch = training_rows(prompts, completions, mask, np.zeros((rows, T)), width=WIDTH, pad_id=0)
    batch["rewards"] = REWARDS
    batch["has_eos"] = np.ones(rows, np.int32)
    cfg = online_dpo_config()
    _, reference, _ = init_params(cfg.model, make_mesh(data=1),
                                  DEFAULT_RULES, 3)  # fmt: skip
    return models.abstract_params(cfg.model)[0], jax.device_get(reference), batch


def numpy_totals(graphdef, params, batch):
    """Each row's summed completion log-probs from one plain forward."""
    logits = jax.jit(lambda p, t, pos, seg: apply_model(graphdef, p, t, pos, seg))(
        params, batch["tokens"][:, :-1], batch["positions"][:, :-1], batch["segment_ids"][:, :-1]
    )
    logps = np.asarray(token_logprobs(logits, batch["tokens"][:, 1:]))
    return np.where(batch["completion_mask"] > 0, logps, 0.0).sum(axis=1)


@pytest.mark.parametrize("micro_batches, mesh", [(1, dict(data=1)), (2, dict(data=2, tensor=2))])
def test_pairs_and_reference_log_probs(rollout, micro_batches, mesh):
    graphdef, reference, batch = rollout
    totals = numpy_totals(graphdef, reference, batch)
    obj = objectives.build(online_dpo_config(micro_batches), graphdef)
    mesh = make_mesh(**mesh)
    prepare = lambda b: obj.prepare_fn(None, {"reference": reference}, b, {})[:2]  # noqa: E731
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        jaxpr = jax.make_jaxpr(prepare)(batch).jaxpr
        out, metrics = jax.device_get(jax.jit(prepare)(batch))
    lengths = [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert lengths.count(micro_batches) == (2 if micro_batches > 1 else 0), lengths
    rewards = REWARDS.reshape(-1, G)
    best = np.arange(len(PROMPTS)) * G + rewards.argmax(1)
    worst = np.arange(len(PROMPTS)) * G + rewards.argmin(1)
    np.testing.assert_array_equal(out["chosen_tokens"], batch["tokens"][best])
    np.testing.assert_array_equal(out["rejected_tokens"], batch["tokens"][worst])
    np.testing.assert_allclose(out["ref_chosen_logps"], totals[best], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["ref_rejected_logps"], totals[worst], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out["valid"], [1, 0, 1, 1])
    assert float(metrics["tie_fraction"]) == pytest.approx(0.25)


def test_prepare_micro_batches_must_divide_each_side():
    cfg = online_dpo_config(3)
    with pytest.raises(ValueError, match=r"prepare_micro_batches=3; .* the 4 rows of each side"):
        objectives.build(cfg, models.abstract_params(cfg.model)[0])
