"""The distilled set: what a method hands to a protocol, and what users share.

Stored as ``NAME.safetensors`` (tensors) + ``NAME.json`` (captions and metadata), never pickle, so
loading a set from someone else cannot execute code.

Budgets are counted the way the field counts them: a set says its budget in pairs (``budget_pairs``, by
default its length). LoRS stores N-1 pairs plus a learned similarity for a budget of N, which is fair only
when the similarity's tensors fit in the freed pair's bytes; ``check_budget`` is that rule.
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
REFERENCE_TRAIN = "train"  # a set that is the whole training split, by reference (``full-data``)
LEARNED_LRS = ("lr_image", "lr_text")  # learned step sizes a set may carry for its students
# Extras that record where a set came from rather than what a student trains on: free of budget.
BOOKKEEPING_EXTRAS = ("source_pairs",)
# A learned similarity between the set's pairs (LoRS), as extras: low rank S = diag(sim_diag) + sim_scale *
# sim_left @ sim_right^T ([N], [N, r], [N, r], a 0-dim scale alpha/r), or a full matrix sim_full [N, N].
LOW_RANK_SIMILARITY = ("sim_diag", "sim_left", "sim_right", "sim_scale")
SIMILARITY_EXTRAS = (*LOW_RANK_SIMILARITY, "sim_full")


def similarity_block(diag: torch.Tensor, left: torch.Tensor, right: torch.Tensor, scale: torch.Tensor,
                     idx: torch.Tensor | None = None) -> torch.Tensor:
    """``S[idx][:, idx]`` of the low-rank S = diag(diag) + scale * left @ right^T, without forming S.

    Differentiable in every argument: autograd scatters a batch's gradients into the rows ``idx``."""
    if idx is not None:
        diag, left, right = diag[idx], left[idx], right[idx]
    return torch.diag(diag) + scale * left @ right.T


def similarity_of(extras: dict[str, torch.Tensor], indices: torch.Tensor | None = None) -> torch.Tensor | None:
    """``S[idx][:, idx]`` (all of S when ``indices`` is None) of the similarity in ``extras``; None if none."""
    if "sim_full" in extras:
        return extras["sim_full"] if indices is None else extras["sim_full"][indices][:, indices]
    if not all(k in extras for k in LOW_RANK_SIMILARITY):
        return None
    return similarity_block(*(extras[k] for k in LOW_RANK_SIMILARITY), idx=indices)


