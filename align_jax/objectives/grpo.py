"""The GRPO family as an online objective: samples of the live policy in, a policy update out.

A step's batch is one rollout batch of training rows (align_jax/rollout/rows.py): P prompts
× G completions (`num_generations`, adjacent), the sampler's log-probs and each sample's
total reward, made by the online batch source (align_jax/training/online.py). The step
(align_jax/training/rl_step.py) runs, all jitted:

1. `prepare_fn` once per rollout batch, without gradient: the log-probs of the sampled
   tokens at the rollout's parameters (the "old" policy of the ratio; also what the
   sampler–trainer mismatch compares) when a later update or the rollout correction reads
   them (with one update, its own forward gives them), the reference's when it is needed,
   the advantages, the loss mask and the rollout-correction weights;
2. `num_iterations` (μ) passes over `num_minibatches` minibatches, one optimizer update
   each, with `loss_fn` on each minibatch.

Formulas: align_jax.losses (`grpo_loss`, the advantage estimators) and docs/objectives.md.
Choices, TRL's names and defaults where TRL has the option:

- `loss_type` grpo / bnpo / dr_grpo / dapo: the aggregation, each a sum and a count, so
  gradient accumulation and minibatches equal one big batch exactly; `dapo` divides by the
  rollout batch's completion tokens shared out by rows (`grpo_loss_terms`);
- `policy_loss` clip / cispo; `epsilon_low` / `epsilon_high` (clip-higher), `delta` (two-
  sided cap, 0 = off), `importance_sampling_level` token / sequence (GSPO);
- `advantage_estimator` grpo (with `scale_rewards` group / batch / none) / rloo /
  reinforce_pp / reinforce_pp_baseline, the last two with `reward_kl_coef` (OpenRLHF's KL
  folded into the per-token rewards; needs the reference);
- `beta`: the k3 KL to the reference in the loss. With β = 0 and `reward_kl_coef` = 0 no
  reference model is loaded;
- `num_iterations` > 1 or `num_minibatches` > 1 makes later updates off-policy: the ratio
  is then taken against the prepared old log-probs. With μ = 1 and one minibatch the old
  log-probs are the current ones with the gradient stopped, so the ratio is exactly 1;
- `mask_truncated_completions`: completions that did not end with eos add no loss token;
- `rollout_correction` off / token / sequence with `rollout_correction_cap`: truncated
  importance weights for a sampler whose log-probs differ from the trainer's;
- `temperature` comes from `config.rollout`: the log-probs of both sides are those of
  `softmax(logits / T)`, the distribution the sampler drew from.

Metrics per step: the loss, clip fractions (low, high, region), `kl` (with a reference),
`entropy` of the policy over completion tokens, the sampler–trainer mismatch
(`mismatch/*`) and the advantages' spread; the batch source adds rewards, lengths, the
time split and dynamic-sampling counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from align_jax.losses import (
    GRPO_LOSS_TYPES,
    group_advantages,
    grpo_loss,
    mask_truncated_completions,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    rollout_correction_weights,
    sampler_mismatch,
)
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import policy_token_logps, rollout_logps, token_entropy
from align_jax.rollout.rewards import default_config as rewards_config

ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
_CHOICES = {
    "policy_loss": ("clip", "cispo"),
    "importance_sampling_level": ("token", "sequence"),
    "advantage_estimator": ADVANTAGE_ESTIMATORS,
    "scale_rewards": ("group", "batch", "none"),
    "rollout_correction": ("off", "token", "sequence"),
}


def grpo_defaults() -> ml_collections.ConfigDict:
    """GRPO's `config.objective` keys (TRL's `GRPOConfig` defaults where it has the key)."""
    return ml_collections.ConfigDict(
        {
            "name": "grpo",  # the objective this config trains
            "loss_type": "dapo",  # loss aggregation over tokens: grpo | bnpo | dr_grpo | dapo
            "num_generations": 8,  # G completions per prompt
            "beta": 0.0,  # k3 KL to the reference in the loss; 0 loads no reference
            "epsilon_low": 0.2,  # clip range: the ratio is clipped to [1 − low, 1 + high]
            "epsilon_high": 0.2,  # upper clip range; > epsilon_low is DAPO's clip-higher
            "delta": 0.0,  # two-sided clipping: cap on the unclipped ratio; 0 = off
            "importance_sampling_level": "token",  # ratio per token | per sequence (GSPO)
            "policy_loss": "clip",  # clip (clipped surrogate) | cispo (CISPO)
            "advantage_estimator": "grpo",  # grpo | rloo | reinforce_pp | reinforce_pp_baseline
            "scale_rewards": "group",  # grpo estimator: group | batch | none (Dr. GRPO)
            "reward_kl_coef": 0.0,  # reinforce_pp*: KL folded into per-token rewards
            "num_iterations": 1,  # μ: passes over each rollout batch
            "num_minibatches": 1,  # optimizer updates per pass
            "mask_truncated_completions": False,  # completions without eos add no loss token
            # DAPO dynamic sampling: drop groups whose rewards are all equal and sample more
            # prompts, at most `max_sampling_rounds` rollouts per step in all.
            "dynamic_sampling": False,
            "max_sampling_rounds": 4,  # dynamic_sampling: at most this many rollouts per step
            # DAPO overlong shaping: a penalty ramping from 0 to -overlong_penalty_factor over
            # the last `overlong_buffer` tokens before max_new_tokens; 0 = off.
            "overlong_buffer": 0,
            "overlong_penalty_factor": 1.0,  # the overlong penalty's size at max_new_tokens
            # Truncated importance weights for sampler log-probs that differ from the
            # trainer's: off | token | sequence.
            "rollout_correction": "off",
            "rollout_correction_cap": 2.0,  # C >= 1: rollout_correction's cap on the weights
            "reference_from": "",  # the frozen reference's run or checkpoint; "" = config.init_from
        }
    )


def rollout_config() -> ml_collections.ConfigDict:
    """`config.rollout`: how the policy is sampled in training and in eval, and sample logs."""
    return ml_collections.ConfigDict(
        {
            "max_new_tokens": 32,  # completion length cap, in tokens (eos included)
            # Sampling temperature (0: greedy); the update's log-probs on both sides are those
            # of softmax(logits / T).
            "temperature": 1.0,
            "top_k": 0,  # sample among the k most likely tokens; 0: off
            "top_p": 1.0,  # nucleus sampling's probability mass; 1: off
            "eval_num_samples": 4,  # k of pass@k: samples per held-out prompt
            "eval_temperature": 1.0,  # sampling temperature of the eval samples; 0: greedy
            "pass_threshold": 1.0,  # a sample passes when its total reward is at least this
            "log_samples_every": 0,  # steps between samples.jsonl records; 0: off
            "log_samples": 2,  # prompts (with all their completions) per record
            # The prepare pass (old / reference log-probs, values) runs its forwards over this
            # many micro-batches of the rollout rows, one after another: its peak memory (the
            # logits) falls by that factor. Must divide the rows (batch_size × generations).
            "prepare_micro_batches": 1,
        }
    )


def online_sections() -> dict[str, ml_collections.ConfigDict]:
    """The config sections of online objectives besides `objective`: `rollout`, `rewards`."""
    return {"rollout": rollout_config(), "rewards": rewards_config()}


def check_prepare_micro_batches(config, rows=None, what="a rollout batch") -> int:
    """`config.rollout.prepare_micro_batches`, a positive integer dividing the `rows` the
    prepare pass runs forwards over (default: a rollout batch's, data.batch_size ×
    num_generations); ValueError naming the key."""
    k = config.rollout.prepare_micro_batches
    if rows is None:
        rows = config.data.batch_size * config.objective.num_generations
    if not isinstance(k, int) or k < 1 or rows % k:
        raise ValueError(
            f"config.rollout.prepare_micro_batches={k!r}; expected an integer >= 1 dividing "
            f"the {rows} rows of {what}"
        )
    return k


def check_config(config) -> None:
    """Every GRPO option in range, and the rollout it needs; ValueError naming the key."""
    o = config.objective
    for key, valid in _CHOICES.items():
        if o[key] not in valid:
            raise ValueError(f"config.objective.{key}={o[key]!r}; expected one of {valid}")
    positive = ("num_generations", "num_iterations", "num_minibatches", "max_sampling_rounds")
    for key in positive:
        if not isinstance(o[key], int) or o[key] < 1:
            raise ValueError(f"config.objective.{key}={o[key]!r}; expected an integer >= 1")
    if o.num_generations < 2 and o.advantage_estimator in ("grpo", "rloo"):
        raise ValueError(
            f"config.objective.num_generations={o.num_generations}: the {o.advantage_estimator} "
            "advantage compares completions of one prompt; expected >= 2"
        )
    rows = config.data.batch_size * o.num_generations
    if rows % o.num_minibatches:
        raise ValueError(
            f"config.objective.num_minibatches={o.num_minibatches} does not divide the "
            f"{rows} rows of a rollout batch (data.batch_size × num_generations)"
        )
    if o.reward_kl_coef and not o.advantage_estimator.startswith("reinforce_pp"):
        raise ValueError(
            "config.objective.reward_kl_coef folds a KL into REINFORCE++'s per-token rewards; "
            f"advantage_estimator={o.advantage_estimator!r} has none (use beta)"
        )
    if o.policy_loss == "cispo" and o.delta:
        raise ValueError("config.objective.delta caps the clip loss's ratio; CISPO has none")
    if not 0 <= o.overlong_buffer <= config.rollout.max_new_tokens:
        raise ValueError(
            f"config.objective.overlong_buffer={o.overlong_buffer}; expected 0 (off) to "
            f"config.rollout.max_new_tokens={config.rollout.max_new_tokens}"
        )
    if o.rollout_correction_cap < 1:
        raise ValueError(
            f"config.objective.rollout_correction_cap={o.rollout_correction_cap}; expected >= 1"
        )
    if o.epsilon_low < 0 or o.epsilon_high < 0 or o.delta < 0 or o.beta < 0:
        raise ValueError("config.objective epsilon_low, epsilon_high, delta, beta must be >= 0")
    check_prepare_micro_batches(config)


def needs_reference(objective_cfg) -> bool:
    return bool(objective_cfg.beta) or bool(objective_cfg.reward_kl_coef)


def _mismatch_sums(logps, sampler_logps, mask):
    """`sampler_mismatch`'s metrics as (sum, count) pairs of one micro-batch; the max is the
    micro-batch's (averaged over micro-batches under gradient accumulation)."""
    diff = jnp.where(mask > 0, jax.lax.stop_gradient(logps) - sampler_logps, 0.0)
    count = jnp.sum(mask)
    return {
        "mismatch/abs_logp_diff_mean": (jnp.sum(jnp.abs(diff)), count),
        "mismatch/abs_logp_diff_max": (jnp.max(jnp.abs(diff)), jnp.ones(())),
        "mismatch/k3_kl": (jnp.sum(jnp.expm1(diff) - diff), count),
    }


