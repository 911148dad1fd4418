"""The static results page, end to end: records -> report --html -> headless Chromium."""

import re
import shutil
import subprocess

import pytest

from mmdd_bench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def page(cache_dir, tmp_path_factory):
    res = tmp_path_factory.mktemp("html") / "results"
    common = ["--cache-dir", str(cache_dir), "--results", str(res), "--quiet", "--datasets", "shapes-mini",
              "--set", "eval.epochs=2", "--set", "eval.n_students=1"]
    assert main(["run", "--methods", "random,covmatch", "--sizes", "4,6", "--set", "covmatch.iterations=2",
                 "--protocol", "trainable-text,frozen-text", *common]) == 0
    assert main(["report", "--html", "--results", str(res), "--cache-dir", str(cache_dir)]) == 0
    return res / "index.html"


def test_page_has_tables_figures_galleries_and_missing_rows(page):
    text = page.read_text()
    assert text.count("<table") >= 2 and "shapes-mini / backbone tiny / protocol trainable-text" in text
    imgs = re.findall(r'<img src="([^"]+)"', text)
    assert len(imgs) >= 4 and all((page.parent / src).is_file() for src in imgs)
    assert "gallery/shapes-mini__tiny__covmatch.png" in text
    assert "Published rows not measured here yet" in text and "mtt-vl" in text
    # The protocol matrix: both protocols as columns, random and covmatch as rows, at each size.
    assert "Protocol matrix: shapes-mini / backbone tiny" in text and text.count('<table class="matrix">') == 2
    assert "<th>frozen-text</th><th>trainable-text</th>" in text and "<td>covmatch iterations=2</td>" in text
    assert "how much of CovMatch's lead over LoRS is protocol" in text


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package 'chromium'); CI installs it")
def test_page_renders_in_headless_chromium(page, tmp_path):
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= 4, "some figures did not decode"
    assert "<table" in dom.stdout and dom.stdout.count('class="matrix"') == 2
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2400",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000


def test_a_clone_without_the_sets_keeps_the_committed_galleries(page, cache_dir, tmp_path):
    """Sets are not committed: regenerating the page where they are absent keeps each gallery, and says so."""
    clone = tmp_path / "results"
    shutil.copytree(page.parent, clone, ignore=shutil.ignore_patterns("artifacts"))
    gallery = clone / "gallery" / "shapes-mini__tiny__covmatch.png"
    before = gallery.read_bytes()
    assert main(["report", "--html", "--results", str(clone), "--cache-dir", str(cache_dir)]) == 0
    text = (clone / "index.html").read_text()
    assert "gallery/shapes-mini__tiny__covmatch.png" in text and gallery.read_bytes() == before
    assert "kept from an earlier report" in text
    shutil.rmtree(clone / "gallery")
    assert main(["report", "--html", "--results", str(clone), "--cache-dir", str(cache_dir)]) == 0
    assert "no gallery for shapes-mini / tiny / covmatch: its artifact is not under artifacts/" in (clone / "index.html").read_text()
