"""``run --workers N``: local processes share one grid's cells, with the numbers one process gives."""

from __future__ import annotations

import json

import pytest
import torch

from mmdd_bench import api
from mmdd_bench.errors import UsageError
from mmdd_bench.plan import RunConfig


def _config(results, cache_dir, **kw) -> RunConfig:
    base = dict(methods=["random", "herding"], datasets=["shapes-mini"], sizes=[4], seeds=[0, 1], results_dir=results,
                cache_dir=cache_dir, device="cpu", overrides={"eval": {"epochs": "1", "n_students": "1"}})
    base.update(kw)
    return RunConfig(**base)


def _records(results) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}


def test_two_workers_do_each_cell_once_with_the_sequential_numbers(tmp_path, cache_dir, monkeypatch):
    """Two processes (one torch thread each on two cores) record every cell exactly once, and the metrics
    are bit-for-bit those of one process with one thread: where a cell runs does not change its numbers."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = api.run(_config(tmp_path / "alone", cache_dir))
    finally:
        torch.set_num_threads(threads)
    together = api.run(_config(tmp_path / "together", cache_dir), workers=2, log_every_s=None)
    assert alone.complete and together.complete
    assert [r.run_id for r in together.records] == [r.run_id for r in alone.records]  # the plan's order
    a, b = _records(tmp_path / "alone"), _records(tmp_path / "together")
    assert set(a) == set(b) and len(b) == 4
    for run_id in a:
        assert b[run_id]["metrics"] == a[run_id]["metrics"]
        assert b[run_id]["environment"]["torch_threads"] == 1
        assert b[run_id]["device"] == "cpu"


def test_workers_are_checked_before_any_work(tmp_path, cache_dir):
    with pytest.raises(UsageError, match="at least 1"):
        api.run(_config(tmp_path, cache_dir), workers=0)
    with pytest.raises(UsageError, match="local executor"):
        api.run(_config(tmp_path, cache_dir), executor="ray", workers=2)
    assert not (tmp_path / "runs").exists()


def test_workers_refuse_a_torchrun_rank(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="torchrun/SLURM"):
        api.run(_config(tmp_path, cache_dir), workers=2)


def test_a_bad_grid_fails_in_the_parent_with_nothing_written(tmp_path, cache_dir):
    """A usage error is raised before a worker starts, so it reads like a one-process run's."""
    with pytest.raises(UsageError):
        api.run(_config(tmp_path, cache_dir, methods=["no-such-method"]), workers=2)
    assert not (tmp_path / "runs").exists()


def test_the_cli_refuses_zero_workers_with_exit_2(tmp_path, cache_dir, capsys):
    from mmdd_bench.cli import main

    code = main(["run", "--methods", "random", "--datasets", "shapes-mini", "--sizes", "4", "--workers", "0",
                 "--results", str(tmp_path / "res"), "--cache-dir", str(cache_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "workers must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "res" / "runs").exists()


def _third_party(tmp_path, monkeypatch, body: str, name: str = "bad-data", cls: str = "BadData") -> None:
    """A method package with an entry point, visible to this process and to the spawned workers."""
    import textwrap

    from mmdd_bench.method import METHODS

    pkg = tmp_path / "site" / "workers_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    dist = tmp_path / "site" / "workers_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: workers-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mmdd_bench.methods]\n{name} = workers_plugin:{cls}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)


_BREAKING = {  # a distill body, the error the parent must raise, and its message
    "bad-data": ('raise DataError("the images of this fixture are unreadable: regenerate them")', "DataError",
                 "unreadable: regenerate them"),  # what stops a one-process run
    "dies": ("os._exit(9)", "MMDDError", "a worker process died"),  # in life: the OOM killer; not a hang
}


@pytest.mark.parametrize("name", sorted(_BREAKING))
def test_a_breaking_worker_stops_the_run_with_its_message(tmp_path, cache_dir, monkeypatch, name):
    """A worker's error (or its death) is raised in the parent with a message; nothing half-done is recorded."""
    import sys

    from mmdd_bench import errors

    body, error, message = _BREAKING[name]
    _third_party(tmp_path, monkeypatch, f'''
        import os
        from mmdd_bench.errors import DataError
        from mmdd_bench.method import Method

        class Breaks(Method):
            name = "{name}"
            default_protocol = "trainable-text"
            description = "breaks its worker (test)"

            def distill(self, ctx, params):
                {body}
    ''', name=name, cls="Breaks")
    try:
        with pytest.raises(getattr(errors, error), match=message):
            api.run(_config(tmp_path / "res", cache_dir, methods=[name]), workers=2, log_every_s=None)
    finally:
        sys.modules.pop("workers_plugin", None)
    assert not list((tmp_path / "res" / "runs").glob("*.json"))


def test_a_method_defined_in_main_is_refused_before_workers_start(tmp_path, cache_dir, monkeypatch):
    from mmdd_bench.method import METHODS
    from mmdd_bench.methods.random_subset import RandomSubset

    class Notebook(RandomSubset):
        name = "notebook-random"

    Notebook.__module__ = "__main__"
    monkeypatch.setitem(METHODS._entries, "notebook-random", Notebook)
    with pytest.raises(UsageError, match="worker processes cannot import"):
        api.run(_config(tmp_path / "res", cache_dir, methods=["notebook-random"]), workers=2)
    assert not (tmp_path / "res" / "runs").exists()
