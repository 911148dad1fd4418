import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from mmdd_bench.errors import UsageError
from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.methods.covmatch import CovMatchParams, covmatch_loss, cross_covariance
from mmdd_bench.params import apply_overrides, check_ranges


def naive_cross_covariance(hv, hl):
    b, dv, dl = hv.shape[0], hv.shape[1], hl.shape[1]
    mv, ml = hv.mean(0), hl.mean(0)
    out = torch.zeros(dv, dl, dtype=torch.float64)
    for i in range(dv):
        for j in range(dl):
            out[i, j] = sum((hv[n, i] - mv[i]) * (hl[n, j] - ml[j]) for n in range(b)) / (b - 1)
    return out


def test_cross_covariance_against_naive_loop():
    g = torch.Generator().manual_seed(0)
    hv, hl = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(cross_covariance(hv, hl), naive_cross_covariance(hv, hl))


def test_loss_against_naive_formula():
    g = torch.Generator().manual_seed(1)
    real = [torch.randn(9, d, generator=g, dtype=torch.float64) for d in (4, 3, 5, 5)]
    syn = [torch.randn(6, d, generator=g, dtype=torch.float64) for d in (4, 3, 5, 5)]
    rho, lam = 2.0, 0.3
    cov = ((rho * naive_cross_covariance(real[0], real[1]) - naive_cross_covariance(syn[0], syn[1])) ** 2).sum()
    means = ((real[2].mean(0) - syn[2].mean(0)) ** 2).sum() + ((real[3].mean(0) - syn[3].mean(0)) ** 2).sum()
    assert torch.allclose(covmatch_loss(real, syn, rho, lam), cov + lam * means)
    assert torch.allclose(covmatch_loss(real, syn, rho, 0.0), cov)


def test_zero_loss_when_synthetic_equals_real_with_rho_one():
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(8, d, generator=g) for d in (4, 3, 5, 5)]
    assert covmatch_loss(feats, [f.clone() for f in feats], rho=1.0, lam=0.5).item() == pytest.approx(0.0, abs=1e-10)
    assert covmatch_loss(feats, feats, rho=2.0, lam=0.5).item() > 0


def test_gradients_reach_synthetic_data_not_real_data(tiny, mini):
    model = tiny.dual_encoder(text_trainable=True, image_head=True, seed=0)
    real_imgs = torch.randn(6, 3, 32, 32, requires_grad=True)
    ids, mask = tiny.tokenize(mini.train.captions[:6])
    with torch.no_grad():
        real = (*model.image_features(real_imgs), *model.text_features_from_tokens(ids, mask))
    syn_imgs = torch.randn(4, 3, 32, 32, requires_grad=True)
    syn_text = tiny.text_encoder.embed_tokens(ids[:4]).detach().clone().requires_grad_(True)
    hv, gv = model.image_features(syn_imgs)
    hl, gl = model.text_features_from_embeddings(syn_text, mask[:4])
    loss = covmatch_loss((real[0], real[2], real[1], real[3]), (hv, hl, gv, gl), 2.0, 0.1)
    loss.backward(inputs=[syn_imgs, syn_text])
    assert syn_imgs.grad is not None and syn_imgs.grad.abs().sum() > 0
    assert syn_text.grad is not None and syn_text.grad.abs().sum() > 0
    assert real_imgs.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_online_model_reset_restores_pretrained_weights_exactly(tiny):
    first = tiny.dual_encoder(text_trainable=True, image_head=True, seed=5)
    pristine = {k: v.clone() for k, v in first.state_dict().items()}
    opt = torch.optim.SGD(first.parameters(), lr=0.5)
    ids, mask = tiny.tokenize(["a red circle", "two blue squares"])
    _, g_v = first.image_features(torch.randn(2, 3, 32, 32))
    _, g_l = first.text_features_from_tokens(ids, mask)
    (g_v.sum() + g_l.sum()).backward()
    opt.step()
    assert any(not torch.equal(pristine[k], v) for k, v in first.state_dict().items())
    reset = tiny.dual_encoder(text_trainable=True, image_head=True, seed=5)
    for k, v in reset.state_dict().items():
        assert torch.equal(pristine[k], v), k
    # the backbone's own pretrained copy was not touched by training the online model
    for k, v in tiny.text_encoder.state_dict().items():
        assert torch.equal(v, reset.text_encoder.state_dict()[k])


def test_distill_is_deterministic_and_moves_the_data(tiny, mini, cache_dir):
    m = get_method("covmatch")
    params = apply_overrides(m.default_params(8, "shapes-mini"), {"iterations": 4, "reset_every": 2})

    def run():
        return m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), params)

    a, b = run(), run()
    assert torch.equal(a.images, b.images) and torch.equal(a.text_embeddings, b.text_embeddings)
    start = apply_overrides(params, {"iterations": 0})
    s = m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), start)
    assert not torch.equal(a.images, s.images) and not torch.equal(a.text_embeddings, s.text_embeddings)
    assert a.text_kind == "token_embeddings" and a.encoder_id == tiny.text_encoder_id
    assert a.meta["timings"]["s_per_iteration"] > 0


