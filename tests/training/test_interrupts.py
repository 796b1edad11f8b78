"""A run survives the ways people and machines stop it, on real processes and real signals:
SIGTERM and Ctrl-C save a checkpoint and exit with one line; a second Ctrl-C exits at once;
a damaged checkpoint is reported, kept and skipped; a full disk while saving stops the run
with one line and the next run resumes from the last good checkpoint. Every resumed run's
losses equal the uninterrupted `full_run`'s."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import FULL_RUN_STEPS
from tiny_runs import (
    HANG_GUARD_S,
    REPO,
    checkpoint_steps,
    cli_flags,
    constant_lr,
    copy_run,
    read_metrics,
    train_losses,
    xla_env,
)

from align_jax import checkpoint as ckpt
from align_jax.training import loop

pytestmark = pytest.mark.slow


def start_run(cfg, workdir, log_path, env=None, wrapper=()):
    """`python -m align_jax.train` on `cfg`, stderr to `log_path` (a pipe nobody reads while
    we wait would fill and stall the child)."""
    env = xla_env(**(env or {}))
    cmd = [
        *wrapper,
        sys.executable,
        "-m",
        "align_jax.train",
        f"--config={REPO}/configs/pretrain/tiny.py",
        f"--workdir={workdir}",
        *cli_flags(cfg),
    ]
    with open(log_path, "w") as stderr:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=stderr)


def wait_for(proc, condition, what, log_path):
    hung = time.monotonic() + HANG_GUARD_S
    while proc.poll() is None and not condition():
        assert time.monotonic() < hung, f"waited for {what}: hung?\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before {what}:\n{log_path.read_text()[-3000:]}"


def logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return [r["step"] for r in read_metrics(workdir) if "loss" in r] if path.exists() else []


def assert_resumes_like_the_full_run(cfg_steps, workdir, full_run, data_dir, **overrides):
    """Running `workdir` on to `cfg_steps` gives the uninterrupted run's losses exactly."""
    assert cfg_steps <= FULL_RUN_STEPS
    loop.train(constant_lr(data_dir, cfg_steps, **overrides), str(workdir))
    want = {s: v for s, v in train_losses(full_run).items() if s <= cfg_steps}
    assert train_losses(workdir) == want


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_saves_a_checkpoint_exits_with_one_line_and_resumes_exactly(
    signum, tiny_data, full_run, tmp_path, caplog
):
    workdir, log_path = tmp_path / "run", tmp_path / "stderr.txt"
    proc = start_run(constant_lr(tiny_data, 100000, checkpoint_every=100000), workdir, log_path)
    # However long start-up and compilation take here, signal once 3 steps are logged.
    wait_for(proc, lambda: len(logged_steps(workdir)) >= 3, "3 logged steps", log_path)
    proc.send_signal(signum)
    assert proc.wait(timeout=HANG_GUARD_S) == 128 + signum, log_path.read_text()[-3000:]
    err = log_path.read_text()
    saved = checkpoint_steps(workdir)
    assert len(saved) == 1 and saved[0] >= 3, saved
    k = saved[0]
    how = "Ctrl-C" if signum == signal.SIGINT else "signal SIGTERM"
    assert err.splitlines()[-1] == (
        f"stopped by {how} after step {k}; checkpoint saved in {workdir}/checkpoints/{k}; "
        "run the same command again to resume"
    )
    assert "Traceback" not in err
    interrupted = (workdir / "metrics.jsonl").read_text().splitlines()
    assert logged_steps(workdir) == list(range(1, k + 1))

    # The next run resumes at k: it says so, keeps the interrupted run's records (a run
    # restarted from step 0 would rewrite them) and continues exactly: data position, RNG,
    # state.
    with caplog.at_level("INFO", logger="align_jax"):
        assert_resumes_like_the_full_run(k + 2, workdir, full_run, tiny_data)
    assert re.search(rf"resumed from \S+ at step {k}$", caplog.text, re.MULTILINE), caplog.text
    assert (workdir / "metrics.jsonl").read_text().splitlines()[:k] == interrupted


def test_a_second_ctrl_c_exits_at_once_and_keeps_the_saved_checkpoints(
    tiny_data, full_run, tmp_path
):
    workdir, log_path = tmp_path / "run", tmp_path / "stderr.txt"
    # Each step ends with an eval over a long split (the corpus's 600 training documents),
    # then a save: a wide window, after the first Ctrl-C, for the second to arrive before
    # the interrupted step's checkpoint is written.
    cfg = constant_lr(
        tiny_data, 100000, checkpoint_every=1, eval_every=1,
        **{"data.eval_files": str(tiny_data / "train.jsonl")},
    )  # fmt: skip
    proc = start_run(cfg, workdir, log_path)
    wait_for(proc, lambda: len(checkpoint_steps(workdir)) >= 1, "a first checkpoint", log_path)
    proc.send_signal(signal.SIGINT)
    first_seen = lambda: "Ctrl-C: finishing this step" in log_path.read_text()  # noqa: E731
    wait_for(proc, first_seen, "the first Ctrl-C", log_path)
    saved_before = checkpoint_steps(workdir)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=HANG_GUARD_S) == 128 + signal.SIGINT
    err = log_path.read_text()
    last = err.splitlines()[-1]
    assert re.fullmatch(
        r"interrupted again: exiting without saving; the checkpoints up to step (\d+) are intact",
        last,
    ), err[-3000:]
    assert "Traceback" not in err and "stopped by Ctrl-C" not in err
    # Nothing was saved after the first Ctrl-C; the committed checkpoints are the ones saved
    # before it, and the latest one resumes the run exactly.
    assert checkpoint_steps(workdir) == saved_before
    k = saved_before[-1]
    assert int(re.search(r"step (\d+)", last).group(1)) == k
    assert_resumes_like_the_full_run(k + 1, workdir, full_run, tiny_data, checkpoint_every=1)


