"""Sampler: cached greedy == full recomputation, seeds, EOS, padding layouts, sharding,
top-k / top-p that sample only inside their sets, and log-probs that equal the training
side's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import token_logprobs
from align_jax.models import apply_model, init_params
from align_jax.rollout import (
    Sampler,
    SamplingParams,
    filter_logits,
    reshard_params,
    sample_categorical,
)
from align_jax.rollout.sampler import chunk_ends

EOS, PAD = 2, 0
PROMPTS = [[1, 5, 9, 11, 3], [1, 7], [1, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]


SHAPE = dict(
    vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128
)


@pytest.fixture(scope="module")
def model():
    cfg = model_config("tiny", init_std=0.2, **SHAPE)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    graphdef, params, _ = init_params(cfg, mesh, DEFAULT_RULES, 0)
    return cfg, graphdef, params, mesh


def sampler(model, eos=EOS, mesh=None, unroll=None):
    cfg, graphdef, params, one = model
    return Sampler(
        graphdef, mesh or one, DEFAULT_RULES, eos_id=eos, pad_id=PAD, unroll_layers=unroll
    )


# The two layer layouts of a decode step (models.decode.extend): per-layer weights and caches
# with the layers unrolled (the CPU default), and the stacked ones scanned.
LAYOUTS = pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "scanned"])


_FORWARD = {}  # id(graphdef) -> jitted forward


def forward_logits(graphdef, params, seq, width=32):
    """Logits [len(seq), V] of one full forward pass, no cache. The sequence is right-padded
    to `width` (one compile): causal attention keeps padding out of earlier positions."""
    if id(graphdef) not in _FORWARD:
        _FORWARD[id(graphdef)] = jax.jit(lambda p, t: apply_model(graphdef, p, t))
    logits = _FORWARD[id(graphdef)](params, jnp.asarray([seq + [PAD] * (width - len(seq))]))
    return np.asarray(logits[0, : len(seq)])


def training_side_logprobs(graphdef, params, prompt, completion, temperature=1.0, width=32):
    """The training side's log-probs of `completion` after `prompt` (`token_logprobs` over
    one forward pass of the sequence, right-padded to `width`)."""
    seq = list(prompt) + list(completion)
    logits = forward_logits(graphdef, params, seq[:-1], width)
    logps = token_logprobs(
        jnp.asarray(logits)[None], jnp.asarray([seq[1:]]), temperature=temperature
    )
    return np.asarray(logps[0, len(prompt) - 1 :])


def greedy_by_recompute(graphdef, params, prompt, n_new):
    """Greedy tokens by a full forward pass per token."""
    seq = list(prompt)
    for _ in range(n_new):
        seq.append(int(np.argmax(forward_logits(graphdef, params, seq)[-1])))
    return seq[len(prompt) :]


def allowed_tokens(scaled_v, top_k, top_p, tol=1e-4):
    """The tokens top-k then top-p may sample from, recomputed from logits / T [V]: the k
    highest (ties with the k-th kept), then, over their renormalised softmax, every token
    whose more likely tokens hold less than `top_p` of the mass (the smallest set reaching
    `top_p`). `tol` absorbs the cached decode's rounding against a full forward pass."""
    keep = np.ones(scaled_v.shape, bool)
    if top_k:
        keep &= scaled_v >= np.sort(scaled_v)[-top_k] - tol
    if top_p < 1:
        probs = np.where(keep, np.exp(scaled_v - scaled_v.max()), 0.0)
        probs /= probs.sum()
        above = scaled_v[None, :] > scaled_v[:, None] + tol  # [v, u]: u more likely than v
        keep &= (above * probs[None, :]).sum(axis=1) < top_p + tol
    return set(np.flatnonzero(keep).tolist())


@LAYOUTS
def test_greedy_with_cache_equals_full_recomputation(model, unroll):
    cfg, graphdef, params, _ = model
    out = sampler(model, eos=-1, unroll=unroll).generate(
        params, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0), seed=0
    )
    for row, prompt in enumerate(PROMPTS):
        assert out["tokens"][row].tolist() == greedy_by_recompute(graphdef, params, prompt, 12)
        assert out["mask"][row].tolist() == [1] * 12


def test_logprobs_match_training_side_at_temperature(model):
    cfg, graphdef, params, _ = model
    sp = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9, n=2)
    out = sampler(model, eos=-1).generate(params, PROMPTS, sp, seed=3)
    for row in range(len(PROMPTS) * 2):
        prompt = PROMPTS[out["prompt_index"][row]]
        completion = out["tokens"][row].tolist()
        train_side = training_side_logprobs(graphdef, params, prompt, completion, 0.7)
        np.testing.assert_allclose(out["logprobs"][row], train_side, atol=2e-5)
        # exp(new - old) is exactly the ratio an RL update starts from.
        np.testing.assert_allclose(np.exp(train_side - out["logprobs"][row]), 1.0, atol=5e-5)


