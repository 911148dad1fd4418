"""Data flows one way: dataset -> method -> distilled set -> protocol -> metrics -> record -> reports.
No module reaches back up; a method never evaluates, a protocol never distills."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mmdd_bench": ROOT / "mmdd_bench", "mmdd_bench.methods": ROOT / "methods"}


def modules():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path, path.name == "__init__.py"


def imports(name: str, path: Path, is_package: bool) -> set[str]:
    """Every mmdd_bench module a file imports (top level or inside functions), relative imports resolved."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("mmdd_bench")}


# (importer prefix, forbidden prefixes): the arrows that must not exist.
RULES = [
    ("mmdd_bench.method", ["mmdd_bench.protocols", "mmdd_bench.runner", "mmdd_bench.plan", "mmdd_bench.reports"]),
    ("mmdd_bench.methods", ["mmdd_bench.protocols", "mmdd_bench.runner", "mmdd_bench.plan", "mmdd_bench.records",
                            "mmdd_bench.reports", "mmdd_bench.cli", "mmdd_bench.api", "mmdd_bench.store"]),
    ("mmdd_bench.protocols", ["mmdd_bench.methods", "mmdd_bench.experts", "mmdd_bench.runner", "mmdd_bench.plan",
                              "mmdd_bench.reports", "mmdd_bench.cli", "mmdd_bench.api"]),
    ("mmdd_bench.data", ["mmdd_bench.encoders", "mmdd_bench.method", "mmdd_bench.protocols", "mmdd_bench.runner",
                         "mmdd_bench.reports"]),
    ("mmdd_bench.encoders", ["mmdd_bench.method", "mmdd_bench.protocols", "mmdd_bench.runner", "mmdd_bench.reports"]),
    ("mmdd_bench.features", ["mmdd_bench.protocols", "mmdd_bench.method"]),
    ("mmdd_bench.experts", ["mmdd_bench.protocols", "mmdd_bench.runner", "mmdd_bench.reports"]),
    ("mmdd_bench.metrics", ["mmdd_bench."]),
    ("mmdd_bench.records", ["mmdd_bench.runner", "mmdd_bench.plan", "mmdd_bench.reports", "mmdd_bench.cli"]),
    ("mmdd_bench.reports", ["mmdd_bench.runner", "mmdd_bench.plan", "mmdd_bench.cli", "mmdd_bench.api",
                            "mmdd_bench.methods"]),
    ("mmdd_bench.reports.leaderboard", ["mmdd_bench.reports.plots", "mmdd_bench.reports.html",
                                        "mmdd_bench.reports.writer"]),
    ("mmdd_bench.reports.html", ["mmdd_bench.reports.writer"]),
    ("mmdd_bench.reports.plots", ["mmdd_bench.reports.writer", "mmdd_bench.reports.html"]),
]

ALL = list(modules())


@pytest.mark.parametrize("importer,forbidden", RULES, ids=[r[0] for r in RULES])
def test_no_arrow_points_back_up(importer, forbidden):
    bad = []
    for name, path, is_package in ALL:
        if name == importer or name.startswith(importer + ".") and importer != "mmdd_bench.method":
            for target in imports(name, path, is_package):
                if target != name and any(target == f or target.startswith(f) for f in forbidden):
                    bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_methods_never_import_each_other():
    """Shared pieces live in shared modules (``pairs``, ``features``, ...), not in another method's file."""
    bad = []
    for name, path, is_package in ALL:
        if name.startswith("mmdd_bench.methods.") and not is_package:
            bad += [f"{name} imports {t}" for t in imports(name, path, is_package)
                    if t.startswith("mmdd_bench.methods.") and not t.startswith(name)]
    assert not bad, "\n".join(bad)


def test_the_rules_see_the_modules_they_name():
    names = {name for name, _, _ in ALL}
    for importer, _ in RULES:
        assert any(n == importer or n.startswith(importer + ".") for n in names), importer
