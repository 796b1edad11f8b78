"""A real two-process JAX job on this machine (gloo CPU collectives), 4 devices each:
per-process data shards, global batches, multi-process Orbax checkpoints and exact resume."""

import json
import os
import socket
import subprocess
import sys

from align_jax.data.tokenizer import train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments"))
from tiny_corpus import write_corpus  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data_dir, workdir, total_steps):
    port = free_port()
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    common = [
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--config=configs/pretrain/tiny.py:{data_dir}",
        f"--workdir={workdir}",
        f"--config.total_steps={total_steps}",
        "--config.log_every=1",
        "--config.checkpoint_every=3",
        "--config.eval_every=3",
        "--config.optimizer.schedule=constant",
        "--config.model.n_layers=1",
        "--config.data.seq_len=64",
        "--config.mesh.data=2",
        "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "align_jax.train", f"--process_id={i}", *common],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_process_run_resumes_exactly(tmp_path):
    data_dir = tmp_path / "data"
    write_corpus(data_dir, n_train=400, n_eval=30, seed=1)
    train_tokenizer([str(data_dir / "train.jsonl")], str(data_dir / "tok"), 512)

    launch(data_dir, tmp_path / "full", 6)
    launch(data_dir, tmp_path / "split", 3)
    outs = launch(data_dir, tmp_path / "split", 6)
    assert all("resumed from" in out and "at step 3" in out for out in outs)

    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(full) == sorted(split) == list(range(1, 7))
    assert full == split
    assert sorted(os.listdir(tmp_path / "split" / "checkpoints")) == ["3", "6"]
