"""Parameter and FLOP counts of a model config, from its shapes alone (nothing is built).

`count_params` is kept by hand next to the modules in `align_jax.models.layers`; the model
tests check it against the leaves of a built model for every family switch.
"""

from __future__ import annotations

from align_jax.models.lora import count_adapter_params


def count_params(cfg, *, include_embeddings: bool = True, include_lora: bool = True) -> int:
    d, h, k, hd, f, n = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.mlp_dim,
        cfg.n_layers,
    )
    per_layer = d * h * hd * 2 + d * k * hd * 2 + 3 * d * f + 2 * d
    per_layer += (h + 2 * k) * hd if cfg.qkv_bias else 0
    per_layer += 2 * hd if cfg.qk_norm else 0
    per_layer += 2 * d if cfg.post_norms else 0
    total = n * per_layer + d
    if cfg.head == "scalar":
        total += d + (cfg.vocab_size * d if include_embeddings else 0)
    elif include_embeddings:
        total += cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return total + (count_adapter_params(cfg) if include_lora else 0)


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward), PaLM's count (arXiv 2204.02311).

    6 * (matmul parameters, the LM head included, the embedding lookup not) plus
    12 * layers * heads * head_dim * seq_len for the attention scores and values.
    A LoRA run counts the same as a full fine-tune of its model (adapters left out, though it
    skips the frozen kernels' weight gradients), so MFU compares tokens/s across the two.
    """
    head = cfg.vocab_size * cfg.d_model if cfg.head == "lm" else 0
    matmul_params = count_params(cfg, include_embeddings=False, include_lora=False) + head
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 6.0 * matmul_params + attention