def test_sampled_tokens_lie_in_the_top_k_set_and_the_nucleus(model):
    # Each sampled token checked against the sets recomputed from a full forward pass over
    # its prefix. At T = 1.5 the model's distributions are broad, so a sampler that ignored
    # either filter would leave its set within a few of these 192 tokens.
    cfg, graphdef, params, _ = model
    temperature, top_k, top_p = 1.5, 8, 0.6
    sp = SamplingParams(16, temperature=temperature, top_k=top_k, top_p=top_p, n=4)
    out = sampler(model, eos=-1).generate(params, PROMPTS, sp, seed=11)
    for row, index in enumerate(out["prompt_index"]):
        prompt, completion = PROMPTS[index], out["tokens"][row].tolist()
        logits = forward_logits(graphdef, params, prompt + completion[:-1])[len(prompt) - 1 :]
        for step, token in enumerate(completion):
            scaled = logits[step] / temperature
            top = allowed_tokens(scaled, top_k, 1.0)
            nucleus = allowed_tokens(scaled, top_k, top_p)
            assert len(nucleus) < len(top) < cfg.vocab_size // 4  # both sets cut something
            assert token in top and token in nucleus, (row, step, token, sorted(nucleus))


def test_top_k_1_samples_the_greedy_tokens(model):
    _, _, params, _ = model
    s = sampler(model, eos=-1)
    greedy = s.generate(params, PROMPTS, SamplingParams(12, temperature=0.0), seed=0)
    top_1 = s.generate(params, PROMPTS, SamplingParams(12, temperature=1.0, top_k=1), seed=4)
    np.testing.assert_array_equal(top_1["tokens"], greedy["tokens"])
    # Both report log-probs at T = 1 under the unfiltered distribution.
    np.testing.assert_allclose(top_1["logprobs"], greedy["logprobs"], atol=1e-6)


def test_sampling_is_reproducible_per_seed_and_n_samples_differ(model):
    _, _, params, _ = model
    s = sampler(model, eos=-1)
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, n=4)
    a = s.generate(params, PROMPTS[:2], sp, seed=7)
    b = s.generate(params, PROMPTS[:2], sp, seed=7)
    c = s.generate(params, PROMPTS[:2], sp, seed=8)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"], c["tokens"])
    assert a["prompt_index"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({tuple(r) for r in a["tokens"][:4].tolist()}) > 1  # a group is not n copies


def test_eos_stops_a_row_and_pads_the_rest(model):
    _, graphdef, params, _ = model
    free = greedy_by_recompute(graphdef, params, PROMPTS[0], 8)
    eos = free[3]  # the 4th greedy token of row 0 becomes its end
    first = free.index(eos)
    out = sampler(model, eos=eos).generate(
        params, PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0), seed=0
    )
    row = out["tokens"][0].tolist()
    assert row[: first + 1] == free[: first + 1]
    assert row[first + 1 :] == [PAD] * (7 - first)
    assert out["mask"][0].tolist() == [1] * (first + 1) + [0] * (7 - first)
    assert np.all(out["logprobs"][0][first + 1 :] == 0)


def test_all_rows_done_ends_the_loop_early(model):
    _, graphdef, params, _ = model
    free = greedy_by_recompute(graphdef, params, PROMPTS[1], 1)
    out = sampler(model, eos=free[0]).generate(
        params, [PROMPTS[1]], SamplingParams(max_new_tokens=64, temperature=0.0), seed=0
    )  # 2 decode chunks: the first one's loop ends at once, the second runs no step
    assert out["mask"][0].sum() == 1 and out["tokens"][0][0] == free[0]
    assert out["tokens"][0][1:].tolist() == [PAD] * 63