def file_digests(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def damage(step_dir, item):
    """Cuts every array data file of the `state` item in half (a copy cut short), or the data
    iterator's position file. (Which data file holds which array varies between runs, and
    some of them may not be read on restore: cutting them all damages every read.)"""
    files = [p for p in (step_dir / item).rglob("*") if p.is_file()]
    if item == "state":
        files = [p for p in files if p.parent.name == "d"]  # the array data files
    assert files, f"nothing to damage in {step_dir / item}"
    for target in files:
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)


@pytest.mark.parametrize("item", ["state", "data"])
def test_a_damaged_latest_checkpoint_is_reported_kept_and_skipped(
    item, tiny_data, base_run, full_run, tmp_path, caplog, capfd
):
    workdir = copy_run(base_run, tmp_path / "run")  # checkpoints at steps 2 and 4
    damage(workdir / "checkpoints" / "4", item)
    damaged = file_digests(workdir / "checkpoints" / "4")
    with caplog.at_level("INFO", logger="align_jax"):
        assert_resumes_like_the_full_run(8, workdir, full_run, tiny_data, checkpoint_every=2)
    log = caplog.text
    assert re.search(
        rf"damaged checkpoint: {workdir}/checkpoints/4: item '{item}' cannot be read: \S", log
    ), log
    kept = f"{workdir}/checkpoints.damaged/4"
    assert f"checkpoint step 4 kept for inspection, untouched, in {kept}" in log
    assert "resuming from step 2, the newest checkpoint that reads back whole" in log
    assert file_digests(kept) == damaged  # moved, not changed
    assert checkpoint_steps(workdir) == [4, 6, 8]  # step 4 written again (keep=3)
    assert "Traceback" not in capfd.readouterr().err


def test_no_readable_checkpoint_stops_with_one_line_and_moves_nothing(
    tiny_data, base_run, tmp_path
):
    workdir = copy_run(base_run, tmp_path / "run")
    for step in (2, 4):
        damage(workdir / "checkpoints" / str(step), "state")
    before = file_digests(workdir / "checkpoints")
    with pytest.raises(loop.TrainingError) as e:
        loop.train(constant_lr(tiny_data, 8), str(workdir))
    assert re.fullmatch(
        rf"no checkpoint in {workdir}/checkpoints reads back whole \(damaged: steps 4, 2; .*\); "
        r"they are left as they are: .*",
        str(e.value),
    ), str(e.value)
    assert file_digests(workdir / "checkpoints") == before
    assert not (workdir / "checkpoints.damaged").exists()


def test_init_from_a_damaged_checkpoint_is_a_one_line_error(tiny_data, base_run, tmp_path):
    source = copy_run(base_run, tmp_path / "source")
    damage(source / "checkpoints" / "4", "state")
    cfg = constant_lr(tiny_data, 2, init_from=str(source))
    with pytest.raises(ckpt.CheckpointError) as e:
        loop.train(cfg, str(tmp_path / "run"))
    message = str(e.value)
    assert "\n" not in message
    assert re.match(
        rf"config.init_from: {source}/checkpoints/4/state: item '(metadata|arrays)' cannot be "
        r"read: \S",
        message,
    ), message


def test_a_full_disk_while_saving_stops_with_one_line_and_the_next_run_resumes(
    tiny_data, base_run, full_run, tmp_path
):
    workdir, log_path = copy_run(base_run, tmp_path / "run"), tmp_path / "stderr.txt"
    # The disk "fills up" before this run: no file may grow past 20 kB (RLIMIT_FSIZE, write
    # fails with EFBIG), which the metrics and the config stay under and every checkpoint's
    # array file exceeds. Asynchronous saves, as the configs' default.
    cfg = constant_lr(tiny_data, 8, checkpoint_every=2, async_checkpointing=True)
    limit = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    proc = start_run(cfg, workdir, log_path, wrapper=(sys.executable, "-c", limit))
    assert proc.wait(timeout=HANG_GUARD_S) == 1
    err = log_path.read_text()
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert last.startswith(f"error: saving checkpoint step 6 in {workdir}/checkpoints failed: ")
    assert "File too large" in last
    assert last.endswith(
        "checkpoint step 4 before it is intact and a run started again resumes from it"
    )
    assert checkpoint_steps(workdir) == [2, 4]  # the half-written step 6 is not one
    # The next run (space freed) resumes from step 4 and equals the uninterrupted run.
    assert_resumes_like_the_full_run(8, workdir, full_run, tiny_data, checkpoint_every=2)
    assert checkpoint_steps(workdir) == [4, 6, 8]


def test_a_failed_writes_reason_names_the_os_error_tensorstore_only_numbers():
    """tensorstore's long messages end with `[os_error_code='27']`, and the words for it may
    be far from the code (or absent): the one-line reason keeps the head, the code, and
    names the error (a full disk run once reported no "File too large" at all)."""
    long = "Error writing local file: " + "x" * 400 + " {\"a\": true}'] [os_error_code='27']"
    reason = ckpt.failure_reason(ValueError(long))
    assert reason.startswith("Error writing local file: ") and len(reason) < 400
    assert reason.endswith("[os_error_code='27'] (File too large)")
    named = "write failed: No space left on device [os_error_code=28]"
    assert ckpt.failure_reason(ValueError(named)) == named  # already named: left as it is
    assert ckpt.failure_reason(RuntimeError("plain")) == "plain"
