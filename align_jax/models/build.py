"""Building a model's parameters directly in their shardings, and the functional apply.

Training code holds parameters as a plain nested dict of arrays (`nnx.to_pure_dict`), which
optax, Orbax and checkpoint conversion all handle as-is; `apply_model` merges them with the
module's graph definition inside the jitted step (split outside, merge inside; see
docs/architecture.md).
Parameters are never materialised on one device: `init_params` runs the initialiser under
`jax.jit` with the target shardings as its output shardings.
"""

from __future__ import annotations

import jax
from flax import nnx

from align_jax import parallel
from align_jax.losses import token_logprobs
from align_jax.models.transformer import Transformer
from align_jax.tree import nest


def abstract_params(model_cfg, module_fn=None):
    """(graphdef, shapes, axes): the module's structure without allocating anything.

    `shapes` and `axes` are nested dicts keyed like the parameters; `axes` holds each
    parameter's logical axis names.
    """
    module_fn = module_fn or (lambda rngs: Transformer(model_cfg, rngs=rngs))
    abstract = nnx.eval_shape(lambda: module_fn(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    shapes = nest({p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in flat.items()})
    axes = nest({p: tuple(v.get_metadata()["axes"]) for p, v in flat.items()})
    return graphdef, shapes, axes


def param_shardings(shapes: dict, axes: dict, mesh, rules) -> dict:
    return jax.tree.map(
        lambda s, a: parallel.named_sharding(a, s.shape, mesh, rules),
        shapes,
        axes,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(e, str) for e in x),
    )


def init_params(model_cfg, mesh, rules, seed: int, module_fn=None):
    """(graphdef, params, shardings): freshly initialised parameters, sharded on `mesh`."""
    module_fn = module_fn or (lambda rngs: Transformer(model_cfg, rngs=rngs))
    graphdef, shapes, axes = abstract_params(model_cfg, module_fn)
    shardings = param_shardings(shapes, axes, mesh, rules)

    def init():
        return nnx.to_pure_dict(nnx.state(module_fn(nnx.Rngs(seed))))

    params = jax.jit(init, out_shardings=shardings)()
    return graphdef, params, shardings


def apply_model(graphdef, params, tokens_bl, positions_bl=None, segment_ids_bl=None):
    """The model's output for `tokens_bl`: logits [B, L, V] of an LM head, per-token scores
    [B, L] of a scalar head (reward / value models)."""
    return nnx.merge(graphdef, params)(tokens_bl, positions_bl, segment_ids_bl)


def sequence_logprobs(graphdef, params, tokens_nl, segment_ids_nl, mask_nl):
    """Log-probs of rows of tokens, the one helper every objective scores sequences with.

    Each row `tokens_nl[n]` is fed as inputs `tokens[:, :-1]` and scored on its next tokens
    `tokens[:, 1:]`; `mask_nl` marks the tokens that count (a completion), and its shifted
    form `mask[:, 1:]` is what applies to the targets. Returns `(token_logps, mask, logits)`:
    per-token log-probs [N, L-1] (float32, zero outside the mask), the shifted mask
    [N, L-1] and the logits [N, L-1, V] (for a KL to a reference or WPO's weights).
    """
    logits = apply_model(graphdef, params, tokens_nl[:, :-1], None, segment_ids_nl[:, :-1])
    mask = mask_nl[:, 1:]
    return token_logprobs(logits, tokens_nl[:, 1:]) * mask, mask, logits
