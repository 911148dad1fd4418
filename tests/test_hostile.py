"""What the suite reads is untrusted (records, artifacts, caches, datasets, weights): each attack here got a
traceback, a wrong number or a write outside its folder before, and now gets a clear error or a repair."""

import json
import os
import shutil
import subprocess
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_flickr
from PIL import Image
from test_records import make_record

from mmdd_bench.cli import main
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.errors import DataError
from mmdd_bench.records import SCHEMA_VERSION, read_records

QUICK = ["--datasets", "shapes-mini", "--set", "eval.epochs=1", "--set", "eval.n_students=1", "--quiet"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--virtual-time-budget=5000"]
XSS = "x\" onerror=\"document.title='PWNED'\" y='<script>document.title=`PWNED2`</script>"


def metrics(value: float) -> dict:
    names = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean"]
    return {"mean": {m: value for m in names}, "std": {m: None for m in names}, "per_student": []}


def run(cache_dir, results, *args):
    return main(["run", "--cache-dir", str(cache_dir), "--results", str(results), *QUICK, *args])


# ---- records and the page -----------------------------------------------------------------------------
class _Elements(HTMLParser):
    """Every element's tag and attributes, and the page's text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parsed(html_text: str) -> _Elements:
    parser = _Elements()
    parser.feed(html_text)
    return parser


def test_hostile_record_fields_are_escaped_on_the_page(tmp_path):
    results = tmp_path / "results"
    for s in range(2):
        make_record(f"x{s}", seed=s, dataset=XSS, method=XSS, variant=XSS, metrics=metrics(5.0 + s)).save(results)
    assert main(["report", "--html", "--results", str(results), "--cache-dir", str(tmp_path / "cache")]) == 0
    page = _parsed((results / "index.html").read_text())
    assert not [(t, a) for t, a in page.elements if any(k.startswith("on") for k in a)]  # no injected handler
    assert [t for t, _ in page.elements].count("script") == 1  # ours (figure check), none injected
    assert XSS in "".join(page.text)  # the hostile name is shown, as text
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium'); CI installs it")
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (results / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    rendered = _parsed(dom.stdout)
    assert "".join(rendered.text).count("mmdd-bench results") >= 1 and "PWNED" not in dom.stdout.split("</head>")[0]
    assert not [(t, a) for t, a in rendered.elements if any(k.startswith("on") for k in a)]
    assert XSS.replace("<", "").replace(">", "")[:20] in "".join(rendered.text).replace("<", "").replace(">", "")


def test_a_record_from_a_newer_version_is_skipped_and_never_overwritten(tmp_path, cache_dir, capsys):
    assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3") == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    data = json.loads(path.read_text())
    data.update(schema_version=SCHEMA_VERSION + 1, field_from_the_future=[1, 2, 3])
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="newer mmdd-bench"):
        assert read_records(tmp_path) == []
    capsys.readouterr()
    with pytest.warns(UserWarning, match="newer mmdd-bench"):
        assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3", "--force") == 1
    assert "cannot be replaced" in " ".join(capsys.readouterr().err.split())
    assert json.loads(path.read_text())["field_from_the_future"] == [1, 2, 3]  # untouched


def test_malformed_records_never_break_report_or_run(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    (runs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (runs / "types.json").write_text(json.dumps({**asdict(make_record("t")), "size": {"a": 1}}))
    (runs / "inf.json").write_text(json.dumps({**asdict(make_record("i")), "metrics": metrics(float("inf"))}))
    (runs / "latin1.json").write_bytes('{"dataset": "café"}'.encode("latin-1"))
    make_record("ok0", metrics=metrics(7.0)).save(tmp_path)
    with pytest.warns(UserWarning) as caught:
        assert main(["report", "--results", str(tmp_path)]) == 0
    named = " ".join(str(w.message) for w in caught)
    assert all(name in named for name in ("deep.json", "types.json", "inf.json", "latin1.json"))
    board = (tmp_path / "leaderboard" / "leaderboard.csv").read_text()
    assert "inf" not in board and board.count("\n") == 2  # header + the one good record
    with pytest.warns(UserWarning):
        assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3") == 0


def test_a_saved_set_with_another_cells_metadata_is_refused_and_redone(tmp_path, cache_dir):
    assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3") == 0
    artifact = next((tmp_path / "artifacts").glob("*.json"))
    header = json.loads(artifact.read_text())
    header["meta"]["seed"] = 7  # a set of another seed under this cell's id
    artifact.write_text(json.dumps(header))
    before = {r.run_id: r.metrics for r in read_records(tmp_path)}
    for record in (tmp_path / "runs").glob("*.json"):
        record.unlink()  # the evaluation is to be redone; the saved set would be reused
    with pytest.warns(UserWarning, match="metadata is not this cell's: seed=7"):
        assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3") == 0
    assert json.loads(artifact.read_text())["meta"]["seed"] == 0 and list((tmp_path / "artifacts").glob("*.bad-*"))
    assert {r.run_id: r.metrics for r in read_records(tmp_path)} == before


@pytest.mark.parametrize("mutate,message", [
    (lambda t, h: t.update(images=t["images"].to(torch.int64)), "floating-point"),
    (lambda t, h: t["images"].__setitem__((0, 0, 0, 0), float("nan")), "NaN"),
    (lambda t, h: t.update(**{"extra.lr_image": torch.ones(3), "extra.lr_text": torch.tensor(0.1)}), "lr_image"),
    (lambda t, h: (t.update(text_embeddings=torch.zeros(3, 4, 5)), h.update(text_kind="sentence_embeddings",
                                                                          encoder_id="x")), "must have 2 dims"),
])
def test_malformed_artifacts_are_data_errors_in_eval_and_show(tmp_path, cache_dir, capsys, mutate, message):
    from safetensors.torch import load_file, save_file

    DistilledSet(torch.zeros(3, 3, 32, 32), "captions", captions=["a", "b", "c"],
                 meta={"dataset": "shapes-mini"}).save(tmp_path / "art")
    tensors = load_file(str(tmp_path / "art.safetensors"))
    header = json.loads((tmp_path / "art.json").read_text())
    mutate(tensors, header)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "art.safetensors"))
    (tmp_path / "art.json").write_text(json.dumps(header))
    for argv in (["eval", str(tmp_path / "art.json"), "--cache-dir", str(cache_dir), "--results", str(tmp_path / "r")],
                 ["show", str(tmp_path / "art.json"), "--cache-dir", str(cache_dir)]):
        capsys.readouterr()
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and "Traceback" not in err


# ---- results folder and the console ------------------------------------------------------------------
def test_results_path_that_is_a_file_or_under_a_file_is_a_usage_error(tmp_path, cache_dir, capsys):
    (tmp_path / "file").write_text("x")
    for results in (tmp_path / "file", tmp_path / "file" / "sub"):
        capsys.readouterr()
        assert run(cache_dir, results, "--methods", "random", "--sizes", "3") == 2
        err = " ".join(capsys.readouterr().err.split())
        assert ("is a file" in err or "cannot write to the results folder" in err) and "Traceback" not in err


def test_brackets_in_paths_are_shown_verbatim(tmp_path, cache_dir, capsys):
    results = tmp_path / "res[/x][bold]"  # rich markup: "[/x]" used to crash the run after its work was done
    assert main(["run", "--cache-dir", str(cache_dir), "--results", str(results), "--datasets", "shapes-mini",
                 "--methods", "random", "--sizes", "3", "--set", "eval.epochs=1", "--set", "eval.n_students=1"]) == 0
    out = capsys.readouterr()
    assert "res[/x][bold]" in "".join(out.out.split()) and "[1/1] shapes-mini random" in out.err


def test_ray_install_hint_keeps_its_brackets(monkeypatch, tmp_path, cache_dir, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3", "--executor", "ray") == 2
    assert "pip install 'mmdd-bench[ray]'" in " ".join(capsys.readouterr().err.split())


# ---- leftovers of killed writers -----------------------------------------------------------------------
def test_orphan_temporary_files_are_removed_on_the_next_run(tmp_path, cache_dir):
    old = 3 * 3600
    (tmp_path / "runs").mkdir(parents=True)
    (tmp_path / "artifacts").mkdir()
    orphans = [tmp_path / "runs" / ".abc.json.x1y2.tmp", tmp_path / "artifacts" / "0123456789abcdef.json.tmp4242"]
    fresh = tmp_path / "runs" / ".live.json.z9.tmp"  # a writer that may still be alive
    for p in [*orphans, fresh]:
        p.write_text("half")
    for p in orphans:
        os.utime(p, (p.stat().st_atime - old, p.stat().st_mtime - old))
    assert run(cache_dir, tmp_path, "--methods", "random", "--sizes", "3") == 0
    assert not any(p.exists() for p in orphans) and fresh.exists()


def test_a_kill_inside_the_checkpoint_swap_keeps_a_complete_checkpoint(tmp_path, monkeypatch):
    from mmdd_bench.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoints" / "0123456789abcdef"
    save_checkpoint(folder, {"x": torch.zeros(2)}, {"iteration": 5})
    real_replace = os.replace
    calls = {"n": 0}

    def killed_between_the_two_renames(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies after moving the old checkpoint away
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_between_the_two_renames)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, {"x": torch.ones(2)}, {"iteration": 10})
    monkeypatch.setattr(os, "replace", real_replace)
    assert not folder.exists()  # the old one is hidden away, the new one was being written
    tensors, state = load_checkpoint(folder)
    assert state["iteration"] == 5 and torch.equal(tensors["x"], torch.zeros(2)) and folder.is_dir()


def test_a_truncated_checkpoint_is_moved_aside_not_fatal(tmp_path):
    from mmdd_bench.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path / "ck"
    save_checkpoint(folder, {"x": torch.zeros(1000)}, {"iteration": 5})
    data = (folder / "tensors.safetensors").read_bytes()
    (folder / "tensors.safetensors").write_bytes(data[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_checkpoint(folder) is None
    assert list(tmp_path.glob(".ck.bad-*"))


def test_a_corrupt_feature_cache_is_recomputed(tmp_path, cache_dir, mini, tiny):
    from mmdd_bench.data.images import ImageStore
    from mmdd_bench.features import train_features

    store = ImageStore(mini.train.image_paths, tiny.image_size, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    shutil.copytree(cache_dir / "images", tmp_path / "images")
    img, txt = (t.clone() for t in train_features(mini.train, store, tiny, torch.device("cpu"), tmp_path))
    (path,) = (tmp_path / "features").glob("*.safetensors")  # (cloned: the tensors map the file we overwrite)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="feature cache .* moved it"):
        img2, txt2 = train_features(mini.train, store, tiny, torch.device("cpu"), tmp_path)
    assert torch.equal(img, img2) and torch.equal(txt, txt2)


# ---- hostile dataset folders ------------------------------------------------------------------------
def _entries(ds: Path, split: str) -> list:
    return json.loads((ds / "annotations" / f"flickr30k_{split}.json").read_text())


def _write(ds: Path, split: str, entries) -> None:
    (ds / "annotations" / f"flickr30k_{split}.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink"])
def test_image_paths_cannot_leave_the_dataset_folder(tmp_path, cache_dir, capsys, attack):
    ds = write_flickr(tmp_path / "data")
    secret = tmp_path / "secret.jpg"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(secret)
    entries = _entries(ds, "test")
    if attack == "dotdot":
        entries[0]["image"] = "flickr30k-images/../../../secret.jpg"
    elif attack == "absolute":
        entries[0]["image"] = str(secret)
    else:
        (ds / "flickr30k-images" / "link.jpg").symlink_to(secret)
        entries[0]["image"] = "flickr30k-images/link.jpg"
    _write(ds, "test", entries)
    assert main(["data", "flickr30k", "--data-root", str(tmp_path / "data"), "--cache-dir", str(cache_dir)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("leaves the dataset folder" in err or "outside its folder" in err) and "Traceback" not in err


def test_a_symlinked_image_folder_is_fine(tmp_path, cache_dir):
    from mmdd_bench.data import load_dataset

    ds = write_flickr(tmp_path / "data")
    shutil.move(ds / "flickr30k-images", tmp_path / "elsewhere")
    (ds / "flickr30k-images").symlink_to(tmp_path / "elsewhere")
    assert len(load_dataset("flickr30k", tmp_path / "data", cache_dir).test.image_paths) == 3


@pytest.mark.parametrize("bad", ["zero", "not_an_image", "bomb"])
def test_data_check_refuses_unusable_images(tmp_path, cache_dir, capsys, bad):
    ds = write_flickr(tmp_path / "data")
    target = ds / "flickr30k-images" / "te1.jpg"
    if bad == "zero":
        target.write_bytes(b"")
    elif bad == "not_an_image":
        target.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 10)
    else:  # 9000 x 9000 of zeros: 81 megapixels in a small PNG
        Image.new("L", (9000, 9000)).save(target, format="PNG")
    assert main(["data", "flickr30k", "--data-root", str(tmp_path / "data"), "--cache-dir", str(cache_dir)]) == 2
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "te1.jpg" in err and "Traceback" not in err
    assert json.loads(captured.out)["errors"]


def test_data_check_warns_about_leakage_duplicates_and_empty_captions(tmp_path, cache_dir, capsys):
    ds = write_flickr(tmp_path / "data")
    test = _entries(ds, "test")
    test.append(dict(test[1]))  # listed twice
    test[2]["image"] = _entries(ds, "train")[0]["image"]  # a train image in test
    _write(ds, "test", test)
    train = _entries(ds, "train")
    train[1]["caption"] = "...!!!"  # empty after normalisation
    _write(ds, "train", train)
    assert main(["data", "flickr30k", "--data-root", str(tmp_path / "data"), "--cache-dir", str(cache_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    text = " ".join(report["warnings"])
    assert "also train images" in text and "more than once in test" in text and "empty train captions" in text


@pytest.mark.parametrize("content", [b'[{"image": "a.jpg", "caption": "caf\xe9"}]', b"[" * 100_000 + b"]" * 100_000])
def test_non_utf8_or_deeply_nested_annotations_are_data_errors(tmp_path, cache_dir, content):
    from mmdd_bench.data import load_dataset

    ds = write_flickr(tmp_path / "data")
    (ds / "annotations" / "flickr30k_val.json").write_bytes(content)
    with pytest.raises(DataError, match="not UTF-8|nests JSON too deeply"):
        load_dataset("flickr30k", tmp_path / "data", cache_dir)


# ---- weights ------------------------------------------------------------------------------------------
def test_a_bad_bert_folder_is_a_weights_error(tmp_path, monkeypatch):
    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.errors import WeightsError

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    monkeypatch.setenv("MMDD_BENCH_BERT", str(tmp_path / "bert"))
    with pytest.raises(WeightsError, match="MMDD_BENCH_BERT"):
        build_backbone("paper", tmp_path)


def test_openai_clip_weights_get_quick_gelu(monkeypatch, tmp_path):
    """open_clip's pretrained config says QuickGELU for OpenAI's weights; the tower must be built with it."""
    import open_clip

    from mmdd_bench.encoders.clip import build_clip

    seen = {}
    real = open_clip.create_model

    def offline(name, pretrained=None, **kwargs):
        seen.update(kwargs)
        return real(name, pretrained=None, force_quick_gelu=kwargs.get("force_quick_gelu", False))

    monkeypatch.setattr(open_clip, "create_model", offline)
    bb = build_clip("clip-RN50@openai", tmp_path)
    assert seen["force_quick_gelu"] is True
    from open_clip.transformer import QuickGELU

    assert any(isinstance(m, QuickGELU) for m in bb.text_encoder.modules())


def test_paper_weights_id_hashes_the_weight_files(tmp_path, monkeypatch):
    """Two checkpoints never share a weights id (records, experts and feature caches are keyed by it)."""
    from mmdd_bench.encoders import describe_backbone

    bert, nfnet = tmp_path / "bert", tmp_path / "nfnet.safetensors"
    bert.mkdir()
    (bert / "model.safetensors").write_bytes(b"bert weights")
    nfnet.write_bytes(b"nfnet weights, checkpoint A")
    monkeypatch.setenv("MMDD_BENCH_BERT", str(bert))
    monkeypatch.setenv("MMDD_BENCH_NFNET_WEIGHTS", str(nfnet))
    first = describe_backbone("paper", tmp_path / "cache").weights_id
    assert first == describe_backbone("paper", tmp_path / "cache").weights_id
    assert first.startswith("nfnet_l0-") and "+bert-base-uncased-" in first
    nfnet.write_bytes(b"nfnet weights, checkpoint B")
    os.utime(nfnet, ns=(nfnet.stat().st_atime_ns, nfnet.stat().st_mtime_ns + 10**9))
    second = describe_backbone("paper", tmp_path / "cache").weights_id
    assert second != first and second.split("+")[1] == first.split("+")[1]
    (bert / "model.safetensors").unlink()
    with pytest.raises(Exception, match="holds no model.safetensors"):
        describe_backbone("paper", tmp_path / "cache")


# ---- decoded-image caches ---------------------------------------------------------------------------
FLICKR_RUN = ["--datasets", "flickr30k", "--backbone", "tiny", "--methods", "random", "--sizes", "2", "--quiet",
              "--set", "eval.epochs=1", "--set", "eval.n_students=1", "--protocol", "frozen-text"]


def test_new_image_content_means_new_identities_and_caches(tmp_path, capsys):
    """Replacing every image by black used to give a byte-identical artifact under the same run id."""
    ds = write_flickr(tmp_path / "data")
    cache = tmp_path / "cache"
    args = ["run", "--data-root", str(tmp_path / "data"), "--cache-dir", str(cache), *FLICKR_RUN]
    assert main([*args, "--results", str(tmp_path / "before")]) == 0
    for image in (ds / "flickr30k-images").iterdir():
        with Image.open(image) as img:
            size = img.size
        Image.new("RGB", size).save(image, format="JPEG")
    assert main([*args, "--results", str(tmp_path / "after")]) == 0
    (before,), (after,) = read_records(tmp_path / "before"), read_records(tmp_path / "after")
    assert before.run_id != after.run_id and before.dataset_fingerprints["train"] != after.dataset_fingerprints["train"]
    black = DistilledSet.load(next((tmp_path / "after" / "artifacts").glob("*.json")))
    per_channel = black.images.transpose(0, 1).flatten(1)
    assert torch.equal(per_channel.amax(1), per_channel.amin(1))  # the images the set holds are the new, black ones


def test_a_corrupted_image_cache_is_detected_and_rebuilt(tmp_path, cache_dir, mini, tiny):
    from mmdd_bench.data.images import ImageStore

    args = (mini.test.image_paths, tiny.image_size, tmp_path, mini.test.fingerprint, tiny.mean, tiny.std)
    clean = ImageStore(*args).uint8().clone()
    (path,) = (tmp_path / "images").glob("*px.u8")
    data = bytearray(path.read_bytes())
    data[-4096:] = bytes(4096)  # zeroed pages: the old cache served them under the same run id
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its checksum"):
        again = ImageStore(*args)
    assert torch.equal(again.uint8(), clean) and list((tmp_path / "images").glob("*.bad-*"))


def test_a_full_disk_is_a_clear_error_not_sigbus(tmp_path, capsys, monkeypatch):
    import errno

    write_flickr(tmp_path / "data")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    code = main(["run", "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
                 "--results", str(tmp_path / "res"), *FLICKR_RUN])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "space" in err and "decoded-image cache" in err and "Traceback" not in err
    assert not list((tmp_path / "cache" / "images").glob("*.tmp*")) and not list((tmp_path / "res").glob("runs/*.json"))


def test_a_decompression_bomb_in_a_run_is_a_data_error(tmp_path, capsys):
    ds = write_flickr(tmp_path / "data")
    Image.new("L", (9000, 9000)).save(ds / "flickr30k-images" / "tr1.jpg", format="PNG")
    code = main(["run", "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
                 "--results", str(tmp_path / "res"), *FLICKR_RUN])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "tr1.jpg" in err and "pixels" in err and "Traceback" not in err


def test_a_kill_between_an_experts_resume_state_and_its_epoch_count_resumes_exactly(tmp_path, cache_dir, mini, tiny):
    """The resume state of epoch 2 was written and state.json still said 1: the old layout then resumed epoch 2
    with epoch 2's RNG state and trained another trajectory under the same cache key."""
    from mmdd_bench.data.images import ImageStore
    from mmdd_bench.experts import ExpertSettings, ExpertStore

    images = ImageStore(mini.train.image_paths, tiny.image_size, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    killed = ExpertStore(cache_dir, mini, tiny, ExpertSettings(seed=5))
    killed.root = tmp_path / "killed"
    real_replace = os.replace

    def die_on_state_of_epoch_2(src, dst):
        if str(dst).endswith("state.json") and (Path(src).parent / "epoch_002.safetensors").is_file():
            raise KeyboardInterrupt
        return real_replace(src, dst)

    os.replace = die_on_state_of_epoch_2
    try:
        with pytest.raises(KeyboardInterrupt):
            killed.ensure(1, 2, mini, tiny, images, torch.device("cpu"))
    finally:
        os.replace = real_replace
    assert killed.epochs_done(0) == 1 and (killed.expert_dir(0) / "resume_002.safetensors").is_file()
    killed.ensure(1, 3, mini, tiny, images, torch.device("cpu"))
    straight = ExpertStore(cache_dir, mini, tiny, ExpertSettings(seed=5))
    straight.root = tmp_path / "straight"
    straight.ensure(1, 3, mini, tiny, images, torch.device("cpu"))
    for epoch in range(4):
        a, b = killed.snapshot(0, epoch), straight.snapshot(0, epoch)
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} differs after the kill"
    assert sorted(p.name for p in killed.expert_dir(0).glob("resume*")) == ["resume_003.safetensors"]
