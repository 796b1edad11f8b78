"""The config every stage shares: one place that names the fields scripts rely on.

Names here are contracts: `total_steps`, `log_every`, `eval_every`, `checkpoint_every`,
`seed`, `init_from`, `mesh`, `model`, `optimizer`, `data`, and `objective`, which each
objective fills with its own keys: a config file under `configs/<stage>/` starts from
`align_jax.objectives.config_for(name)` (this module's `base_config()` plus that objective's
`config.objective`) and sets what differs. The command line (align_jax/cli.py) locks it, so
a mistyped `--config.a.b=v` is an error naming the key.
"""

from __future__ import annotations

import ml_collections

# Logical axis -> mesh axes. One table; activations and parameters both go through it.
# A mesh axis is used at most once per array (the first logical axis that asks for it wins)
# and only where it divides the dimension, so small models replicate what does not fit.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


# Named model shapes shared by every stage's configs, so a handoff between stages (which
# needs the same architecture) is one name, not copied numbers.
MODEL_PRESETS = {
    # 0.5M parameters: seconds per stage on a laptop CPU.
    "tiny": dict(
        vocab_size=512,
        d_model=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        mlp_dim=384,
        max_seq_len=128,
    ),
    # Meta-Llama-3-8B: 8.03B parameters.
    "llama3_8b": dict(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        mlp_dim=14336,
        norm_eps=1e-5,
        rope_theta=500000.0,
        max_seq_len=8192,
        rope_scaling=dict(
            type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position=8192,
        ),
        dtype="bfloat16",
        remat="full",
    ),
}
# Meta-Llama-3-70B: 70.55B parameters (the 8B's recipe at 80 layers of d_model 8192).
MODEL_PRESETS["llama3_70b"] = dict(
    MODEL_PRESETS["llama3_8b"], d_model=8192, n_layers=80, n_heads=64, mlp_dim=28672
)


