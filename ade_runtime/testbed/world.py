"""The synthetic edit world (a CPU TESTBED with known ground truth, not a model).

``World`` samples source scenes and edit requests; ``apply_edits`` computes the exact target
scene of an instruction, which the judge compares attempts against. Difficulty features the
failure model uses (and CARD can see) are computed by ``difficulty_features``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ade_runtime.errors import InputError
from ade_runtime.testbed.instructions import (
    CATEGORIES,
    CELLS,
    RELATIONS,
    Edit,
    Ref,
    candidates,
    category_of,
    is_ambiguous,
    phrase,
    resolve,
)
from ade_runtime.testbed.phrasing import FAMILIES, rephrase
from ade_runtime.testbed.scene import (
    BACKGROUNDS,
    COLORS,
    LETTERS,
    MATERIALS,
    SHAPES,
    SIZES,
    STYLES,
    Obj,
    Scene,
)

_COMPOSABLE = ("color", "size", "material", "remove", "add", "action", "replace", "text")


@dataclass
class Request:
    """One sampled edit request with its exact ground truth."""

    source: Scene
    instruction: str
    edits: tuple[Edit, ...]
    category: str
    target: Scene
    features: dict[str, float]
    phrasing: str = "grammar"  # the phrasing family of ``instruction`` (testbed.phrasing)


def target_oids(edits: tuple[Edit, ...], source: Scene) -> list[int | None]:
    """The object each edit acts on, resolved in the source scene; adds get the oids they create.

    Scene-level edits (background, style) get None.
    """
    out: list[int | None] = []
    next_new = source.next_oid()
    for e in edits:
        if e.op == "add":
            out.append(next_new)
            next_new += 1
        elif e.ref is None:
            out.append(None)
        else:
            o = resolve(e.ref, source)
            if o is None:
                raise InputError(f"the instruction refers to {e.ref} but the source scene has no such object")
            out.append(o.oid)
    return out


def apply_edit(scene: Scene, e: Edit, oid: int | None) -> None:
    """Apply one edit exactly, in place (``oid`` = the resolved target object)."""
    o = scene.by_oid().get(oid) if oid is not None and e.op != "add" else None
    if e.op == "add":
        size, color, shape, cell = e.value
        x, y = CELLS[cell]
        new_oid = scene.next_oid() if oid is None else oid
        scene.objects.append(Obj(new_oid, shape, color, size or "medium", x, y))
    elif e.op in ("remove", "extract") and o is not None:
        if e.op == "remove":
            scene.objects.remove(o)
        else:
            scene.objects[:] = [o]
            scene.background, scene.style = "white", "photo"
    elif e.op == "replace" and o is not None:
        o.shape = e.value[1]
        o.color = e.value[0] or o.color
    elif e.op in ("color", "size", "material") and o is not None:
        setattr(o, e.op, e.value)
    elif e.op == "text" and o is not None:
        o.label = e.value
    elif e.op == "action" and o is not None:
        o.x, o.y = CELLS[e.value]
    elif e.op == "background":
        scene.background = e.value
    elif e.op == "style":
        scene.style = e.value


def apply_edits(source: Scene, edits: tuple[Edit, ...]) -> Scene:
    """The exact target scene: every edit applied to its target as resolved in the source."""
    oids = target_oids(edits, source)
    out = source.copy()
    for e, oid in zip(edits, oids, strict=True):
        apply_edit(out, e, oid)
    return out


def difficulty_features(source: Scene, edits: tuple[Edit, ...]) -> dict[str, float]:
    """What a budget predictor could see: edit count, clutter, target size, ambiguity."""
    radii = []
    for e in edits:
        o = resolve(e.ref, source) if e.ref is not None else None
        radii.append(
            o.radius if o is not None else SIZES[(e.value[0] if e.op == "add" else None) or "medium"]
        )
    return {
        "n_edits": float(len(edits)),
        "clutter": float(len(source.objects)),
        "min_target_size": float(min(radii)),
        "ambiguous": float(any(e.ref is not None and is_ambiguous(e.ref, source) for e in edits)),
        "relational": float(any(e.ref is not None and e.ref.relation is not None for e in edits)),
    }


class World:
    """Samples scenes and requests; ``seed`` and ``size`` fix the world (image side in pixels)."""

    def __init__(
        self,
        seed: int = 0,
        size: int = 96,
        clutter: tuple[int, int] = (1, 8),
        ambiguity: float = 0.1,
        phrasing: tuple[str, ...] = ("grammar",),
    ):
        if not 32 <= size <= 512:
            raise InputError(f"World size {size} must be in [32, 512] pixels (default 96)")
        if not 1 <= clutter[0] <= clutter[1] <= 12:
            raise InputError(f"World clutter {clutter} must satisfy 1 <= lo <= hi <= 12")
        bad = [f for f in phrasing if f not in FAMILIES]
        if bad or not phrasing:
            raise InputError(f"World phrasing {list(phrasing)} must name families from {', '.join(FAMILIES)}")
        self.seed, self.size, self.clutter, self.ambiguity = seed, size, clutter, ambiguity
        self.phrasing = tuple(phrasing)

    def _phrase(self, scene: Scene, edits: tuple[Edit, ...], rng: np.random.Generator) -> tuple[str, str]:
        """(instruction, family). The grammar's draws come from ``rng`` as before phrasing families
        existed (a grammar-only world is unchanged); a family is drawn from its own stream."""
        text = phrase(edits, rng)
        if self.phrasing == ("grammar",):
            return text, "grammar"
        from ade_runtime.testbed.outcomes import hash_u64  # outcomes imports this module

        prng = np.random.default_rng(hash_u64(scene.key(), repr(edits), "phrasing", str(self.seed)))
        family = self.phrasing[int(prng.integers(len(self.phrasing)))]
        return (text, family) if family == "grammar" else (rephrase(edits, family, prng), family)

    def sample_scene(self, rng: np.random.Generator) -> Scene:
        n = int(rng.integers(self.clutter[0], self.clutter[1] + 1))
        objs = []
        for i in range(n):
            size = str(rng.choice(list(SIZES), p=[0.35, 0.4, 0.25]))
            objs.append(
                Obj(
                    oid=i,
                    shape=str(rng.choice(SHAPES)),
                    color=str(rng.choice(list(COLORS))),
                    size=size,
                    x=round(float(rng.uniform(0.12, 0.88)), 3),
                    y=round(float(rng.uniform(0.12, 0.88)), 3),
                    material=str(rng.choice(MATERIALS, p=[0.55, 0.15, 0.15, 0.15])),
                )
            )
        bg = str(rng.choice([b for b in BACKGROUNDS if b != "white"]))
        return Scene(objects=objs, background=bg, style="photo", bg_seed=int(rng.integers(1 << 30)))

    def _ref_for(self, o: Obj, scene: Scene, rng: np.random.Generator) -> Ref:
        unique, ambiguous = [], []
        for shape, keep, rel in itertools.product((o.shape, None), range(8), (None, *RELATIONS)):
            ref = Ref(
                shape=shape,
                color=o.color if keep & 1 else None,
                size=o.size if keep & 2 else None,
                material=o.material if keep & 4 else None,
                relation=rel,
            )
            if shape is None and keep == 0 and rel is None:
                continue
            if resolve(ref, scene) is not o:
                continue
            n_words = (shape is not None) + bin(keep).count("1") + (rel is not None) * 1.5
            (ambiguous if is_ambiguous(ref, scene) else unique).append((n_words, ref))
        pool = ambiguous if ambiguous and rng.random() < self.ambiguity else unique
        weights = np.array([np.exp(-1.2 * w) for w, _ in pool])
        return pool[int(rng.choice(len(pool), p=weights / weights.sum()))][1]

    def _edit(self, op: str, scene: Scene, rng: np.random.Generator, used: set[int]) -> Edit | None:
        objs = [o for o in scene.objects if o.oid not in used]
        if op in ("add", "background", "style"):
            if op == "add":
                size = None if rng.random() < 0.4 else str(rng.choice(list(SIZES)))
                value = (
                    size,
                    str(rng.choice(list(COLORS))),
                    str(rng.choice(SHAPES)),
                    str(rng.choice(list(CELLS))),
                )
                return Edit("add", None, value)
            if op == "background":
                return Edit(op, None, str(rng.choice([b for b in BACKGROUNDS if b != scene.background])))
            return Edit(op, None, str(rng.choice([s for s in STYLES if s != scene.style])))
        if not objs:
            return None
        o = objs[int(rng.integers(len(objs)))]
        ref = self._ref_for(o, scene, rng)
        o = resolve(ref, scene)
        if o.oid in used:
            return None
        used.add(o.oid)
        pick = lambda xs, cur: str(rng.choice([x for x in xs if x != cur]))  # noqa: E731
        value = {
            "color": lambda: pick(list(COLORS), o.color),
            "size": lambda: pick(list(SIZES), o.size),
            "material": lambda: pick(MATERIALS, o.material),
            "replace": lambda: (
                None if rng.random() < 0.5 else str(rng.choice(list(COLORS))),
                pick(SHAPES, o.shape),
            ),
            "action": lambda: str(
                rng.choice([c for c, (x, y) in CELLS.items() if (x - o.x) ** 2 + (y - o.y) ** 2 > 0.09])
            ),
            "text": lambda: str(rng.choice(LETTERS)),
        }.get(op, lambda: None)()
        return Edit(op, ref, value)

    def sample_request(self, rng: np.random.Generator, categories: tuple[str, ...] | None = None) -> Request:
        """A source scene, an instruction in the given categories and its exact target scene."""
        cats = tuple(categories or CATEGORIES)
        bad = [c for c in cats if c not in CATEGORIES]
        if bad:
            raise InputError(f"unknown testbed categories {bad}; choose from {', '.join(CATEGORIES)}")
        while True:
            scene = self.sample_scene(rng)
            cat = str(rng.choice(cats))
            ops = (
                [str(o) for o in rng.choice(_COMPOSABLE, int(rng.integers(2, 4)), replace=False)]
                if cat == "compose"
                else [cat]
            )
            used: set[int] = set()
            edits = [self._edit(op, scene, rng, used) for op in ops]
            if any(e is None for e in edits):
                continue
            edits_t = tuple(edits)
            text, family = self._phrase(scene, edits_t, rng)
            return Request(
                source=scene,
                instruction=text,
                edits=edits_t,
                category=category_of(edits_t),
                target=apply_edits(scene, edits_t),
                features=difficulty_features(scene, edits_t),
                phrasing=family,
            )


__all__ = ["World", "Request", "apply_edits", "candidates", "difficulty_features"]
