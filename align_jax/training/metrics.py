"""Where metrics go: `metrics.jsonl`, TensorBoard events, a progress bar or log lines, online
RL's `samples.jsonl`, and with `config.wandb` on, a Weights & Biases run (wandb_log.py).

Only process 0 writes. `metrics.jsonl` and `samples.jsonl` are appended to (a resumed run
continues them); records of steps after the checkpoint a run resumes from are dropped
first, so each file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import jax

log = logging.getLogger("align_jax")

# Dense bf16 peak per chip, FLOP/s, for model-FLOPs utilisation; override with
# config.peak_tflops_per_device (CPU has no fixed figure: measure it, see tools/).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def peak_flops_per_device(config) -> float | None:
    if config.peak_tflops_per_device:
        return float(config.peak_tflops_per_device) * 1e12
    return PEAK_FLOPS.get(jax.devices()[0].device_kind)


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drops records with step > last_step (written after the checkpoint we resume from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class MetricsWriter:
    """`wandb`: the run's W&B run (wandb_log.start), or None; finished by `close`."""

    def __init__(
        self, workdir: str, total_steps: int, start_step: int, progress_bar: bool, wandb=None
    ):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.samples_path = os.path.join(workdir, "samples.jsonl")
        self._tb = None
        self._bar = None
        self._wandb = wandb
        if not self.enabled:
            return
        truncate_jsonl(self.path, start_step)
        truncate_jsonl(self.samples_path, start_step)
        self._file = open(self.path, "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # tensorboardX is an install requirement; keep going without it
            log.warning("tensorboardX is not installed: no TensorBoard events")
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": step}
        for k, v in metrics.items():
            v = float(v)
            record[prefix + k] = v if math.isfinite(v) else str(v)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(step, {prefix + k: float(v) for k, v in metrics.items()})
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        shown = {k: v for k, v in record.items() if k != "step"}
        text = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text[:200], refresh=True)
        else:
            log.info("step %d %s", step, text)

    def write_samples(self, step: int, records: list[dict]) -> None:
        """Online RL's samples of `step` (one record per prompt: prompt, completions, each
        reward) to samples.jsonl, and to the W&B run's `samples` table."""
        if not self.enabled:
            return
        with open(self.samples_path, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log_samples(step, records)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def close(self, error: BaseException | None = None) -> None:
        """`error`: what the run stopped with (None: it finished), for the W&B run's state."""
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish(error)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Throughput:
    """Tokens per second and model-FLOPs utilisation between two log points."""

    def __init__(self, flops_per_token: float, peak_flops_total: float | None):
        self.flops_per_token = flops_per_token
        self.peak = peak_flops_total
        self.reset()

    def reset(self) -> None:
        self._t0 = time.perf_counter()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def read(self) -> dict:
        dt = max(time.perf_counter() - self._t0, 1e-9)
        tps = self._tokens / dt
        out = {"tokens_per_sec": tps, "model_tflops_per_sec": tps * self.flops_per_token / 1e12}
        if self.peak:
            out["mfu"] = tps * self.flops_per_token / self.peak
        self.reset()
        return out
