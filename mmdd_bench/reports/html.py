"""``results/index.html``: one static page (no server) with every leaderboard, its figures, one gallery
per (dataset, backbone, method) and the published paper-setting rows not measured here yet."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ..records import RunRecord, atomic_write_text
from .aids import AIDS_HEADER, AIDS_NOTE, aids_rows
from .claims import CLAIMS_NOTE, SUMMARY_HEADER, claims_summary
from .leaderboard import DETERMINISTIC_NOTE, MARKDOWN_COLUMNS, display_rows, own
from .matrix import MATRIX_NOTE, matrix_tables, protocol_matrix, published_protocol_share
from .names import group_stem
from .published import published_results
from .transfer import TRANSFER_NOTE, has_transfers, transfer_matrix, transfer_tables

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.note{color:#666;font-size:13px}
"""

def _escape(text: object) -> str:
    """Text for a text node or a double-quoted attribute: every record field is untrusted."""
    return html.escape(str(text), quote=True)


def _table(part: pd.DataFrame) -> str:
    """The leaderboard cells the Markdown shows, escaped."""
    head = "".join(f"<th>{_escape(c)}</th>" for c in MARKDOWN_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in cells) + "</tr>" for cells in display_rows(part))
    note = f"<p class=\"note\">{_escape(DETERMINISTIC_NOTE)}</p>" if part["deterministic"].any() else ""
    return f"<table class=\"leaderboard\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _matrix_sections(board: pd.DataFrame) -> list[str]:
    """The protocol matrices (where a dataset was scored under several protocols) and the published share."""
    parts = []
    matrix = protocol_matrix(board)
    for (ds, bb), part in matrix.groupby(["dataset", "backbone"], sort=True):
        if part["protocol"].nunique() < 2:
            continue
        parts.append(f"<h2>Protocol matrix: {_escape(ds)} / backbone {_escape(bb)}</h2>"
                     f"<p class=\"note\">{_escape(MATRIX_NOTE)}</p>")
        for size, protocols, rows in matrix_tables(board, ds, bb):
            head = "".join(f"<th>{_escape(c)}</th>" for c in ["method", *protocols])
            body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
            parts.append(f"<h3>N = {size}</h3><table class=\"matrix\"><thead><tr>{head}</tr></thead>"
                         f"<tbody>{body}</tbody></table>")
    share = published_protocol_share(published_results())
    if len(share):
        parts.append("<h2>Published: how much of CovMatch's lead over LoRS is protocol</h2>"
                     "<p class=\"note\">CovMatch is scored under trainable-text, LoRS under frozen-text; random's lift "
                     "between the two protocols (the same papers' random rows) is the part of the lead that is "
                     "protocol.</p>" + share.to_html(index=False, na_rep="", escape=True, classes="published-share"))
    return parts


def _transfer_sections(board: pd.DataFrame) -> list[str]:
    """The transfer matrices (only where some set was scored with another backbone than its own)."""
    if not has_transfers(board):
        return []
    parts = []
    for ds in sorted(transfer_matrix(board)["dataset"].unique()):
        parts.append(f"<h2>Transfer matrix: {_escape(ds)}</h2><p class=\"note\">{_escape(TRANSFER_NOTE)}</p>")
        for protocol, size, backbones, rows in transfer_tables(board, ds):
            head = "".join(f"<th>{_escape(c)}</th>" for c in
                           ["method", "distilled with", *[f"scored with {b}" for b in backbones]])
            body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
            parts.append(f"<h3>protocol {_escape(protocol)}, N = {size}</h3><table class=\"transfer\"><thead><tr>{head}"
                         f"</tr></thead><tbody>{body}</tbody></table>")
    return parts


def _aids_sections(aids: pd.DataFrame | None) -> list[str]:
    """The aids tables (where a method was scored with and without aids)."""
    if aids is None or aids.empty:
        return []
    parts = []
    for (ds, bb, proto, size), part in aids.groupby(["dataset", "backbone", "protocol", "size"], sort=True):
        head = "".join(f"<th>{_escape(c)}</th>" for c in AIDS_HEADER)
        body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in cells) + "</tr>" for cells in aids_rows(part))
        parts.append(f"<h3>{_escape(ds)} / backbone {_escape(bb)} / {_escape(proto)}, N = {int(size)}</h3>"
                     f"<table class=\"aids\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return [f"<h2>Evaluation aids</h2><p class=\"note\">{_escape(AIDS_NOTE)}</p>", *parts]


