"""A real two-process JAX job on this machine (gloo CPU collectives), 4 devices each:
per-process data shards, global batches, multi-process Orbax checkpoints and exact resume."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from tiny_runs import HANG_GUARD_S, REPO, xla_env

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def reserved_port():
    """A free port that stays ours until the job is over.

    Picking a port and closing it before the coordinator binds it leaves a window in which
    another process can take it. This socket stays bound instead, with SO_REUSEPORT, which
    the coordinator's gRPC server sets too, so it alone can bind the port beside us. (Only
    a listening socket accepts connections; this one never listens.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def launch(data_dir, workdir, total_steps):
    """Runs the 2-process job; returns each process's output. A process that fails stops
    the other, which would otherwise wait on the coordinator for minutes."""
    env = xla_env(devices=4, JAX_PLATFORMS="cpu")
    logs = [f"{workdir}.process_{i}.log" for i in range(2)]
    with reserved_port() as port, contextlib.ExitStack() as files:
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
        # Output to files: pipes read one after the other can fill and stall a process.
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "align_jax.train", f"--process_id={i}", *common],
                cwd=REPO,
                env=env,
                stdout=files.enter_context(open(log, "w")),
                stderr=subprocess.STDOUT,
            )
            for i, log in enumerate(logs)
        ]
        hung = time.monotonic() + HANG_GUARD_S
        try:
            while any(p.poll() is None for p in procs):
                if any(p.poll() not in (None, 0) for p in procs):
                    break
                assert time.monotonic() < hung, "the 2-process job hung"
                time.sleep(0.5)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    outs = [open(log).read() for log in logs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], "\n".join(
        f"process {i} ({c}): {o[-3000:]}" for i, (c, o) in enumerate(zip(codes, outs, strict=True))
    )
    return outs


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_process_run_resumes_exactly(chain_data, tmp_path):
    launch(chain_data, tmp_path / "full", 6)
    launch(chain_data, tmp_path / "split", 3)
    outs = launch(chain_data, tmp_path / "split", 6)
    assert all("resumed from" in out and "at step 3" in out for out in outs)

    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(full) == sorted(split) == list(range(1, 7))
    assert full == split
    assert sorted(os.listdir(tmp_path / "split" / "checkpoints")) == ["3", "6"]
