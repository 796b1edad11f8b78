"""PPO for RLHF (arXiv 1707.06347; InstructGPT, arXiv 2203.02155) as an online objective.

The classic recipe: the SFT policy samples completions of a batch of prompts (the online
batch source, align_jax/training/online.py), the reward model (or any reward function,
`config.rewards`) scores them, and the policy and a value model are updated against the
per-token reward `−β_kl · kl_t` plus the score at the last token, with GAE.

The trained parameters are `{"policy", "value"}`, one optimizer each (`Objective.
value_model`; the value model's learning rate is `value_learning_rate`). The value model
has the policy's architecture with a scalar head and starts from `value_from`: "" takes the
reward model's run (`config.rewards.reward_model`) when there is one, its scalar head
restored, else `config.init_from` (the SFT model) with a new head. The frozen reference is
`reference_from` or `config.init_from`.

The step (align_jax/training/rl_step.py), all jitted:

1. `prepare_fn` once per rollout batch, without gradient: the rollout policy's log-probs
   of the sampled tokens (at the sampling temperature), the reference's, the value model's
   values; the per-token rewards (`losses.per_token_rewards`, `kl_estimator` k1 or k3,
   `missing_eos_penalty` taken off the score of a completion without eos), GAE
   (`losses.gae`, γ, λ), the advantages whitened over the batch's completion tokens
   (`losses.masked_whiten`), and the adaptive KL controller's next coefficient
   (`losses.adaptive_kl_coef`, Ziegler et al.; `state["objective"]["kl_coef"]`,
   checkpointed with the train state);
2. `ppo_epochs` passes over `num_minibatches` minibatches, one update of both models each:
   `pg + vf_coef · vf`, the clipped policy loss and the clipped value loss
   (`losses.ppo_policy_loss`, `losses.ppo_value_loss`), each a token mean over the
   minibatch (a sum and a count, so gradient accumulation equals one big batch). With one
   epoch and one minibatch the old log-probs and values are the current ones with the
   gradient stopped: the ratio is exactly 1 and nothing is clipped.

Defaults follow TRL's `PPOConfig` (kl_coef 0.05 with k1, γ 1, λ 0.95, clip 0.2 and 0.2,
vf_coef 0.1, 4 epochs, whitened advantages). Metrics: `kl` (summed over a completion, mean
over completions) and `kl_coef`, `score` (the reward the per-token rewards end with),
`non_score_reward`, policy and value clip fractions, `pg_loss`, `vf_loss`,
`explained_variance` (of the returns by the rollout's values), `entropy`, `approx_kl`
(½ mean of the squared log-ratio between rollout and updated policy), the values' and
returns' means, the sampler–trainer mismatch; the source adds rewards, lengths and times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from align_jax.losses import (
    KL_ESTIMATORS,
    adaptive_kl_coef,
    gae,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    sampler_mismatch,
)
from align_jax.models import abstract_params, apply_model
from align_jax.objectives.base import Objective, ValueModel, register
from align_jax.objectives.common import (
    forward_rows,
    map_micro_batches,
    policy_token_logps,
    rollout_logps,
    token_entropy,
)
from align_jax.objectives.grpo import check_prepare_micro_batches, online_sections


def defaults() -> ml_collections.ConfigDict:
    """PPO's `config.objective` keys (TRL's `PPOConfig` defaults where it has the key)."""
    return ml_collections.ConfigDict(
        {
            "name": "ppo",  # the objective this config trains
            "loss_type": "clip",  # the clipped surrogate, the only one
            "num_generations": 1,  # completions per prompt
            "kl_coef": 0.05,  # β_kl of the per-token KL penalty (the initial value when adaptive)
            "kl_estimator": "k1",  # the per-token KL's estimator: k1 | k2 | k3
            "adaptive_kl": False,  # adapt kl_coef toward kl_target (Ziegler et al.'s controller)
            "kl_target": 6.0,  # adaptive_kl: the target KL per completion
            "kl_horizon": 10000.0,  # adaptive_kl: the controller's horizon, in completions
            "missing_eos_penalty": 0.0,  # taken off the score of a completion without eos; 0 = off
            "gamma": 1.0,  # γ: GAE's per-token discount
            "lam": 0.95,  # λ: GAE's bias-variance trade-off
            "whiten_advantages": True,  # whiten advantages over the batch's completion tokens
            "clip_eps": 0.2,  # policy ratio clipped to [1 − ε, 1 + ε] (TRL's cliprange)
            "clip_eps_value": 0.2,  # values clipped to V_old ± this (TRL's cliprange_value)
            "vf_coef": 0.1,  # value loss weight: pg + vf_coef · vf
            "ppo_epochs": 4,  # passes over each rollout batch
            "num_minibatches": 1,  # optimizer updates per pass (minibatches of the rollout batch)
            # The value model's start: "" = config.rewards.reward_model, else config.init_from.
            "value_from": "",
            "value_learning_rate": 0.0,  # the value model's lr; 0 = config.optimizer.learning_rate
            "reference_from": "",  # the frozen reference's run or checkpoint; "" = config.init_from
        }
    )


def check_config(config) -> None:
    """Every PPO option in range; ValueError naming the key."""
    o = config.objective
    if o.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"config.objective.kl_estimator={o.kl_estimator!r}; expected one of {KL_ESTIMATORS}"
        )
    for key in ("num_generations", "ppo_epochs", "num_minibatches"):
        if not isinstance(o[key], int) or o[key] < 1:
            raise ValueError(f"config.objective.{key}={o[key]!r}; expected an integer >= 1")
    rows = config.data.batch_size * o.num_generations
    if rows % o.num_minibatches:
        raise ValueError(
            f"config.objective.num_minibatches={o.num_minibatches} does not divide the "
            f"{rows} rows of a rollout batch (data.batch_size × num_generations)"
        )
    for key in ("gamma", "lam"):
        if not 0 <= o[key] <= 1:
            raise ValueError(f"config.objective.{key}={o[key]}; expected a value in [0, 1]")
    for key in ("kl_coef", "clip_eps", "clip_eps_value", "vf_coef", "missing_eos_penalty",
                "value_learning_rate"):  # fmt: skip
        if o[key] < 0:
            raise ValueError(f"config.objective.{key}={o[key]}; expected >= 0")
    if o.adaptive_kl and (o.kl_target <= 0 or o.kl_horizon <= 0):
        raise ValueError("config.objective.kl_target and kl_horizon must be > 0 (adaptive_kl)")
    check_prepare_micro_batches(config)


def value_model(config) -> ValueModel:
    """The value model's architecture (the policy's, scalar head), start and learning rate."""
    o = config.objective
    model = config.model.copy_and_resolve_references()
    model.head = "scalar"
    init_from = o.value_from or config.rewards.reward_model or config.init_from
    lr = float(o.value_learning_rate) or float(config.optimizer.learning_rate)
    return ValueModel(model=model, init_from=init_from, learning_rate=lr)


def _masked_var(x, mask):
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(x * mask) / n
    return jnp.sum(jnp.square(x - mean) * mask) / n


@register("ppo", loss_types=("clip",), defaults=defaults, sections=online_sections)
def build_ppo(config, graphdef) -> Objective:
    check_config(config)
    o = config.objective
    temperature = float(config.rollout.temperature) or 1.0  # greedy reports T = 1 log-probs
    off_policy = o.ppo_epochs * o.num_minibatches > 1
    value = value_model(config)
    value_graphdef, _, _ = abstract_params(value.model)
    missing_eos = float(o.missing_eos_penalty) or None
    micro_batches = config.rollout.prepare_micro_batches

    def values_of(params, batch):
        """The value model's output [N, W-1] at the state before each next token."""
        tokens = batch["tokens"]
        return apply_model(
            value_graphdef, params, tokens[:, :-1], batch["positions"][:, :-1],
            batch["segment_ids"][:, :-1],
        ).astype(jnp.float32)  # fmt: skip

    def initial_state():
        return {"kl_coef": jnp.asarray(o.kl_coef, jnp.float32)}

    def prepare_fn(params, frozen, batch, objective_state):
        mask = batch["completion_mask"]
        on = mask > 0
        logps_of = lambda p: rollout_logps(graphdef, p, batch, temperature, micro_batches)  # noqa: E731
        old_logps = jnp.where(on, logps_of(params["policy"]), 0.0)
        ref_logps = jnp.where(on, logps_of(frozen["reference"]), 0.0)
        values = map_micro_batches(
            lambda r: values_of(params["value"], r), forward_rows(batch),
            micro_batches,
        )  # fmt: skip
        old_values = jnp.where(on, values, 0.0)
        kl_coef = objective_state["kl_coef"]
        rewards_bt, kl_bt = per_token_rewards(
            batch["rewards"], old_logps, ref_logps, mask, kl_coef=kl_coef,
            kl_estimator=o.kl_estimator, has_eos_b=batch["has_eos"] > 0,
            missing_eos_penalty=missing_eos,
        )  # fmt: skip
        advantages, returns = gae(rewards_bt, old_values, mask, gamma=float(o.gamma),
                                  lam=float(o.lam))  # fmt: skip
        if o.whiten_advantages:
            advantages = masked_whiten(advantages, on)
        out = dict(batch, old_logps=old_logps, old_values=old_values, advantages=advantages,
                   returns=returns)  # fmt: skip
        rows = mask.shape[0]
        kl = jnp.mean(jnp.sum(kl_bt, axis=1))
        new_state = dict(objective_state)
        if o.adaptive_kl:
            new_state["kl_coef"] = adaptive_kl_coef(
                kl_coef, kl, rows, target=float(o.kl_target), horizon=float(o.kl_horizon)
            )
        maskf = on.astype(jnp.float32)
        scores = batch["rewards"]
        if missing_eos is not None:
            scores = jnp.where(batch["has_eos"] > 0, scores, scores - missing_eos)
        metrics = sampler_mismatch(old_logps, batch["sampler_logps"], mask)
        metrics.update(
            kl=kl,
            kl_coef=kl_coef,
            score=jnp.mean(scores),
            non_score_reward=jnp.mean(jnp.sum(-kl_coef * kl_bt, axis=1)),
            explained_variance=1.0
            - _masked_var(returns - old_values, maskf) / (_masked_var(returns, maskf) + 1e-8),
            value_mean=jnp.sum(old_values * maskf) / jnp.maximum(jnp.sum(maskf), 1.0),
            return_mean=jnp.sum(returns * maskf) / jnp.maximum(jnp.sum(maskf), 1.0),
        )
        return out, metrics, new_state

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        mask = batch["completion_mask"].astype(jnp.float32)
        logps, logits = policy_token_logps(graphdef, params["policy"], batch, temperature)
        values = values_of(params["value"], batch)
        # On-policy (one update per rollout): the old log-probs and values are the current
        # ones, gradient stopped, so the ratio is exactly 1.
        old_logps = batch["old_logps"] if off_policy else jax.lax.stop_gradient(logps)
        old_values = batch["old_values"] if off_policy else jax.lax.stop_gradient(values)
        pg, pg_clipped = ppo_policy_loss(logps, old_logps, batch["advantages"],
                                         clip_eps=float(o.clip_eps))  # fmt: skip
        vf, vf_clipped = ppo_value_loss(values, old_values, batch["returns"],
                                        clip_eps=float(o.clip_eps_value))  # fmt: skip
        pg, vf = jnp.where(mask > 0, pg, 0.0), jnp.where(mask > 0, vf, 0.0)
        n = jnp.sum(mask)
        log_ratio = jnp.where(mask > 0, jax.lax.stop_gradient(logps) - batch["old_logps"], 0.0)
        metrics = {
            "pg_loss": (jnp.sum(pg), n),
            "vf_loss": (jnp.sum(vf), n),
            "pg_clipfrac": (jnp.sum(pg_clipped * mask), n),
            "vf_clipfrac": (jnp.sum(vf_clipped * mask), n),
            "approx_kl": (0.5 * jnp.sum(jnp.square(log_ratio)), n),
            "ratio": (jnp.sum(jnp.exp(log_ratio) * mask), n),
            "entropy": (jnp.sum(token_entropy(logits, temperature) * mask), n),
        }
        return jnp.sum(pg) + float(o.vf_coef) * jnp.sum(vf), (n, metrics)

    return Objective(
        "ppo",
        loss_fn,
        batch_kind="rollouts",
        frozen_models=("reference",),
        prepare_fn=prepare_fn,
        updates_per_step=int(o.ppo_epochs * o.num_minibatches),
        num_minibatches=int(o.num_minibatches),
        initial_state=initial_state,
        value_model=value,
        prepare_forwards=3.0,  # the rollout policy, the reference, the value model
    )
