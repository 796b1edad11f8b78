"""Pure loss functions over arrays: no model, no config, no Flax.

Import them into any research code: `from align_jax.losses import cross_entropy, ...`.
Each loss docstring gives shapes, the formula and the paper's arXiv id; per-example losses
come first in what a loss returns, and the caller reduces.
"""

from align_jax.losses.advantages import (
    SCALE_REWARDS,
    combine_rewards,
    group_advantages,
    overlong_penalty,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from align_jax.losses.common import cross_entropy, masked_mean, token_kl, token_logprobs
from align_jax.losses.dpo import (
    DPO_LOSS_TYPES,
    F_DIVERGENCES,
    combined_dpo_loss,
    dpo_loss,
    f_divergence_score,
    ld_logps,
    wpo_weights,
)
from align_jax.losses.grpo import (
    GRPO_LOSS_TYPES,
    IMPORTANCE_SAMPLING_LEVELS,
    POLICY_LOSSES,
    ROLLOUT_CORRECTIONS,
    aggregate_token_loss,
    grpo_loss,
    grpo_loss_terms,
    grpo_per_token_loss,
    mask_truncated_completions,
    rollout_correction_weights,
    sampler_mismatch,
)
from align_jax.losses.listwise import (
    plackett_luce_loss,
    scores_to_soft_labels,
    soft_label_dpo_loss,
    soft_pairwise_loss,
)
from align_jax.losses.ppo import (
    KL_ESTIMATORS,
    adaptive_kl_coef,
    gae,
    kl_penalty,
    masked_whiten,
    per_token_rewards,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
)
from align_jax.losses.preference import (
    KTO_LOSS_TYPES,
    cpo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    simpo_loss,
)
from align_jax.losses.reward import bradley_terry_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "F_DIVERGENCES",
    "GRPO_LOSS_TYPES",
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
    "KTO_LOSS_TYPES",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "SCALE_REWARDS",
    "adaptive_kl_coef",
    "aggregate_token_loss",
    "bradley_terry_loss",
    "combine_rewards",
    "combined_dpo_loss",
    "cpo_loss",
    "cross_entropy",
    "dpo_loss",
    "f_divergence_score",
    "gae",
    "group_advantages",
    "grpo_loss",
    "grpo_loss_terms",
    "grpo_per_token_loss",
    "kl_penalty",
    "kto_loss",
    "kto_reference_point",
    "ld_logps",
    "mask_truncated_completions",
    "masked_mean",
    "masked_whiten",
    "orpo_loss",
    "overlong_penalty",
    "per_token_rewards",
    "plackett_luce_loss",
    "ppo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "rollout_correction_weights",
    "sampler_mismatch",
    "scores_to_soft_labels",
    "simpo_loss",
    "soft_label_dpo_loss",
    "soft_pairwise_loss",
    "token_kl",
    "token_logprobs",
    "wpo_weights",
    "zero_variance_groups",
]
