"""Writes every report file from the records: leaderboard CSV/Markdown, figures, galleries and the page.
File names come from ``names`` (record fields are untrusted); every path stays inside its folder."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import MMDDError
from ..records import RunRecord, atomic_write_text, read_records
from .aids import aids_markdown, aids_table
from .claims import claims_markdown, claims_table
from .leaderboard import leaderboard, published_markdown, records_frame, to_markdown
from .matrix import matrix_markdown, protocol_matrix, published_share_markdown
from .names import confined, group_stem
from .published import published_for, published_results
from .transfer import has_transfers, transfer_markdown, transfer_matrix


def write_leaderboards(results_dir: Path, plots: bool = True, records: list[RunRecord] | None = None) -> list[Path]:
    """Regenerate ``<results>/leaderboard/``: ``leaderboard.csv`` with every row, and per (dataset, backbone,
    protocol) a CSV, a Markdown table (published numbers beside, labelled) and figures (``r_mean`` against
    size; per-metric bars at the size most methods share)."""
    from .plots import metric_bars, recall_vs_size

    results_dir = Path(results_dir)
    frame = records_frame(read_records(results_dir) if records is None else records)
    board = leaderboard(frame)
    out_dir = results_dir / "leaderboard"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [confined(out_dir, "leaderboard.csv")]
    atomic_write_text(written[0], board.to_csv(index=False))
    for (ds, bb, proto), part in board.groupby(["dataset", "backbone", "protocol"], sort=True):
        stem = group_stem(ds, bb, proto)
        csv, md = confined(out_dir, f"{stem}.csv"), confined(out_dir, f"{stem}.md")
        atomic_write_text(csv, part.to_csv(index=False))
        title = (f"# {ds} / backbone {bb} / protocol {proto}\n\nmean ± std over seeds (each seed: the mean over its "
                 "students); 95% bootstrap intervals over seeds; gain vs random paired by seed; recall in percent.\n\n")
        atomic_write_text(md, title + to_markdown(part) + published_markdown(published_for(ds, bb, proto)))
        written += [csv, md]
        if plots:
            written += recall_vs_size(part, ds, bb, proto, confined(out_dir, f"{stem}__r_mean_vs_size"))
            methods_per_size = part.groupby("size")["method"].nunique()
            compared = methods_per_size[methods_per_size == methods_per_size.max()].index.max()  # most methods
            written += metric_bars(part, int(compared), f"{ds} / {bb} / {proto}", confined(out_dir, f"{stem}__metrics"))
    written += write_protocol_matrices(out_dir, board)
    written += write_transfer_matrices(out_dir, board)
    written += write_aids_tables(out_dir, aids_table(frame))
    written += write_claims(out_dir, claims_table(frame))
    return written


def write_per_dataset_tables(out_dir: Path, table, name: str, markdown) -> list[Path]:
    """``<name>.csv`` with every row and per (dataset, backbone) ``<dataset>__<backbone>.<name>.md`` from
    ``markdown(table, dataset, backbone)``; nothing for an empty table."""
    if table.empty:
        return []
    written = [confined(out_dir, f"{name}.csv")]
    atomic_write_text(written[0], table.to_csv(index=False))
    for (ds, bb), _ in table.groupby(["dataset", "backbone"], sort=True):
        path = confined(out_dir, f"{group_stem(ds, bb)}.{name}.md")
        atomic_write_text(path, markdown(table, ds, bb))
        written.append(path)
    return written


def write_claims(out_dir: Path, table) -> list[Path]:
    """The claims table, where the records allow any comparison of the papers' claims."""
    return write_per_dataset_tables(out_dir, table, "claims", claims_markdown)


def write_aids_tables(out_dir: Path, table) -> list[Path]:
    """The aids table, where any method was scored with and without aids."""
    return write_per_dataset_tables(out_dir, table, "aids", aids_markdown)


