"""The shared trajectory code: TESLA's two-phase gradient against the exact unroll and a hand-written
"states held fixed" reference, mini-batch schemes, the step-size floor."""

import math

import pytest
import torch
from torch import nn
from torch.func import grad

from mmdd_bench.distilled import similarity_block
from mmdd_bench.encoders.heads import DualEncoder, ProjectionHead
from mmdd_bench.experts import split_towers, trainable_parameters
from mmdd_bench.trajectory import (
    clamp_step_sizes,
    cycling_batches,
    join_towers,
    matching_loss,
    student_loss,
    tesla_gradient,
    unroll,
)

SCALE = math.log(5.0)


def _problem(dropout=0.0, n=5):
    torch.manual_seed(0)
    image = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    model = DualEncoder(image, nn.Identity(), nn.Identity(), ProjectionHead(6, 5, dropout=dropout)).double()
    model.train()
    start = {k: v.detach().clone() for k, v in trainable_parameters(model).items()}
    g = torch.Generator().manual_seed(1)
    target = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in start.items()}
    images = torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64)
    text = torch.randn(n, 6, generator=g, dtype=torch.float64)
    sim = [torch.rand(n, generator=g, dtype=torch.float64) + 0.5, torch.randn(n, 2, generator=g, dtype=torch.float64),
           0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)]
    return model, start, target, images, text, sim


def _leaves(images, text, sim):
    x = images.clone().requires_grad_(True)
    t = text.clone().requires_grad_(True)
    lr_i = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    lr_t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    s = [p.clone().requires_grad_(True) for p in sim]
    return x, t, lr_i, lr_t, s


def _exact(model, start, target, images, text, sim, batches, loss, merge, seed):
    x, t, lr_i, lr_t, s = _leaves(images, text, sim)
    torch.manual_seed(seed)
    student = unroll(model, start, x, t, lr_i, lr_t, batches, SCALE, loss,
                     lambda idx: similarity_block(*s, torch.tensor(0.7, dtype=torch.float64), idx))
    matching_loss(student, start, target, merge).backward()
    return [x.grad, t.grad, lr_i.grad, lr_t.grad, *(p.grad for p in s)]


def _tesla(model, start, target, images, text, sim, batches, loss, merge, seed, replay=True):
    x, t, lr_i, lr_t, s = _leaves(images, text, sim)
    torch.manual_seed(seed)
    tesla_gradient(model, start, target, x, t, lr_i, lr_t, batches, SCALE, loss,
                   lambda idx: similarity_block(*s, torch.tensor(0.7, dtype=torch.float64), idx), s, merge,
                   replay_dropout=replay)
    return [x.grad, t.grad, lr_i.grad, lr_t.grad, *(p.grad for p in s)]


NAMES = ["images", "text", "lr_image", "lr_text", "sim_diag", "sim_left", "sim_right"]


@pytest.mark.parametrize("loss,merge,dropout", [("wbce", False, 0.0), ("infonce", True, 0.0), ("wbce", False, 0.5)])
def test_tesla_equals_the_exact_unroll_at_one_step(loss, merge, dropout):
    model, start, target, images, text, sim = _problem(dropout)
    batches = [torch.tensor([4, 0, 2, 1])]
    exact = _exact(model, start, target, images, text, sim, batches, loss, merge, seed=3)
    tesla = _tesla(model, start, target, images, text, sim, batches, loss, merge, seed=3)
    for name, a, b in zip(NAMES, exact, tesla, strict=True):
        assert b is not None and torch.allclose(a, b, rtol=1e-9, atol=1e-14), name
        assert a.abs().max() > 1e-8, f"{name}: the gradient should not vanish here"
    assert exact[0][3].abs().sum() == 0  # pair 3 is in no batch
    if dropout:  # phase 2 replays phase 1's dropout masks; drawing fresh ones (LoRS's code) gives another gradient
        fresh = _tesla(model, start, target, images, text, sim, batches, loss, merge, seed=3, replay=False)
        assert not torch.allclose(fresh[0], exact[0], rtol=1e-3)


