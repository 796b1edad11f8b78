"""Hugging Face interop against transformers (CPU torch, a test-only reference).

For each family a tiny randomly initialised transformers model is saved to disk and
imported: logits match transformers' in fp32; export, load in transformers, logits match
again; greedy generation matches `generate` token for token. Sequences are longer than
the sliding window, and the Gemma models mix sliding and global layers, so windows and
Gemma 3's per-layer RoPE are exercised. A bf16 export writes bf16 tensors that reload as
they were written.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from align_jax import parallel  # noqa: E402
from align_jax.config import DEFAULT_RULES  # noqa: E402
from align_jax.interop import hf  # noqa: E402
from align_jax.interop.safetensors import INDEX_FILE, Checkpoint, write_checkpoint  # noqa: E402
from align_jax.rollout import Sampler, SamplingParams  # noqa: E402

VOCAB, WINDOW = 96, 6
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.15,  # large enough that logits (and argmaxes) differ clearly
    rms_norm_eps=1e-6,
)
FAMILIES = {
    "llama3.1": (
        "LlamaConfig",
        dict(
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "mistral": ("MistralConfig", dict(sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=16)),
    "gemma2": (
        "Gemma2Config",
        dict(
            head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=12, final_logit_softcapping=5.0
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            head_dim=8,
            sliding_window=WINDOW,
            query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "full_attention"] * 2,
            rope_theta=1e6,
            rope_local_base_freq=10000.0,
            rope_scaling=dict(rope_type="linear", factor=4.0),
        ),
    ),
}


# The sampler layout each family's generation test runs (tests/rollout shows the two agree):
# each layout gets a family with sliding windows and one with mixed local / global layers.
UNROLL = {
    "llama3.1": True,
    "mistral": False,
    "qwen2": False,
    "qwen3": True,
    "gemma2": True,
    "gemma3": False,
}


def hf_model_class(cfg):
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, HF directory, the transformers model)."""
    name = request.param
    cls, extra = FAMILIES[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls)(**COMMON, **extra)
    model = hf_model_class(cfg).eval()
    d = tmp_path_factory.mktemp(name)
    model.save_pretrained(d)
    return name, str(d), model


def tokens(batch=2, length=20, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, length))


def torch_logits(model, toks):
    with torch.no_grad():
        return model(torch.tensor(toks)).logits.numpy()


def test_imported_logits_match_transformers(family):
    name, d, model = family
    toks = tokens()
    ref = torch_logits(model, toks)
    got = np.asarray(hf.load_hf(d)(jnp.asarray(toks)))
    assert got.shape == ref.shape == (2, 20, VOCAB)
    assert np.abs(ref).max() > 0.5  # the comparison is not of near-zero numbers
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_export_round_trip_loads_in_transformers(family, tmp_path):
    name, d, model = family
    run = tmp_path / "run"
    assert hf.main(["import", d, str(run)]) == 0
    out = tmp_path / "exported"
    assert hf.main(["export", str(run), str(out)]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager"
    ).eval()
    assert type(back) is type(model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    toks = tokens(seed=1)
    np.testing.assert_allclose(
        torch_logits(back, toks), torch_logits(model, toks), atol=1e-4, rtol=0
    )


def test_greedy_generation_matches_transformers(family):
    name, d, model = family
    prompts = [[5, 17, 33, 2, 8, 40, 11], [9, 3, 70, 21, 6, 30, 12]]
    n_new = 12  # prompt + completion pass the sliding window
    with torch.no_grad():
        ref = model.generate(
            torch.tensor(prompts), max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new,
            pad_token_id=0, eos_token_id=None,
        )[:, len(prompts[0]) :].numpy()  # fmt: skip
    cfg, graphdef, params = hf.load_hf_params(d)
    mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    sampler = Sampler(graphdef, mesh, DEFAULT_RULES, eos_id=-1, pad_id=0,
                      unroll_layers=UNROLL[name])  # fmt: skip
    with parallel.sharding_context(sampler.mesh, DEFAULT_RULES):
        out = sampler.generate(params, prompts, SamplingParams(n_new, temperature=0.0), seed=0)
    np.testing.assert_array_equal(out["tokens"], ref, err_msg=f"unroll_layers={UNROLL[name]}")


def test_bf16_export_writes_bf16_tensors_that_reload_to_the_same_values(tmp_path):
    import ml_dtypes

    torch.manual_seed(2)
    model = hf_model_class(transformers.LlamaConfig(**COMMON)).eval()
    model.save_pretrained(tmp_path / "hf")
    run, out = tmp_path / "run", tmp_path / "bf16"
    assert hf.main(["import", str(tmp_path / "hf"), str(run)]) == 0
    assert hf.main(["export", str(run), str(out), "--dtype", "bfloat16"]) == 0
    assert json.load(open(out / "config.json"))["torch_dtype"] == "bfloat16"
    # torch's own bf16 rounding of the original weights: what the file must hold.
    want = {k: v.to(torch.bfloat16).float().numpy() for k, v in model.state_dict().items()}
    ckpt = Checkpoint(str(out))
    assert set(ckpt.keys()) == set(want)
    for key in ckpt.keys():
        assert ckpt.get(key).dtype == ml_dtypes.bfloat16, key
        np.testing.assert_array_equal(ckpt.get(key).astype(np.float32), want[key], err_msg=key)
    back = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), want[key], err_msg=key)
    # Loaded here, the parameters are bf16 (the stored dtype) and hold the same values.
    ours = hf.load_hf(str(out))
    leaves = jax.tree.leaves(nnx.state(ours, nnx.Param))
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    embedding = np.asarray(ours.embedding[...].astype(jnp.float32))
    np.testing.assert_array_equal(embedding, want["model.embed_tokens.weight"])
    lm_head = np.asarray(ours.lm_head[...].astype(jnp.float32))
    np.testing.assert_array_equal(lm_head, want["lm_head.weight"].T)


