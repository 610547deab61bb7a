"""State shared by ``ade-serve``'s processes, and the rule that they die with the launcher.

LitServe runs the HTTP servers as processes forked from the launcher and the backbone workers
as spawned processes, talking through a manager queue. What the gate in front of ``/edit``
needs to know about the workers (how many requests are admitted, how long one takes, which
worker is stuck, which request's client went away) lives here, in ``multiprocessing`` shared
memory created by the launcher and inherited by both kinds of process (forked: copied; spawned:
passed with the ``LitAPI`` as a process argument). Every read or write is a few integers under a
lock: nothing here blocks the event loop.

``die_with_parent`` is what a ``kill -9`` of the launcher needs (the issue: workers kept
answering, and the port stayed taken): each child asks Linux for a signal when its parent dies
(``prctl(PR_SET_PDEATHSIG)``) and checks that the parent is still the one it was started by.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import time

log = logging.getLogger(__name__)

PARENT_ENV = "ADE_SERVE_PARENT_PID"  # the launcher's pid, inherited by every child
PR_SET_PDEATHSIG = 1
EMA = 0.2  # weight of the newest request in the mean service time


class ServeState:
    """Admission counters, worker busy clocks, the mean service time and the cancelled tickets."""

    def __init__(self, workers: int, ring: int = 1024) -> None:
        if workers < 1:
            raise ValueError(f"ServeState needs >= 1 worker, got {workers}")
        ctx = mp.get_context("spawn")
        self.workers = workers
        self._tickets = ctx.Value("q", 0)
        self._admitted = ctx.Value("i", 0)
        self._busy = ctx.Array("d", workers)  # time.monotonic() at which the running request began; 0: idle
        self._service = ctx.Value("d", 0.0)  # mean wall seconds one request holds a worker (EMA)
        self._cancelled = ctx.Array("q", ring)  # ring buffer of tickets whose client disconnected
        self._cancel_at = ctx.Value("q", 0)

    # -- the gate (HTTP processes) ----------------------------------------------------------------
    def ticket(self) -> int:
        """A number unique across the HTTP processes, naming one admitted request."""
        with self._tickets.get_lock():
            self._tickets.value += 1
            return self._tickets.value

    def admit(self, max_wait: float, max_queue: int) -> tuple[bool, float, int]:
        """Admit one more request unless it would not be answered within ``max_wait`` seconds (the
        requests ahead per worker, then its own, at the mean service time) or more than ``max_queue``
        requests per worker are admitted; returns (admitted, expected wait in seconds, requests ahead)."""
        with self._admitted.get_lock():
            ahead = self._admitted.value
            wait = ahead / self.workers * self._service.value
            if ahead >= max_queue * self.workers or (
                ahead >= self.workers and wait + self._service.value > max_wait
            ):
                return False, wait, ahead
            self._admitted.value += 1
            return True, wait, ahead

    def answered(self, seconds: float, ahead: int) -> None:
        """Learn the service time from one answered request: it waited for ``ahead / workers``
        requests and then its own, so one request holds a worker about seconds / (that + 1)."""
        sample = seconds / (ahead / self.workers + 1)
        with self._service.get_lock():
            old = self._service.value
            self._service.value = sample if old == 0.0 else (1 - EMA) * old + EMA * sample

    def release(self) -> None:
        with self._admitted.get_lock():
            self._admitted.value = max(0, self._admitted.value - 1)

    @property
    def admitted(self) -> int:
        return self._admitted.value

    def retry_after(self, max_wait: float) -> int:
        """Seconds until the queue should have drained enough to admit one more (at least 1)."""
        excess = (self._admitted.value / self.workers + 1) * self._service.value - max_wait
        return max(1, math.ceil(excess if excess > 0 else self._service.value))

    def cancel(self, ticket: int) -> None:
        with self._cancel_at.get_lock():
            self._cancelled[self._cancel_at.value % len(self._cancelled)] = ticket
            self._cancel_at.value += 1

    # -- the workers ------------------------------------------------------------------------------
    def is_cancelled(self, ticket: int | None) -> bool:
        if not ticket:
            return False
        with self._cancelled.get_lock():
            return ticket in self._cancelled[:]

    def busy(self, worker: int) -> None:
        self._busy[worker % self.workers] = time.monotonic()

    def idle(self, worker: int) -> None:
        self._busy[worker % self.workers] = 0.0

    @property
    def service_seconds(self) -> float:
        return self._service.value

    def stalled(self, limit: float) -> bool:
        """True while every worker has been on one request for more than ``limit`` seconds."""
        now = time.monotonic()
        started = self._busy[:]
        return all(t > 0.0 and now - t > limit for t in started)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask for ``sig`` when the parent process dies (Linux), and exit now if it already has.

    Called at the start of every child: forked HTTP servers and the manager (``os.register_at_fork``)
    and spawned workers (``EditAPI.setup``). Elsewhere than Linux it only checks the parent pid.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl, no lookup
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no prctl to call: the parent check below still runs
            log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    expected = os.environ.get(PARENT_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os._exit(0)  # the launcher died before the signal was asked for: nobody would ever stop us


def on_fork_child() -> None:
    """Forked children of the launcher (uvicorn servers, the manager) are killed outright when it
    dies: they hold nothing to flush, and a dead launcher leaves them no queue to serve."""
    if os.environ.get(PARENT_ENV) == str(os.getppid()):
        die_with_parent(signal.SIGKILL)


def install_launcher(pid: int | None = None) -> None:
    """In the launcher, before any child starts: name it to the children and arm the fork hook."""
    os.environ[PARENT_ENV] = str(pid or os.getpid())
    os.register_at_fork(after_in_child=on_fork_child)