def _states_held_fixed(model, start, target, images, text, sim, batches, loss):
    """The reference TESLA computes: theta_hat = theta_0 - eta sum_i g_i(theta_i; data), with every student
    state theta_i taken from a plain (graph-free) unroll and held constant."""
    x, t, lr_i, lr_t, s = _leaves(images, text, sim)
    scale = torch.tensor(0.7, dtype=torch.float64)
    step = grad(lambda ip, tp, xb, tb, sb: student_loss(model, ip, tp, xb, tb, SCALE, loss, sb), argnums=(0, 1))
    towers = split_towers(start)
    ip, tp = towers["image_encoder"], towers["text_head"]
    sum_i = {k: 0 for k in ip}
    sum_t = {k: 0 for k in tp}
    for idx in batches:
        gi, gt = step(ip, tp, x[idx], t[idx], similarity_block(*s, scale, idx))
        sum_i = {k: sum_i[k] + gi[k] for k in ip}
        sum_t = {k: sum_t[k] + gt[k] for k in tp}
        ip = {k: (v - lr_i * gi[k]).detach() for k, v in ip.items()}
        tp = {k: (v - lr_t * gt[k]).detach() for k, v in tp.items()}
    final = join_towers({k: v - lr_i * sum_i[k] for k, v in towers["image_encoder"].items()},
                        {k: v - lr_t * sum_t[k] for k, v in towers["text_head"].items()})
    matching_loss(final, start, target).backward()
    return [x.grad, t.grad, lr_i.grad, lr_t.grad, *(p.grad for p in s)]


def test_tesla_equals_the_states_held_fixed_reference_beyond_one_step():
    model, start, target, images, text, sim = _problem()
    batches = [torch.tensor([4, 0, 2]), torch.tensor([1, 3, 0]), torch.tensor([2, 4, 1])]
    reference = _states_held_fixed(model, start, target, images, text, sim, batches, "wbce")
    tesla = _tesla(model, start, target, images, text, sim, batches, "wbce", False, seed=0)
    for name, a, b in zip(NAMES, reference, tesla, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-14), name
    exact = _exact(model, start, target, images, text, sim, batches, "wbce", False, seed=0)
    assert not torch.allclose(exact[0], tesla[0], rtol=1e-3), "beyond one step TESLA is not the exact gradient"


def test_tesla_leaves_the_rng_where_phase_one_left_it():
    model, start, target, images, text, sim = _problem(dropout=0.5)
    batches = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    torch.manual_seed(9)
    for _ in batches:  # what phase 1 draws: one forward per step
        student_loss(model, *split_towers(start).values(), images[:2], text[:2], SCALE)
    after = torch.rand(3)
    _tesla(model, start, target, images, text, sim, batches, "wbce", False, seed=9)
    assert torch.equal(torch.rand(3), after)


def test_cycling_batches_do_not_repeat_a_pair_until_the_permutation_runs_out():
    gen = torch.Generator().manual_seed(0)
    batches = cycling_batches(10, 4, 5, gen, torch.device("cpu"))
    assert [len(b) for b in batches] == [4] * 5
    first = torch.cat(batches[:2])
    assert len(set(first.tolist())) == 8  # one permutation covers steps 1-2; 2 left over < 4: a fresh one
    assert len(set(torch.cat(batches[2:4]).tolist())) == 8
    assert all(len(b) == 3 for b in cycling_batches(3, 20, 2, gen, torch.device("cpu")))  # batch capped at N


def test_step_size_floor():
    lrs = [torch.tensor(-0.2), torch.tensor(0.5)]
    clamp_step_sizes(0.0, *lrs)
    assert lrs[0].item() == pytest.approx(-0.2)  # 0: no floor (parity studies)
    clamp_step_sizes(1e-3, *lrs)
    assert lrs[0].item() == pytest.approx(1e-3) and lrs[1].item() == pytest.approx(0.5)