def test_a_snapshot_is_the_set_a_shorter_run_returns(tiny, mini, cache_dir):
    """A study's snapshot after k iterations (DistillContext.snapshot_iterations) is the very set of a k-iteration run,
    and asking for one leaves the run's own set alone."""
    m = get_method("covmatch")
    params = apply_overrides(m.default_params(8, "shapes-mini"), {"iterations": 4, "reset_every": 2})
    ctx = DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir, snapshot_iterations=frozenset({3}))
    whole = m.distill(ctx, params)
    plain = m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), params)
    short = m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir),
                      dataclasses.replace(params, iterations=3))
    assert set(ctx.snapshots) == {3}
    assert torch.equal(whole.images, plain.images) and torch.equal(whole.text_embeddings, plain.text_embeddings)
    snap = ctx.snapshots[3]
    assert torch.equal(snap.images, short.images) and torch.equal(snap.text_embeddings, short.text_embeddings)
    assert not torch.equal(snap.images, whole.images)
    assert snap.meta["timings"]["iterations"] == 3


def test_speed_switches_run_and_count_in_identity_only_when_on(tiny, mini, cache_dir):
    from mmdd_bench.params import identity_dict

    m = get_method("covmatch")
    base = apply_overrides(m.default_params(8, "shapes-mini"), {"iterations": 2, "reset_every": 2})
    fast = apply_overrides(base, {"amp": "bf16", "channels_last": "true"})
    assert "amp" not in identity_dict(base) and "channels_last" not in identity_dict(base)  # old ids unchanged
    assert identity_dict(fast)["amp"] == "bf16" and identity_dict(fast)["channels_last"] is True

    def run(params):
        return m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), params)

    plain, quick = run(base), run(fast)
    assert torch.isfinite(quick.images).all() and torch.isfinite(quick.text_embeddings).all()
    assert quick.images.dtype == torch.float32  # the learned data stays float32 under autocast
    assert not torch.equal(plain.images, quick.images)  # bf16 numerics differ ...
    assert (plain.images - quick.images).abs().max() < 0.1  # ... but only slightly
    with pytest.raises(UsageError, match="amp"):
        apply_overrides(base, {"amp": "fp8"})


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on CPU needs a C++ compiler; none on PATH")
def test_compile_switch_matches_eager_and_compiles_once_across_resets(tiny, mini, cache_dir):
    """compile=true: same result as eager up to float rounding, and the fresh online model that every reset
    builds reuses the compiled graphs instead of recompiling (compiles per run, not per reset)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    m = get_method("covmatch")
    base = apply_overrides(m.default_params(8, "shapes-mini"), {"iterations": 3, "reset_every": 1})
    compiled = apply_overrides(base, {"compile": "true"})

    def run(params):
        return m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), params)

    eager = run(base)
    torch._dynamo.reset()
    counters.clear()
    fast = run(compiled)
    # One graph per way the loop calls the encoder (no-grad eval on real data, eval with grad on the
    # synthetic set, train mode for the online update): 3, not 3 per reset (3 resets would make 9).
    assert counters["stats"]["unique_graphs"] == 3
    assert torch.allclose(eager.images, fast.images, atol=1e-4)
    assert torch.allclose(eager.text_embeddings, fast.text_embeddings, atol=1e-4)


def test_compile_without_a_compiler_is_a_clear_error(tiny, mini, cache_dir, monkeypatch):
    import mmdd_bench.accel

    monkeypatch.setattr(mmdd_bench.accel.shutil, "which", lambda name: None)
    m = get_method("covmatch")
    params = apply_overrides(m.default_params(8, "shapes-mini"), {"iterations": 1, "compile": "true"})
    with pytest.raises(UsageError, match="C\\+\\+ compiler"):
        m.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), params)


def test_published_defaults_per_size():
    m = get_method("covmatch")
    p100, p200, p500 = (m.default_params(n, "flickr30k") for n in (100, 200, 500))
    assert (p100.rho, p100.lam, p100.iterations) == (2.0, 0.1, 10000)
    assert (p200.rho, p200.lam, p200.iterations) == (1.0, 0.1, 10000)
    assert (p500.rho, p500.lam, p500.iterations) == (1.0, 0.5, 20000)
    assert (p100.lr_images, p100.lr_text, p100.momentum_syn, p100.real_batch, p100.syn_batch, p100.reset_every) == (1.0, 1.0, 0.5, 128, 256, 50)
    assert apply_overrides(p100, {"lambda": "0"}).lam == 0.0
    assert isinstance(p100, CovMatchParams)


def test_cross_protocol_token_embeddings_under_frozen_text(tiny, mini, cache_dir):
    from mmdd_bench.protocols import get_protocol

    m = get_method("covmatch")
    params = apply_overrides(m.default_params(8, "shapes-mini"), {"iterations": 1})
    d = m.distill(DistillContext(mini, tiny, 8, 0, torch.device("cpu"), cache_dir), params)
    frozen = get_protocol("frozen-text")
    ep = apply_overrides(frozen.default_params("shapes-mini"), {"epochs": 1, "n_students": 1})
    result = frozen.evaluate(d, mini, tiny, ep, 0, torch.device("cpu"), cache_dir)
    assert 0 <= result.mean["r_mean"] <= 100


@pytest.mark.slow
def test_covmatch_on_paper_architecture_and_flickr_layout(tmp_path, cache_dir):
    """The real path end to end at toy scale: Flickr-format files, paper augmentation, nfnet_l0 + BERT-base
    (random weights, 64 px), token-embedding text, then the trainable-text protocol."""
    from conftest import write_flickr

    from mmdd_bench.data import load_dataset
    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.protocols import get_protocol

    write_flickr(tmp_path)
    ds = load_dataset("flickr30k", tmp_path, cache_dir)
    bb = build_backbone("paper", cache_dir, pretrained=False, image_size=64)
    m = get_method("covmatch")
    params = apply_overrides(m.default_params(2, "flickr30k"), {"iterations": 2, "real_batch": 4})
    d = m.distill(DistillContext(ds, bb, 2, 0, torch.device("cpu"), cache_dir), params)
    assert d.text_embeddings.shape[0] == 2 and d.text_embeddings.shape[2] == 768
    p = get_protocol("trainable-text")
    result = p.evaluate(d, ds, bb, apply_overrides(p.default_params("flickr30k"), {"epochs": 1, "n_students": 1}),
                        0, torch.device("cpu"), cache_dir)
    assert set(result.mean) >= {"i2t_R@1", "t2i_R@10", "r_mean"}


def load_script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_online_study_variants_are_valid_covmatch_settings():
    """scripts/study_covmatch_online.py's variants must name real CovMatch fields with values its checks accept."""
    study = load_script("study_covmatch_online")
    method = get_method("covmatch")
    table = study.variants((0.003, 0.03), 40)
    for _, change in table.values():
        params = dataclasses.replace(method.default_params(100, "scenes"), **change)
        check_ranges(params, "covmatch")
    # The paper's proportion on the embedded protocol: the protocol's lrs, a reset every half student path.
    _, change = table["protocol-lrs-reset20"]
    assert change == {"lr_encoder": 0.003, "lr_projection": 0.03, "reset_every": 20}
    assert table["none"][1] == {"online_update": False}
    # The step-size probe scales the embedded default's synthetic lrs, nothing else.
    default, change = method.default_params(200, "scenes"), table["protocol-lrs-syn-x0.7"][1]
    assert (change["lr_images"], change["lr_text"]) == (default.lr_images * 0.7, default.lr_text * 0.7)
    assert table["paper-lrs"][1] == {"lr_encoder": 0.01, "lr_projection": 0.1}


