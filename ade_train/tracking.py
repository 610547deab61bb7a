"""Experiment tracking for every ADE training job: one W&B run per job, offline unless asked.

Shared by ``ade-train card|critique|calibrate``. Follows Lightning's ``loggers/wandb.py`` and the
users' asks in ``shared/USERS-ASK.md``: the run is created on rank 0 only (Lightning #11380), its
id is stored in ``OUT/wandb_run.json`` and in every checkpoint so that a resumed job continues the
same run (wandb #3841, #5979), offline runs never reach the network (media and artifacts are
written under ``OUT/wandb`` and can be pushed later with ``wandb sync``). Each job keeps its own
run id file: CARD ``OUT/wandb_run.json``, the critique ``OUT/critique/wandb_run.json``, calibration
``OUT/calibrate/wandb_run.json``; all three runs are written under the same ``OUT/wandb``.

Public API::

    logger = make_logger(out_dir, project="ade", name="card")    # WandbLogger, or None if disabled
    trainer = Trainer(logger=logger or False, callbacks=[RunIdCallback(out_dir), ...])
    log_images(logger, "val/examples", [png, ...])
    log_export_artifact(logger, export_dir)
    run_dir(logger) -> Path | None                                  # the local run files
    read_run_metrics(run_dir) -> {"history", "summary", "complete"}  # offline run, no network
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ade_runtime.files import read_json_file

RUN_FILE = "wandb_run.json"
_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def _rank() -> int:
    """Global rank before the Trainer exists (launchers export RANK / LOCAL_RANK)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def wandb_mode(offline: bool | None = None) -> str:
    """The W&B mode to use: ``WANDB_MODE`` when set (honoured as is), else offline unless ``offline=False``."""
    env = os.environ.get("WANDB_MODE", "").strip()
    if env:
        if env not in _MODES:
            raise ValueError(f"WANDB_MODE={env!r} is not a W&B mode; use one of {', '.join(_MODES)}")
        return env
    return "online" if offline is False else "offline"


def read_run_id(out_dir: str | Path) -> str | None:
    """The W&B run id stored in ``OUT/wandb_run.json`` by an earlier attempt of this job, if any."""
    path = Path(out_dir) / RUN_FILE
    data = read_json_file(path, "delete it to start a new W&B run")
    if data is None:
        return None
    run_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"{path}: field 'id' missing or empty; delete the file to start a new W&B run")
    return run_id


def _write_run_file(out_dir: Path, payload: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / RUN_FILE)


def make_logger(
    out_dir: str | Path,
    project: str = "ade",
    name: str | None = None,
    *,
    offline: bool | None = None,
    enabled: bool = True,
    run_id: str | None = None,
    config: dict[str, Any] | None = None,
    tags: Sequence[str] = (),
    save_dir: str | Path | None = None,
) -> WandbLogger | None:
    """A WandbLogger writing under ``SAVE_DIR/wandb``, or None when ``enabled`` is False (``--no-wandb``).

    ``out_dir`` holds this job's ``wandb_run.json``; ``save_dir`` (default ``out_dir``) is where W&B's
    ``wandb/`` folder goes: every ``ade-train`` job passes the top-level OUT, so all runs of one OUT
    sit in ``OUT/wandb/offline-run-*`` (one ``wandb sync`` finds them), each with its own run id.

    The run id comes from ``run_id``, else from ``OUT/wandb_run.json`` (a resumed job), else is new;
    it is written back to ``OUT/wandb_run.json`` on rank 0 so the next attempt continues the run.
    The W&B mode is ``WANDB_MODE`` when set, otherwise offline (``offline=False`` to go online).
    """
    if not enabled:
        return None
    out = Path(out_dir)
    mode = wandb_mode(offline)
    run_id = run_id or read_run_id(out) or secrets.token_hex(4)
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_file(out, {"id": run_id, "project": project, "name": name, "mode": mode})
    # mode is passed to wandb.init rather than offline=True, which would overwrite WANDB_MODE globally
    logger = WandbLogger(
        name=name,
        save_dir=str(save_dir or out),  # wandb adds its own "wandb/" folder
        id=run_id,
        project=project,
        offline=False,
        log_model=False,
        mode=mode,
        config=config,
        tags=list(tags) or None,
        settings={"silent": True, "console": "off"} if mode != "online" else None,
    )
    # Lightning always passes anonymous=None, which W&B answers with "The anonymous setting has no effect"
    logger._wandb_init.pop("anonymous", None)
    return logger


