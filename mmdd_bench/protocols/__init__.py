"""Evaluation protocols by name; versions are part of every result's key."""

from ..registry import Registry
from .base import EvalParams, EvalResult, Protocol

PROTOCOLS: Registry[type[Protocol]] = Registry("protocol")
PROTOCOLS.add_lazy("frozen-text", "mmdd_bench.protocols.frozen_text:FrozenTextProtocol")
PROTOCOLS.add_lazy("trainable-text", "mmdd_bench.protocols.trainable_text:TrainableTextProtocol")
PROTOCOLS.add_lazy("frozen-text-mtt", "mmdd_bench.protocols.frozen_text_mtt:FrozenTextMTTProtocol")
PROTOCOLS.add_lazy("frozen-encoders", "mmdd_bench.protocols.frozen_encoders:FrozenEncodersProtocol")


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)()


__all__ = ["PROTOCOLS", "EvalParams", "EvalResult", "Protocol", "get_protocol"]
