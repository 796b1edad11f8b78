"""tools/bench_objectives.py in smoke mode (tiny, one call of each program): its output
fields, and its model FLOPs against a count made here from the tiny preset's shape alone.
Nothing about timings is asserted."""

import json
import math
import os
import sys

import pytest

from align_jax.config import MODEL_PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import bench_objectives  # noqa: E402

FIELDS = (
    "config", "objective", "program", "params", "rows", "seq", "tokens", "model_flops",
    "compile_s", "step_s", "tokens_per_s", "model_gflops", "mfu", "others_cores",
    "matmul_peak_gflops",
)  # fmt: skip


def model_flops_per_token(seq: int) -> float:
    """PaLM's 6N + 12·L·h·hd·S for the tiny preset, N counted by hand: per layer the q, o
    (d × h·hd), k, v (d × kv·hd) and SwiGLU (3 × d × f) kernels and two norm scales; the
    final norm and the LM head (V × d); not the embedding lookup."""
    m = MODEL_PRESETS["tiny"]
    d, layers, h, kv, hd = m["d_model"], m["n_layers"], m["n_heads"], m["n_kv_heads"], m["head_dim"]
    per_layer = 2 * d * h * hd + 2 * d * kv * hd + 3 * d * m["mlp_dim"] + 2 * d
    n = layers * per_layer + d + m["vocab_size"] * d
    return 6 * n + 12 * layers * h * hd * seq


@pytest.mark.slow  # two train programs compiled and run once each
def test_smoke_pretrain_and_grpo(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--configs=tiny", "--objectives=pretrain,grpo", "--steps=1", "--warmup=0",
            "--matmul_n=256", "--matmul_repeats=2", f"--json={out}"]  # fmt: skip
    assert bench_objectives.main(argv) == 0
    lines = [
        json.loads(line.removeprefix("RESULT "))
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("RESULT ")
    ]
    rows = {(r["objective"], r["program"]): r for r in lines}
    assert sorted(rows) == [("grpo", "prepare"), ("grpo", "update"), ("pretrain", "train_step")]
    for r in lines:
        for key in FIELDS:
            assert key in r, key
        assert r["step_s"] > 0 and math.isfinite(r["mfu"]) and r["matmul_peak_gflops"] > 0
    saved = json.loads(out.read_text())["results"]
    assert [(r["objective"], r["program"]) for r in saved] == [(o, p) for o, p in rows]

    # pretrain: 16 rows of 128 tokens (configs/pretrain/tiny.py's shape), one update.
    pre = rows["pretrain", "train_step"]
    assert (pre["rows"], pre["seq"], pre["tokens"]) == (16, 128, 2048)
    assert pre["model_flops"] == model_flops_per_token(128) * 16 * 128
    assert math.isfinite(pre["final_loss"])

    # GRPO (configs/grpo/tiny.py: G = 8, one update, beta = 0): 2 prompts × 8 rows of 128
    # slots, trained once; prepare runs no model.
    upd, prep = rows["grpo", "update"], rows["grpo", "prepare"]
    assert (upd["rows"], upd["seq"], upd["tokens"], upd["updates"]) == (16, 128, 2048, 1)
    assert upd["model_flops"] == model_flops_per_token(128) * 16 * 128
    assert prep["model_flops"] == 0 and prep["prepare_forwards"] == 0


def test_unknown_objective_is_one_line(capsys):
    assert bench_objectives.main(["--objectives=pretrain,kto"]) == 2
    assert "--objectives: unknown ['kto']" in capsys.readouterr().err
