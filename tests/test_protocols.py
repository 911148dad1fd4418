import dataclasses
import shutil

import pytest
import torch

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.errors import UsageError
from mmdd_bench.params import apply_overrides
from mmdd_bench.protocols import PROTOCOLS, get_protocol

CPU = torch.device("cpu")


def quick(protocol, **kw):
    return apply_overrides(protocol.default_params("shapes-mini"), {"epochs": 2, "n_students": 2, **kw})


def real_set(mini, tiny, cache_dir, n=16):
    from mmdd_bench.data.images import ImageStore

    store = ImageStore(mini.train.image_paths, tiny.image_size, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    pairs = list(range(0, 5 * n, 5))
    return DistilledSet(store.batch(mini.train.pair_image[pairs]), "captions", captions=[mini.train.captions[i] for i in pairs])


def test_protocols_are_registered_and_versioned():
    assert PROTOCOLS.names() == ["frozen-encoders", "frozen-text", "frozen-text-mtt", "trainable-text"]
    for name in PROTOCOLS.names():
        p = get_protocol(name)
        assert p.version and p.accepts


def test_embedded_defaults_are_smaller_and_paper_defaults_published():
    p = get_protocol("trainable-text")
    paper = p.default_params("flickr30k")
    assert (paper.epochs, paper.n_students, paper.batch_size, paper.momentum, paper.weight_decay) == (100, 5, 128, 0.9, 5e-4)
    assert p.default_params("shapes").epochs < 100


@pytest.mark.parametrize("name", ["trainable-text", "frozen-text"])
def test_evaluate_is_deterministic_and_reports_mean_std(name, mini, tiny, cache_dir):
    p = get_protocol(name)
    d = real_set(mini, tiny, cache_dir)
    a = p.evaluate(d, mini, tiny, quick(p), 0, CPU, cache_dir)
    b = p.evaluate(d, mini, tiny, quick(p), 0, CPU, cache_dir)
    assert a.per_student == b.per_student
    assert len(a.per_student) == 2 and a.per_student[0] != a.per_student[1]  # students differ by seed
    assert a.mean["r_mean"] == pytest.approx(sum(s["r_mean"] for s in a.per_student) / 2)
    assert a.std["r_mean"] > 0


def test_val_selection_never_reads_test(mini, tiny, cache_dir, monkeypatch):
    p = get_protocol("frozen-text")
    seen = []
    original = p.score

    def spy(model, split, *args, **kw):
        seen.append(split.fingerprint)
        return original(model, split, *args, **kw)

    monkeypatch.setattr(p, "score", spy)
    result = p.evaluate(real_set(mini, tiny, cache_dir), mini, tiny, quick(p, epochs=4, val_every=2, selection="val", n_students=1),
                        0, CPU, cache_dir)
    assert seen[:-1] == [mini.val.fingerprint] * 2 and seen[-1] == mini.test.fingerprint
    assert result.selected_epochs[0] in (2, 4)


def test_trainable_text_rejects_sentence_embeddings(mini, tiny, cache_dir):
    d = DistilledSet(torch.zeros(2, 3, 32, 32), "sentence_embeddings", text_embeddings=torch.zeros(2, tiny.text_dim),
                     encoder_id=tiny.text_encoder_id)
    p = get_protocol("trainable-text")
    with pytest.raises(UsageError, match="accepts captions, token_embeddings"):
        p.evaluate(d, mini, tiny, quick(p), 0, CPU, cache_dir)


def test_embeddings_from_another_encoder_are_rejected(mini, tiny, cache_dir):
    d = DistilledSet(torch.zeros(2, 3, 32, 32), "sentence_embeddings", text_embeddings=torch.zeros(2, tiny.text_dim),
                     encoder_id="paper:nfnet_l0+bert-base-uncased")
    with pytest.raises(UsageError, match="live in"):
        get_protocol("frozen-text").check_compatible(d, tiny)
    other_size = DistilledSet(torch.zeros(2, 3, 64, 64), "captions", captions=["a", "b"])
    get_protocol("frozen-text").check_compatible(other_size, tiny)  # resized, not refused (tests/test_transfer.py)


def test_frozen_text_uses_learned_step_sizes(mini, tiny):
    d = DistilledSet(torch.zeros(2, 3, 32, 32), "captions", captions=["a", "b"],
                     extras={"lr_image": torch.tensor(0.05), "lr_text": torch.tensor(0.3)})
    p = get_protocol("frozen-text")
    lrs, notes = p.learning_rates(d, tiny, quick(p))
    assert lrs == {"encoder": pytest.approx(0.05), "projection": pytest.approx(0.3)} and notes
    lrs, _ = p.learning_rates(d, tiny, quick(p, use_learned_lrs=False))
    assert lrs == {"encoder": 0.003, "projection": 0.03}  # the embedded defaults
    paper = apply_overrides(p.default_params("flickr30k"), {"use_learned_lrs": False})
    lrs, _ = p.learning_rates(d, tiny, paper)
    assert lrs == {"encoder": tiny.lr_encoder, "projection": tiny.lr_projection}  # unset -> the backbone's own


def test_bad_eval_params_are_clear():
    p = get_protocol("frozen-text")
    with pytest.raises(UsageError, match="Did you mean epochs"):
        apply_overrides(p.default_params("shapes"), {"epoch": "3"}, scope="eval")
    with pytest.raises(UsageError, match="expected int"):
        apply_overrides(p.default_params("shapes"), {"epochs": "three"}, scope="eval")
    with pytest.raises(UsageError, match="selection"):
        apply_overrides(p.default_params("shapes"), {"selection": "test"}, scope="eval")


def test_mtt_vl_protocol_is_its_published_schedule_with_one_learned_lr(tiny):
    """MTT-VL's evaluate_synset: the learned image lr for both towers, 51 epochs, batch 64, no decay in effect."""
    p = get_protocol("frozen-text-mtt")
    paper = p.resolve_params(p.default_params("flickr30k"), tiny)
    assert (paper.epochs, paper.batch_size, paper.lr_decay_epoch, paper.n_students) == (51, 64, 52, 5)
    lors = get_protocol("frozen-text").resolve_params(get_protocol("frozen-text").default_params("flickr30k"), tiny)
    assert (lors.epochs, lors.batch_size, lors.lr_decay_epoch) == (100, 128, 50)
    d = DistilledSet(torch.zeros(2, 3, 32, 32), "captions", captions=["a", "b"],
                     extras={"lr_image": torch.tensor(0.05), "lr_text": torch.tensor(0.3)})
    lrs, notes = p.learning_rates(d, tiny, paper)
    assert lrs == {"encoder": pytest.approx(0.05), "projection": pytest.approx(0.05)} and "MTT-VL" in notes[0]
    lrs, _ = get_protocol("frozen-text").learning_rates(d, tiny, lors)
    assert lrs == {"encoder": pytest.approx(0.05), "projection": pytest.approx(0.3)}  # LoRS's: one per tower
    coreset = DistilledSet(torch.zeros(2, 3, 32, 32), "captions", captions=["a", "b"])
    assert p.learning_rates(coreset, tiny, paper)[0] == {"encoder": tiny.lr_encoder, "projection": tiny.lr_projection}


def _sentence_set(mini, tiny, cache_dir, n=16, **kw):
    from mmdd_bench.data.images import ImageStore
    from mmdd_bench.features import train_features

    store = ImageStore(mini.train.image_paths, tiny.image_size, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    pairs = list(range(0, 5 * n, 5))
    _, txt = train_features(mini.train, store, tiny, CPU, cache_dir)
    return DistilledSet(store.batch(mini.train.pair_image[pairs]), "sentence_embeddings", text_embeddings=txt[pairs],
                        encoder_id=tiny.text_encoder_id, **kw)


def test_sets_without_a_similarity_keep_their_identity_keys(mini, tiny, cache_dir):
    """The similarity switches count in an identity only when set, so sets without one keep their keys."""
    import dataclasses

    from mmdd_bench.params import identity_dict

    p = get_protocol("frozen-text")
    d = _sentence_set(mini, tiny, cache_dir)
    params = quick(p, epochs=3, n_students=1, batch_size=8)
    assert p.student_loss(d, params, CPU) == (None, [])
    old_keys = {f.name for f in dataclasses.fields(params)} - {"use_learned_similarity", "student_loss", "val_every",
                                                                 "students", "tune_lrs", "teacher_similarity"}
    assert set(identity_dict(params)) == old_keys
    assert identity_dict(quick(p, use_learned_similarity=False))["use_learned_similarity"] is False


@pytest.mark.parametrize("name", ["frozen-text", "frozen-encoders"])
def test_students_trained_together_equal_students_trained_one_by_one(name, mini, tiny, cache_dir):
    """torch.func.vmap over stacked students, each with its own init, batch order and dropout masks, gives the
    sequential loop's students within float tolerance."""
    p = get_protocol(name)
    d = _sentence_set(mini, tiny, cache_dir, n=20)
    params = quick(p, epochs=3, n_students=3, batch_size=8)
    together = p.evaluate(d, mini, tiny, dataclasses.replace(params, students="together"), 4, CPU, cache_dir)
    one_by_one = p.evaluate(d, mini, tiny, dataclasses.replace(params, students="one-by-one"), 4, CPU, cache_dir)
    assert any("together" in n for n in together.notes) and any("one-by-one" in n for n in one_by_one.notes)
    for a, b in zip(together.per_student, one_by_one.per_student, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert together.per_student[0] != together.per_student[1]  # the students are distinct


@pytest.mark.parametrize("students", ["together", "one-by-one"])
def test_student_progress_counts_batches_from_before_the_first(students, mini, tiny, cache_dir):
    """A full-data epoch runs for minutes: progress starts at 0 and moves every batch, not once an epoch."""
    p = get_protocol("frozen-text")
    calls = []
    params = quick(p, epochs=2, n_students=2, batch_size=8, students=students)
    p.evaluate(_sentence_set(mini, tiny, cache_dir, n=20), mini, tiny, params, 4, CPU, cache_dir,
               progress=lambda what, done, total: calls.append((what, done, total)))
    per_loop = {}
    for what, done, total in calls:
        per_loop.setdefault(what, []).append((done, total))
    expected = [(k, 6) for k in range(7)]  # 2 epochs x ceil(20 / 8) batches, from 0
    assert per_loop == ({"2 students together": expected} if students == "together"
                        else {"student 1/2": expected, "student 2/2": expected})


def test_trainable_text_students_train_one_by_one_and_say_why(mini, tiny, cache_dir):
    p = get_protocol("trainable-text")
    result = p.evaluate(real_set(mini, tiny, cache_dir, n=8), mini, tiny,
                        quick(p, epochs=1, n_students=1, students="together"), 0, CPU, cache_dir)
    assert any("one-by-one (the text encoder trains" in n for n in result.notes)


def test_frozen_encoders_trains_only_heads_on_cached_features(mini, tiny, cache_dir, tmp_path, monkeypatch):
    """Under frozen-encoders a student is two heads; the frozen towers' test features are computed once per
    (split, backbone) and read from disk afterwards."""
    p = get_protocol("frozen-encoders")
    student = p.build_student(tiny, 0, CPU)
    assert not student.encoder_parameters() and len(student.head_parameters()) > 0
    reference = tiny.dual_encoder(text_trainable=True, image_head=True, seed=0)
    assert torch.equal(student.text_head.fc.weight, reference.text_head.fc.weight)  # trainable-text's heads, same seed
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir / "images", cache / "images")
    d = real_set(mini, tiny, cache_dir, n=16)
    first = p.evaluate(d, mini, tiny, quick(p, epochs=2, n_students=1), 0, CPU, cache)
    assert len(list((cache / "features").glob("image-*.safetensors"))) == 1
    assert len(list((cache / "features").glob("text-*.safetensors"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("the frozen test features should come from the cache")

    monkeypatch.setattr("mmdd_bench.features.image_features", no_encoding)
    monkeypatch.setattr("mmdd_bench.features.text_features", no_encoding)
    again = p.evaluate(d, mini, tiny, quick(p, epochs=2, n_students=1), 0, CPU, cache)
    assert again.per_student == first.per_student


def _lors_like(mini, tiny, cache_dir, n=16):
    g = torch.Generator().manual_seed(0)
    extras = {"sim_diag": torch.ones(n), "sim_left": torch.randn(n, 2, generator=g),
              "sim_right": 0.3 * torch.randn(n, 2, generator=g), "sim_scale": torch.tensor(0.5)}
    return _sentence_set(mini, tiny, cache_dir, n, extras=extras, budget_pairs=n + 1,
                         meta={"student_loss": "wbce", "similarity": {"kind": "lowrank", "rank": 2}})


def test_frozen_text_trains_with_the_sets_learned_similarity_and_loss(mini, tiny, cache_dir):
    from mmdd_bench.encoders.losses import soft_contrastive_loss

    p = get_protocol("frozen-text")
    d = _lors_like(mini, tiny, cache_dir)
    loss, notes = p.student_loss(d, quick(p), CPU)
    assert notes == ["students trained with the wbce loss against the set's learned similarity (lowrank, rank 2)"]
    g = torch.Generator().manual_seed(1)
    img, txt, idx = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.tensor([3, 0, 9, 4])
    assert torch.equal(loss(img, txt, idx), soft_contrastive_loss(img, txt, d.similarity()[idx][:, idx], "wbce"))
    override, notes = p.student_loss(d, quick(p, student_loss="infonce"), CPU)
    assert torch.equal(override(img, txt, idx), soft_contrastive_loss(img, txt, d.similarity(idx), "infonce"))
    plain, notes = p.student_loss(d, quick(p, use_learned_similarity=False), CPU)
    assert plain is None and "plain InfoNCE" in notes[0]
    # TESLA-VL's sets: a loss and no similarity -> that loss against identity targets.
    tesla = _sentence_set(mini, tiny, cache_dir, meta={"student_loss": "wbce"})
    loss, notes = p.student_loss(tesla, quick(p), CPU)
    assert "identity targets" in notes[0]
    assert torch.equal(loss(img, txt, idx), soft_contrastive_loss(img, txt, None, "wbce"))
    # The whole evaluation: both ways scored, and they differ.
    with_s = p.evaluate(d, mini, tiny, quick(p, n_students=1), 0, CPU, cache_dir)
    without = p.evaluate(d, mini, tiny, quick(p, n_students=1, use_learned_similarity=False), 0, CPU, cache_dir)
    assert any("learned similarity" in n for n in with_s.notes)
    assert with_s.per_student != without.per_student
    with pytest.raises(UsageError, match="student_loss"):
        quick(p, student_loss="mse")