def test_sharded_import_equals_single_device(tmp_path, devices):
    torch.manual_seed(1)
    model = hf_model_class(transformers.Qwen3Config(**COMMON, head_dim=16)).eval()
    model.save_pretrained(tmp_path)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        cfg, graphdef, params = hf.load_hf_params(str(tmp_path), mesh=mesh)
        q = params["layers"]["attn"]["q_kernel"]  # [layers, embed, heads, head_dim]
        # Split over fsdp (embed) and tensor (heads): no device holds the whole kernel.
        assert q.sharding.spec[1:3] == ("fsdp", "tensor")
        assert q.addressable_shards[0].data.shape == (4, 16, 2, 16)
        logits = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, jnp.asarray(tokens()))
    np.testing.assert_allclose(np.asarray(logits), torch_logits(model, tokens()), atol=1e-4, rtol=0)


def test_sharded_safetensors_with_index(family, tmp_path):
    """A checkpoint split over several files with an index imports, and exports so again."""
    name, d, model = family
    run = tmp_path / "run"
    hf.import_checkpoint(d, str(run))
    out = tmp_path / "sharded"
    files = hf.export_checkpoint(str(run / "checkpoints" / "0"), str(out), max_shard_bytes=20_000)
    assert len(files) > 1 and (out / INDEX_FILE).exists()
    back = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager"
    ).eval()
    toks = tokens(seed=2)
    np.testing.assert_allclose(
        torch_logits(back, toks), torch_logits(model, toks), atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        np.asarray(hf.load_hf(str(out))(jnp.asarray(toks))),
        torch_logits(model, toks),
        atol=1e-4,
        rtol=0,
    )


def test_safetensors_reader_matches_the_reference_library(tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file

    arrays = [
        ("a", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("b", np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)),
        ("c", np.arange(5, dtype=np.int64)),
    ]
    write_checkpoint(str(tmp_path), arrays)
    ckpt = Checkpoint(str(tmp_path))
    ref = load_file(str(tmp_path / "model.safetensors"))
    for name, value in arrays:
        assert ckpt.get(name).dtype == value.dtype
        np.testing.assert_array_equal(ckpt.get(name).astype(np.float64), value.astype(np.float64))
        if name != "b":  # numpy has no bfloat16: the reference library cannot read it back
            np.testing.assert_array_equal(ref[name], value)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(hf.InteropError, match="model_type 'gpt2' is not supported"):
        hf.load_hf(str(tmp_path))


def test_missing_tensor_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    hf_model_class(transformers.LlamaConfig(**COMMON)).save_pretrained(tmp_path)
    ckpt = Checkpoint(str(tmp_path))
    kept = [
        (k, np.array(ckpt.get(k))) for k in ckpt.keys() if k != "model.layers.2.mlp.up_proj.weight"
    ]
    del ckpt
    os.remove(tmp_path / "model.safetensors")
    write_checkpoint(str(tmp_path), kept)
    with pytest.raises(
        hf.InteropError, match=r"tensor 'model.layers.2.mlp.up_proj.weight' .* missing"
    ):
        hf.load_hf(str(tmp_path))


def test_model_no_family_expresses_is_refused_on_export():
    from align_jax.config import model_config

    cfg = model_config("tiny", qk_norm=True, qkv_bias=True)  # qwen2 bias + qwen3 norm
    with pytest.raises(hf.InteropError, match="config.model.qkv_bias"):
        hf.hf_config_from_model(cfg)


@pytest.mark.slow
def test_init_from_a_hugging_face_directory(tmp_path):
    """A training run starts from an HF directory (architecture and weights), and exports."""
    import sys

    from align_jax.data.tokenizer import train_tokenizer
    from align_jax.objectives import config_for
    from align_jax.training import loop

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments"))
    from tiny_corpus import write_corpus

    data = tmp_path / "data"
    write_corpus(data, n_train=200, n_eval=10, seed=0)
    train_tokenizer([str(data / "train.jsonl")], str(data / "tok"), 384)
    torch.manual_seed(3)
    model = hf_model_class(
        transformers.MistralConfig(**{**COMMON, "vocab_size": 384}, sliding_window=WINDOW)
    )
    model.save_pretrained(tmp_path / "hf")

    c = config_for("pretrain")
    c.update(total_steps=2, log_every=1, eval_every=0, checkpoint_every=2, progress_bar=False,
             async_checkpointing=False, init_from=str(tmp_path / "hf"))  # fmt: skip
    c.mesh.update(data=2, fsdp=2, tensor=2)
    c.optimizer.update(learning_rate=0.0, warmup_steps=0, weight_decay=0.0)
    c.data.update(train_files=str(data / "train.jsonl"), tokenizer=str(data / "tok.model"),
                  seq_len=32, batch_size=8)  # fmt: skip
    loop.train(c, str(tmp_path / "run"))  # config.model is the default shape until HF sets it
    written = json.load(open(tmp_path / "run" / "config.json"))["model"]
    assert (written["d_model"], written["sliding_window"], written["n_layers"]) == (32, WINDOW, 4)

    hf.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    for key, value in model.state_dict().items():  # a learning rate of 0 keeps the weights
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    assert back.config.eos_token_id == 2  # the run's tokenizer's ids travel with the export
