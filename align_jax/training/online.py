"""The batch source of online RL: rollout batches sampled from the live policy and scored.

The loop (align_jax/training/loop.py) asks a batch source for each step's batch:

    batch, metrics = source.next(params, step)

with the *current* parameters, before the step donates them, so every batch is sampled
from the policy that will be updated on it; nothing is sampled ahead of the policy.
`shapes` is the batch's fields and shapes, fixed by the config, so the step compiles
before any sample exists.

One step of `RolloutSource`:
1. the next `config.data.batch_size` prompts (align_jax/data/prompts.py), each sampled
   G = `num_generations` times (align_jax/rollout/sampler.py) with `config.rollout`'s
   settings, prompts padded to `config.data.max_prompt_len` slots so one program serves
   every step. The sampling seed of round r of step s is a function of (`config.seed`, s,
   r) alone;
2. the completions decoded (without eos) and scored by the reward functions
   (`config.rewards`, align_jax/rollout/rewards.py), their weighted total plus DAPO's
   overlong penalty (`objective.overlong_buffer`) the sample's reward;
3. with `objective.dynamic_sampling` (DAPO), groups whose rewards are all equal are dropped
   and the next prompts sampled, until `batch_size` groups remain or
   `max_sampling_rounds` rounds have run; extra groups of the last round are discarded
   (verl's choice: a kept group would be sampled from an older policy) and a batch still
   short is filled with dropped groups (their advantages are 0, so they add no gradient),
   counted in `dynamic_sampling/filled_groups`;
4. right-padded training rows with explicit positions (align_jax/rollout/rows.py).

State for exact resume, saved with every checkpoint as the `data` item: the prompt
iterator's position. The RNG follows from the step; the dynamic-sampling rounds of a step
are replayed from the same prompts and seeds.

Host metrics of each step: `reward` and `reward/<name>` (means over the kept samples),
`reward_std` (within-group std, averaged over groups), `frac_zero_variance_groups`,
`completion_length` mean and max, `truncated_fraction` (no eos within max_new_tokens),
`reward_timeouts`, `time/sampling`, `time/rewards`, `generated_tokens_per_sec`, and the
dynamic-sampling counts. Every `config.rollout.log_samples_every` steps the first
`log_samples` prompts' groups go to the loop's metrics writer (`samples.jsonl`, and the W&B
samples table when config.wandb is on): prompt, completions, each reward.

`evaluate(params)` samples `eval_num_samples` completions per held-out prompt and returns
the mean reward (each function's too), the mean completion length, and pass@1 and pass@k
(`pass_at_1`, `pass_at_<k>`, k = eval_num_samples; the unbiased estimator of arXiv
2107.03374), where a sample passes when its total reward is at least `pass_threshold`.
"""

from __future__ import annotations

import json
import math
import time

import jax
import numpy as np

from align_jax import parallel
from align_jax.data import prompts as prompts_data
from align_jax.losses import overlong_penalty
from align_jax.rollout import Rewards, Sampler, SamplingParams, weighted_total
from align_jax.rollout.rows import training_rows


