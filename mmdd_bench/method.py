"""The method plugin contract and the method registry.

A method turns the training split into a ``DistilledSet``; it never evaluates. Third parties register
methods without forking, through the entry-point group ``mmdd_bench.methods``::

    [project.entry-points."mmdd_bench.methods"]
    my-method = "my_package.my_module:MyMethod"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .data.images import ImageStore
from .data.splits import TrainView
from .distilled import DistilledSet, TextKind
from .encoders.backbone import Backbone
from .progress import ProgressFn
from .registry import Registry


@dataclass
class DistillContext:
    """What a method gets: the training split only (``dataset.val``/``.test`` raise), the backbone, the
    size and seed of the cell, the device, the cache, and where to report progress and keep checkpoints."""

    dataset: TrainView
    backbone: Backbone
    size: int
    seed: int
    device: torch.device
    cache_dir: Path
    progress: ProgressFn | None = None
    checkpoint_dir: Path | None = None  # where a long method keeps its resumable state (None: no checkpoints)
    # Studies of an iteration budget (scripts/study_iteration_budget.py): after these iterations an iterative
    # method also hands over its set as it stands (``keep_snapshot``), the very set a run with that many
    # iterations returns, so one run scores several budgets. Empty for every harness run.
    snapshot_iterations: frozenset[int] = frozenset()
    snapshots: dict[int, DistilledSet] = field(default_factory=dict, repr=False)
    _train_images: ImageStore | None = field(default=None, repr=False)

    @property
    def train_images(self) -> ImageStore:
        """Decoded training images at the backbone's resolution (built once, memory-mapped)."""
        if self._train_images is None:
            self._train_images = ImageStore(self.dataset.train.image_paths, self.backbone.image_size, self.cache_dir,
                                            self.dataset.train.fingerprint, self.backbone.mean, self.backbone.std)
        return self._train_images

    def keep_snapshot(self, done: int, build: Callable[[], DistilledSet]) -> None:
        """Keep the set after ``done`` iterations when a study asked for it (``build`` runs only then)."""
        if done in self.snapshot_iterations:
            self.snapshots[done] = build()

    def report(self, what: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(what, done, total)


@dataclass
class NoParams:
    pass


class Method:
    """Subclass, set the class attributes, and implement ``distill``."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    default_protocol: ClassVar[str] = "frozen-text"
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # True when the seed cannot change the set (herding): its seeds are one set, and reports say so.
    deterministic: ClassVar[bool] = False

    def default_params(self, size: int, dataset_name: str) -> Any:
        """Published defaults, possibly per size (CovMatch's rho and lambda) or per dataset."""
        return self.Params()

    def resolve_params(self, params: Any, backbone: Any) -> Any:
        """Fill ``None`` fields that depend on the backbone (e.g. an online model's lrs) before hashing."""
        return params

    def text_kind(self, params: Any) -> TextKind:
        """The kind of text the sets made with ``params`` carry (``captions`` by default, as coresets return;
        a method that learns embeddings says ``sentence_embeddings`` or ``token_embeddings``): the planner
        checks it against each protocol of a run before any work starts."""
        return "captions"

    def fixed_size(self, dataset: Any) -> int | None:
        """A method whose set has a size of its own (``full-data``: the split's pair count) says it here; the
        planner then plans that one size instead of ``--sizes``."""
        return None

    def eval_defaults(self, dataset_name: str) -> dict[str, Any]:
        """Evaluation settings this method's sets need beyond the protocol's defaults (``full-data``: fewer
        epochs on the embedded datasets); user overrides still win, and records show them as eval variants."""
        return {}

    def protocol_for(self, params: Any) -> str:
        """The protocol that fits the sets these params produce (``--protocol auto``)."""
        return self.default_protocol

    def distill(self, ctx: DistillContext, params: Any) -> DistilledSet:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method", entry_point_group="mmdd_bench.methods")
for _name, _ref in {
    "random": "mmdd_bench.methods.random_subset:RandomSubset",
    "herding": "mmdd_bench.methods.herding:Herding",
    "covmatch": "mmdd_bench.methods.covmatch:CovMatch",
    "mtt-vl": "mmdd_bench.methods.mtt_vl:MTTVL",
    "full-data": "mmdd_bench.methods.full_data:FullData",
    "tesla-vl": "mmdd_bench.methods.tesla_vl:TeslaVL",
    "lors": "mmdd_bench.methods.lors:LoRS",
    "k-center": "mmdd_bench.methods.kcenter:KCenter",
    "forgetting": "mmdd_bench.methods.forgetting:Forgetting",
}.items():
    METHODS.add_lazy(_name, _ref)


def get_method(name: str) -> Method:
    cls = METHODS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"method {name!r} resolved to {cls!r}, which is not a mmdd_bench.method.Method subclass")
    return cls()
