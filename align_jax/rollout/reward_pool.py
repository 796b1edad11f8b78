"""A small pool of worker processes that runs Python calls with a per-call timeout.

`align_jax.rollout.rewards` runs reward functions through it; it knows nothing about
rewards. `WorkerPool(n).run(calls, timeout_s)` runs each `Call(fn, args, kwargs)` on one of
`n` workers and returns one `Outcome` per call, in order:

- `Outcome("ok", value=...)`: the call returned `value`.
- `Outcome("error", error="raised ValueError: ... (at file.py:12)")`: the call raised, or
  "killed its worker process (exit code N)" (a crash, `os._exit`); the text is one line.
- `Outcome("timeout")`: the call ran past `timeout_s`. A Python thread cannot be stopped, so
  the call is abandoned: its worker is killed (SIGKILL) and a fresh one takes its place.
- `Outcome("unloadable", error="cannot be sent to a worker process: ...")`: the call could not
  be sent to a worker or loaded there (a lambda, a function defined in an interactive session,
  an argument that does not pickle).

`InProcess().run(calls)` gives the same outcomes from calls run one after another in this
process, without timeouts (a call in this process cannot be interrupted safely).

Why processes, and why spawn. Reward functions are user code: one can hang (a regex that
backtracks forever, a sandboxed program that never returns) or hold the GIL for seconds,
and only a separate process can be given up on. Workers are started with the 'spawn'
context, never 'fork': the parent runs JAX, which is multithreaded, and a forked child
inherits its locks in whatever state the other threads left them (a deadlock waiting to
happen; CPython warns about it since 3.12). A spawned worker is a fresh interpreter that
gets the parent's `sys.path`, so functions importable in the parent are importable there;
functions and arguments travel pickled (functions by reference: module and name). As with any
spawned process, a worker first re-imports the parent's main script (so that functions defined
there load), so a script that starts a pool keeps its top-level code under
`if __name__ == "__main__":`, and a program read from stdin cannot start one.

A worker announces itself once started (its imports done), and a call's timeout starts only
when a ready worker takes it, so a worker's start-up (seconds: importing align_jax imports
JAX) never counts against a call. A worker that dies before it is ready raises `PoolError`
(it would die again). Workers ignore SIGINT: Ctrl-C is the parent's to handle (the
training loop saves a checkpoint), and the parent stops them. They are not daemonic, so a
reward function may start processes of its own.

`close()` (or leaving a `with` block) stops the workers; a pool that is garbage-collected or
still open at interpreter exit is closed too. A worker whose parent dies exits when its pipe
closes. `run` is not thread-safe: call it from one thread.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

START_TIMEOUT_S = 300.0  # a spawned worker imports align_jax (and JAX): slow on a loaded host
_STOP_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Call:
    """`fn(*args, **kwargs)`."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one `Call`: kind "ok" (with `value`), "error", "timeout" or
    "unloadable" (with a one-line `error`)."""

    kind: str
    value: Any = None
    error: str = ""


def describe_exception(e: BaseException) -> str:
    """`Type: message (at file.py:line)` in one line, the place being where it was raised."""
    message = " ".join(str(e).split())
    text = f"{type(e).__name__}: {message}" if message else type(e).__name__
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        text += f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return text


class PoolError(RuntimeError):
    """The pool itself failed: a worker did not start."""


class InProcess:
    """Runs calls in this process, one after another; no timeouts."""

    num_workers = 1

    def run(self, calls: Sequence[Call], timeout_s: float | None = None) -> list[Outcome]:
        del timeout_s  # nothing in this process can stop a running call
        outcomes = []
        for call in calls:
            try:
                outcomes.append(Outcome("ok", value=call.fn(*call.args, **call.kwargs)))
            except Exception as e:
                outcomes.append(Outcome("error", error=f"raised {describe_exception(e)}"))
        return outcomes

    def close(self) -> None:
        pass


@dataclasses.dataclass
class _Worker:
    process: Any  # a multiprocessing process of the pool's context
    conn: multiprocessing.connection.Connection
    started: float
    ready: bool = False
    call: int | None = None  # the index of the call it runs
    deadline: float = float("inf")


class WorkerPool:
    """`num_workers` spawned processes running `Call`s with a per-call timeout."""

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"a WorkerPool needs at least one worker, got {num_workers}")
        self._ctx = multiprocessing.get_context("spawn")
        self._workers = [self._start() for _ in range(num_workers)]
        # A list shared with the finalizer, so workers started later are stopped too.
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def _start(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, list(sys.path)), name="align_jax-reward"
        )
        process.start()
        child_conn.close()  # the parent's copy: the child's end is the child's alone
        return _Worker(process, parent_conn, started=time.monotonic())

    def _replace(self, index: int) -> None:
        _stop(self._workers[index], kill=True)
        self._workers[index] = self._start()

    def run(self, calls: Sequence[Call], timeout_s: float | None = None) -> list[Outcome]:
        """Runs `calls` on the workers, each limited to `timeout_s` seconds (None or 0: no
        limit) from when a ready worker takes it; one `Outcome` per call, in order."""
        if not self._finalizer.alive:
            raise RuntimeError("this WorkerPool is closed")
        try:
            return self._run(calls, timeout_s if timeout_s else float("inf"))
        except BaseException:
            # Left mid-way (Ctrl-C, a worker that did not start): a call still running would
            # answer the next run's call, so its worker goes.
            for i, w in enumerate(self._workers):
                if w.call is not None:
                    w.call = None
                    self._replace(i)
            raise

    def _run(self, calls: Sequence[Call], limit: float) -> list[Outcome]:
        pending = deque(range(len(calls)))
        outcomes: list[Outcome | None] = [None] * len(calls)
        while pending or any(w.call is not None for w in self._workers):
            for i, w in enumerate(self._workers):
                if w.ready and w.call is None and pending:
                    self._send(i, pending, calls, outcomes, limit)
            busy = [w for w in self._workers if not w.ready or w.call is not None]
            if not busy:
                continue  # the calls handed out could not be sent; more may be pending
            deadlines = [w.deadline if w.ready else w.started + START_TIMEOUT_S for w in busy]
            wait_s = max(0.0, min(deadlines) - time.monotonic())
            waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            multiprocessing.connection.wait(waitables, None if wait_s == float("inf") else wait_s)
            for i, w in enumerate(self._workers):
                if w in busy:
                    self._check(i, outcomes)
        return outcomes  # type: ignore[return-value]  # every slot is filled by now

    def _send(self, i: int, pending: deque, calls, outcomes, limit: float) -> None:
        index = pending.popleft()
        call = calls[index]
        try:
            payload = pickle.dumps((call.fn, tuple(call.args), dict(call.kwargs)))
        except Exception as e:
            error = f"cannot be sent to a worker process: {describe_exception(e)}"
            outcomes[index] = Outcome("unloadable", error=error)
            return
        w = self._workers[i]
        try:
            w.conn.send_bytes(payload)
        except OSError:  # it died while idle: the call waits for its replacement
            pending.appendleft(index)
            self._replace(i)
            return
        w.call, w.deadline = index, time.monotonic() + limit

    def _check(self, i: int, outcomes: list) -> None:
        """Takes worker i's message if it sent one; replaces it if it died or ran out of time."""
        w = self._workers[i]
        died = False
        if w.conn.poll():
            try:
                message = pickle.loads(w.conn.recv_bytes())
            except (EOFError, OSError):
                died = True  # its end of the pipe closed: its exit code is read below
            else:
                if message == ("ready",):
                    w.ready = True
                else:
                    outcomes[w.call] = Outcome(*message)
                    w.call, w.deadline = None, float("inf")
                return
        # A message that arrives after the poll above is not a death: a live worker past its
        # deadline is a timeout, and its late answer goes with it.
        if died or not w.process.is_alive():
            w.process.join(_STOP_GRACE_S)
            code = w.process.exitcode
            if not w.ready:
                raise PoolError(
                    f"a reward worker process failed to start (exit code {code}; its error is "
                    "above; a script that starts one needs `if __name__ == '__main__':`)"
                )
            if w.call is not None:
                error = f"killed its worker process (exit code {code})"
                outcomes[w.call] = Outcome("error", error=error)
            self._replace(i)
        elif w.ready and time.monotonic() >= w.deadline:
            outcomes[w.call] = Outcome("timeout")
            self._replace(i)
        elif not w.ready and time.monotonic() >= w.started + START_TIMEOUT_S:
            raise PoolError(f"a reward worker process did not start in {START_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        self._finalizer()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop(w: _Worker, *, kill: bool) -> None:
    if kill:
        w.process.kill()
    else:
        try:
            w.conn.send_bytes(pickle.dumps(None))
        except (OSError, ValueError):
            pass  # it is gone already
    w.process.join(_STOP_GRACE_S)
    if w.process.is_alive():
        w.process.kill()
        w.process.join()
    w.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        # A worker in a call would finish it first: a closing pool has no use for the result.
        _stop(w, kill=w.call is not None or not w.ready)


def _worker_main(conn, parent_sys_path: list[str]) -> None:
    """A worker's loop: announce readiness, then run calls until told to stop (None) or the
    parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path[:] = parent_sys_path + [p for p in sys.path if p not in parent_sys_path]
    conn.send_bytes(pickle.dumps(("ready",)))
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            message = pickle.loads(payload)
        except Exception as e:
            error = f"cannot be loaded in a worker process: {describe_exception(e)}"
            conn.send_bytes(pickle.dumps(("unloadable", None, error)))
            continue
        if message is None:
            return
        fn, args, kwargs = message
        try:
            reply = ("ok", fn(*args, **kwargs), "")
        except Exception as e:
            reply = ("error", None, f"raised {describe_exception(e)}")
        try:
            data = pickle.dumps(reply)
        except Exception as e:
            error = f"returned a value that cannot be sent back: {describe_exception(e)}"
            data = pickle.dumps(("error", None, error))
        conn.send_bytes(data)
