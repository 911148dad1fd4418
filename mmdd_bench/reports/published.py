"""The papers' tables (MTT-VL, LoRS, CovMatch), shipped as package data so reports never read outside
the package. Published rows are for the paper setting: backbone ``paper`` on Flickr30K and COCO."""

from __future__ import annotations

from importlib.resources import files

import pandas as pd

PUBLISHED_BACKBONE = "paper"


def published_results() -> pd.DataFrame:
    with files("mmdd_bench.reports").joinpath("published_results.csv").open() as fh:
        frame = pd.read_csv(fh)
    frame["backbone"] = PUBLISHED_BACKBONE
    frame["size_label"] = frame["size"].astype(str)  # "all" marks full-data rows
    frame["size"] = pd.to_numeric(frame["size"], errors="coerce")
    return frame


def published_for(dataset: str, backbone: str, protocol: str) -> pd.DataFrame:
    frame = published_results()
    if backbone != PUBLISHED_BACKBONE:
        return frame.iloc[0:0]
    return frame[(frame["dataset"] == dataset) & (frame["protocol"] == protocol)].reset_index(drop=True)