def model_config(preset: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """Decoder-only transformer switches (Llama / Qwen / Gemma families).

    `preset` names a shape in MODEL_PRESETS; `overrides` change single fields.
    """
    m = ml_collections.ConfigDict()
    m.vocab_size = 32000  # rows of the token embedding and LM head; >= the tokenizer's ids
    m.d_model = 512  # width of the residual stream
    m.n_layers = 4  # transformer blocks
    m.n_heads = 8  # query heads per layer
    m.n_kv_heads = 8  # key/value heads; < n_heads (dividing it) is grouped-query attention
    m.head_dim = 64  # width of each attention head (need not be d_model / n_heads)
    m.mlp_dim = 1408  # hidden width of the gated MLP
    m.activation = "silu"  # silu: SwiGLU (Llama/Qwen); gelu: GeGLU (Gemma, tanh approx).
    m.norm_eps = 1e-5  # RMSNorm epsilon
    m.norm_offset = 0.0  # 1.0 gives Gemma's (1 + w) RMSNorm scale.
    m.post_norms = False  # Gemma 2/3: extra RMSNorm after attention and MLP outputs.
    m.tie_embeddings = False  # the LM head reuses the token embedding matrix
    m.qkv_bias = False  # biases on the q, k, v projections (Qwen2)
    m.qk_norm = False  # RMSNorm on each head's queries and keys (Qwen3, Gemma 3)
    m.embed_scale = False  # Gemma: embeddings times sqrt(d_model)
    m.final_logit_softcap = 0.0  # output logits to cap·tanh(x / cap) (Gemma 2: 30.0); 0 disables
    m.attn_logit_softcap = 0.0  # attention scores to cap·tanh(x / cap) (Gemma 2: 50.0); 0 disables
    m.query_scale = 0.0  # 0: 1/sqrt(head_dim); Gemma sets its own query_pre_attn_scalar
    m.rope_theta = 10000.0  # RoPE base frequency
    # Sliding-window attention (Mistral, Gemma 2/3): a query sees the last `sliding_window`
    # tokens, itself included; 0 turns it off.
    m.sliding_window = 0
    # With a window, layer i (0-based) attends globally when sliding_pattern > 0 and
    # (i + 1) % sliding_pattern == 0 (Gemma 2: 2, Gemma 3: 6); 0: every layer slides (Mistral).
    m.sliding_pattern = 0
    # Gemma 3: sliding layers use plain RoPE with this base (no rope_scaling); 0: every layer
    # uses rope_theta and rope_scaling.
    m.rope_local_theta = 0.0
    m.rope_scaling = ml_collections.ConfigDict(
        {
            "type": "none",  # RoPE scaling for a longer context: none | linear | llama3
            "factor": 1.0,  # linear, llama3: how much longer the context gets (freqs / factor)
            "low_freq_factor": 1.0,  # llama3: wavelengths > original_max_position / this: scaled
            "high_freq_factor": 4.0,  # llama3: wavelengths < original_max_position / this: kept
            "original_max_position": 8192,  # llama3: the context length pretraining used
        }
    )
    m.max_seq_len = 2048  # context length (Hugging Face max_position_embeddings); not enforced
    m.init_std = 0.02  # std of the normal init of embeddings, kernels and heads
    m.param_dtype = "float32"  # stored parameters: float32 | bfloat16 | float16
    m.dtype = "float32"  # compute dtype: float32 | bfloat16
    # Attention kernel of the forward without a KV cache (training, scoring; the sampler's
    # decode always uses xla): xla (reference, any device) | splash (Pallas splash attention,
    # TPU; interpreted, slowly, elsewhere) | cudnn (cuDNN flash attention, NVIDIA GPU, bf16).
    m.attention = "xla"
    m.remat = "none"  # none | full | dots (save matmul outputs) | dots_no_batch
    # Layers per iteration of the layer scan (lax.scan's unroll): 1 keeps compile time flat
    # in depth; n_layers unrolls it, which saved 9% of a 4-layer DPO step on a 2-core CPU.
    m.scan_unroll = 1
    m.head = "lm"  # lm: next-token logits; scalar: one score per token (reward / value models)
    # LoRA (arXiv 2106.09685; align_jax/models/lora.py): rank > 0 trains only adapters on
    # `targets` (comma list of q, k, v, o, gate, up, down) and a new head, scaled by
    # alpha / rank, over the frozen base from config.init_from (the reference model too).
    m.lora = ml_collections.ConfigDict(
        {
            "rank": 0,  # adapters' rank; 0: no LoRA, every parameter trains
            "alpha": 16.0,  # adapter outputs are scaled by alpha / rank
            "targets": "q,k,v,o",  # comma list of adapted projections: q, k, v, o, gate, up, down
        }
    )
    if preset is not None:
        if preset not in MODEL_PRESETS:
            raise ValueError(
                f"model preset {preset!r} is unknown; presets: {sorted(MODEL_PRESETS)}"
            )
        m.update(MODEL_PRESETS[preset])
    m.update(overrides)
    return m


def base_config() -> ml_collections.ConfigDict:
    """Every field but `objective` (align_jax.objectives.config_for adds it), with defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, data shuffling and each step's RNG
    c.total_steps = 1000  # optimizer updates in the run; the lr schedule spans them
    c.log_every = 10  # steps between train records (also step 1 and the last step)
    c.eval_every = 100  # steps between evals (and the last step); 0: none; needs data.eval_files
    c.eval_steps = 0  # batches per eval; 0: the whole eval split
    c.eval_at_start = False  # with eval_every > 0: also evaluate a fresh run's start (step 0)
    c.checkpoint_every = 200  # steps between checkpoints (also the last step and on SIGTERM)
    c.keep_checkpoints = 3  # newest checkpoints kept in the workdir
    c.async_checkpointing = True  # Orbax writes checkpoints in the background
    # The run (workdir) or Hugging Face checkpoint directory the parameters start from (an
    # earlier stage's); "": fresh from seed.
    c.init_from = ""
    c.peak_tflops_per_device = 0.0  # peak TFLOP/s for MFU; 0: by device kind (unknown: no MFU)
    c.progress_bar = True  # a tqdm progress bar, only drawn on a terminal
    # Weights & Biases (align_jax/training/wandb_log.py): process 0 also logs the metrics, the
    # config and online RL's samples table to a W&B run.
    c.wandb = ml_collections.ConfigDict(
        {
            "enabled": False,  # also log to W&B; needs pip install -e ".[wandb]"
            "project": "align_jax",  # the W&B project
            "entity": "",  # the W&B team or user; "": your default entity
            "name": "",  # the run's name; "": the workdir's folder name
            "tags": "",  # comma list of the run's tags
            # online | offline (the run stays in workdir/wandb; upload it with `wandb sync`)
            "mode": "online",
        }
    )

    c.mesh = ml_collections.ConfigDict(
        {
            "data": 1,  # data-parallel axis: batch split, parameters replicated
            "fsdp": -1,  # batch and parameters (ZeRO-3) split; -1: the devices the others leave
            "tensor": 1,  # tensor-parallel axis: heads, MLP and vocab split
        }
    )
    c.sharding = ml_collections.ConfigDict(
        {
            # Logical axis -> mesh axes, for parameters and activations alike (DEFAULT_RULES).
            "rules": DEFAULT_RULES,
        }
    )

    c.model = model_config()

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | sgd | adafactor | lion
    c.optimizer.learning_rate = 3e-4  # peak learning rate, reached after warmup
    c.optimizer.schedule = "cosine"  # cosine | linear | constant
    c.optimizer.warmup_steps = 100  # linear warmup from 0; 0: none
    c.optimizer.end_lr_factor = 0.1  # final lr / peak lr for cosine and linear
    c.optimizer.weight_decay = 0.1  # decoupled, times the scheduled lr; kernels, embeddings only
    c.optimizer.b1 = 0.9  # adamw, lion: β1 (first-moment decay)
    c.optimizer.b2 = 0.95  # adamw: β2 (second-moment decay); lion: its momentum's decay
    c.optimizer.eps = 1e-8  # adamw: added to sqrt(v) in the denominator
    c.optimizer.momentum = 0.9  # sgd: heavy-ball momentum; 0: none
    c.optimizer.grad_clip_norm = 1.0  # clip the gradient's global norm to this; 0 disables
    c.optimizer.grad_accum_steps = 1  # micro-batches per update; must divide data.batch_size

    c.data = ml_collections.ConfigDict()
    c.data.train_files = ""  # comma-separated files or globs
    c.data.eval_files = ""  # comma-separated files or globs; "": no eval
    c.data.tokenizer = ""  # sentencepiece .model, HF tokenizer.json, or a checkpoint dir
    c.data.format = "auto"  # auto (by extension) | text | jsonl
    c.data.text_field = "text"  # pretraining: the JSONL field holding a document
    c.data.seq_len = 512  # tokens per row
    c.data.batch_size = 8  # examples (rows, pairs, lists, prompts) per step, across all processes
    c.data.add_bos = True  # prepend the tokenizer's bos to each document / example
    c.data.add_eos = True  # append the tokenizer's eos to each document / completion
    c.data.shuffle = True  # reshuffle the training records every epoch (from seed)
    c.data.num_epochs = 0  # 0: repeat forever
    # SFT and preference data (align_jax/data/records.py documents the record fields).

    # Chat template of `messages` records: simple | chatml (plain-text markers) | checkpoint
    # (the tokenizer's own Jinja template, from a Hugging Face checkpoint's
    # tokenizer_config.json or chat_template.jinja; set add_bos=False if the template writes
    # bos itself).
    c.data.chat_template = "simple"
    c.data.packing = True  # SFT: first-fit pack whole examples into rows
    c.data.overlong = "truncate"  # truncate | drop examples longer than seq_len (counted)
    c.data.drop_identical_pairs = True  # drop pairs whose chosen == rejected (always counted)
    # Listwise data: K responses per prompt; shorter lists are padded and masked, longer ones
    # keep their best K by rank / score (counted).
    c.data.list_size = 4
    # Online RL prompts: tokens per prompt (bos included); longer ones keep their last tokens.
    c.data.max_prompt_len = 64
    c.data.read_threads = 0  # threads reading + tokenizing documents; 0: inline
    c.data.prefetch_batches = 2  # batches built ahead in a background thread; 0: off
    return c