def rollout_shapes(config, process_count: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """A process's rollout batch fields from the config alone: its prompts × G rows of
    max_prompt_len + max_new_tokens slots (`process_count` defaults to jax's; 1 gives the
    global batch)."""
    count = jax.process_count() if process_count is None else process_count
    n = int(config.data.batch_size) // count * int(config.objective.num_generations)
    w = prompts_data.max_prompt_len(config.data) + int(config.rollout.max_new_tokens)
    spec = jax.ShapeDtypeStruct
    return {
        "tokens": spec((n, w), np.int32),
        "positions": spec((n, w), np.int32),
        "segment_ids": spec((n, w), np.int32),
        "completion_mask": spec((n, w - 1), np.int32),
        "sampler_logps": spec((n, w - 1), np.float32),
        "rewards": spec((n,), np.float32),
        "has_eos": spec((n,), np.int32),
    }


def sampling_seed(seed: int, step: int, round_: int, *, stream: int = 0) -> int:
    """The sampler's seed for round `round_` of step `step`: independent streams per
    (seed, step, round), whatever ran before. Eval uses `stream=1`, the same seeds at every
    eval, so eval curves compare the policies on the same draws."""
    entropy = [seed, stream, step, round_]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (arXiv 2107.03374, Eq. 1)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


class RolloutSource:
    """Online batches for the GRPO family, PPO and online DPO (see the module docstring)."""

    def __init__(self, config, objective, graphdef, tokenizer, mesh, rules, sources: dict,
                 rewards: Rewards):  # fmt: skip
        o, r = config.objective, config.rollout
        self.config, self.tokenizer, self.rewards = config, tokenizer, rewards
        self.group = int(o.num_generations)
        self.prompts_per_step = int(config.data.batch_size)
        self.prompt_len = prompts_data.max_prompt_len(config.data)
        self.max_new_tokens = int(r.max_new_tokens)
        self.width = self.prompt_len + self.max_new_tokens
        self.sp = SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=float(r.temperature),
            top_k=int(r.top_k), top_p=float(r.top_p), n=self.group,
        )  # fmt: skip
        self.sampler = Sampler(graphdef, mesh, rules, eos_id=tokenizer.eos_id,
                               pad_id=tokenizer.pad_id)  # fmt: skip
        self.iterator = prompts_data.make_train_iterator(
            config.data, tokenizer, seed=config.seed, source=sources["train"]
        )
        self.eval_source = sources.get("eval")
        self._writer = None  # the loop's MetricsWriter, from `start`

    # --------------------------------------------------------------- the loop's protocol

    @property
    def shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """This process's batch fields (`rollout_shapes`)."""
        return rollout_shapes(self.config)

    @property
    def checkpoint_item(self):
        """Saved as the checkpoint's `data` item through grain's handler (bytes state)."""
        return self

    def get_state(self) -> bytes:
        return json.dumps({"prompts": self.iterator.get_state()}).encode()

    def set_state(self, state: bytes) -> None:
        self.iterator.set_state(json.loads(state.decode())["prompts"])

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore; nothing runs ahead here."""

    def start(self, step: int, writer) -> None:
        """Before the first step of a run starting (or resuming) at `step`: the samples go
        to `writer` (the loop's MetricsWriter, which cut samples.jsonl back to `step`)."""
        del step
        self._writer = writer

    def close(self) -> None:
        self.rewards.close()

    # --------------------------------------------------------------- one step

    def next(self, params, step: int) -> tuple[dict, dict]:
        o = self.config.objective
        # DAPO's dynamic sampling (GRPO's keys; other online objectives sample one round)
        dynamic = bool(o.get("dynamic_sampling", False))
        max_rounds = int(o.get("max_sampling_rounds", 1)) if dynamic else 1
        kept: list[dict] = []
        dropped: list[dict] = []
        metrics = {"time/sampling": 0.0, "time/rewards": 0.0}
        generated = sampled_groups = zero_variance = rounds = 0
        timeouts = 0.0
        quota = self.prompts_per_step // jax.process_count()  # this process's groups
        while True:
            prompts = next(self.iterator)
            seed = sampling_seed(self.config.seed, step, rounds)
            rounds += 1
            groups, info = self._sample_and_score(params, prompts, seed)
            metrics["time/sampling"] += info["time/sampling"]
            metrics["time/rewards"] += info["time/rewards"]
            generated += info["generated"]
            timeouts += info["reward_timeouts"]
            sampled_groups += len(groups)
            for g in groups:
                flat = np.ptp(g["total"]) == 0
                zero_variance += int(flat)
                (dropped if flat and dynamic else kept).append(g)
            # Every process samples every round (one program over the global batch) until
            # each has its quota of kept groups.
            if not dynamic or rounds >= max_rounds or _global_min(len(kept)) >= quota:
                break
        filled = max(0, quota - len(kept))
        groups = (kept + dropped[:filled])[:quota]
        batch = self._rows(groups)
        metrics.update(self._group_metrics(groups))
        # Counts over the whole job (each process reports its own; all_rows gathers them).
        counts = parallel.all_rows(
            np.array(
                [[zero_variance, sampled_groups, generated, timeouts, len(dropped), filled]],
                np.float64,
            )  # fmt: skip
        ).sum(axis=0)
        zero_variance, sampled_groups, generated, timeouts, n_dropped, filled = counts
        if self.group > 1:
            metrics["frac_zero_variance_groups"] = zero_variance / sampled_groups
        metrics["reward_timeouts"] = timeouts
        metrics["generated_tokens_per_sec"] = generated / max(metrics["time/sampling"], 1e-9)
        if dynamic:
            metrics["dynamic_sampling/rounds"] = float(rounds)
            metrics["dynamic_sampling/dropped_groups"] = float(n_dropped)
            metrics["dynamic_sampling/filled_groups"] = float(filled)
        every = self.config.rollout.log_samples_every
        if every and (step + 1) % every == 0:
            self._log_samples(step + 1, groups[: self.config.rollout.log_samples])
        return batch, metrics

    def _sample_and_score(self, params, prompts: list[dict], seed: int):
        """Samples G completions of each prompt and scores them: one dict per group."""
        t0 = time.perf_counter()
        out = self.sampler.generate(
            params, [p["prompt_ids"] for p in prompts], self.sp, seed=seed,
            prompt_len=self.prompt_len,
        )  # fmt: skip
        t1 = time.perf_counter()
        texts, lengths, has_eos, rows, rewards_bf, reward_metrics = self._score(prompts, out)
        total = weighted_total(rewards_bf, self.rewards.weights)
        buffer = self.config.objective.get("overlong_buffer", 0)
        if buffer:
            penalty = overlong_penalty(
                lengths, max_length=self.max_new_tokens, cache_length=int(buffer)
            )
            total = total + float(self.config.objective.overlong_penalty_factor) * np.asarray(
                penalty
            )
        t2 = time.perf_counter()
        groups = []
        for j, prompt in enumerate(prompts):
            part = slice(j * self.group, (j + 1) * self.group)
            groups.append({
                "prompt": prompt, "rows": {k: v[part] for k, v in rows.items()},
                "lengths": lengths[part], "has_eos": has_eos[part], "texts": texts[part],
                "rewards": rewards_bf[part], "total": total[part].astype(np.float32),
            })  # fmt: skip
        info = {
            "time/sampling": t1 - t0,
            "time/rewards": t2 - t1,
            "generated": int(lengths.sum()),
            "reward_timeouts": reward_metrics["reward_timeouts"],
        }
        return groups, info

    def _score(self, prompts: list[dict], out: dict):
        """(texts, lengths, has_eos, training rows, rewards [N, F], reward metrics) of the
        sampler's output `out` for `prompts`: the completions decoded, laid out as rows and
        scored (a reward model reads the rows)."""
        texts, lengths, has_eos = decode_completions(out, self.tokenizer)
        index = out["prompt_index"]
        rows = training_rows(
            [prompts[j]["prompt_ids"] for j in index], out["tokens"], out["mask"],
            out["logprobs"], width=self.width, pad_id=self.tokenizer.pad_id,
        )  # fmt: skip
        rewards_bf, reward_metrics = self.rewards(
            [prompts[j]["prompt"] for j in index],
            texts,
            _fields([prompts[j]["fields"] for j in index]),
            tokens=rows,
        )
        return texts, lengths, has_eos, rows, rewards_bf, reward_metrics

    def _rows(self, groups: list[dict]) -> dict:
        cat = lambda get: np.concatenate([get(g) for g in groups])  # noqa: E731
        batch = {k: cat(lambda g, k=k: g["rows"][k]) for k in groups[0]["rows"]}
        batch["rewards"] = cat(lambda g: g["total"]).astype(np.float32)
        batch["has_eos"] = cat(lambda g: g["has_eos"]).astype(np.int32)
        return batch

    def _group_metrics(self, groups: list[dict]) -> dict:
        """Reward, length and truncation metrics over every process's groups."""
        every = lambda get: parallel.all_rows(np.concatenate([get(g) for g in groups]))  # noqa: E731
        total = every(lambda g: g["total"])
        lengths = every(lambda g: g["lengths"])
        out = self._reward_means(every(lambda g: g["rewards"]), total)
        if self.group > 1:
            by_group = total.reshape(-1, self.group)
            out["reward_std"] = float(np.mean(np.std(by_group, axis=1, ddof=1)))
        out["completion_length"] = float(lengths.mean())
        out["completion_length_max"] = float(lengths.max())
        out["truncated_fraction"] = float(1 - every(lambda g: g["has_eos"]).mean())
        return out

    def _reward_means(self, rewards_bf: np.ndarray, total: np.ndarray) -> dict:
        """`reward` (the mean total) and `reward/<name>` (each function's mean over the
        samples it applies to; NaN if none)."""
        out = {"reward": float(total.mean())}
        for f, name in enumerate(self.rewards.names):
            applies = ~np.isnan(rewards_bf[:, f])
            out[f"reward/{name}"] = (
                float(rewards_bf[applies, f].mean()) if applies.any() else math.nan
            )
        return out

    def _log_samples(self, step: int, groups: list[dict]) -> None:
        records = [
            {
                "step": step,
                "prompt": g["prompt"]["prompt"],
                "completions": list(g["texts"]),
                "rewards": {
                    name: [None if np.isnan(v) else float(v) for v in g["rewards"][:, k]]
                    for k, name in enumerate(self.rewards.names)
                },
                "total": [float(v) for v in g["total"]],
            }
            for g in groups
        ]
        self._writer.write_samples(step, records)  # only process 0's writes

    # --------------------------------------------------------------- held-out prompts

    def evaluate(self, params) -> dict:
        """Mean reward, lengths and pass@k over the held-out prompts (see the docstring)."""
        if self.eval_source is None:
            return {}
        r = self.config.rollout
        k = int(r.eval_num_samples)
        sp = SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=float(r.eval_temperature),
            top_k=int(r.top_k), top_p=float(r.top_p), n=k,
        )  # fmt: skip
        totals, per_fn, lengths, valid = [], [], [], []
        iterator = prompts_data.make_eval_iterator(
            self.config.data, self.tokenizer, source=self.eval_source
        )
        for i, prompts in enumerate(iterator):
            if self.config.eval_steps and i >= self.config.eval_steps:
                break
            out = self.sampler.generate(
                params, [p["prompt_ids"] for p in prompts], sp,
                seed=sampling_seed(self.config.seed, 0, i, stream=1), prompt_len=self.prompt_len,
            )  # fmt: skip
            _, n_tok, _, _, rewards_bf, _ = self._score(prompts, out)
            totals.append(weighted_total(rewards_bf, self.rewards.weights))
            per_fn.append(rewards_bf)
            lengths.append(n_tok)
            valid.append(np.array([bool(p["valid"]) for p in prompts]))
        if not totals:
            return {}
        # Every process's prompts (k samples each, adjacent), less the eval padding.
        every = lambda parts: parallel.all_rows(np.concatenate(parts))  # noqa: E731
        keep = every(valid)
        total = every(totals).reshape(len(keep), k)[keep]
        if not len(total):
            return {}
        rewards_bf = every(per_fn).reshape(len(keep), k, -1)[keep]
        out = self._reward_means(rewards_bf.reshape(total.size, -1), total.reshape(-1))
        out["completion_length"] = float(every(lengths).reshape(len(keep), k)[keep].mean())
        passed = np.sum(total >= float(r.pass_threshold), axis=1)
        out["pass_at_1"] = float(np.mean([pass_at_k(k, int(c), 1) for c in passed]))
        out[f"pass_at_{k}"] = float(np.mean([pass_at_k(k, int(c), k) for c in passed]))
        return out


def _global_min(count: int) -> int:
    """The smallest of every process's `count`."""
    return int(parallel.all_rows(np.array([count])).min())


def decode_completions(out: dict, tokenizer) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts without the eos, lengths in tokens with it, whether each ended with eos) of
    the sampler's output `out`. Ids past the tokenizer's vocabulary (a model whose
    vocabulary is padded beyond it can sample them) have no text and are left out."""
    lengths = out["mask"].astype(bool).sum(axis=1)
    tokens = out["tokens"]
    has_eos = np.array(
        [n > 0 and tokens[i, n - 1] == tokenizer.eos_id for i, n in enumerate(lengths)]
    )
    texts = []
    for i, (n, eos) in enumerate(zip(lengths, has_eos, strict=True)):
        ids = tokens[i, : n - int(eos)]
        texts.append(tokenizer.decode(ids[ids < tokenizer.vocab_size].tolist()))
    return texts, lengths, has_eos


def _fields(records: list[dict]) -> dict[str, list]:
    """Per-sample record fields as reward keyword arguments: every key of any record, None
    where a record lacks it."""
    keys = sorted({k for r in records for k in r})
    return {k: [r.get(k) for r in records] for k in keys}
