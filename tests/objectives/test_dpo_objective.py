"""DPO objective: the concatenated forward pass equals separate scoring; sharded == one device;
loss types and combinations selected by config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import token_logprobs
from align_jax.models import apply_model, init_params


def dpo_config(**objective):
    cfg = objectives.config_for("dpo")
    cfg.objective.update(loss_type="sigmoid", beta=0.5)
    cfg.objective.update(objective)
    cfg.model = model_config("tiny", vocab_size=64, d_model=32, head_dim=8, mlp_dim=64)
    return cfg


def pair_batch(b=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("chosen", "rejected"):
        n = rng.integers(6, length + 1, b)
        p = rng.integers(2, 5, b)  # prompt tokens (with bos)
        pos = np.arange(length)[None]
        out[f"{side}_tokens"] = np.where(
            pos < n[:, None], rng.integers(1, 64, (b, length)), 0
        ).astype(np.int32)
        out[f"{side}_segment_ids"] = (pos < n[:, None]).astype(np.int32)
        out[f"{side}_mask"] = ((pos >= p[:, None]) & (pos < n[:, None])).astype(np.float32)
    out.update(
        margin=np.zeros(b, np.float32),
        label=np.ones(b, np.float32),
        valid=np.ones(b, np.float32),
        index=np.arange(b, dtype=np.int32),
    )
    return out


def seq_logps(graphdef, params, tokens, segments, mask):
    """Summed completion log-probs, one row at a time, unpadded (independent of the batch path)."""
    out = []
    for t, s, m in zip(tokens, segments, mask, strict=True):
        n = int(s.sum())
        logits = apply_model(graphdef, params, jnp.asarray(t[None, : n - 1]))
        lp = token_logprobs(logits, jnp.asarray(t[None, 1:n]))[0]
        out.append(float(jnp.sum(lp * m[1:n])))
    return np.array(out)


def test_dpo_loss_matches_independent_computation():
    cfg = dpo_config()
    one = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    graphdef, policy, _ = init_params(cfg.model, one, DEFAULT_RULES, 0)
    _, reference, _ = init_params(cfg.model, one, DEFAULT_RULES, 1)
    batch = pair_batch()
    objective = objectives.build(cfg, graphdef)
    loss_sum, (count, metrics) = objective.loss_fn(policy, {"reference": reference}, batch, None)
    lc, lr = (
        seq_logps(
            graphdef, policy, batch[f"{s}_tokens"], batch[f"{s}_segment_ids"], batch[f"{s}_mask"]
        )
        for s in ("chosen", "rejected")
    )
    rc, rr = (
        seq_logps(
            graphdef, reference, batch[f"{s}_tokens"], batch[f"{s}_segment_ids"], batch[f"{s}_mask"]
        )
        for s in ("chosen", "rejected")
    )
    delta = (lc - rc) - (lr - rr)
    want = np.log1p(np.exp(-0.5 * delta))  # -log sigmoid(beta * delta)
    assert float(count) == 8
    assert float(loss_sum) == pytest.approx(want.sum(), rel=1e-4)
    assert float(metrics["reward_accuracy"][0]) == float(np.sum(lc - rc > lr - rr))
    # The reference log-probs the precompute pass stores are the same numbers.
    ref_c, ref_r = objective.reference_logps_fn(reference, batch)
    np.testing.assert_allclose(ref_c, rc, rtol=1e-4, atol=1e-4)
    pre = dict(batch, ref_chosen_logps=np.asarray(ref_c), ref_rejected_logps=np.asarray(ref_r))
    assert float(objective.loss_fn(policy, None, pre, None)[0]) == pytest.approx(
        float(loss_sum), rel=1e-5
    )


def test_sharded_dpo_gradients_equal_single_device(devices):
    cfg = dpo_config(loss_type="sigmoid,bco_pair,sft", loss_weights="0.8,0.2,1.0")
    batch = pair_batch(seed=1)
    grads = []
    for shape in (
        {"data": 1, "fsdp": 1, "tensor": 1},
        {"data": 2, "fsdp": 2, "tensor": 2},
        {"data": 1, "fsdp": 8, "tensor": 1},
    ):
        mesh = parallel.make_mesh(shape, devices[: np.prod(list(shape.values()))])
        graphdef, policy, _ = init_params(cfg.model, mesh, DEFAULT_RULES, 0)
        _, reference, _ = init_params(cfg.model, mesh, DEFAULT_RULES, 1)
        objective = objectives.build(cfg, graphdef)
        with parallel.sharding_context(mesh, DEFAULT_RULES):
            g = jax.jit(jax.grad(lambda p, r, b, o=objective: o.loss_fn(p, r, b, None)[0]))(
                policy, {"reference": reference}, batch
            )
        grads.append(jax.device_get(g))
    for other in grads[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()),
            other,
            grads[0],
        )


def test_loss_type_validation_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"loss_type 'dpoo' is not valid .* \['sigmoid'"):
        objectives.build(dpo_config(loss_type="dpoo"), None)
    with pytest.raises(ValueError, match="has 1 weights for 2 loss types"):
        objectives.build(dpo_config(loss_type="sigmoid,ipo", loss_weights="1.0"), None)
