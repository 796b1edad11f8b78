"""A trained reward model as a scorer: of text, of token rows, and as an online RL reward.

    scorer = RewardScorer.load("runs/reward_tiny")
    scorer.score(["what is two plus three? "], ["two plus three is five."])  # -> array([r])

The reward model is rebuilt from its workdir's `config.json` (model shape, tokenizer,
seq_len) and the parameters of its latest checkpoint (or `step`). Text is encoded exactly
as in training (`bos + prompt + completion + eos`), right-padded to `seq_len`; longer
inputs are cut at `seq_len` and counted in `scorer.num_truncated`. The score of a row is
the scalar head's output at its last real token (`objectives.reward.last_token_rewards`).

In online RL (`config.rewards.reward_model` = the reward model's run, listed in
`config.rewards.functions` as `reward_model`), `as_reward` makes it a `TokenScorer`: when the
reward model was trained with the policy's tokenizer it scores the training rows' token ids
on the mesh directly (prompt as the policy saw it, the completion with its eos when it has
one; no text round trip), otherwise it re-encodes the decoded text with its own tokenizer.
"""

from __future__ import annotations

import filecmp
import logging
import os

import jax
import numpy as np

from align_jax import loading, parallel
from align_jax.data.records import encode_completion
from align_jax.data.sources import DataError
from align_jax.data.tokenizer import Tokenizer
from align_jax.objectives.reward import last_token_rewards
from align_jax.rollout import TokenScorer

log = logging.getLogger("align_jax")

REWARD_MODEL = "reward_model"  # its name in config.rewards.functions


class RewardScorer:
    def __init__(self, config, params, graphdef, mesh, batch_size: int):
        self.config = config
        self.tokenizer = Tokenizer.load(config.data.tokenizer)
        self.batch_size = batch_size
        self.num_truncated = 0
        self._params = params
        self._mesh = mesh
        self._rules = tuple(tuple(r) for r in config.sharding.rules)

        def score_fn(params, tokens, segments):
            with parallel.sharding_context(mesh, self._rules):
                return last_token_rewards(graphdef, params, tokens, segments)

        self._score = jax.jit(score_fn)

    @classmethod
    def load(cls, workdir: str, *, step: int | None = None, batch_size: int = 16, mesh=None):
        config, graphdef, params, mesh = loading.load_run(workdir, step=step, mesh=mesh)
        if config.model.head != "scalar":
            raise DataError(
                f"{workdir}: config.model.head is {config.model.head!r}; expected a reward "
                "model ('scalar')"
            )
        return cls(config, params, graphdef, mesh, batch_size)

    def score_rows(self, tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """Scores [N] of right-padded token rows [N, L] (segment id 0 on padding)."""
        # In a multi-process job: this process's rows of a global batch (every process
        # calls with the same N), and their scores.
        shape = (tokens.shape[0] * jax.process_count(), tokens.shape[1])
        sharding = parallel.named_sharding(("batch", "length"), shape, self._mesh, self._rules)
        tokens, segment_ids = (
            parallel.global_rows(np.asarray(x), sharding) for x in (tokens, segment_ids)
        )
        return parallel.local_rows(self._score(self._params, tokens, segment_ids))

    def score(self, prompts, completions) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        length = self.config.data.seq_len
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            chunk = list(
                zip(
                    prompts[lo : lo + self.batch_size],
                    completions[lo : lo + self.batch_size],
                    strict=True,
                )
            )
            tokens = np.zeros((self.batch_size, length), np.int32)
            segments = np.zeros((self.batch_size, length), np.int32)
            for i, (p, c) in enumerate(chunk):
                ids, _ = encode_completion(p, c, self.tokenizer, self.config.data)
                if len(ids) > length:
                    self.num_truncated += 1
                    ids = ids[:length]
                tokens[i, : len(ids)] = ids
                segments[i, : len(ids)] = 1
            segments[len(chunk) :, 0] = 1  # padding rows: one dummy token, result dropped
            out.append(self.score_rows(tokens, segments)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def as_reward(self, policy_tokenizer: str) -> TokenScorer:
        """This scorer as an online RL reward (see the module docstring)."""
        if _same_tokenizer(self.config.data.tokenizer, policy_tokenizer):

            def fn(prompts, completions, *, tokens, **fields):
                return self.score_rows(tokens["tokens"], tokens["segment_ids"])

            how = "on the policy's token ids"
        else:

            def fn(prompts, completions, *, tokens, **fields):
                return self.score(list(prompts), list(completions))

            how = f"re-encoding text with its own tokenizer ({self.config.data.tokenizer})"
        log.info("reward model scores %s", how)
        return TokenScorer(fn)


def _same_tokenizer(a: str, b: str) -> bool:
    """Whether two `config.data.tokenizer` values name the same tokenizer: the same path or
    files with the same bytes."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)


def load_reward(rewards_config, policy_tokenizer: str, mesh) -> dict[str, TokenScorer]:
    """`{"reward_model": scorer}` when `config.rewards.reward_model` names a run (on the
    training `mesh`), else {}; a one-line error when it and `functions` disagree."""
    path = rewards_config.reward_model
    listed = REWARD_MODEL in [f.strip() for f in str(rewards_config.functions).split(",")]
    if listed and not path:
        raise ValueError(
            f"config.rewards.functions lists '{REWARD_MODEL}': set config.rewards.reward_model "
            "to a reward model's run directory"
        )
    if not path:
        return {}
    if not listed:
        raise ValueError(
            f"config.rewards.reward_model is set ({path}) but config.rewards.functions does "
            f"not list '{REWARD_MODEL}'"
        )
    scorer = RewardScorer.load(path, mesh=mesh, batch_size=64)
    log.info("reward model from %s", path)
    return {REWARD_MODEL: scorer.as_reward(policy_tokenizer)}
