"""DPO and its pairwise relatives: per-pair losses over sequence log-probabilities.

Inputs are summed completion log-probs, one per pair, shape [B]: `chosen_logps` = log π(y_c|x)
= Σ_t log π(y_c,t | x, y_c,<t) and likewise for the rejected completion and the reference model.
Every loss returns `(losses_b, chosen_rewards_b, rejected_rewards_b)`; the caller reduces (TRL
takes the mean). The implicit rewards are `β (logp − ref_logp)`, gradient-stopped, for logging.

Notation (docs/objectives.md): `ρc = Lc − Lc_ref`, `ρr = Lr − Lr_ref`, `Δ = ρc − ρr`, `σ` logistic.

Also here: f-divergence scores (f-DPO, arXiv 2309.16240) that replace ρ, a weighted sum of
several loss types (plus an SFT term, as TRL's MPO recipe), WPO weights (arXiv 2406.11827) and
LD-DPO length-desensitised log-probs (arXiv 2409.06411). All match TRL's `DPOTrainer` on the
same inputs except where a docstring says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from align_jax.losses.common import masked_mean

DPO_LOSS_TYPES = (
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "sigmoid_norm",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
)
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
_LENGTH_NORMALISED = ("ipo", "sigmoid_norm")
# exp() arguments are capped here so scores stay finite in float32 (TRL caps at 80 too).
_EXP_CAP = 80.0


def f_divergence_score(
    logratio: jax.Array, *, f_divergence: str = "reverse_kl", alpha: float = 0.5
):
    """The f-DPO score `f'(π/π_ref)` written in `ρ = log π − log π_ref` (arXiv 2309.16240).

    - `reverse_kl`: `ρ` (plain DPO)
    - `forward_kl`: `1 − e^{−ρ}`
    - `js_divergence`: `log 2 + log σ(ρ)`
    - `alpha_divergence`: `(1 − e^{−αρ}) / α`, α in (0, 1]; α → 0 is reverse KL, α = 1 forward KL.

    These are `f'` exactly, constants included, as docs/objectives.md writes them. TRL drops the
    constants (`log 2`, `1`, `1/α`), which cancel in `Δ` but not in losses that use each score
    alone (`nca_pair`, `bco_pair`, `sppo_hard`). Older TRL used this α (`u^{−α}`); TRL's recent
    rewrite's `f_alpha_divergence_coef = a` uses `t^{a−1}`, i.e. `alpha = 1 − a` here. At the
    default 0.5 both conventions give the same Δ.
    """
    if f_divergence == "reverse_kl":
        return logratio
    if f_divergence == "forward_kl":
        return 1.0 - jnp.exp(jnp.minimum(-logratio, _EXP_CAP))
    if f_divergence == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(logratio)
    if f_divergence == "alpha_divergence":
        if not alpha > 0:
            raise ValueError(
                f"alpha_divergence needs alpha > 0 (alpha -> 0 is reverse_kl), got {alpha}"
            )
        return (1.0 - jnp.exp(jnp.minimum(-alpha * logratio, _EXP_CAP))) / alpha
    raise ValueError(f"Unknown f_divergence {f_divergence!r}; valid: {F_DIVERGENCES}")


def soft_logistic_loss(z: jax.Array, label) -> jax.Array:
    """`−q log σ(z) − (1−q) log σ(−z)`: cross-entropy of σ(z) against the soft label q."""
    return -label * jax.nn.log_sigmoid(z) - (1.0 - label) * jax.nn.log_sigmoid(-z)


def dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    discopop_tau: float = 0.05,
):
    """Direct Preference Optimization loss and its variants (DPO, arXiv 2305.18290).

    Args: four [B] arrays of summed completion log-probs (policy chosen/rejected, reference
    chosen/rejected). Reference-free variants: pass zeros for the reference. `chosen_lengths`,
    `rejected_lengths` [B]: completion token counts, needed by `ipo` and `sigmoid_norm`
    (clamped to ≥ 1, as TRL does).

    Returns `(losses_b, chosen_rewards_b, rejected_rewards_b)`, rewards `β ρ` (stop-gradient,
    never length-normalised, as TRL logs them).

    With `s = f_divergence_score(ρ)` (`s = ρ` by default) and `Δ = sc − sr`, per pair:

    | loss_type | loss |
    |---|---|
    | sigmoid | `−(1−ε) log σ(βΔ) − ε log σ(−βΔ)`; ε > 0 is conservative DPO |
    | robust (2403.00409) | `[−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1−2ε)`, ε < 1/2 |
    | hinge (SLiC, 2305.10425) | `relu(1 − βΔ)` |
    | ipo (2310.12036) | `(sc/|yc| − sr/|yr| − 1/(2β))²` |
    | sigmoid_norm | `−log σ(β(sc/|yc| − sr/|yr|))` |
    | exo_pair (2402.00856) | `σ(βΔ)[log σ(βΔ) − log(1−ε)] + σ(−βΔ)[log σ(−βΔ) − log ε]` |
    | nca_pair (2402.05369) | `−log σ(βsc) − ½ log σ(−βsc) − ½ log σ(−βsr)` |
    | bco_pair (2404.04656) | `−log σ(βsc) − log σ(−βsr)` |
    | sppo_hard (2405.00675) | `(sc − 1/(2β))² + (sr + 1/(2β))²` |
    | aot (2406.05882) | smoothed sigmoid of `β[sort(Lc−Lr) − sort(Lc_ref−Lr_ref)]` |
    | aot_unpaired | smoothed sigmoid of `β[sort(ρc) − sort(ρr)]` |
    | apo_zero (2408.06266) | `1 − σ(βρc) + σ(βρr)` |
    | apo_down | `σ(βρc) + 1 − σ(βΔ)` |
    | discopop (2406.08414) | `z = βΔ`, `m = σ(z/τ)`: `(1−m)(−log σ(z)) + m e^{−z}` |

    Choices where libraries differ:
    - `exo_pair` raises unless 0 < ε < 1. Older TRL silently replaced ε = 0 by 1e-3 (the EXO
      paper's recommended value); TRL's recent rewrite takes log(0). Pass 1e-3 for the paper.
    - `bco_pair` is docs/objectives.md's formula without BCO's reward shift δ. TRL shifts both
      implicit rewards by δ, a running mean of the batch-mean reward kept across steps (state a
      pure function cannot hold); to reproduce it, pass `ref_*_logps + δ/β`.
    - `aot`/`aot_unpaired` sort over the batch (axis 0), so `losses_b[i]` belongs to the i-th
      smallest margin, not to pair i; only the reduced loss is meaningful.
    - Where the f-divergence score enters follows TRL: `Δ` of every margin loss, each score
      of nca_pair/bco_pair/sppo_hard; `aot`, `aot_unpaired`, `apo_zero` and the first term of
      `apo_down` keep the plain ρ.
    - `sigmoid` keeps label smoothing, as TRL's DPOTrainer long did; its recent rewrite
      dropped ε from `sigmoid` (ε = 0 is the same number either way).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; valid: {DPO_LOSS_TYPES}")
    eps = label_smoothing
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    chosen_scores = f_divergence_score(chosen_logratios, f_divergence=f_divergence, alpha=f_alpha)
    rejected_scores = f_divergence_score(
        rejected_logratios, f_divergence=f_divergence, alpha=f_alpha
    )
    delta = chosen_scores - rejected_scores

    if loss_type in _LENGTH_NORMALISED:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(
                f"loss_type={loss_type!r} is length-normalised: pass chosen_lengths= and "
                "rejected_lengths= (completion token counts, shape [B])"
            )
        chosen_len = jnp.maximum(jnp.asarray(chosen_lengths, chosen_scores.dtype), 1.0)
        rejected_len = jnp.maximum(jnp.asarray(rejected_lengths, rejected_scores.dtype), 1.0)
        normalised_delta = chosen_scores / chosen_len - rejected_scores / rejected_len

    if loss_type == "sigmoid":
        losses = soft_logistic_loss(beta * delta, 1.0 - eps)
    elif loss_type == "robust":
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"robust needs 0 <= label_smoothing < 0.5, got {eps}")
        losses = (
            -(1.0 - eps) * jax.nn.log_sigmoid(beta * delta)
            + eps * jax.nn.log_sigmoid(-beta * delta)
        ) / (1.0 - 2.0 * eps)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1.0 - beta * delta)
    elif loss_type == "ipo":
        losses = jnp.square(normalised_delta - 1.0 / (2.0 * beta))
    elif loss_type == "sigmoid_norm":
        losses = -jax.nn.log_sigmoid(beta * normalised_delta)
    elif loss_type == "exo_pair":
        if not 0.0 < eps < 1.0:
            raise ValueError(
                f"exo_pair needs 0 < label_smoothing < 1 (the EXO paper uses 1e-3), got {eps}"
            )
        z = beta * delta
        # KL(σ(z), 1 − σ(z) || 1 − ε, ε)
        chosen_term = jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - math.log1p(-eps))
        rejected_term = jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - math.log(eps))
        losses = chosen_term + rejected_term
    elif loss_type == "nca_pair":
        zc, zr = beta * chosen_scores, beta * rejected_scores
        losses = (
            -jax.nn.log_sigmoid(zc) - 0.5 * jax.nn.log_sigmoid(-zc) - 0.5 * jax.nn.log_sigmoid(-zr)
        )
    elif loss_type == "bco_pair":
        zc, zr = beta * chosen_scores, beta * rejected_scores
        losses = -jax.nn.log_sigmoid(zc) - jax.nn.log_sigmoid(-zr)
    elif loss_type == "sppo_hard":
        losses = jnp.square(chosen_scores - 0.5 / beta) + jnp.square(rejected_scores + 0.5 / beta)
    elif loss_type == "aot":
        policy_sorted = jnp.sort(chosen_logps - rejected_logps, axis=0)
        ref_sorted = jnp.sort(ref_chosen_logps - ref_rejected_logps, axis=0)
        losses = soft_logistic_loss(beta * (policy_sorted - ref_sorted), 1.0 - eps)
    elif loss_type == "aot_unpaired":
        d = jnp.sort(chosen_logratios, axis=0) - jnp.sort(rejected_logratios, axis=0)
        losses = soft_logistic_loss(beta * d, 1.0 - eps)
    elif loss_type == "apo_zero":
        losses = (
            1.0
            - jax.nn.sigmoid(beta * chosen_logratios)
            + jax.nn.sigmoid(beta * rejected_logratios)
        )
    elif loss_type == "apo_down":
        losses = jax.nn.sigmoid(beta * chosen_logratios) + (1.0 - jax.nn.sigmoid(beta * delta))
    else:  # discopop
        z = beta * delta
        mix = jax.nn.sigmoid(z / discopop_tau)
        # The cap only acts where mix is 0 anyway; it turns TRL's inf * 0 = nan into 0.
        losses = (1.0 - mix) * -jax.nn.log_sigmoid(z) + mix * jnp.exp(jnp.minimum(-z, _EXP_CAP))

    chosen_rewards = jax.lax.stop_gradient(beta * chosen_logratios)
    rejected_rewards = jax.lax.stop_gradient(beta * rejected_logratios)
    return losses, chosen_rewards, rejected_rewards


