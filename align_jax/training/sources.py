"""Where the loop's batches come from: one protocol for offline data and online rollouts.

A batch source has

    shapes                 {field: ShapeDtypeStruct} of this process's batch, fixed by the
                           config (the step compiles before any batch exists)
    next(params, step)     -> (batch of numpy arrays, host metrics): step `step`'s batch;
                           `params` are the live parameters, before the step donates them
    checkpoint_item        what the checkpoint's `data` item saves and restores in place
    start(step, writer)    before the first step of a (resumed) run; an online source logs
                           its samples with `writer.write_samples` (training/metrics.py)
    close()                at the end
    evaluate               None, or `evaluate(params) -> metrics` on held-out data

Offline stages (`IteratorSource`) wrap their grain iterator: the batch does not depend on
the parameters, and the iterator's read-ahead thread prepares batches while the step runs.
Online RL (`align_jax.training.online.RolloutSource`) samples from `params` and never runs
ahead of the policy.
"""

from __future__ import annotations

import logging

import jax

from align_jax.data import listwise as listwise_data
from align_jax.data import pairs as pairs_data
from align_jax.data import pretrain as pretrain_data
from align_jax.data import prompts as prompts_data
from align_jax.data import sft as sft_data
from align_jax.data import unpaired as unpaired_data
from align_jax.rollout import Rewards
from align_jax.training import reward_model
from align_jax.training.online import RolloutSource

log = logging.getLogger("align_jax")

# batch_kind -> the data module that reads its records (load_source, make_train_iterator,
# make_eval_iterator; every source has stats()). Later stages add theirs here.
DATA_PIPELINES = {
    "tokens": pretrain_data,
    "sft": sft_data,
    "pairs": pairs_data,
    "lists": listwise_data,
    "unpaired": unpaired_data,
    "rollouts": prompts_data,
}


def load_sources(config, data, tokenizer) -> dict:
    """{"train": source, "eval": source or None}, each described in the log."""
    sources = {"train": data.load_source(config.data, "train", tokenizer), "eval": None}
    if config.data.eval_files:
        sources["eval"] = data.load_source(config.data, "eval", tokenizer)
    for split, source in sources.items():
        if source is not None:
            log.info("%s data: %s", split, source.stats())
    return sources


class IteratorSource:
    """An offline stage's grain iterator behind the batch-source protocol."""

    evaluate = None  # the loop's own loss-and-perplexity eval over the eval split

    def __init__(self, iterator, shapes: dict):
        self.iterator, self.shapes = iterator, shapes

    @property
    def checkpoint_item(self):
        return self.iterator

    def next(self, params, step: int) -> tuple[dict, dict]:
        del params, step
        return next(self.iterator), {}

    def start(self, step: int, writer) -> None:
        del step, writer

    def close(self) -> None:
        pass


def offline_shapes(config, objective, data, sources: dict, ref_tables: dict) -> dict:
    """The offline batch's shapes from the config (and, for lists, whether the records are
    scored, which the data says)."""
    kwargs = {}
    if ref_tables:
        kwargs["with_ref_table"] = True
    if objective.batch_kind == "lists":
        kwargs["scored"] = sources["train"].scored
    return data.batch_shapes(config.data, jax.process_count(), **kwargs)


def make_source(config, objective, data, tokenizer, sources, ref_tables, graphdef, mesh, rules):
    """The run's batch source: rollouts for online objectives, else the data iterator."""
    if objective.online:
        extra = reward_model.load_reward(config.rewards, config.data.tokenizer, mesh)
        rewards = Rewards.from_config(config.rewards, extra=extra, where="config.rewards")
        try:
            return RolloutSource(
                config, objective, graphdef, tokenizer, mesh, rules, sources, rewards
            )
        except BaseException:
            rewards.close()  # its worker processes
            raise
    kwargs = {"ref_table": ref_tables["train"]} if ref_tables else {}
    iterator = data.make_train_iterator(
        config.data, tokenizer, seed=config.seed, source=sources["train"], **kwargs
    )
    return IteratorSource(iterator, offline_shapes(config, objective, data, sources, ref_tables))
