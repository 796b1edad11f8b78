"""The frozen reference model of objectives that need one (DPO family, KTO, listwise).

The reference is `config.objective.reference_from`, or else `config.init_from`; a LoRA run's
reference is its frozen base unless `reference_from` names another model. With
`config.objective.precompute_ref_logps` the reference runs once before training instead:
the per-example log-probs of every train and eval record go into a table (cached in the
workdir, keyed by the reference and the data files), and the reference leaves memory.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from align_jax import loading, parallel
from align_jax.data.pipeline import to_global_batch
from align_jax.training import step as step_lib
from align_jax.training.errors import TrainingError

log = logging.getLogger("align_jax")


def load(
    config, objective, data, tokenizer, mesh, rules, workdir, shapes, shardings, sources,
    base=None,
):  # fmt: skip
    """(the reference's parameters, {}) or, with precompute_ref_logps, (None, {split: table})
    with a table of (chosen, rejected) reference log-probs per record of each split.

    A LoRA run passes its loaded `base`: the reference is that base unless
    `reference_from` names another model, which is then loaded (without adapters)."""
    path = config.objective.get("reference_from", "") or config.init_from
    if not path:
        raise TrainingError(
            f"objective '{objective.name}' needs a reference model: set config.init_from "
            "(or config.objective.reference_from)"
        )
    with parallel.sharding_context(mesh, rules):
        if base is not None and os.path.abspath(path) == os.path.abspath(config.init_from):
            params = base
        else:
            params = loading.load_params(path, shapes, shardings)
        log.info("reference model from %s", path)
        if not config.objective.get("precompute_ref_logps", False):
            return params, {}
        return None, precompute_logps(
            config, objective, data, tokenizer, mesh, rules, workdir, path, params, sources
        )


def precompute_logps(
    config, objective, data, tokenizer, mesh, rules, workdir, path, params, sources
) -> dict:
    """{split: [records, 2] table} of the reference's (chosen, rejected) log-probs, read
    from the workdir's cache when it was computed for the same reference and records."""
    fn = jax.jit(
        lambda p, b: (*objective.reference_logps_fn(p, b), b["index"], b["valid"]),
        out_shardings=parallel.replicated(mesh),
    )
    tables = {}
    for split, source in sources.items():
        if source is None:
            continue
        cache = os.path.join(workdir, f"ref_logps_{split}.npy")
        key = {"reference": os.path.abspath(path), "records": len(source),
               "files": list(source.paths)}  # fmt: skip
        if os.path.exists(cache) and os.path.exists(cache + ".json"):
            with open(cache + ".json") as f:
                if json.load(f) == key:
                    tables[split] = np.load(cache)
                    log.info("reference log-probs (%s) from %s", split, cache)
                    continue
        table = np.zeros((len(source), 2), np.float32)
        for batch in data.make_eval_iterator(config.data, tokenizer, source=source):
            sh = step_lib.batch_shardings(batch, mesh, rules)
            c, r, index, valid = jax.device_get(fn(params, to_global_batch(batch, sh)))
            keep = valid > 0
            table[index[keep], 0], table[index[keep], 1] = c[keep], r[keep]
        if jax.process_index() == 0:
            np.save(cache, table)
            with open(cache + ".json", "w") as f:
                json.dump(key, f)
        tables[split] = table
        log.info("reference log-probs (%s): %d records precomputed", split, len(source))
    return tables