def combined_dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    loss_types: Sequence[str] = ("sigmoid",),
    weights: Sequence[float] | None = None,
    sft_nll: jax.Array | float | None = None,
    beta: float = 0.1,
    **dpo_kwargs,
):
    """Weighted sum of DPO loss types, `Σ_k w_k ℓ_k`, per pair (TRL's `loss_type=[...]`).

    E.g. MPO (arXiv 2411.10442) is `loss_types=("sigmoid", "bco_pair", "sft")`,
    `weights=(0.8, 0.2, 1.0)`. `weights` defaults to all ones. The `"sft"` term is `sft_nll`,
    which must then be given: an array broadcastable to [B] of per-pair NLL of the chosen
    completion, or a scalar. TRL's SFT term is the token-mean NLL over all chosen tokens of
    the batch, broadcast to every pair: pass that scalar to match it. Other keyword arguments
    (beta, label_smoothing, lengths, f_divergence, ...) go to `dpo_loss` for every term.

    Returns `(losses_b, chosen_rewards_b, rejected_rewards_b)` as `dpo_loss`.
    """
    loss_types = tuple(loss_types)
    weights = (1.0,) * len(loss_types) if weights is None else tuple(weights)
    if len(weights) != len(loss_types):
        raise ValueError(f"{len(loss_types)} loss_types but {len(weights)} weights")
    if not loss_types:
        raise ValueError("loss_types is empty")
    total = jnp.zeros(jnp.shape(chosen_logps), jnp.result_type(chosen_logps, jnp.float32))
    for loss_type, weight in zip(loss_types, weights, strict=True):
        if loss_type == "sft":
            if sft_nll is None:
                raise ValueError("loss_types contains 'sft': pass sft_nll= (NLL of the chosen)")
            term = jnp.broadcast_to(sft_nll, total.shape)
        else:
            term, _, _ = dpo_loss(
                chosen_logps,
                rejected_logps,
                ref_chosen_logps,
                ref_rejected_logps,
                loss_type=loss_type,
                beta=beta,
                **dpo_kwargs,
            )
        total = total + weight * term
    chosen_rewards = jax.lax.stop_gradient(beta * (chosen_logps - ref_chosen_logps))
    rejected_rewards = jax.lax.stop_gradient(beta * (rejected_logps - ref_rejected_logps))
    return total, chosen_rewards, rejected_rewards


