"""One held-out evaluation for every policy the demo and the experiments train.

`evaluate(policy_dir, prompts, reference_dir=..., reward_dir=...)` samples each held-out
prompt's completions from a stage's checkpoint at temperature 1 (the policy's own
distribution) and returns:

- `gold`: the mean gold reward, `tiny_corpus.answer_reward` (1 when the final number word is
  the right answer). No model is trained on it in the RLHF stages: it is what the proxy, the
  reward model, stands in for.
- `proxy`: the mean reward-model score of the same samples (with a reward model).
- `kl`: KL(policy || reference) per completion, in nats, estimated from the samples as the
  mean of sum_t log pi(y_t | ...) - log pi_ref(y_t | ...) (k1: unbiased), both at
  temperature 1.
- `length`: the mean completion length in tokens (eos included).

Every policy is scored on the same prompts with the same seeds.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from align_jax import loading, models, parallel
from align_jax.data.tokenizer import Tokenizer
from align_jax.rollout import Sampler, SamplingParams
from align_jax.rollout.rows import training_rows


def read_jsonl(path: str, limit: int = 0) -> list[dict]:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[:limit] if limit else records


def evaluate(
    policy_dir: str,
    records: list[dict],
    *,
    reference_dir: str,
    reward_dir: str = "",
    samples_per_prompt: int = 2,
    max_new_tokens: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    step: int | None = None,
) -> dict:
    """Gold reward, proxy score, KL to `reference_dir` and length of `policy_dir`'s samples
    for prompt records (`prompt`, `answer`); `step` picks one of the policy's checkpoints
    (default: the latest)."""
    from tiny_corpus import answer_reward

    mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    config, graphdef, params, _ = loading.load_run(policy_dir, step=step, mesh=mesh)
    _, ref_graphdef, ref_params, _ = loading.load_run(reference_dir, mesh=mesh)
    tokenizer = Tokenizer.load(config.data.tokenizer)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    sampler = Sampler(graphdef, mesh, rules, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    sp = SamplingParams(max_new_tokens, 1.0, 0, 1.0, samples_per_prompt)
    logprobs = _sequence_logprobs(graphdef, ref_graphdef)

    prompts, completions, answers, kls, lengths = [], [], [], [], []
    for lo in range(0, len(records), batch_size):
        chunk = records[lo : lo + batch_size]
        bos = [tokenizer.bos_id] * bool(config.data.add_bos)
        prompt_ids = [bos + tokenizer.encode(r["prompt"]) for r in chunk]
        out = sampler.generate(params, prompt_ids, sp, seed=seed + lo)
        for row, i in enumerate(out["prompt_index"]):
            n_tok = int(out["mask"][row].sum())
            ids = out["tokens"][row][:n_tok].tolist()
            finished = bool(ids) and ids[-1] == tokenizer.eos_id
            prompts.append(chunk[i]["prompt"])
            completions.append(tokenizer.decode(ids[:-1] if finished else ids))
            answers.append(chunk[i]["answer"])
            lengths.append(n_tok)
        rows_prompts = [prompt_ids[i] for i in out["prompt_index"]]
        rows = training_rows(
            rows_prompts,
            out["tokens"],
            out["mask"],
            np.zeros(out["mask"].shape, np.float32),  # sampler log-probs: not needed here
            width=max(map(len, rows_prompts)) + out["tokens"].shape[1],
            pad_id=tokenizer.pad_id,
        )
        # sequence_logprobs scores mask[:, 1:]; the rows' completion mask is already shifted.
        mask = np.pad(rows["completion_mask"], ((0, 0), (1, 0)))
        tokens, segments = rows["tokens"], rows["segment_ids"]
        with parallel.sharding_context(mesh, rules):
            kl = logprobs(params, ref_params, tokens, segments, mask)
        kls.extend(np.asarray(kl).tolist())
    gold = answer_reward(prompts, completions, answers)
    result = {
        "gold": float(np.mean(gold)),
        "kl": float(np.mean(kls)),
        "length": float(np.mean(lengths)),
        "samples": len(completions),
    }
    if reward_dir:
        from align_jax.score import RewardScorer

        result["proxy"] = float(np.mean(RewardScorer.load(reward_dir).score(prompts, completions)))
    result["examples"] = [
        {"prompt": p, "completion": c, "gold": g}
        for p, c, g in list(zip(prompts, completions, gold, strict=True))[:4]
    ]
    return result


def _sequence_logprobs(graphdef, ref_graphdef):
    """A jitted (policy, reference, tokens, segments, mask) -> per-row sum of log-ratios."""

    @jax.jit
    def log_ratio(params, ref_params, tokens, segments, mask):
        logp, _, _ = models.sequence_logprobs(graphdef, params, tokens, segments, mask)
        ref_logp, _, _ = models.sequence_logprobs(ref_graphdef, ref_params, tokens, segments, mask)
        return jnp.sum(logp - ref_logp, axis=-1)

    return log_ratio


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--reward", default="")
    parser.add_argument("--prompts", required=True, help="JSONL with prompt and answer")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    result = evaluate(
        args.policy,
        read_jsonl(args.prompts, args.limit),
        reference_dir=args.reference,
        reward_dir=args.reward,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