def _claims_sections(claims: pd.DataFrame | None) -> list[str]:
    """The papers' claims per (dataset, backbone), where the records allow any comparison."""
    if claims is None or claims.empty:
        return []
    parts = []
    for (ds, bb), _ in claims.groupby(["dataset", "backbone"], sort=True):
        head = "".join(f"<th>{_escape(c)}</th>" for c in SUMMARY_HEADER)
        body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in row) + "</tr>"
                       for row in claims_summary(claims, ds, bb))
        parts.append(f"<h3>{_escape(ds)} / backbone {_escape(bb)}</h3>"
                     f"<table class=\"claims\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return [f"<h2>The papers' claims</h2><p class=\"note\">{_escape(CLAIMS_NOTE)}</p>", *parts]


def missing_published(board: pd.DataFrame) -> pd.DataFrame:
    """Published paper-setting rows with no measured row of the same dataset, protocol, method and size."""
    pub = published_results().dropna(subset=["size"])
    board = board[own(board)]  # a transferred set is not the published method on its own backbone
    measured = set(zip(board["dataset"], board["backbone"], board["protocol"], board["method"], board["size"], strict=True))
    keep = [(d, b, p, m, int(s)) not in measured
            for d, b, p, m, s in zip(pub["dataset"], pub["backbone"], pub["protocol"], pub["method"], pub["size"], strict=True)]
    return pub[keep][["dataset", "protocol", "method", "size", "r_mean", "source"]]


def write_page(results_dir: Path, board: pd.DataFrame, galleries: dict[tuple[str, str, str], Path],
               notes: list[str], aids: pd.DataFrame | None = None, claims: pd.DataFrame | None = None) -> Path:
    out = results_dir / "index.html"
    parts = ["<!doctype html><html><head><meta charset=\"utf-8\"><title>mmdd-bench results</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>mmdd-bench results</h1>",
             f"<p class=\"note\">Regenerated from {_escape(results_dir / 'runs')} by "
             f"<code>mmdd-bench report --html</code> at {datetime.now(UTC).isoformat(timespec='seconds')}. "
             "Mean ± std over seeds (each seed: the mean over its students); 95% bootstrap intervals over seeds; the "
             "gain over random is paired by seed and flagged <code>~ random</code> when its interval contains 0. "
             "Recall in percent. The embedded <code>shapes</code> dataset is a synthetic sanity benchmark, not "
             "comparable with the papers' Flickr30K/COCO numbers.</p>"]
    for (ds, bb, proto), part in board.groupby(["dataset", "backbone", "protocol"], sort=True):
        stem = f"leaderboard/{group_stem(ds, bb, proto)}"
        parts.append(f"<h2>{_escape(ds)} / backbone {_escape(bb)} / protocol {_escape(proto)}</h2>")
        parts.append(_table(part))
        parts.append(f"<img src=\"{_escape(stem)}__r_mean_vs_size.png\" alt=\"mean recall against size, {_escape(ds)}\">")
        parts.append(f"<img src=\"{_escape(stem)}__metrics.png\" alt=\"per-metric recall, {_escape(ds)}\">")
    parts += _matrix_sections(board)
    parts += _transfer_sections(board)
    parts += _aids_sections(aids)
    parts += _claims_sections(claims)
    if galleries:
        parts.append("<h2>Distilled sets</h2>")
        for (ds, bb, method), path in sorted(galleries.items()):
            parts.append(f"<h3>{_escape(method)} on {_escape(ds)} ({_escape(bb)})</h3>"
                         f"<img src=\"{_escape(path.relative_to(results_dir).as_posix())}\" alt=\"gallery {_escape(method)}\">")
    missing = missing_published(board)
    parts.append("<h2>Published rows not measured here yet</h2>")
    parts.append("<p class=\"note\">The paper setting (backbone <code>paper</code>, Flickr30K/COCO) needs GPUs and the "
                 "datasets; these rows arrive when someone runs them.</p>")
    parts.append(missing.to_html(index=False, na_rep="", escape=True) if len(missing) else "<p>none</p>")
    for note in notes:
        parts.append(f"<p class=\"note\">{_escape(note)}</p>")
    # Lets a headless browser (and the tests) tell that every figure decoded: body[data-images="ok/total"].
    parts.append("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                 "document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))
    return out


def gallery_sources(records: list[RunRecord]) -> dict[tuple[str, str, str], RunRecord]:
    """One set per (dataset, backbone, method): the default variant if run, then the largest size and the
    lowest seed; only sets distilled with that backbone (a transfer evaluation's set is its source's)."""
    chosen: dict[tuple[str, str, str], RunRecord] = {}

    def rank(r: RunRecord) -> tuple:
        return (r.variant == "", r.size, -r.seed)

    for r in records:
        if r.status != "ok" or not r.artifact or r.distilled_backbone:
            continue
        key = (r.dataset, r.backbone, r.method)
        if key not in chosen or rank(r) > rank(chosen[key]):
            chosen[key] = r
    return chosen
