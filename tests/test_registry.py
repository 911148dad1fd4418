import sys
import textwrap

import pytest

from mmdd_bench.errors import UsageError
from mmdd_bench.method import METHODS, Method, get_method
from mmdd_bench.registry import Registry


def test_decorator_wildcard_and_did_you_mean():
    reg: Registry = Registry("thing")

    @reg.register("alpha-one")
    class A:
        pass

    reg.add_lazy("alpha-two", "collections:OrderedDict")
    reg.add("beta", object)
    assert reg.names("alpha-*") == ["alpha-one", "alpha-two"]
    assert reg.get("alpha-one") is A
    import collections

    assert reg.get("alpha-two") is collections.OrderedDict  # resolved lazily
    with pytest.raises(UsageError, match="Did you mean 'alpha-one'"):
        reg.get("alpha-on")
    with pytest.raises(UsageError, match="already registered"):
        reg.add("beta", int)


def test_builtin_methods_are_lazy_and_listed():
    assert {"random", "herding", "covmatch"} <= set(METHODS.names())
    assert METHODS.names("cov*") == ["covmatch"]
    with pytest.raises(UsageError, match="Did you mean 'herding'"):
        get_method("hearding")


def test_broken_lazy_reference_is_a_clear_error():
    reg: Registry = Registry("thing")
    reg.add_lazy("ghost", "no_such_module_xyz:Thing")
    with pytest.raises(UsageError, match="cannot be loaded"):
        reg.get("ghost")


def test_third_party_method_via_entry_point(tmp_path, monkeypatch):
    """A method in a package outside mmdd_bench, found through the 'mmdd_bench.methods' entry-point group
    of an installed distribution's metadata (a .dist-info folder on sys.path)."""
    pkg = tmp_path / "thirdparty_mmdd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from mmdd_bench.method import Method

        class FirstPairs(Method):
            name = "first-pairs"
            default_protocol = "frozen-text"
            description = "the first N pairs (third-party example)"

            def distill(self, ctx, params):
                import numpy as np
                from mmdd_bench.pairs import real_pairs
                return real_pairs(ctx, np.arange(ctx.size), self.name)
    '''))
    dist = tmp_path / "thirdparty_mmdd-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-mmdd\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmdd_bench.methods]\nfirst-pairs = thirdparty_mmdd:FirstPairs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("method", entry_point_group="mmdd_bench.methods")
    assert "first-pairs" in reg.names()
    cls = reg.get("first-pairs")
    assert issubclass(cls, Method) and cls.__module__ == "thirdparty_mmdd"
    sys.modules.pop("thirdparty_mmdd", None)