class RunIdCallback(Callback):
    """Stores the W&B run id in every checkpoint (``checkpoint["ade_wandb_run_id"]``) and restores it.

    On resume the id found in the checkpoint is written back to ``OUT/wandb_run.json`` when that
    file went missing, so a later attempt still continues the same run.
    """

    KEY = "ade_wandb_run_id"

    def __init__(self, out_dir: str | Path, run_id: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.run_id = run_id

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        run_id = self.run_id or read_run_id(self.out_dir)
        if run_id:
            checkpoint[self.KEY] = run_id

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(self.KEY)
        if stored and read_run_id(self.out_dir) is None and trainer.is_global_zero:
            _write_run_file(self.out_dir, {"id": stored, "restored_from": "checkpoint"})
        self.run_id = self.run_id or stored


def run_dir(logger: WandbLogger | None) -> Path | None:
    """The local directory of the run's files (``.../wandb/offline-run-*``), None without a logger."""
    if logger is None or _rank() != 0:
        return None
    exp = logger.experiment
    d = getattr(exp, "dir", None)  # the run's files/ directory
    return Path(d).parent if d else None


def log_images(
    logger: WandbLogger | None, key: str, png_paths: Sequence[str | Path], step: int | None = None
) -> None:
    """Log image files as a W&B media panel; offline runs keep the media under the run directory."""
    if logger is None or not png_paths:
        return
    missing = [str(p) for p in png_paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"log_images({key!r}): image files not found: {', '.join(missing[:3])}")
    logger.log_image(key=key, images=[str(p) for p in png_paths], step=step)


@rank_zero_only
def log_export_artifact(
    logger: WandbLogger | None, export_dir: str | Path, name: str = "ade-predictors"
) -> None:
    """Attach the exported predictors (the whole export directory) to the run as a model artifact."""
    if logger is None:
        return
    import wandb

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"log_export_artifact: export directory {export_dir} does not exist")
    art = wandb.Artifact(name=name, type="model", metadata={"path": str(export_dir)})
    art.add_dir(str(export_dir))
    logger.experiment.log_artifact(art)


def finish(logger: WandbLogger | None, wait_s: float = 60.0) -> None:
    """Close the run so its files are complete on disk (call once at the end of a job, rank 0).

    ``run.finish()`` can return while wandb-core is still writing the run file (it buffers whole
    32 KB blocks), so an offline run is only complete once its ``exit`` record is on disk: this
    waits up to ``wait_s`` seconds for it, then warns instead of failing the job.
    """
    if logger is None or _rank() != 0:
        return
    exp = getattr(logger, "_experiment", None)
    if exp is None:
        return
    d = getattr(exp, "dir", None)
    exp.finish()
    if d and not _wait_complete(Path(d).parent, wait_s):
        import warnings

        warnings.warn(
            f"{Path(d).parent}: the W&B run file has no exit record {wait_s:.0f} s after finish(); "
            "it may be incomplete (wandb-core still writing?)",
            RuntimeWarning,
            stacklevel=2,
        )


def _run_file(run_directory: Path) -> Path | None:
    files = sorted(Path(run_directory).glob("run-*.wandb"))
    return files[0] if files else None


def _wait_complete(run_directory: Path, wait_s: float) -> bool:
    """Poll the run file until it holds its ``exit`` record; False if it does not within ``wait_s``."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        f = _run_file(run_directory)
        if f is not None and _has_exit(_log_records(f), pb):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _has_exit(records: list[bytes], pb: Any) -> bool:
    for raw in reversed(records):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "exit":
            return True
    return False


def _log_records(path: Path) -> list[bytes]:
    """Records of a W&B ``.wandb`` file: a 7-byte W&B header then LevelDB-log framed records."""
    data = path.read_bytes()
    if len(data) < 7:  # just created: wandb-core has not written the header yet
        return []
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (bad header)")
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a record still being written: stop before it
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def read_run_metrics(run_directory: str | Path, wait_s: float = 30.0) -> dict[str, Any]:
    """Metrics of a local (offline) run: ``{"history": [row, ...], "summary": {...}, "complete": bool}``.

    Reads the run's ``run-*.wandb`` file directly, so it works without network or a W&B account.
    A run still being written (or one that was killed) has no ``exit`` record yet: this waits up
    to ``wait_s`` seconds for it and then returns what is on disk with ``complete`` False.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    if _run_file(Path(run_directory)) is None:
        raise FileNotFoundError(f"{run_directory}: no run-*.wandb file; is this a W&B run directory?")
    complete = _wait_complete(Path(run_directory), wait_s)
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for raw in _log_records(_run_file(Path(run_directory))):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        items = rec.history.item if kind == "history" else rec.summary.update if kind == "summary" else None
        if items is None:
            continue
        row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}
        if kind == "history":
            history.append(row)
        else:
            summary.update(row)
    return {"history": history, "summary": summary, "complete": complete}
