"""Caption normalisation exactly as the published code bases (MTT-VL, LoRS, CovMatch) apply it."""

import re

_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")
MAX_WORDS = 30


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """Lower-case, replace ``.!"()*#:;~`` with spaces, collapse spaces, keep the first ``max_words`` words."""
    text = _PUNCTUATION.sub(" ", caption.lower())
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words])