def test_the_embedded_online_model_trains_at_the_embedded_students_lrs():
    """CovMatch's embedded online lrs were chosen as the protocols' student lrs (methods/covmatch.py): if one
    moves, the other must, or the online model again trains unlike the students that score the set."""
    from mmdd_bench.methods.covmatch import EMBEDDED_ONLINE_LRS
    from mmdd_bench.protocols.base import EMBEDDED_DEFAULTS

    assert EMBEDDED_ONLINE_LRS == (EMBEDDED_DEFAULTS["lr_encoder"], EMBEDDED_DEFAULTS["lr_projection"])
    for dataset in ("shapes", "scenes"):
        params = get_method("covmatch").default_params(100, dataset)
        assert (params.lr_encoder, params.lr_projection) == EMBEDDED_ONLINE_LRS
    paper = get_method("covmatch").default_params(100, "flickr30k")
    assert (paper.lr_encoder, paper.lr_projection) == (None, None)  # the backbone's: the paper's 0.01 / 0.1


def test_the_gradient_study_measures_covmatchs_own_first_step(tiny, mini, cache_dir):
    """scripts/covmatch_online_gradients.py starts from CovMatch's own set and online model (the method's
    builders): at step 0 its loss is the one CovMatch records at its first reset and the online model equals the
    pretrained one exactly; one InfoNCE step later the two differ."""
    summary = load_script("covmatch_online_gradients").measure(mini, tiny, cache_dir, 8, 3, 2)
    first, second = summary["per_step"]
    assert (first["loss"], first["grad_images"], first["grad_text"]) == (
        first["pretrained_loss"], first["pretrained_grad_images"], first["pretrained_grad_text"])
    assert second["grad_text"] != second["pretrained_grad_text"]
    method = get_method("covmatch")
    params = apply_overrides(method.default_params(8, "shapes-mini"), {"iterations": 1})
    own = method.distill(DistillContext(mini, tiny, 8, 3, torch.device("cpu"), cache_dir), params)
    assert own.meta["loss_at_resets"][0] == pytest.approx(first["loss"], abs=1e-4)
