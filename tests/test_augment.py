"""The batched paper augmentation against torchvision's per-image transforms it replaces."""

import dataclasses

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as tvf

from mmdd_bench.data.augment import (
    AUGMENT_ID,
    BatchAugment,
    RealAugment,
    apply_op,
    crop_boxes,
    randaugment_ops,
    resized_crop_flip,
)


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    # Smooth content plus noise, so that geometric and colour ops all change something.
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, size)
    base = (ramp[None, :] + ramp[:, None] / 2)[None, None].expand(n, 3, size, size)
    return (base + 55 * torch.rand(n, 3, size, size, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_crop_boxes_follow_torchvision_rule():
    torch.manual_seed(0)
    height, width, n = 40, 56, 4000
    boxes = crop_boxes(n, height, width)
    top, left, h, w = boxes.unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all())
    area = h * w / (height * width)
    assert area.min() >= 0.45 and area.max() <= 1.0  # scale 0.5-1 up to rounding
    ratio = w / h
    assert ratio.min() >= 0.7 and ratio.max() <= 1.4
    # Same distribution as torchvision's get_params (the per-image rule it vectorises).
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.zeros(3, height, width), [0.5, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float32)
    ref_area = ref[:, 2] * ref[:, 3] / (height * width)
    assert abs(float(area.mean() - ref_area.mean())) < 0.01
    assert abs(float(ratio.log().std() - (ref[:, 3] / ref[:, 2]).log().std())) < 0.02
    assert abs(float(top.mean() - ref[:, 0].mean())) < 0.5 and abs(float(left.mean() - ref[:, 1].mean())) < 0.5


def test_crop_and_flip_resample_like_torchvision():
    images = _images(3, size=32)
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 3)
    # The whole image at its own size is the identity, and its flip an exact mirror.
    assert torch.equal(resized_crop_flip(images, full, torch.zeros(3, dtype=torch.bool), 32), images)
    assert torch.equal(resized_crop_flip(images, full, torch.ones(3, dtype=torch.bool), 32), images.flip(-1))
    box = torch.tensor([[4.0, 6.0, 20.0, 24.0]] * 3)
    ours = resized_crop_flip(images, box, torch.tensor([False, True, False]), 32)
    # torchvision's float path computes the same thing; its uint8 path rounds between the two passes.
    ref = tvf.resized_crop(images.float(), 4, 6, 20, 24, [32, 32], interpolation=InterpolationMode.BICUBIC,
                           antialias=True).round().clamp(0, 255)
    ref[1] = ref[1].flip(-1)
    assert (ours.float() - ref).abs().max() <= 1
    ref_uint8 = tvf.resized_crop(images, 4, 6, 20, 24, [32, 32], interpolation=InterpolationMode.BICUBIC, antialias=True)
    ref_uint8[1] = ref_uint8[1].flip(-1)
    assert (ours.float() - ref_uint8.float()).abs().mean() < 0.5
    # Shrinking (a store larger than the working size) is antialiased like torchvision's resize too.
    small = resized_crop_flip(images, full, torch.zeros(3, dtype=torch.bool), 12)
    ref_small = tvf.resize(images.float(), [12, 12], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert (small.float() - ref_small.round().clamp(0, 255)).abs().max() <= 1


@pytest.mark.parametrize("name", [op[0] for op in randaugment_ops(32, 32)])
def test_each_randaugment_op_matches_torchvision(name):
    """Our op table and calls against torchvision's own RandAugment application, both signs, per image."""
    ops = {op[0]: op for op in randaugment_ops(32, 32)}
    _, magnitude, signed = ops[name]
    reference = v2.RandAugment(num_ops=2, magnitude=5)
    space = reference._AUGMENTATION_SPACE[name][0](31, 32, 32)  # torchvision's private table (pinned version)
    expected_magnitude = 0.0 if space is None else float(space[5])
    assert (magnitude or 0.0) == pytest.approx(expected_magnitude)
    images = _images(4, size=32, seed=1)
    for value in ((expected_magnitude, -expected_magnitude) if signed else (expected_magnitude,)):
        batched = apply_op(images, name, value)
        for i in range(len(images)):  # batched call == per-image torchvision call
            ref = reference._apply_image_or_video_transform(images[i], name, value, interpolation=reference.interpolation,
                                                            fill=reference._fill)
            assert torch.equal(batched[i], ref), (name, value, i)


def test_batch_augment_is_seeded_and_draws_per_image():
    images = _images(64, size=32)
    augment = BatchAugment(32)
    torch.manual_seed(3)
    a = augment(images)
    torch.manual_seed(3)
    b = augment(images)
    torch.manual_seed(4)
    c = augment(images)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Every image gets its own draw: identical inputs come out different.
    same = augment(images[:1].expand(16, -1, -1, -1).contiguous())
    assert len({tuple(x.flatten()[:64].tolist()) for x in same}) > 8


def test_real_augment_identity_only_when_augmenting(mini):
    assert RealAugment(mini, 32).identity is None  # shapes captions say left/right: no augmentation
    images = _images(2)
    assert RealAugment(mini, 32)(images) is images
    photos = dataclasses.replace(mini, hflip=True)
    assert RealAugment(photos, 32).identity == AUGMENT_ID


def test_augmentation_version_is_part_of_real_data_identities_only(tmp_path, cache_dir):
    from conftest import write_flickr

    from mmdd_bench.plan import Cell, Planner, RunConfig
    from mmdd_bench.resources import Resources

    write_flickr(tmp_path / "data")
    planner = Planner(RunConfig(methods=["random"], datasets=["flickr30k", "shapes-mini"], sizes=[2], seeds=[0],
                                results_dir=tmp_path / "res", cache_dir=cache_dir, backbone="tiny",
                                data_root=str(tmp_path / "data"), device="cpu"),
                      Resources(str(tmp_path / "data"), cache_dir, "tiny"))
    flickr = planner.cell_plan(Cell("flickr30k", "random", 2, 0, ("frozen-text",))).distill_spec
    shapes = planner.cell_plan(Cell("shapes-mini", "random", 2, 0, ("frozen-text",))).distill_spec
    assert flickr["augment"] == AUGMENT_ID  # bumping AUGMENT_ID gives real-data results new ids
    assert "augment" not in shapes  # the embedded runs keep their committed ids