@LAYOUTS
def test_chunked_decode_matches_the_training_side_across_chunks(model, unroll):
    # 64 new tokens (the fewest that make more than one chunk) decode in 2 chunks, the cache
    # growing at the boundary; the log-probs of every sampled token still equal one forward
    # pass over prompt + completion.
    assert chunk_ends(63) == [63] and chunk_ends(64) == [32, 64]
    cfg, graphdef, params, _ = model
    sp = SamplingParams(max_new_tokens=64, temperature=1.0)
    out = sampler(model, eos=-1, unroll=unroll).generate(params, PROMPTS, sp, seed=5)
    assert out["mask"].sum() == 64 * len(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        completion = out["tokens"][row].tolist()
        train_side = training_side_logprobs(graphdef, params, prompt, completion, width=80)
        np.testing.assert_allclose(out["logprobs"][row], train_side, atol=5e-5)


@LAYOUTS
def test_bf16_compute_matches_the_training_side_to_bf16_rounding(model, unroll):
    # bf16 compute over f32 parameters. On CPU the sampler keeps its KV cache in f32 (XLA:CPU
    # widens a bf16 cache around every write); the cache holds the bf16 keys and values
    # exactly, and the log-probs agree with the bf16 training-side forward to bf16 rounding.
    # Measured: <= 0.06 apart over 40 tokens (the f32 model's forward: up to 0.27 apart).
    mesh = model[3]
    cfg = model_config("tiny", init_std=0.2, dtype="bfloat16", **SHAPE)
    graphdef, params, _ = init_params(cfg, mesh, DEFAULT_RULES, 0)
    s = Sampler(graphdef, mesh, DEFAULT_RULES, eos_id=-1, pad_id=PAD, unroll_layers=unroll)
    assert s.cache_dtype == jnp.float32
    sp = SamplingParams(max_new_tokens=40, temperature=1.0)
    out = s.generate(params, PROMPTS, sp, seed=5)
    for row, prompt in enumerate(PROMPTS):
        completion = out["tokens"][row].tolist()
        train_side = training_side_logprobs(graphdef, params, prompt, completion, width=64)
        np.testing.assert_allclose(out["logprobs"][row], train_side, atol=0.1)


def test_padding_layout_does_not_change_results(model):
    _, _, params, _ = model
    s = sampler(model, eos=-1)
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    alone = s.generate(params, [PROMPTS[1]], sp, seed=0)
    batched = s.generate(params, PROMPTS, sp, seed=0)  # padded to 16 next to a long prompt
    np.testing.assert_array_equal(alone["tokens"][0], batched["tokens"][1])
    np.testing.assert_allclose(alone["logprobs"][0], batched["logprobs"][1], atol=1e-5)


@LAYOUTS
def test_sharded_sampling_equals_single_device(model, devices, unroll):
    cfg, graphdef, params, _ = model
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, sharded, _ = init_params(cfg, mesh, DEFAULT_RULES, 0)
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompts = PROMPTS + [[1, 4], [1, 6, 8], [1, 3, 3, 3], [1, 9], [1, 10, 11]]
    ref = sampler(model, eos=-1).generate(params, prompts, sp, seed=0)
    out = sampler(model, eos=-1, mesh=mesh, unroll=unroll).generate(sharded, prompts, sp, seed=0)
    np.testing.assert_array_equal(out["tokens"], ref["tokens"])
    np.testing.assert_allclose(out["logprobs"], ref["logprobs"], atol=1e-5)


def test_sampling_on_a_separate_data_parallel_layout(model, devices):
    cfg, graphdef, params, _ = model
    train_mesh = parallel.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    _, trained, _ = init_params(cfg, train_mesh, DEFAULT_RULES, 0)
    dp_mesh = parallel.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    placed = reshard_params(trained, cfg, dp_mesh, DEFAULT_RULES)
    leaf = placed["layers"]["mlp"]["up_kernel"]
    assert leaf.sharding.mesh == dp_mesh and leaf.sharding.is_fully_replicated
    # The sharded test's params and prompts: its one-device reference compile is reused.
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompts = PROMPTS + [[1, 4], [1, 6, 8], [1, 3, 3, 3], [1, 9], [1, 10, 11]]
    ref = sampler(model, eos=-1).generate(params, prompts, sp, seed=0)
    out = sampler(model, eos=-1, mesh=dp_mesh).generate(placed, prompts, sp, seed=0)
    np.testing.assert_array_equal(out["tokens"], ref["tokens"])


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda x: (np.asarray(x[0]) > -1e30).tolist()  # noqa: E731
    assert kept(filter_logits(logits, 2, 1.0)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, 0, 0.6)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, 0, 0.5)) == [True, False, False, False, False]
    assert kept(filter_logits(logits, 0, 0.86)) == [True, True, True, True, False]
    assert kept(filter_logits(logits, 0, 1.0)) == [True] * 5


def test_sample_categorical_draws_the_softmax_distribution():
    probs = np.array(
        [
            [0.5, 0.2, 0.15, 0.1, 0.05, 0.0],  # the last token masked
            [0.0, 0.0, 0.3, 0.0, 0.7, 0.0],  # masked tokens at both ends and between
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # one token left: always drawn
        ]
    )
    neg = np.finfo(np.float32).min
    logits = np.where(probs > 0, np.log(np.maximum(probs, 1e-30)) + 3.0, neg).astype(np.float32)
    n = 20_000
    draws = jax.jit(jax.vmap(sample_categorical, in_axes=(0, None)))(
        jax.random.split(jax.random.key(0), n), jnp.asarray(logits)
    )
    draws = np.asarray(draws)  # [n, rows]
    freq = np.stack([np.bincount(draws[:, r], minlength=6) / n for r in range(3)])
    # Four standard errors of a frequency; masked tokens are never drawn at all.
    tol = 4 * np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= tol + 1e-12), freq
    assert np.all(freq[probs == 0] == 0)


def test_unroll_layers_defaults_to_unrolled_on_cpu(model):
    assert sampler(model).unroll_layers is True
    assert sampler(model, unroll=False).unroll_layers is False