def write_protocol_matrices(out_dir: Path, board) -> list[Path]:
    """``protocol-matrix.csv`` (every cell), per (dataset, backbone) that was scored under several protocols a
    Markdown matrix (``<dataset>__<backbone>.protocol-matrix.md``: two parts, so never a leaderboard's name), and
    ``published-protocol-share.md`` from the papers' own numbers."""
    matrix = protocol_matrix(board)
    written = [confined(out_dir, "protocol-matrix.csv"), confined(out_dir, "published-protocol-share.md")]
    atomic_write_text(written[0], matrix.to_csv(index=False))
    atomic_write_text(written[1], published_share_markdown(published_results()))
    for (ds, bb), part in matrix.groupby(["dataset", "backbone"], sort=True):
        if part["protocol"].nunique() < 2:
            continue
        path = confined(out_dir, f"{group_stem(ds, bb)}.protocol-matrix.md")
        atomic_write_text(path, matrix_markdown(board, ds, bb))
        written.append(path)
    return written


def write_transfer_matrices(out_dir: Path, board) -> list[Path]:
    """Only when some record is a transfer evaluation: ``transfer-matrix.csv`` (every cell) and per dataset with
    transfers a Markdown matrix, ``<dataset>.transfer-matrix.md`` (one part and that suffix: never a
    leaderboard's or a protocol matrix's name)."""
    if not has_transfers(board):
        return []
    matrix = transfer_matrix(board)
    written = [confined(out_dir, "transfer-matrix.csv")]
    atomic_write_text(written[0], matrix.drop(columns="label").to_csv(index=False))
    for ds in sorted(matrix["dataset"].unique()):
        path = confined(out_dir, f"{group_stem(ds)}.transfer-matrix.md")
        atomic_write_text(path, transfer_markdown(board, ds))
        written.append(path)
    return written


def gallery_artifact(results_dir: Path, record: RunRecord) -> Path | None:
    """A record's saved set, only when it lies inside ``<results>/artifacts`` (records are untrusted)."""
    if not record.artifact:
        return None
    path = (results_dir / record.artifact).resolve()
    root = (results_dir / "artifacts").resolve()
    return path if root in path.parents else None


def write_reports(results_dir: Path, html: bool = False, data_root: str | None = None,
                  cache_dir: Path | None = None) -> list[Path]:
    """Leaderboards, and with ``html`` one gallery per (dataset, backbone, method) and ``<results>/index.html``."""
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    written = write_leaderboards(results_dir, records=records)
    if not html:
        return written
    import torch

    from .gallery import render_artifact
    from .html import gallery_sources, write_page

    galleries, notes = {}, []
    gallery_dir = results_dir / "gallery"
    gallery_dir.mkdir(parents=True, exist_ok=True)
    for key, rec in gallery_sources(records).items():
        artifact = gallery_artifact(results_dir, rec)
        out = confined(gallery_dir, f"{group_stem(*key)}.png")
        saved = artifact is not None and all(artifact.with_suffix(e).is_file() for e in (".json", ".safetensors"))
        if artifact is not None and not saved and out.is_file():
            # Sets are not committed: on a machine that did not distil them, the committed figure is the set's.
            galleries[key] = out
            notes.append(f"gallery for {' / '.join(key)} kept from an earlier report: its set "
                         f"({rec.artifact}) is not in this machine's artifacts/")
            continue
        if not saved:
            notes.append(f"no gallery for {' / '.join(key)}: its artifact is not under artifacts/")
            continue
        try:
            render_artifact(artifact, out, 12, data_root, cache_dir, torch.device("cpu"))
            galleries[key] = out
        except MMDDError as exc:
            notes.append(f"no gallery for {' / '.join(key)}: {exc}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the leaderboards above already warned about the same records
        frame = records_frame(records)
        board, aids, claims = leaderboard(frame), aids_table(frame), claims_table(frame)
    written += [*galleries.values(), write_page(results_dir, board, galleries, notes, aids, claims)]
    return written


__all__ = ["write_leaderboards", "write_protocol_matrices", "write_reports", "write_transfer_matrices"]

