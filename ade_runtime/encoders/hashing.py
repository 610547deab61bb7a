"""Dependency-free text features: l2-normalised signed feature hashing of word and character n-grams.

The hashing trick of Weinberger et al. (2009), "Feature Hashing for Large Scale Multitask Learning",
as in scikit-learn's HashingVectorizer (alternate_sign=True, analyzer="char_wb"), but with a stable
hash (blake2b) instead of Python's salted ``hash()`` so features are identical across processes and
machines. Word and character blocks are normalised separately before they are summed so the many
character n-grams do not drown the few word n-grams. The CPU default text feature of CARD.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ade_runtime.encoders.base import make_fingerprint
from ade_runtime.errors import InputError

_WORD = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=1 << 18)
def _bucket(key: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    # index from the low bits, sign from the top bit: independent for any dim below 2**63
    return h % dim, (1.0 if (h >> 63) == 0 else -1.0)


def _check_range(value: Any, field: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 1 <= value[0] <= value[1]
    ):
        raise InputError(
            f"HashingTextEncoder: {field} must be (lo, hi) with 1 <= lo <= hi or None, got {value!r}"
        )
    return (int(value[0]), int(value[1]))


@dataclass
class HashingTextEncoder:
    """Signed hashing of word n-grams and padded character n-grams into ``dim`` buckets, l2-normalised."""

    dim: int = 512
    word_ngrams: tuple[int, int] | None = (1, 2)
    char_ngrams: tuple[int, int] | None = (3, 5)
    lowercase: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 2:
            raise InputError(f"HashingTextEncoder: dim must be an int >= 2, got {self.dim!r}")
        self.word_ngrams = _check_range(self.word_ngrams, "word_ngrams")
        self.char_ngrams = _check_range(self.char_ngrams, "char_ngrams")
        if self.word_ngrams is None and self.char_ngrams is None:
            raise InputError("HashingTextEncoder: word_ngrams and char_ngrams are both None; enable one")

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "hashing",
            "dim": self.dim,
            "word_ngrams": list(self.word_ngrams) if self.word_ngrams else None,
            "char_ngrams": list(self.char_ngrams) if self.char_ngrams else None,
            "lowercase": self.lowercase,
        }

    @property
    def fingerprint(self) -> str:
        return make_fingerprint("hashing", {"spec": self.spec(), "hash": "blake2b-8"})

    def _grams(self, text: str) -> tuple[list[str], list[str]]:
        text = unicodedata.normalize("NFKC", text)
        if self.lowercase:
            text = text.lower()
        words = _WORD.findall(text)
        wgrams: list[str] = []
        if self.word_ngrams:
            lo, hi = self.word_ngrams
            for n in range(lo, hi + 1):
                wgrams += ["w:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        cgrams: list[str] = []
        if self.char_ngrams:
            lo, hi = self.char_ngrams
            for w in words:
                padded = f" {w} "
                if len(padded) < lo:  # as char_wb: a word shorter than lo is one gram
                    cgrams.append("c:" + padded)
                for n in range(lo, min(hi, len(padded)) + 1):
                    cgrams += ["c:" + padded[i : i + n] for i in range(len(padded) - n + 1)]
        return wgrams, cgrams

    def _block(self, grams: list[str]) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float64)
        for g in grams:
            idx, sign = _bucket(g, self.dim)
            v[idx] += sign
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def encode(self, texts: list[str]) -> torch.Tensor:
        """FloatTensor [N, dim]; rows have unit norm (all zeros for a text without any word)."""
        if isinstance(texts, str):
            raise InputError(
                "HashingTextEncoder.encode takes a list of strings, got a single str; wrap it in [ ]"
            )
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"HashingTextEncoder.encode: item {i} is {type(text).__name__}, not str")
            wgrams, cgrams = self._grams(text)
            v = self._block(wgrams) + self._block(cgrams)
            norm = np.linalg.norm(v)
            out[i] = v / norm if norm > 0 else v
        return torch.from_numpy(out)