def wpo_weights(
    chosen_token_logps_bt: jax.Array,
    chosen_mask_bt: jax.Array,
    rejected_token_logps_bt: jax.Array,
    rejected_mask_bt: jax.Array,
    *,
    chosen_logits_btv: jax.Array | None = None,
    rejected_logits_btv: jax.Array | None = None,
):
    """Weighted Preference Optimization pair weights, [B], stop-gradient (WPO, arXiv 2406.11827).

    `w = w(y_c) · w(y_r)` with `w(y) = exp(mean_t [log π(y_t) − log Σ_v π(v)²])`: the policy's
    own length-normalised probability of the (off-policy) completion. The `Σ_v π(v)²` term is
    WPO's sampled-alignment correction (Eq. 3) and needs the logits [B, T, V]; without logits
    the weight is the plain Eq. 2 form `exp(mean_t log π(y_t))`. Multiply any per-pair DPO loss
    by these weights (TRL's `use_weighting=True` does exactly that, with the logits, and no
    clamp; older TRL clamped the weight to ≤ 1).
    """

    def sequence_weight(token_logps, mask, logits):
        if logits is not None:
            logits = logits.astype(jnp.float32)
            log_sum_p2 = jax.nn.logsumexp(2.0 * logits, -1) - 2.0 * jax.nn.logsumexp(logits, -1)
            token_logps = token_logps - log_sum_p2
        return jnp.exp(masked_mean(token_logps, mask, axis=-1))

    weights = sequence_weight(chosen_token_logps_bt, chosen_mask_bt, chosen_logits_btv)
    weights *= sequence_weight(rejected_token_logps_bt, rejected_mask_bt, rejected_logits_btv)
    return jax.lax.stop_gradient(weights)


