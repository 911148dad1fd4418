import numpy as np
import pytest
import torch

from mmdd_bench.metrics import METRIC_NAMES, retrieval_metrics


def brute_force(sim: np.ndarray, img2txt: list[list[int]]) -> dict[str, float]:
    """Stable descending sort per query (ties broken by index), written as plainly as possible."""
    n_img, n_txt = sim.shape
    txt2img = {c: i for i, caps in enumerate(img2txt) for c in caps}
    i2t = []
    for i in range(n_img):
        order = sorted(range(n_txt), key=lambda j: (-sim[i, j], j))
        i2t.append(min(order.index(c) for c in img2txt[i]))
    t2i = []
    for j in range(n_txt):
        order = sorted(range(n_img), key=lambda i: (-sim[i, j], i))
        t2i.append(order.index(txt2img[j]))
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_R@{k}"] = 100 * np.mean([r < k for r in i2t])
    for k in (1, 5, 10):
        out[f"t2i_R@{k}"] = 100 * np.mean([r < k for r in t2i])
    out["r_mean"] = np.mean([out[m] for m in METRIC_NAMES[:-1]])
    return out


def test_hand_case_perfect_and_inverted():
    img2txt = [[0, 1], [2, 3]]
    perfect = np.array([[1.0, 0.9, 0.0, 0.1], [0.0, 0.2, 1.0, 0.8]])
    m = retrieval_metrics(perfect, img2txt)
    assert all(m[k] == 100.0 for k in METRIC_NAMES)
    inverted = -perfect
    m = retrieval_metrics(inverted, img2txt)
    assert m["i2t_R@1"] == 0.0 and m["t2i_R@1"] == 0.0
    assert m["i2t_R@5"] == 100.0  # only 4 captions: everything is within the top 5


def test_i2t_takes_best_caption_and_t2i_counts_captions():
    # image 0 has 3 captions; only caption 2 is ranked first for it
    img2txt = [[0, 1, 2], [3]]
    sim = np.array([[0.1, 0.2, 0.9, 0.5], [0.0, 0.0, 0.0, 1.0]])
    m = retrieval_metrics(sim, img2txt)
    assert m["i2t_R@1"] == 100.0
    # t2i: caption 0 -> image 0 scores 0.1 > 0.0 ok; caption 1 ok; caption 2 ok; caption 3 -> image 1 ok
    assert m["t2i_R@1"] == 100.0
    sim[1, 0] = 0.5  # caption 0 now prefers image 1
    m = retrieval_metrics(sim, img2txt)
    assert m["t2i_R@1"] == pytest.approx(75.0)  # denominator is the number of captions (4), not images


def test_ties_resolve_by_index():
    sim = np.zeros((2, 2))
    m = retrieval_metrics(sim, [[0], [1]])
    # all tied: image 0 ranks caption 0 first (lower index), image 1 ranks caption 1 second
    assert m["i2t_R@1"] == 50.0 and m["t2i_R@1"] == 50.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force_variable_captions(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 7, size=30)  # 1 to 6 captions per image, like COCO's 6-caption images
    img2txt, start = [], 0
    for c in counts:
        img2txt.append(list(range(start, start + c)))
        start += c
    sim = rng.integers(0, 5, size=(30, start)).astype(np.float32)  # many ties on purpose
    fast = retrieval_metrics(torch.from_numpy(sim), img2txt)
    slow = brute_force(sim, img2txt)
    for k in METRIC_NAMES:
        assert fast[k] == pytest.approx(slow[k], abs=1e-4), k


def test_chunking_does_not_change_results():
    from mmdd_bench.metrics import i2t_ranks, t2i_ranks

    rng = np.random.default_rng(3)
    sim = torch.from_numpy(rng.normal(size=(50, 250)).astype(np.float32))
    img2txt = [list(range(5 * i, 5 * i + 5)) for i in range(50)]
    txt2img = torch.arange(250) // 5
    assert torch.equal(i2t_ranks(sim, img2txt, chunk=7), i2t_ranks(sim, img2txt, chunk=1000))
    assert torch.equal(t2i_ranks(sim, txt2img, chunk=13), t2i_ranks(sim, txt2img, chunk=1000))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(3), [[0]])
    with pytest.raises(ValueError, match="rows"):
        retrieval_metrics(np.zeros((2, 2)), [[0]])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]), [[0]])
    with pytest.raises(ValueError, match="two images"):
        retrieval_metrics(np.zeros((2, 2)), [[0], [0]])
    with pytest.raises(ValueError, match="no image"):
        retrieval_metrics(np.zeros((2, 3)), [[0], [1]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recalls_are_exact_multiples_of_100_over_n(seed):
    """Hits are counted as integers and divided in float64: 33 hits of 50 give exactly 66.0, not 66.00000262."""
    rng = np.random.default_rng(seed)
    n = 50
    sim = rng.normal(size=(n, n)).astype(np.float32)
    m = retrieval_metrics(sim, [[i] for i in range(n)])
    ref = brute_force(sim, [[i] for i in range(n)])
    for k in METRIC_NAMES[:-1]:
        hits = round(ref[k] * n / 100)
        assert m[k] == 100.0 * hits / n, k  # exact equality, not approx
    assert m["r_mean"] == sum(m[k] for k in METRIC_NAMES[:-1]) / 6


def test_two_thirds_recall_is_the_nearest_double():
    # 2 of 3 images retrieve their caption first: 66.666... to the last bit, and 1/3 of the captions likewise.
    sim = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    m = retrieval_metrics(sim, [[0], [1], [2]])
    assert m["i2t_R@1"] == 200.0 / 3 and type(m["i2t_R@1"]) is float
