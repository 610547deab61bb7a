"""Generate format-v1 edit traces from the synthetic edit world (TESTBED data, never real-model results).

Each request is run over the full grid: ``candidates`` independent samples x ``rounds`` refinement
rounds x ``reasoning_levels`` budgets. Round r > 0 refines round r-1 of the same candidate and
budget with ``feedback_prompt(instruction, judge flaws)``, so refinement follows the judge's
spatial feedback. Every attempt gets the judge label, online scores (``clip_t``, ``clip_i``) and
preview scores (``preview_clip_t``, ``preview_clip_i`` from the early-step preview, so offline
replay can simulate pruning) and its modelled cost.

Images: every source image is stored; attempt images are stored for every attempt of the
requests with ``index % image_every == 0`` (``image_every=1``: all) and are null elsewhere.
Every attempt is its own sample (``imageio.grain``), so attempts landing on the same scene still
differ in pixels and in their scorers' noise; files are named ``images/<id>/<content hash>.png``.
Generation is resumable: requests are processed in chunks, each chunk written to its own shard
``traces-<chunk>.jsonl`` atomically; chunks already on disk are skipped, and ``.complete`` is
written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ade_runtime.backbones.base import AttemptSpec
from ade_runtime.errors import InputError
from ade_runtime.feedback import feedback_prompt
from ade_runtime.files import atomic_write_bytes
from ade_runtime.offline.replay import REFINEMENT_FEEDBACK
from ade_runtime.policy.driver import Generated, GridSession, Judged, drive
from ade_runtime.testbed.backbone import SyntheticBackbone
from ade_runtime.testbed.costs import get_cost
from ade_runtime.testbed.imageio import CHUNK_KEY, make_image, parse_chunk
from ade_runtime.testbed.instructions import CATEGORIES
from ade_runtime.testbed.judge import judge_scenes, online_scores
from ade_runtime.testbed.phrasing import FAMILIES
from ade_runtime.testbed.reward import EmulatedRewardModel
from ade_runtime.testbed.world import Request, World
from ade_runtime.traces.records import Attempt, Cost, EditRecord

CHUNK = 50  # requests per shard; the unit of resumption
REWARD = EmulatedRewardModel()  # scores every attempt as the testbed's expensive verifier (``vlm``)


@dataclass
class GenConfig:
    """What to generate (saved as ``generation.json`` next to the traces)."""

    n_requests: int = 3000
    seed: int = 0
    categories: tuple[str, ...] | None = None  # None: all CATEGORIES, uniformly
    clutter: tuple[int, int] = (1, 8)  # objects per scene, inclusive
    backbone: str = "bagel"  # cost model and skill profile of the simulated backbone
    candidates: int = 8
    rounds: int = 4
    reasoning_levels: tuple[int, ...] = (0, 512)
    image_size: int = 96
    image_every: int = 1  # store attempt images for every n-th request (1: all, the default)
    ambiguity: float = 0.1  # share of references that are ambiguous when possible
    workers: int = 2
    reward_model: bool = True  # log the emulated VLM reward model's score (``vlm``) on every attempt
    phrasing: tuple[str, ...] = ("grammar",)  # phrasing families drawn uniformly (testbed.phrasing)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_requests < 1:
            raise InputError(f"n_requests={self.n_requests} must be >= 1")
        if self.categories is not None:
            self.categories = tuple(self.categories)
            bad = [c for c in self.categories if c not in CATEGORIES]
            if bad or not self.categories:
                raise InputError(f"categories {bad or '[]'} invalid; choose from {', '.join(CATEGORIES)}")
        self.clutter = tuple(int(v) for v in self.clutter)
        if not 1 <= self.clutter[0] <= self.clutter[1] <= 12:
            raise InputError(f"clutter {self.clutter} must satisfy 1 <= lo <= hi <= 12 (e.g. --clutter 1:8)")
        get_cost(self.backbone)
        if self.candidates < 1 or self.rounds < 1:
            raise InputError("candidates and rounds must be >= 1")
        self.reasoning_levels = tuple(sorted({int(t) for t in self.reasoning_levels}))
        if not self.reasoning_levels or self.reasoning_levels[0] < 0:
            raise InputError(f"reasoning_levels {self.reasoning_levels} must be non-negative ints")
        if not 64 <= self.image_size <= 128:
            raise InputError(f"image_size={self.image_size} must be in [64, 128] pixels")
        if self.image_every < 1:
            raise InputError("image_every must be >= 1")
        if not 0 <= self.ambiguity <= 1:
            raise InputError("ambiguity must be in [0, 1]")
        self.phrasing = tuple(self.phrasing)
        bad = [f for f in self.phrasing if f not in FAMILIES]
        if bad or not self.phrasing:
            raise InputError(f"phrasing {bad or '[]'} invalid; choose from {', '.join(FAMILIES)}")
        if self.workers < 1:
            raise InputError("workers must be >= 1")


def _png_bytes(img: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK_KEY, img.info[CHUNK_KEY], zip=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()


def request_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, 0x7E57BED])


def _attempt_seed(seed: int, index: int, c: int, t: int, r: int) -> int:
    h = hashlib.blake2b(f"{seed}/{index}/{c}/{t}/{r}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


class GridSource:
    """The generator's attempt source (``policy.driver``): the synthetic backbone, each attempt labelled
    by the exact judge and scored online (cheap scores, its preview's scores and, with
    ``cfg.reward_model``, the emulated reward model). A refinement follows the judge's flaws, so
    generated traces hold what an ideal critique would ask for."""

    verifies = False  # the emulated reward model's score is logged with the cheap scores

    def __init__(self, req: Request, backbone: SyntheticBackbone, cfg: GenConfig, index: int, keep_images):
        self.req, self.backbone, self.cfg, self.index, self.keep_images = (
            req,
            backbone,
            cfg,
            index,
            keep_images,
        )
        self.source_img = make_image(req.source, req.source, cfg.image_size)
        self.state = backbone.state_for(req.source, cfg.image_size, req.instruction)
        self.attempts: list[Attempt] = []
        self.images: dict[str, Image.Image] = {}
        self._cache: dict[str, object] = {}  # identical output scenes share the judge's label
        self._done: dict[tuple, tuple] = {}  # attempt key -> (output image, judge), for refinements

    def generate(self, step, keep) -> Generated:
        req, cfg = self.req, self.cfg
        c, r, t = step.key
        prev, prev_judge = self._done.get(step.refines, (None, None)) if step.refines else (None, None)
        prompt = req.instruction if r == 0 else feedback_prompt(req.instruction, prev_judge.flaws)
        previews = []
        spec = AttemptSpec(
            candidate=c,
            round=r,
            reasoning_tokens=t,
            prompt=prompt,
            seed=_attempt_seed(cfg.seed, self.index, c, t, r),
            input_image=prev,
            preview_fn=lambda img, step, _p=previews: _p.append(img) or True,
        )
        out = self.backbone.run(self.state, spec)
        key = out.image.info[CHUNK_KEY]
        scene, _ = parse_chunk(key, "output image")
        scene_key = scene.key()
        if scene_key not in self._cache:  # the judge reads the scene: equal scenes, one label
            self._cache[scene_key] = judge_scenes(scene, req.source, req.instruction)
        judge = self._cache[scene_key]
        # the scorers read the attempt's own image (its sample's grain), so their noise is per attempt
        pscores = online_scores(self.source_img, previews[0], req.instruction)
        scores = online_scores(self.source_img, out.image, req.instruction, perceived=judge.score)
        if cfg.reward_model:  # the emulated VLM reward model's score (an expensive verifier)
            scores[REWARD.feature] = round(REWARD.score_scene(key, judge.score, req.instruction), 6)
        rel = None
        if self.keep_images:  # equal outputs share one file, named by content
            rel = (
                f"images/req-{self.index:06d}/{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}.png"
            )
            self.images[rel] = out.image
        self.attempts.append(
            Attempt(
                candidate=c,
                round=r,
                reasoning_tokens=t,
                prompt=prompt,
                cost=Cost(nfe=out.nfe, latency_s=round(out.latency_s, 4)),
                image=rel,
                scores={**scores, "preview_clip_t": pscores["clip_t"], "preview_clip_i": pscores["clip_i"]},
                judge=judge,
            )
        )
        self._done[step.key] = (out.image, judge)
        return Generated()

    def judge(self, step) -> Judged:
        return Judged(None)  # the grid session needs no confidence

    def verify(self, step) -> float | None:
        return None

    def select_value(self, step, confidence: float | None) -> float | None:
        return confidence

    def seconds(self, step) -> float:
        return 0.0  # each attempt's modelled cost is in its record


def run_grid(req: Request, backbone: SyntheticBackbone, cfg: GenConfig, index: int, keep_images: bool):
    """All attempts of one request: (attempt list, {rel path: PIL image}) for the source and attempts;
    the driver of the live loop over a ``GridSource``, visited by a ``GridSession``."""
    source = GridSource(req, backbone, cfg, index, keep_images)
    drive(GridSession(cfg.candidates, cfg.rounds, cfg.reasoning_levels), source)
    source.images[f"images/req-{index:06d}/source.png"] = source.source_img
    return source.attempts, source.images


REWARD_META = {
    "feature": REWARD.feature,
    "emulated": True,
    "noise_sd": REWARD.noise_sd,
    "seconds_per_call": REWARD.seconds_per_call,
    "flops_per_call": REWARD.flops_per_call,
}


def make_record(req: Request, attempts, cfg: GenConfig, index: int) -> EditRecord:
    cost = get_cost(cfg.backbone)
    meta = {
        "testbed": True,
        REFINEMENT_FEEDBACK: "judge",  # refinement follows the exact judge's flaws: an oracle
        "seed": cfg.seed,
        "index": index,
        "image_size": cfg.image_size,
        "nfe_per_attempt": cost.nfe,
        "preview_step": cost.preview_step,
        "preview_nfe": cost.preview_step * cost.nfe_per_step,
        "s_per_nfe": cost.s_per_nfe,
        "s_per_reasoning_token": cost.s_per_reasoning_token,
        "n_objects": len(req.source.objects),
        **({"phrasing": req.phrasing} if req.phrasing != "grammar" else {}),  # absent: the grammar
        **({"reward_model": REWARD_META} if cfg.reward_model else {}),
        **{k: (int(v) if k != "min_target_size" else v) for k, v in req.features.items()},
    }
    return EditRecord(
        id=f"req-{index:06d}",
        instruction=req.instruction,
        source_image=f"images/req-{index:06d}/source.png",
        backbone=f"testbed:{cfg.backbone}",
        attempts=attempts,
        category=req.category,
        meta=meta,
    )


def simulate_request(cfg: GenConfig, index: int, keep_images: bool = False):
    """One request end to end in memory: (EditRecord, images). Deterministic in (cfg, index)."""
    world = World(cfg.seed, cfg.image_size, cfg.clutter, cfg.ambiguity, cfg.phrasing)
    req = world.sample_request(request_rng(cfg.seed, index), cfg.categories)
    backbone = SyntheticBackbone(cfg.backbone)
    attempts, images = run_grid(req, backbone, cfg, index, keep_images)
    return make_record(req, attempts, cfg, index), images


def _chunk_job(args) -> tuple[int, int]:
    cfg_d, out_dir, chunk = args
    from ade_runtime.traces import TraceWriter

    cfg = GenConfig(**{**cfg_d, "categories": cfg_d["categories"], "clutter": tuple(cfg_d["clutter"])})
    root = Path(out_dir)
    lo, hi = chunk * CHUNK, min(cfg.n_requests, (chunk + 1) * CHUNK)
    tmp = root / f".tmp-chunk-{chunk:05d}"
    tmp.mkdir(parents=True, exist_ok=True)
    for p in tmp.glob("*.jsonl"):
        p.unlink()  # a half-written chunk from an interrupted run is redone from scratch
    n_img = 0
    with TraceWriter(
        tmp, prefix="part", max_shard_bytes=1 << 40, fsync=False, images="none", check_existing_ids=False
    ) as w:
        for i in range(lo, hi):
            rec, images = simulate_request(cfg, i, keep_images=i % cfg.image_every == 0)
            for rel, img in images.items():
                w.write_image(rel, _png_bytes(img))
                n_img += 1
            w.write(rec)
    # images live under tmp/images; move them to root/images, then publish the shard atomically
    for d in (tmp / "images").iterdir():
        dest = root / "images" / d.name
        if dest.exists():
            for f in d.iterdir():
                os.replace(f, dest / f.name)
            d.rmdir()
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(d, dest)
    (tmp / "images").rmdir()
    os.replace(tmp / "part-00000.jsonl", root / f"traces-{chunk:05d}.jsonl")
    tmp.rmdir()
    return chunk, hi - lo


def generate_dataset(
    out_dir, n_requests: int = 3000, seed: int = 0, progress: bool = True, store_images=None, **kwargs
) -> dict:
    """Generate (or finish) a testbed trace dataset in ``out_dir``; returns a summary dict.

    Keyword arguments are ``GenConfig`` fields (categories, clutter, backbone, candidates, rounds,
    reasoning_levels, image_size, image_every, ambiguity, workers). ``store_images`` is a shortcut:
    ``"all"`` (image_every=1) or an int n (every n-th request). Rerunning with the same config
    resumes; a different config in a non-empty directory is refused.
    """
    if store_images is not None:
        if store_images == "all" or store_images is True:
            kwargs["image_every"] = 1
        elif isinstance(store_images, int) and not isinstance(store_images, bool) and store_images >= 1:
            kwargs["image_every"] = store_images
        else:
            raise InputError(
                f"store_images={store_images!r} must be 'all' or a positive int (every n-th request)"
            )
    cfg = GenConfig(n_requests=n_requests, seed=seed, **kwargs)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg_json = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    if cfg.phrasing == ("grammar",):  # datasets written before phrasing families resume as they were
        del cfg_json["phrasing"]
    cfg_json.update({"testbed": True, "format": "ade-testbed-generation/1"})
    gen_path = root / "generation.json"
    if gen_path.exists():
        old = json.loads(gen_path.read_text())
        if json.loads(json.dumps(cfg_json)) != old:
            raise InputError(
                f"{gen_path} was written with a different configuration; use a new --out directory "
                "or delete the old one"
            )
    else:
        atomic_write_bytes(gen_path, json.dumps(cfg_json, indent=2, sort_keys=True).encode())
    n_chunks = (cfg.n_requests + CHUNK - 1) // CHUNK
    todo = [k for k in range(n_chunks) if not (root / f"traces-{k:05d}.jsonl").exists()]
    t0, done = time.perf_counter(), cfg.n_requests - sum(min(CHUNK, cfg.n_requests - k * CHUNK) for k in todo)
    start = done
    jobs = [(asdict(cfg), str(root), k) for k in todo]
    if cfg.workers > 1 and len(jobs) > 1:
        # Workers ignore Ctrl-C: the parent alone reports it and stops them at once (terminate). A chunk
        # cut short is unpublished (its shard is renamed into place last) and is redone on resume.
        with multiprocessing.get_context().Pool(cfg.workers, initializer=_ignore_sigint) as pool:
            for _, n in pool.imap(_chunk_job, jobs):
                done += n
                _progress(progress, done, cfg.n_requests, t0, start)
    else:
        for job in jobs:
            done += _chunk_job(job)[1]
            _progress(progress, done, cfg.n_requests, t0, start)
    summary = {
        "testbed": True,
        "n_requests": cfg.n_requests,
        "shards": n_chunks,
        "seconds": round(time.perf_counter() - t0, 2),
        "bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
    }
    atomic_write_bytes(root / ".complete", json.dumps(summary, sort_keys=True).encode())
    return summary


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _progress(on: bool, done: int, total: int, t0: float, start: int = 0) -> None:
    """``done/total requests, rate, elapsed, ETA`` (``start``: requests already on disk when resumed)."""
    if on:
        from ade_runtime.progress import format_seconds

        dt = time.perf_counter() - t0
        rate = (done - start) / max(dt, 1e-9)
        eta = f", ETA {format_seconds((total - done) / rate)}" if done < total and rate > 0 else ""
        print(
            f"\r[ade-testbed] {done}/{total} requests ({rate:.1f}/s, {format_seconds(dt)}{eta})",
            end="" if done < total else "\n",
            file=sys.stderr,
            flush=True,
        )