def ld_logps(
    chosen_token_logps_bt: jax.Array,
    chosen_mask_bt: jax.Array,
    rejected_token_logps_bt: jax.Array,
    rejected_mask_bt: jax.Array,
    *,
    alpha: float,
):
    """Length-desensitised sequence log-probs for LD-DPO (arXiv 2409.06411), each [B].

    With the public length `l_p = min(|y_c|, |y_r|)`, the first `l_p` completion tokens of each
    response count fully and the verbose tail beyond them is down-weighted by α in [0, 1]:
    `log π̂(y) = Σ_{t ≤ l_p} log π(y_t) + α Σ_{t > l_p} log π(y_t)`. α = 1 is plain DPO.
    Positions count masked-in tokens only, so prompt tokens and padding may sit anywhere.
    Apply it to the policy and the reference alike (TRL's `ld_alpha` does) and feed the results
    to `dpo_loss`. Returns `(chosen_ld_logps_b, rejected_ld_logps_b)`.
    """

    def split_sum(token_logps, mask, shared_len):
        mask = mask.astype(token_logps.dtype)
        position = jnp.cumsum(mask, axis=-1)  # 1-based index among completion tokens
        shared = mask * (position <= shared_len[:, None])
        tail = mask - shared
        return jnp.sum(token_logps * shared, -1) + alpha * jnp.sum(token_logps * tail, -1)

    shared_len = jnp.minimum(jnp.sum(chosen_mask_bt, -1), jnp.sum(rejected_mask_bt, -1))
    return (
        split_sum(chosen_token_logps_bt, chosen_mask_bt, shared_len),
        split_sum(rejected_token_logps_bt, rejected_mask_bt, shared_len),
    )
