"""The optimizer and learning-rate schedule, built from `config.optimizer`.

    tx, schedule = make_optimizer(config.optimizer, config.total_steps)
    opt_state = tx.init(params)                      # params: a pure dict (nnx.to_pure_dict)
    updates, opt_state = tx.update(grads, opt_state, params)
    lr = schedule(step)                              # what this update used, for logging

`make_optimizer` returns the schedule beside the transformation, so the trainer logs the
learning rate without digging it out of the optimizer state. optax counts updates from 0,
so the update that takes the state from step `s` to `s + 1` uses `schedule(s)`.

Conventions shared by every optimizer here:

- Global-norm clipping runs first, on the raw (already accumulated) gradient:
  g <- g * min(1, c / ||g||_2) with c = `grad_clip_norm`; 0 disables it.
- Weight decay is decoupled (Loshchilov & Hutter, arXiv:1711.05101) and multiplied by the
  scheduled learning rate: the update gains a term -lr_t * wd * p. So `weight_decay` means
  the same thing for every optimizer, and it anneals with the schedule.
- Weight decay touches only matrices (`kernel`) and embeddings (`embedding`), never norm
  scales or biases; `decay_mask` decides by the leaf's name, because stacked layers give a
  norm scale the shape [n_layers, d], so "ndim >= 2" would wrongly decay it.
- Gradient accumulation is not done here. The train step sums losses and token counts over
  `grad_accum_steps` micro-batches and divides once, which weights every token equally
  (averaging per-micro-batch means would not when micro-batches hold different token
  counts). One optax update is one train step; `total_steps` counts those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")
# Leaf names that get weight decay: linear maps and embedding tables.
DECAYED_NAMES = ("kernel", "embedding")


# ----------------------------------------------------------------------------- schedule


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    """The learning rate at each update count t, with lr = `learning_rate`, w = `warmup_steps`,
    T = `total_steps` and lr_end = `end_lr_factor` * lr:

        warmup    t < w:    lr * t / w                          (starts at 0)
        cosine    t >= w:   lr_end + (lr - lr_end) * (1 + cos(pi * (t - w) / (T - w))) / 2
        linear    t >= w:   lr + (lr_end - lr) * (t - w) / (T - w)
        constant  t >= w:   lr

    After T the cosine and linear schedules stay at lr_end. With w = 0 there is no warmup.
    If w >= T the run ends inside the warmup and never reaches lr; that is allowed, since
    shortened debug runs often keep the default warmup, but it is rarely what you want.
    """
    if total_steps < 1:
        raise ValueError(f"config.total_steps must be >= 1, got {total_steps}")
    lr = float(opt_cfg.learning_rate)
    warmup = int(opt_cfg.warmup_steps)
    end_factor = float(opt_cfg.end_lr_factor)
    if lr < 0:
        raise ValueError(f"config.optimizer.learning_rate must be >= 0, got {lr}")
    if warmup < 0:
        raise ValueError(f"config.optimizer.warmup_steps must be >= 0, got {warmup}")
    if end_factor < 0:
        raise ValueError(f"config.optimizer.end_lr_factor must be >= 0, got {end_factor}")

    decay_steps = max(total_steps - warmup, 1)
    name = opt_cfg.schedule
    if name == "cosine":
        # optax: lr * ((1 - alpha) * (1 + cos(pi * t / decay_steps)) / 2 + alpha)
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_factor)
    elif name == "linear":
        main = optax.linear_schedule(lr, end_factor * lr, decay_steps)
    elif name == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(
            f"unknown config.optimizer.schedule={name!r}; valid values: {', '.join(SCHEDULES)}"
        )
    if warmup == 0:
        return main
    # join_schedules hands the second schedule t - warmup, so `main` starts from its own 0.
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


# ----------------------------------------------------------------------------- weight decay


def decay_mask(params: Any) -> Any:
    """A tree like `params` with True where weight decay applies: leaves named `kernel` or
    `embedding` (the last key of the leaf's path). Norm `scale`, `bias` and anything else
    get no decay. Pulling a norm scale towards 0 would shrink the activations it gates, and
    a bias has too few degrees of freedom to overfit with.

    Works on the pure dicts of `nnx.to_pure_dict` (string keys, int keys for lists) and on
    any pytree whose path ends in a dict key or attribute name. It is passed to optax as a
    callable, so it is evaluated on the params at `init` and on the updates at `update`.
    """

    def is_decayed(path, _leaf) -> bool:
        if not path:
            return False
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name in DECAYED_NAMES

    return jax.tree_util.tree_map_with_path(is_decayed, params)


# ----------------------------------------------------------------------------- optimizers


def _adamw(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW (arXiv:1711.05101): m, v are EMAs of g and g^2 with b1, b2; with bias correction
    m^ = m / (1 - b1^t), v^ = v / (1 - b2^t), the update is
    -lr_t * (m^ / (sqrt(v^) + eps) + wd * p)."""
    return optax.adamw(
        schedule,
        b1=opt_cfg.b1,
        b2=opt_cfg.b2,
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        mask=decay_mask,
    )


def _sgd(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with heavy-ball momentum (nesterov off): m_t = g + momentum * m_{t-1}, update
    -lr_t * (m_t + wd * p). The decay term is added after the momentum trace, so it is
    decoupled as for AdamW rather than an L2 penalty that momentum would accumulate."""
    momentum = float(opt_cfg.momentum)
    return optax.chain(
        optax.trace(decay=momentum, nesterov=False) if momentum > 0 else optax.identity(),
        optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
    )


def _adafactor(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adafactor (arXiv:1804.04235) with optax's defaults: factored second moments for
    matrices whose two largest dims are >= 128, update clipping at block RMS 1, no first
    moment, and the step scaled by the parameter's RMS, so `learning_rate` is a relative
    step size (1e-2 is typical, far above AdamW's).

    optax's own `weight_decay_rate` is added after the learning rate, i.e. not multiplied by
    it; passing wd * schedule(t) as that rate restores the -lr_t * wd * p convention.
    `b1`, `b2` and `eps` of the config do not apply (Adafactor's eps means something else).
    Note that with stacked layers the parameter RMS and the update clipping are taken over
    the whole [n_layers, ...] array rather than per layer.
    """
    wd = float(opt_cfg.weight_decay)
    return optax.adafactor(
        learning_rate=schedule,
        weight_decay_rate=(lambda t: wd * schedule(t)) if wd > 0 else None,
        weight_decay_mask=decay_mask,
    )


def _lion(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Lion (arXiv:2302.06675): update -lr_t * (sign(b1 * m + (1 - b1) * g) + wd * p), then
    m <- b2 * m + (1 - b2) * g. Every coordinate moves by exactly lr_t, so the paper uses a
    learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger (keeping
    lr * wd), and b2 = 0.99 where the config's default 0.95 is tuned for AdamW."""
    return optax.lion(
        schedule,
        b1=opt_cfg.b1,
        b2=opt_cfg.b2,
        weight_decay=opt_cfg.weight_decay,
        mask=decay_mask,
    )


_BUILDERS: dict[str, Callable[[Any, optax.Schedule], optax.GradientTransformation]] = {
    "adamw": _adamw,
    "sgd": _sgd,
    "adafactor": _adafactor,
    "lion": _lion,
}
OPTIMIZERS = tuple(_BUILDERS)


def make_optimizer(
    opt_cfg, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Build `(tx, schedule)` from `config.optimizer` for a run of `total_steps` updates.

    `tx` is clipping (when `grad_clip_norm` > 0) chained with the named optimizer;
    `schedule(step)` is the learning rate the update at `step` uses, for logging.
    `tx.update` needs `params` (for weight decay). Raises ValueError naming the config key
    for an unknown optimizer or schedule and for out-of-range values.
    """
    name = opt_cfg.name
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown config.optimizer.name={name!r}; valid values: {', '.join(OPTIMIZERS)}"
        )
    if int(opt_cfg.grad_accum_steps) < 1:
        raise ValueError(
            f"config.optimizer.grad_accum_steps must be >= 1, got {opt_cfg.grad_accum_steps}"
        )
    if float(opt_cfg.weight_decay) < 0:
        raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {opt_cfg.weight_decay}")
    clip = float(opt_cfg.grad_clip_norm)
    if clip < 0:
        raise ValueError(f"config.optimizer.grad_clip_norm must be >= 0 (0 disables), got {clip}")

    schedule = make_schedule(opt_cfg, total_steps)
    tx = _BUILDERS[name](opt_cfg, schedule)
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule


class PerModel(NamedTuple):
    """`per_model`'s transformation: an optax `GradientTransformation` (init, update) that
    also names its parts (`txs`), so the state's shardings can be found model by model."""

    init: Callable
    update: Callable
    txs: dict


def per_model(txs: dict[str, optax.GradientTransformation]) -> PerModel:
    """One transformation over `{name: params}` that runs `txs[name]` on each model's tree,
    with its own state (and clipping): PPO's policy and value model, one optimizer each."""

    def init(params):
        return {name: tx.init(params[name]) for name, tx in txs.items()}

    def update(updates, state, params=None):
        out, new_state = {}, {}
        for name, tx in txs.items():
            out[name], new_state[name] = tx.update(
                updates[name], state[name], None if params is None else params[name]
            )
        return out, new_state

    return PerModel(init, update, dict(txs))
