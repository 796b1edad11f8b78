"""Batched sampling with a preallocated KV cache: prefill, then a `lax.while_loop` of decode
steps, all jitted with static shapes and run on the training mesh.

Layout. Prompts of different lengths are left-padded to a common length P, so every row's
last prompt token sits in slot P-1 and each decode step writes one slot for all rows
(slot P + i at step i). RoPE positions count real tokens only, so padding never shifts a
row's positions, and `kv_valid` keeps padding slots out of attention: a prompt gives the
same tokens whatever it is batched with.

Stopping. A row is done once it samples `eos_id`; later slots of a done row hold `pad_id`
with mask 0. The loop ends when every row is done or after `max_new_tokens`.

Log-probs. `logprobs[b, i]` is `log softmax(logits / T)[token]` of the sampled token
under the *unfiltered* distribution (top-k / top-p only choose what is sampled), which is
what `align_jax.losses.token_logprobs(logits, targets, temperature=T)` gives on the
training side, so the importance ratio of an RL update is exactly 1 before the first update
(docs/objectives.md). Greedy decoding (temperature 0) reports log-probs at T = 1.

Speed. Decoding a small batch reads every weight and the whole cache once per step, so a
step is bound by memory traffic more than by FLOPs. On CPU the layers' parameters are
sliced out of their stacked form once per call (`align_jax.models.decode.layer_blocks`)
and a step runs its layers unrolled over them and over per-layer caches
(`Sampler(unroll_layers=)`); cached keys are stored slots-last; the decode loop runs in up
to 4 chunks over a cache that grows per chunk, so a step reads only the filled slots and at
most one chunk more; a token is drawn by inverting the CDF with one uniform per row
(`sample_categorical`), all steps' uniforms drawn before the loop; each step makes the next
step's RoPE tables into the loop's carry (`align_jax.models.decode.extend`). Against the
scanned form (stacked weights and cache sliced per layer every step), a full-length cache
and Gumbel-max `jax.random.categorical`, tools/bench_sample.py measured llama25m at batch 16
going from ~1,460 to ~2,300-2,500 new tokens/s on 2 CPU cores.

Precision. Under bf16 compute the CPU sampler keeps its KV cache in f32 (XLA:CPU has no
bf16 dynamic-update-slice and would rewrite the whole cache at every step's write) and
attends in f32 over the bf16 keys and values it holds exactly; accelerators keep the
cache in the compute dtype. bf16 log-probs then match the bf16 training side to bf16
rounding (<= 0.06 apart on the test model; f32 ones to ~1e-5), so in bf16 the ratio
before the first update is 1 only to that rounding.

Sharding. Parameters stay in their training shardings (nothing is gathered to one device);
the batch and the cache are split over the batch axes and the cache's KV heads over
`tensor`, through the same logical-axis rules as training.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax import models, parallel
from align_jax.models.decode import extend, grow_cache, init_cache, layer_blocks
from align_jax.models.layers import layer_attention, rope_tables


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    n: int = 1  # samples per prompt (a GRPO group), adjacent in the output


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 8, length: int | None = None
):
    """Token lists -> (tokens [B, P], valid [B, P]), left-padded to a multiple of `multiple`
    (fewer distinct shapes, fewer compiles), or to exactly `length` (one shape for every
    batch, as online RL wants: one compile)."""
    longest = max(len(p) for p in prompts)
    if longest == 0:
        raise ValueError("every prompt is empty; a prompt needs at least one token (e.g. bos)")
    if length is None:
        length = -(-longest // multiple) * multiple
    elif longest > length:
        raise ValueError(f"a prompt has {longest} tokens, more than the padded length {length}")
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    valid = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; a prompt needs at least one token (e.g. bos)")
        tokens[i, length - len(p) :] = p
        valid[i, length - len(p) :] = 1
    return tokens, valid


def filter_logits(logits_bv: jax.Array, top_k: int, top_p) -> jax.Array:
    """Masks logits outside the top-k and outside the smallest set with mass >= top_p."""
    neg = jnp.finfo(logits_bv.dtype).min
    if top_k:
        kth = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth, neg, logits_bv)
    if top_p >= 1:  # no nucleus: skip the vocabulary sort, the costly part of a sampling step
        return logits_bv
    sorted_logits = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token if the mass strictly before it is < top_p (the first one always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_bv < threshold, neg, logits_bv)


_DRAW_BLOCK = 128  # vocabulary entries per block of the two-level CDF search


def _draw(uniform_b: jax.Array, weights_bv: jax.Array) -> jax.Array:
    """One index per row, drawn with probability proportional to `weights_bv` [B, V] (>= 0,
    float32, not all 0 in a row), by inverting the row's CDF at `uniform_b` [B] in [0, 1).

    Two levels: the CDF over blocks of `_DRAW_BLOCK` entries picks a block, the CDF within
    that block picks the entry, so no [B, V] cumulative sum is formed (0.12 vs 0.31 ms at
    B = 16, V = 8,192 on 2 CPU cores; 0.55 vs 3.1 ms at V = 128,256). Entries of weight 0
    are never drawn: each level's uniform is kept strictly below that level's total, so
    the first entry whose CDF exceeds it has weight > 0.
    """
    batch, vocab = weights_bv.shape
    n_blocks = -(-vocab // _DRAW_BLOCK)
    pad = n_blocks * _DRAW_BLOCK - vocab
    blocks = jnp.pad(weights_bv, ((0, 0), (0, pad))).reshape(batch, n_blocks, _DRAW_BLOCK)
    mass = blocks.sum(axis=-1)  # [B, blocks]
    cdf = jnp.cumsum(mass, axis=-1)
    total = cdf[:, -1:]
    u = jnp.minimum(uniform_b[:, None] * total, jnp.nextafter(total, 0.0))
    block = jnp.sum(cdf <= u, axis=-1)  # [B]; that block's mass is > 0
    start = jnp.take_along_axis(cdf - mass, block[:, None], axis=1)
    inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # [B, block]
    inner_cdf = jnp.cumsum(inner, axis=-1)
    # The block's own sum can round differently from `mass`: clamp into [0, its total).
    u_inner = jnp.clip(u - start, 0.0, jnp.nextafter(inner_cdf[:, -1:], 0.0))
    index = block * _DRAW_BLOCK + jnp.sum(inner_cdf <= u_inner, axis=-1)
    return index.astype(jnp.int32)


def sample_categorical(rng, logits_bv: jax.Array) -> jax.Array:
    """One token per row from `softmax(logits)` [B, V]; masked logits (`filter_logits`)
    are never drawn.

    The distribution of `jax.random.categorical`, whose Gumbel-max trick draws a random
    number per vocabulary entry: on XLA:CPU that [B, V] threefry stream was most of a
    sampling step (~1.5 of ~1.9 ms at B = 16, V = 8192). This inverts the CDF at one
    uniform draw per row (`_draw`).
    """
    logits_bv = logits_bv.astype(jnp.float32)
    weights = jnp.exp(logits_bv - jnp.max(logits_bv, axis=-1, keepdims=True))
    return _draw(jax.random.uniform(rng, logits_bv.shape[:1], jnp.float32), weights)


def choose_tokens(logits_bv, uniform_b, sp: SamplingParams):
    """(tokens [B], log-probs [B]) from last-position logits and a uniform [B] per row."""
    scaled = logits_bv.astype(jnp.float32)
    if sp.temperature:
        scaled = scaled / sp.temperature
    top = jnp.max(scaled, axis=-1, keepdims=True)
    weights = jnp.exp(scaled - top)  # unnormalised softmax(scaled)
    if sp.temperature == 0:
        tokens = jnp.argmax(scaled, axis=-1).astype(jnp.int32)
    else:
        if sp.top_k or sp.top_p < 1:
            kept = filter_logits(scaled, sp.top_k, sp.top_p) > jnp.finfo(jnp.float32).min
            weights_drawn = jnp.where(kept, weights, 0.0)
        else:
            weights_drawn = weights
        tokens = _draw(uniform_b, weights_drawn)
    picked = jnp.take_along_axis(scaled, tokens[:, None], -1)[:, 0]
    # log softmax(scaled)[token] over the unfiltered distribution
    return tokens, picked - top[:, 0] - jnp.log(jnp.sum(weights, axis=-1))


_MAX_CHUNKS, _MIN_CHUNK = 4, 32


def chunk_ends(n_new: int) -> list[int]:
    """Where the decode loop's chunks end, in new tokens: up to `_MAX_CHUNKS` equal chunks of
    at least `_MIN_CHUNK` tokens. The cache holds only the slots up to the current chunk's
    end, so a step reads the prompt, the tokens so far and at most one chunk of empty
    slots: over 128 new tokens, 144 slots a step on average instead of 192 after a 64-token
    prompt. Each chunk is its own `while_loop`, compiled separately (longer compiles).
    """
    chunks = max(1, min(_MAX_CHUNKS, n_new // _MIN_CHUNK))
    size = -(-n_new // chunks)
    return list(range(size, n_new, size)) + [n_new]


def _generate(
    graphdef,
    params,
    tokens_bp,
    valid_bp,
    rng,
    *,
    sp,
    eos_id,
    pad_id,
    mesh,
    rules,
    unroll,
    cache_dtype,
):
    with parallel.sharding_context(mesh, rules):
        model = nnx.merge(graphdef, params)
        batch, prompt_len = tokens_bp.shape
        n_new = sp.max_new_tokens
        ends = chunk_ends(n_new)
        cache = init_cache(model.cfg, batch, prompt_len + ends[0], cache_dtype, stacked=not unroll)
        blocks = layer_blocks(model) if unroll else None  # sliced once, read by every step
        kv_valid = jnp.concatenate([valid_bp, jnp.zeros((batch, ends[0]), jnp.int32)], axis=1)
        kv_valid = parallel.constrain(kv_valid, ("batch", "length"))
        positions = jnp.maximum(jnp.cumsum(valid_bp, axis=1) - 1, 0)
        hidden, cache = extend(model, tokens_bp, positions, kv_valid, cache, 0, blocks)
        logits = model.logits(hidden[:, -1:])[:, 0]
        next_pos = positions[:, -1] + 1

        out_tokens = jnp.full((batch, n_new), pad_id, jnp.int32)
        out_logps = jnp.zeros((batch, n_new), jnp.float32)
        out_mask = jnp.zeros((batch, n_new), jnp.int32)
        done = jnp.zeros((batch,), bool)

        def cond(carry, end):
            i, *_, done = carry
            return (i < end) & ~jnp.all(done)

        def body(carry):
            i, cache, kv_valid, logits, pos, rope, toks, logps, mask, done = carry
            token, logp = choose_tokens(logits, uniforms[i], sp)
            live = ~done
            toks = toks.at[:, i].set(jnp.where(live, token, pad_id))
            logps = logps.at[:, i].set(jnp.where(live, logp, 0.0))
            mask = mask.at[:, i].set(live.astype(jnp.int32))
            done = done | (token == eos_id)
            slot = prompt_len + i
            kv_valid = jax.lax.dynamic_update_slice_in_dim(
                kv_valid, live.astype(jnp.int32)[:, None], slot, 1
            )
            hidden, cache = extend(
                model, token[:, None], pos[:, None], kv_valid, cache, slot, blocks, rope
            )
            logits = model.logits(hidden)[:, 0]
            # The next step's rotary tables, made here so that they sit in the carry: made in
            # the step that reads them, XLA fuses cos/sin into every head's rotation
            # (see `align_jax.models.decode.extend`).
            rope = rope_tables(pos[:, None] + 1, inv_freq)
            return i + 1, cache, kv_valid, logits, pos + 1, rope, toks, logps, mask, done

        # Every step's uniforms drawn up front: one random-bits op per call, not one per step.
        uniforms = jax.random.uniform(rng, (n_new, batch), jnp.float32)
        inv_freq = layer_attention(model.cfg)[0]
        rope = rope_tables(next_pos[:, None], inv_freq)
        carry = (0, cache, kv_valid, logits, next_pos, rope, out_tokens, out_logps, out_mask, done)
        for chunk, end in enumerate(ends):
            if chunk:  # room for this chunk's slots: grow the cache (a copy per chunk)
                i, cache, kv_valid, *rest = carry
                extra = end - ends[chunk - 1]
                cache = grow_cache(cache, extra)
                kv_valid = jnp.pad(kv_valid, ((0, 0), (0, extra)))
                kv_valid = parallel.constrain(kv_valid, ("batch", "length"))
                carry = (i, cache, kv_valid, *rest)
            carry = jax.lax.while_loop(functools.partial(cond, end=end), body, carry)
        *_, toks, logps, mask, _ = carry
        return {"tokens": toks, "logprobs": logps, "mask": mask}


def reshard_params(params, model_cfg, mesh, rules):
    """The training parameters placed for a sampling mesh of another layout.

    Bigger runs often sample on a data-parallel layout (e.g. `{"data": -1}`, parameters
    replicated or split over few devices) while training is FSDP: this copies the
    parameters device-to-device into that mesh's shardings (no host round trip).
    """
    _, shapes, axes = models.abstract_params(model_cfg)
    return jax.device_put(params, models.param_shardings(shapes, axes, mesh, rules))


class Sampler:
    """Samples from a model whose parameters live on `mesh` (the training mesh, or another).

        sampler = Sampler(graphdef, mesh, rules, eos_id=tok.eos_id, pad_id=tok.pad_id)
        out = sampler.generate(params, prompt_token_lists, SamplingParams(...), seed=0)

    `out` holds numpy arrays: `tokens` / `logprobs` / `mask` [B * n, max_new_tokens]
    (completion only; mask 1 on generated tokens, the eos included), `prompt_index` [B * n].
    Compiled once per (batch, padded prompt length, sampling params).

    In a multi-process job every process calls `generate` together with its own B prompts
    (the same B everywhere): the global batch is the processes' prompts in process order,
    sampled as one, and each process gets its own prompts' samples. The random draws depend
    on a row's global position only, so 1 process × 8 devices and 2 × 4 sample the same
    tokens for the same global batch.

    `unroll_layers`: run a step's layers unrolled over per-layer weights and caches (faster
    on CPU, at the cost of a copy of the block weights during a call and compile time that
    grows with depth) or scanned over the stacked ones (no copy, flat compile time). None
    picks unrolled where the mesh's devices are CPUs, scanned on accelerators.
    """

    def __init__(
        self,
        graphdef,
        mesh,
        rules,
        *,
        eos_id: int,
        pad_id: int = 0,
        unroll_layers: bool | None = None,
    ):
        self.graphdef, self.mesh, self.rules = graphdef, mesh, tuple(tuple(r) for r in rules)
        self.eos_id, self.pad_id = eos_id, pad_id
        on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
        if unroll_layers is None:
            unroll_layers = on_cpu
        self.unroll_layers = unroll_layers
        # On CPU the KV cache is f32 whatever the compute dtype: XLA:CPU has no bf16
        # dynamic-update-slice and widens the whole cache to f32 and back around each
        # step's write (~3 ms of a ~7 ms llama25m bf16 step at batch 16). The cache then
        # holds the bf16 keys and values exactly, and attention runs in f32 over them.
        self.cache_dtype = jnp.float32 if on_cpu else None
        self._compiled: dict = {}

    def _fn(self, sp: SamplingParams):
        if sp not in self._compiled:
            fn = functools.partial(
                _generate,
                self.graphdef,
                sp=sp,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                mesh=self.mesh,
                rules=self.rules,
                unroll=self.unroll_layers,
                cache_dtype=self.cache_dtype,
            )
            self._compiled[sp] = jax.jit(fn)
        return self._compiled[sp]

    def lower(self, params, rows: int, prompt_len: int, sp: SamplingParams):
        """The sampling program lowered for `rows` global rows (prompts × sp.n) of
        `prompt_len` prompt slots and parameters of these shapes and shardings (`jax.
        ShapeDtypeStruct`s will do), for ahead-of-time compilation."""
        sharding = parallel.named_sharding(
            ("batch", "length"), (rows, prompt_len), self.mesh, self.rules
        )
        tokens = jax.ShapeDtypeStruct((rows, prompt_len), jnp.int32, sharding=sharding)
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(self.mesh))
        return self._fn(sp).lower(params, tokens, tokens, key)

    def generate(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        sp: SamplingParams,
        *,
        seed: int,
        prompt_len: int | None = None,
    ):
        """`prompt_len` pads every batch's prompts to that many slots (one compile for all
        batches); None pads to the longest prompt, rounded up to a multiple of 8."""
        if sp.temperature < 0 or not 0 < sp.top_p <= 1 or sp.top_k < 0 or sp.n < 1:
            raise ValueError(f"sampling params out of range: {sp}")
        if prompt_len is None and jax.process_count() > 1:  # one padded length for all
            longest = max(len(p) for p in prompts)
            prompt_len = -(-int(parallel.all_rows(np.array([longest])).max()) // 8) * 8
        tokens, valid = left_pad(prompts, self.pad_id, length=prompt_len)
        index = np.repeat(np.arange(len(prompts)), sp.n)
        tokens, valid = tokens[index], valid[index]
        # Each process's prompts are its rows of the global batch (in process order); it
        # gets back the samples of its own prompts.
        global_shape = (tokens.shape[0] * jax.process_count(), tokens.shape[1])
        batch_sharding = parallel.named_sharding(
            ("batch", "length"), global_shape, self.mesh, self.rules
        )
        tokens = parallel.global_rows(tokens, batch_sharding)
        valid = parallel.global_rows(valid, batch_sharding)
        out = self._fn(sp)(params, tokens, valid, jax.random.key(seed))
        out = {k: parallel.local_rows(v) for k, v in out.items()}
        out["prompt_index"] = index
        return out
