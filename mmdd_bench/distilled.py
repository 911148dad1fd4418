"""The distilled set: what a method hands to a protocol, and what users share.

Stored as ``NAME.safetensors`` (tensors) + ``NAME.json`` (captions and metadata), never pickle, so
loading a set from someone else cannot execute code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DataError

TextKind = Literal["captions", "sentence_embeddings", "token_embeddings"]
TEXT_KINDS = ("captions", "sentence_embeddings", "token_embeddings")
FORMAT_VERSION = 1
LEARNED_LRS = ("lr_image", "lr_text")  # learned step sizes a set may carry for its students
# Extras that record where a set came from rather than what a student trains on: free of budget.
BOOKKEEPING_EXTRAS = ("source_pairs",)


@dataclass
class DistilledSet:
    """N image-text pairs. ``images`` are normalised model inputs [N, 3, H, W]; the text is one kind:

    - ``captions``: N strings;
    - ``sentence_embeddings``: [N, d] features of the text encoder ``encoder_id``;
    - ``token_embeddings``: [N, L, d] input embeddings of ``encoder_id`` plus ``attention_mask`` [N, L].
    ``extras`` holds other tensors (learned learning rates, source indices, ...).
    """

    images: torch.Tensor
    text_kind: TextKind
    captions: list[str] | None = None
    text_embeddings: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    encoder_id: str | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.text_kind not in TEXT_KINDS:
            raise ValueError(f"text_kind must be one of {TEXT_KINDS}, got {self.text_kind!r}")
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(self.images.shape)}")
        if self.text_kind == "captions":
            if self.captions is None or len(self.captions) != n:
                raise ValueError(f"captions: expected {n} strings")
        else:
            if self.text_embeddings is None or self.text_embeddings.shape[0] != n:
                raise ValueError(f"{self.text_kind}: expected text_embeddings with {n} rows")
            if not self.encoder_id:
                raise ValueError(f"{self.text_kind} need the encoder_id whose space they live in")
            want = 2 if self.text_kind == "sentence_embeddings" else 3
            if self.text_embeddings.ndim != want:
                raise ValueError(f"{self.text_kind} must have {want} dims, got {self.text_embeddings.ndim}")
            if self.text_kind == "token_embeddings" and (
                self.attention_mask is None or self.attention_mask.shape != self.text_embeddings.shape[:2]
            ):
                raise ValueError("token_embeddings need an attention_mask of shape [N, L]")

        if not self.images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor of normalised pixels, got {self.images.dtype}")
        if not bool(torch.isfinite(self.images).all()):
            raise ValueError("images contain NaN or Inf")
        if self.text_embeddings is not None:
            if not self.text_embeddings.is_floating_point():
                raise ValueError(f"text_embeddings must be floating point, got {self.text_embeddings.dtype}")
            if not bool(torch.isfinite(self.text_embeddings).all()):
                raise ValueError("text_embeddings contain NaN or Inf")
        if self.attention_mask is not None and not bool(((self.attention_mask == 0) | (self.attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold 0s and 1s")
        for name in LEARNED_LRS:
            if name in self.extras:
                lr = self.extras[name]
                if lr.numel() != 1 or not lr.is_floating_point() or not bool(torch.isfinite(lr).all()):
                    raise ValueError(f"extras.{name} must be one finite floating-point number, got shape "
                                     f"{tuple(lr.shape)} {lr.dtype}")
        if self.budget_pairs < n:
            raise ValueError(f"budget_pairs {self.budget_pairs} is smaller than the {n} pairs the set holds")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def budget_pairs(self) -> int:
        """The pair budget the set counts against: its length, or more when it trades pairs for other
        parameters (LoRS stores N-1 pairs plus its similarity for a budget of N)."""
        return int(self.meta.get("budget_pairs", self.images.shape[0]))

    def pair_bytes(self) -> int:
        """Bytes of one pair (an image and its text), the unit a budget in pairs is paid in."""
        n = max(len(self), 1)
        total = self.images.numel() * self.images.element_size()
        for t in (self.text_embeddings, self.attention_mask):
            if t is not None:
                total += t.numel() * t.element_size()
        if self.captions is not None:
            total += sum(len(c.encode()) for c in self.captions)
        return total // n

    def storage_bytes(self) -> int:
        """Bytes a user must store: pixels + text + extras (the budget besides the pair count)."""
        total = self.images.numel() * self.images.element_size()
        if self.captions is not None:
            total += sum(len(c.encode()) for c in self.captions)
        for t in (self.text_embeddings, self.attention_mask, *self.extras.values()):
            if t is not None:
                total += t.numel() * t.element_size()
        return int(total)

    def save(self, path: Path) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the JSON path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images.detach().cpu().contiguous()}
        if self.text_embeddings is not None:
            tensors["text_embeddings"] = self.text_embeddings.detach().cpu().contiguous()
        if self.attention_mask is not None:
            tensors["attention_mask"] = self.attention_mask.detach().cpu().contiguous()
        for k, v in self.extras.items():
            tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
        header = {"format": "mmdd-bench distilled set", "format_version": FORMAT_VERSION,
                  "text_kind": self.text_kind, "captions": self.captions, "encoder_id": self.encoder_id,
                  "meta": self.meta}
        st_path, json_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
        tmp_st = st_path.with_suffix(f".safetensors.tmp{os.getpid()}")
        tmp_js = json_path.with_suffix(f".json.tmp{os.getpid()}")
        save_file(tensors, str(tmp_st))
        tmp_js.write_text(json.dumps(header, indent=1))
        os.replace(tmp_st, st_path)
        os.replace(tmp_js, json_path)  # the JSON lands last: it marks the artifact complete
        return json_path

    @classmethod
    def load(cls, path: Path) -> DistilledSet:
        """Load from ``X.json``/``X.safetensors`` (either name, or the stem)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
        json_path, st_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        if not json_path.is_file() or not st_path.is_file():
            raise DataError(f"distilled set {stem}: expected both {json_path.name} and {st_path.name} next to each other.")
        try:
            header = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{json_path} is not a distilled-set header (invalid JSON: {exc}).") from exc
        if not isinstance(header, dict) or header.get("format") != "mmdd-bench distilled set":
            raise DataError(f"{json_path} is not an mmdd-bench distilled-set header.")
        try:
            tensors = load_file(str(st_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{st_path} is not a readable safetensors file ({exc}); only safetensors are accepted.") from exc
        if "images" not in tensors:
            raise DataError(f"{st_path} has no 'images' tensor.")
        try:
            return cls(
                images=tensors["images"],
                text_kind=header["text_kind"],
                captions=header.get("captions"),
                text_embeddings=tensors.get("text_embeddings"),
                attention_mask=tensors.get("attention_mask"),
                encoder_id=header.get("encoder_id"),
                extras={k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")},
                meta=header.get("meta", {}),
            )
        except (KeyError, ValueError) as exc:
            raise DataError(f"distilled set {stem} is inconsistent: {exc}") from exc


def check_budget(distilled: DistilledSet, size: int, method: str) -> None:
    """A set made for a budget of ``size`` pairs: ``size`` pairs, or fewer when what it stores besides them
    (a learned similarity, ...) fits in the bytes of the pairs it gave up."""
    n, budget = len(distilled), distilled.budget_pairs
    if budget != size:
        raise RuntimeError(f"method {method!r} made a set for a budget of {budget} pairs, asked for {size}")
    if n > size:
        raise RuntimeError(f"method {method!r} returned {n} pairs, asked for {size}")
    if n < size:
        extra = sum(t.numel() * t.element_size() for k, t in distilled.extras.items()
                    if k not in BOOKKEEPING_EXTRAS and k not in LEARNED_LRS)
        allowed = (size - n) * distilled.pair_bytes()
        if extra > allowed:
            raise RuntimeError(f"method {method!r} returned {n} pairs for a budget of {size} with {extra} bytes of extra "
                               f"tensors; the {size - n} freed pairs pay for {allowed} bytes only")