@dataclass
class DistilledSet:
    """N image-text pairs. ``images`` are normalised model inputs [N, 3, H, W]; the text is one kind:

    - ``captions``: N strings;
    - ``sentence_embeddings``: [N, d] features of the text encoder ``encoder_id``;
    - ``token_embeddings``: [N, L, d] input embeddings of ``encoder_id`` plus ``attention_mask`` [N, L].
    ``extras`` holds other tensors (learned learning rates, source indices, a learned similarity: see
    ``SIMILARITY_EXTRAS``). ``budget_pairs`` is the budget the set was made for (None: its length).

    ``reference="train"`` is the whole training split as a set (``full-data``, the ceiling), held by
    reference instead of copied: no images ([0, 3, H, W] keeps the geometry) and no captions; its length is
    ``budget_pairs``, the split's pair count, and a protocol reads the pairs from the dataset.
    """

    images: torch.Tensor
    text_kind: TextKind
    captions: list[str] | None = None
    text_embeddings: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    encoder_id: str | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    budget_pairs: int | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.reference is not None:
            if self.reference != REFERENCE_TRAIN:
                raise ValueError(f"reference must be {REFERENCE_TRAIN!r} (the whole training split), got {self.reference!r}")
            if n != 0 or self.text_kind != "captions" or self.captions or self.text_embeddings is not None:
                raise ValueError("a reference set holds no pairs of its own: images [0, 3, H, W], captions []")
            if not isinstance(self.budget_pairs, int) or self.budget_pairs < 1:
                raise ValueError("a reference set's budget_pairs is the split's pair count")
        if self.budget_pairs is None:
            self.budget_pairs = n
        if isinstance(self.budget_pairs, bool) or not isinstance(self.budget_pairs, int) or self.budget_pairs < n:
            raise ValueError(f"budget_pairs must be an int >= the {n} pairs stored, got {self.budget_pairs!r}")
        self._check_similarity(n)
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

    def _check_similarity(self, n: int) -> None:
        present = [k for k in SIMILARITY_EXTRAS if k in self.extras]
        if not present:
            return
        if "sim_full" in present:
            if len(present) > 1:
                raise ValueError(f"a set carries a full (sim_full) or a low-rank similarity, not both: {present}")
            if tuple(self.extras["sim_full"].shape) != (n, n):
                raise ValueError(f"sim_full must be [{n}, {n}], got {tuple(self.extras['sim_full'].shape)}")
            return
        missing = [k for k in LOW_RANK_SIMILARITY if k not in present]
        if missing:
            raise ValueError(f"a low-rank similarity needs all of {', '.join(LOW_RANK_SIMILARITY)}; missing {missing}")
        diag, left, right, scale = (self.extras[k] for k in LOW_RANK_SIMILARITY)
        if tuple(diag.shape) != (n,) or left.ndim != 2 or left.shape[0] != n or left.shape != right.shape:
            raise ValueError(f"low-rank similarity: expected sim_diag [{n}] and sim_left, sim_right [{n}, r]; got "
                             f"{tuple(diag.shape)}, {tuple(left.shape)}, {tuple(right.shape)}")
        if scale.numel() != 1:
            raise ValueError(f"sim_scale must be one number, got shape {tuple(scale.shape)}")

    def __len__(self) -> int:
        return self.budget_pairs if self.reference is not None else self.images.shape[0]

    @property
    def has_learned_lrs(self) -> bool:
        """The set carries learned step sizes (MTT-VL, TESLA-VL, LoRS): one per tower."""
        return {"lr_image", "lr_text"} <= self.extras.keys()

    @property
    def has_similarity(self) -> bool:
        return any(k in self.extras for k in SIMILARITY_EXTRAS)

    def similarity(self, indices: torch.Tensor | None = None) -> torch.Tensor | None:
        """The learned similarity between the pairs ``indices`` (all when None), ``S[idx][:, idx]``; None when
        the set carries none (its pairs are matched by identity)."""
        return similarity_of(self.extras, indices)

    def similarity_extras(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.extras.items() if k in SIMILARITY_EXTRAS}

    def similarity_bytes(self) -> int:
        return int(sum(self.extras[k].numel() * self.extras[k].element_size()
                       for k in SIMILARITY_EXTRAS if k in self.extras))

    def bytes_per_pair(self) -> float:
        """Mean bytes of one stored pair: its image plus its text (embedding and mask, or caption)."""
        total = self.images.numel() * self.images.element_size()
        if self.captions is not None:
            total += sum(len(c.encode()) for c in self.captions)
        for t in (self.text_embeddings, self.attention_mask):
            if t is not None:
                total += t.numel() * t.element_size()
        return total / len(self)

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
        if self.budget_pairs != self.images.shape[0]:  # only when it differs: old headers stay as they were
            header["budget_pairs"] = self.budget_pairs
        if self.reference is not None:
            header["reference"] = self.reference
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
                budget_pairs=header.get("budget_pairs"),
                reference=header.get("reference"),
            )
        except (KeyError, ValueError) as exc:
            raise DataError(f"distilled set {stem} is inconsistent: {exc}") from exc


class BudgetError(ValueError):
    """A set that breaks the pair budget it was asked for: a method's bug, recorded as that cell's failure."""


def check_budget(distilled: DistilledSet, size: int, method: str = "the method") -> None:
    """The field's budget rule for a set asked for ``size`` pairs: it was made for that budget, stores at most
    ``size`` pairs, and when it stores fewer, what it stores besides its pairs (a learned similarity, ...;
    not its learned step sizes or its bookkeeping) fits in the freed pairs' bytes (LoRS: N-1 pairs and S)."""
    n = len(distilled)
    if distilled.budget_pairs != size:
        raise BudgetError(f"{method} made a set for a budget of {distilled.budget_pairs} pairs, asked for {size}; "
                          f"distil it again at size {size}.")
    if n > size:
        raise BudgetError(f"{method} returned {n} pairs, more than its budget of {size}.")
    if n < size:
        extra = sum(t.numel() * t.element_size() for k, t in distilled.extras.items()
                    if k not in BOOKKEEPING_EXTRAS and k not in LEARNED_LRS)
        freed = (size - n) * distilled.bytes_per_pair()
        if extra > freed:
            raise BudgetError(f"{method} stores {n} pairs for a budget of {size}, but its extra tensors take {extra} "
                              f"bytes, more than the {freed:.0f} bytes of the {size - n} freed pair(s); store fewer "
                              f"parameters (e.g. a lower similarity rank) or store {size} pairs.")
