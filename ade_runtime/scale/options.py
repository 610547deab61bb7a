"""The ``--ray`` command-line words shared by ``ade-collect`` and ``ade-judge``, the local-or-remote Ray
start, and the progress line. Ray itself is imported only by ``require_ray`` (the ``--ray`` path)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from ade_runtime.errors import InputError

RAY_EXTRA_HINT = "pip install 'ade-adaptive[ray]'"
FAULT_ENV = "ADE_RAY_FAULT"  # test-only fault injection, see ray_collect.fault_from_env


def add_ray_args(p: argparse.ArgumentParser, *, workers: bool = True, retries: bool = True) -> None:
    """``--ray`` and its options; ``workers=False`` when the CLI already has a ``--workers``,
    ``retries=False`` when its ``--max-retries`` means something else (ade-judge: API retries; the
    option is ``--ray-max-retries`` there)."""
    g = p.add_argument_group("Ray (docs/scaling.md)")
    g.add_argument(
        "--ray",
        action="store_true",
        help=f"run on a Ray cluster, one worker per GPU (needs {RAY_EXTRA_HINT})",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local one)",
    )
    if workers:
        g.add_argument(
            "--workers", type=int, default=None, help="Ray workers (default: GPUs / per worker, or 1)"
        )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs each Ray worker holds (default: 1 when the cluster has GPUs, else 0)",
    )
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray worker holds")
    g.add_argument(
        "--max-retries" if retries else "--ray-max-retries",
        dest="max_retries" if retries else "ray_max_retries",
        type=int,
        default=3,
        help="Ray workers that may die on one request (batch) before this job gives it up (a rerun tries again)",
    )


@dataclass
class RayOptions:
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1 with --ray, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise InputError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.max_retries < 0:
            raise InputError(f"--max-retries must be >= 0, got {self.max_retries}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, retries: bool = True) -> RayOptions:
        return cls(
            address=args.ray_address,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            max_retries=args.max_retries if retries else args.ray_max_retries,
        )

    def resolve(self, ray: Any) -> tuple[int, float]:
        """(workers, GPUs per worker) for the cluster ``ray`` is connected to."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
        if per > gpus:
            raise InputError(f"--gpus-per-worker {per:g}: the Ray cluster has {gpus:g} GPUs")
        workers = self.workers or (max(1, int(gpus // per)) if per > 0 else 1)
        return workers, per

    def actor_args(self, ray: Any, workers: int, gpus: float) -> dict[str, Any]:
        """Ray Data ``map_batches`` arguments of a fixed pool of ``workers`` actors. Ray Data restarts a
        dead actor and retries its unfinished batch by default; ``max_retries`` bounds the deaths per
        request (batch) in the workers themselves (``claims.Claim.tries``, ray_judge's entries), so
        that an input that kills every worker is given up instead of retried forever."""
        return {
            "compute": ray.data.ActorPoolStrategy(size=workers),
            "num_gpus": gpus,
            "num_cpus": self.cpus_per_worker,
        }


def require_ray(prog: str) -> Any:
    """The ``ray`` module, or an InputError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError as exc:
        raise InputError(f"{prog} --ray needs Ray Data ({exc}); install it with {RAY_EXTRA_HINT}") from None
    return ray


def start_ray(ray: Any, opts: RayOptions, prog: str) -> bool:
    """Join ``--ray-address`` or start a local cluster; True when this call started Ray (shut it down)."""
    if ray.is_initialized():
        return False
    print(
        f"{prog}: {'joining Ray at ' + opts.address if opts.address else 'starting a local Ray cluster'}",
        file=sys.stderr,
    )
    if opts.address:
        _check_reachable(opts.address)
    try:
        ray.init(address=opts.address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"--ray-address {opts.address}: cannot reach the Ray cluster ({exc}); start it with `ray start --head` "
            "or omit --ray-address for a local one"
        ) from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()  # our own progress line below; Ray's bars on a terminal
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) nobody listens on at once: Ray itself would keep
    retrying the connection for minutes. ``auto`` and other forms are left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the cluster with "
            "`ray start --head` and pass the address it prints, or omit --ray-address for a local cluster"
        ) from None


class Progress:
    """``prog: done/total requests, attempts/s, ETA`` on stderr, at most every ``every`` seconds."""

    def __init__(
        self, prog: str, total: int, unit: str = "requests", every: float = 5.0, stream=None
    ) -> None:
        self.prog, self.total, self.unit, self.every = prog, total, unit, every
        self.stream = stream or sys.stderr
        self.done = self.attempts = 0
        self.t0 = self._last = time.monotonic()
        self.stamps: list[float] = []  # when each update came (for the steady rate)

    def update(self, done: int = 1, attempts: int = 0) -> None:
        self.done += done
        self.attempts += attempts
        now = time.monotonic()
        self.stamps.append(now)
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        wall = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / wall
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        per = f", {self.attempts / wall:.2f} attempts/s" if self.attempts else ""
        return f"{self.prog}: {self.done}/{self.total} {self.unit} ({rate:.2f}/s{per}), ETA {eta_s}"
