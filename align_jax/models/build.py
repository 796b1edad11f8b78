"""Building a model's parameters directly in their shardings, and the functional apply.

Training code holds parameters as a plain nested dict of arrays (`nnx.to_pure_dict`), which
optax, Orbax and checkpoint conversion all handle as-is; `apply_model` merges them with the
module's graph definition inside the jitted step (STYLE.md: split outside, merge inside).
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
    """Logits [B, L, V] of the model `graphdef` with parameters `params`."""
    return nnx.merge(graphdef, params)(tokens_bl, positions_bl, segment_ids_bl)


def apply_scores(graphdef, params, tokens_bl, positions_bl=None, segment_ids_bl=None):
    """Per-token scores [B, L] of a scalar-head (reward / value) model."""
    return nnx.merge(graphdef, params)(tokens_bl, positions_bl, segment_ids_bl)


def sequence_logprobs(graphdef, params, batch, *, temperature: float = 1.0):
    """Per-token log-probs [B, L] of `batch['targets']` given `batch['inputs']`.

    The one helper every objective uses to score tokens, so the training side and the
    sampler agree on what a log-prob at temperature T is.
    """
    logits = apply_model(
        graphdef, params, batch["inputs"], batch.get("positions"), batch.get("segment_ids")
    )
    return token_logprobs(logits, batch["targets"], temperature=temperature)