@register("grpo", loss_types=GRPO_LOSS_TYPES, defaults=grpo_defaults, sections=online_sections)
def build_grpo(config, graphdef) -> Objective:
    check_config(config)
    o = config.objective
    temperature = float(config.rollout.temperature) or 1.0  # greedy reports T = 1 log-probs
    group = int(o.num_generations)
    off_policy = o.num_iterations * o.num_minibatches > 1
    with_reference = needs_reference(o)
    # The rollout parameters' log-probs need a forward pass of their own only when something
    # reads them before the first update; otherwise the first (only) update's forward gives
    # them, and the sampler mismatch is measured there (a step without the extra forward
    # is ~15% shorter: tools/bench_grpo.py).
    separate_old = (
        off_policy
        or o.rollout_correction != "off"
        or (bool(o.reward_kl_coef) and o.advantage_estimator.startswith("reinforce_pp"))
    )

    def advantages(rewards_b, mask_bt, old_logps, ref_logps):
        est = o.advantage_estimator
        if est == "grpo":
            adv = group_advantages(rewards_b, group_size=group, scale_rewards=o.scale_rewards)
        elif est == "rloo":
            adv = rloo_advantages(rewards_b, group_size=group)
        else:
            kl = {"logps_bt": old_logps, "ref_logps_bt": ref_logps} if o.reward_kl_coef else {}
            kwargs = dict(kl_coef=float(o.reward_kl_coef), **kl)
            if est == "reinforce_pp":
                return reinforce_pp_advantages(rewards_b, mask_bt, **kwargs)
            return reinforce_pp_baseline_advantages(rewards_b, mask_bt, group_size=group, **kwargs)
        return jnp.broadcast_to(adv[:, None], mask_bt.shape) * mask_bt

    micro_batches = config.rollout.prepare_micro_batches

    def prepare_fn(params, frozen, batch, objective_state):
        mask = batch["completion_mask"]
        logps_of = lambda p: jnp.where(  # noqa: E731
            mask > 0, rollout_logps(graphdef, p, batch, temperature, micro_batches), 0.0
        )
        old_logps = logps_of(params) if separate_old else None
        ref_logps = logps_of(frozen["reference"]) if with_reference else None
        out = dict(batch)
        if old_logps is not None:
            out["old_logps"] = old_logps
        out["advantages"] = advantages(batch["rewards"], mask, old_logps, ref_logps)
        loss_mask = mask
        if o.mask_truncated_completions:
            loss_mask = mask_truncated_completions(mask, batch["has_eos"] > 0)
        out["loss_mask"] = loss_mask
        if ref_logps is not None:
            out["ref_logps"] = ref_logps
        if o.rollout_correction != "off":
            out["is_weights"] = rollout_correction_weights(
                old_logps, batch["sampler_logps"], mask,
                level=o.rollout_correction, cap=float(o.rollout_correction_cap),
            )  # fmt: skip
        rows = mask.shape[0]
        out["rollout_tokens"] = jnp.full((rows,), jnp.sum(loss_mask), jnp.float32)
        out["rollout_sequences"] = jnp.full((rows,), rows, jnp.float32)
        metrics = {}
        if old_logps is not None:
            metrics = sampler_mismatch(old_logps, batch["sampler_logps"], mask)
        metrics["advantage_abs_mean"] = jnp.sum(jnp.abs(out["advantages"]) * mask) / jnp.maximum(
            jnp.sum(mask), 1
        )
        return out, metrics, objective_state

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        mask = batch["loss_mask"]
        logps, logits = policy_token_logps(graphdef, params, batch, temperature)
        numerator, denominator, metrics = grpo_loss(
            logps,
            batch["old_logps"] if off_policy else None,
            batch["advantages"],
            mask,
            ref_logps_bt=batch.get("ref_logps"),
            beta=float(o.beta),
            epsilon_low=float(o.epsilon_low),
            epsilon_high=float(o.epsilon_high),
            delta=float(o.delta) or None,
            importance_sampling_level=o.importance_sampling_level,
            policy_loss=o.policy_loss,
            is_weights_bt=batch.get("is_weights"),
            loss_type=o.loss_type,
            max_completion_length=int(config.rollout.max_new_tokens),
            rollout_tokens=batch["rollout_tokens"][0],
            rollout_sequences=batch["rollout_sequences"][0],
        )
        tokens = batch["completion_mask"].astype(jnp.float32)
        metrics["entropy"] = (jnp.sum(token_entropy(logits, temperature) * tokens), jnp.sum(tokens))
        if not separate_old:  # this forward is at the rollout's parameters
            metrics.update(_mismatch_sums(logps, batch["sampler_logps"], tokens))
        return numerator, (denominator, metrics)

    return Objective(
        "grpo",
        loss_fn,
        batch_kind="rollouts",
        frozen_models=("reference",) if with_reference else (),
        prepare_fn=prepare_fn,
        updates_per_step=int(o.num_iterations * o.num_minibatches),
        num_minibatches=int(o.num_minibatches),
        prepare_forwards=float(separate_old) + float(with_reference),
    )
