"""Transfer across image encoders: the ``tiny-vit`` backbone, text-tower compatibility, image resizing, transfer
evaluations through the API and the CLI, their records and leaderboard rows, the transfer matrix and its page."""

import dataclasses
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_records import make_record
from test_reports import metrics

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.encoders.towers import text_tower_id
from mmdd_bench.errors import UsageError, WeightsError
from mmdd_bench.protocols import get_protocol
from mmdd_bench.protocols.compat import check_text, images_for, resize_images

CPU = torch.device("cpu")
# An encoder id as the committed embedded sets carry it (results/artifacts of the tiny grid).
OLD_TINY_ID = "tiny:tiny-convnet-v1-n10000-e6-s0-1e9ef81ec8de+all-MiniLM-L6-v2[:1]"


@pytest.fixture(scope="module")
def vit(cache_dir):
    from mmdd_bench.encoders import build_backbone

    return build_backbone("tiny-vit", cache_dir)


# ---- the tiny-vit backbone --------------------------------------------------------------------------------------
def test_tiny_vit_ships_pinned_weights_and_shares_tinys_text_tower(vit, tiny, cache_dir):
    from mmdd_bench.encoders import BACKBONE_NAMES, describe_backbone
    from mmdd_bench.encoders.tiny import IMAGE_TOWERS
    from mmdd_bench.encoders.vit import TinyViT

    pinned = IMAGE_TOWERS["tiny-vit"].packaged_sha256
    assert isinstance(vit.image_encoder, TinyViT) and vit.name == "tiny-vit" and "tiny-vit" in BACKBONE_NAMES
    assert vit.weights_id == f"tiny-vit-v1-n10000-e6-s0-{pinned[:12]}+all-MiniLM-L6-v2[:1]"
    assert describe_backbone("tiny-vit", cache_dir).weights_id == vit.weights_id  # planned as built
    assert (vit.image_size, vit.image_dim, vit.text_dim, vit.mean, vit.std) == (32, 256, 384, tiny.mean, tiny.std)
    assert vit.text_tower_id == tiny.text_tower_id and vit.text_encoder_id != tiny.text_encoder_id
    tiny_text = tiny.text_encoder.state_dict()
    assert all(torch.equal(v, tiny_text[k]) for k, v in vit.text_encoder.state_dict().items())
    ids, mask = vit.tokenize(["a red circle on the left"])
    assert torch.equal(ids, tiny.tokenize(["a red circle on the left"])[0])
    assert torch.equal(vit.text_encoder(ids, mask), tiny.text_encoder(ids, mask))
    assert tiny.text_encoder_id == OLD_TINY_ID  # the committed sets' encoder id, unchanged
    with torch.no_grad():
        assert vit.image_encoder(torch.randn(3, 3, 32, 32)).shape == (3, 256)


def test_tampered_tiny_vit_weights_are_refused(monkeypatch):
    import mmdd_bench.encoders.tiny as tiny_module

    towers = dict(tiny_module.IMAGE_TOWERS)
    towers["tiny-vit"] = dataclasses.replace(towers["tiny-vit"], packaged_sha256="0" * 64)
    monkeypatch.setattr(tiny_module, "IMAGE_TOWERS", towers)
    with pytest.raises(WeightsError, match="tiny-vit image encoder's weights .* do not match their pinned sha256"):
        tiny_module.packaged_image_encoder("tiny-vit")


def test_tiny_vit_takes_vmap_and_second_order_gradients(vit):
    """What MTT-VL's unroll (grad through a student's SGD step) and students trained together (vmap) need."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    net = vit.fresh_image_encoder()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(4, 3, 32, 32)

    def loss(p, images):
        return functional_call(net, p, (images,)).pow(2).mean()

    def unrolled(images):  # one differentiable SGD step, then the loss: second order in the pixels
        g = grad(loss)(params, images)
        return loss({k: params[k] - 0.1 * g[k] for k in params}, images)

    pixels_grad = grad(unrolled)(x)
    assert pixels_grad.shape == x.shape and torch.isfinite(pixels_grad).all() and pixels_grad.abs().sum() > 0
    copies = [vit.fresh_image_encoder() for _ in range(2)]
    stacked, buffers = stack_module_state(copies)
    out = vmap(lambda p, b, images: functional_call(net, (p, b), (images,)), randomness="error")(
        stacked, buffers, torch.stack([x, x]))
    with torch.no_grad():
        assert torch.allclose(out[0], copies[0](x), atol=1e-5) and torch.allclose(out[1], out[0], atol=1e-5)


def test_list_backbones_names_tiny_vit(capsys):
    from mmdd_bench.cli import main

    assert main(["list", "backbones"]) == 0
    assert "tiny-vit\t" in capsys.readouterr().out


# ---- compatibility by text tower --------------------------------------------------------------------------------
def test_text_towers_are_derived_from_old_and_new_encoder_ids(tiny, vit):
    assert text_tower_id(OLD_TINY_ID) == tiny.text_tower_id == vit.text_tower_id
    assert text_tower_id("tiny:random") == "tiny:random" != text_tower_id("tiny-vit:random")  # untrained: never shared
    assert text_tower_id("paper:nfnet_l0-aa+bert-base-uncased-bb") == text_tower_id("paper:other-image+bert-base-uncased-bb")
    assert text_tower_id("paper:nfnet_l0-aa+bert-base-uncased-bb") != text_tower_id("paper:nfnet_l0-aa+bert-base-uncased-cc")
    assert text_tower_id("clip-ViT-B-32@openai:ViT-B-32@openai") == "clip-ViT-B-32@openai:ViT-B-32@openai"
    assert text_tower_id("from elsewhere") == "from elsewhere"


def _embedding_set(encoder_id, n=2, dim=384, size=32):
    return DistilledSet(torch.zeros(n, 3, size, size), "sentence_embeddings", text_embeddings=torch.zeros(n, dim),
                        encoder_id=encoder_id, meta={"backbone": encoder_id.partition(":")[0]})


def test_embeddings_transfer_between_tiny_and_tiny_vit_and_are_refused_elsewhere(tiny, vit):
    check_text(_embedding_set(OLD_TINY_ID), vit)
    check_text(_embedding_set(vit.text_encoder_id), tiny)
    check_text(DistilledSet(torch.zeros(1, 3, 32, 32), "captions", captions=["a"]), vit)  # captions: always
    get_protocol("frozen-text").check_compatible(_embedding_set(OLD_TINY_ID), vit)
    alien = _embedding_set("paper:nfnet_l0-aa+bert-base-uncased-bb", dim=768)
    with pytest.raises(UsageError) as err:
        get_protocol("frozen-text").check_compatible(alien, vit)
    message = str(err.value)
    assert "bert/cls/32-tokens:bert-base-uncased-bb" in message  # what was found
    assert vit.text_tower_id in message  # what was expected
    assert "--backbone paper" in message and "distil the set again" in message  # what to do
    pretrained_elsewhere = _embedding_set("tiny:tiny-convnet-v1-n10000-e6-s0-0123456789ab+all-MiniLM-L6-v2[:2]")
    with pytest.raises(UsageError, match="share a text tower.*or another backbone with its text tower \\(tiny, tiny-vit\\)"):
        check_text(pretrained_elsewhere, tiny)


# ---- images at another resolution -----------------------------------------------------------------------------
def test_images_are_resized_antialiased_bicubic_and_renormalised(vit):
    torch.manual_seed(0)
    big = torch.randn(3, 3, 64, 64)
    caption_set = DistilledSet(big, "captions", captions=["a", "b", "c"])
    get_protocol("trainable-text").check_compatible(caption_set, vit)  # another resolution is no refusal
    resized, notes = images_for(caption_set, vit)
    assert resized.images.shape == (3, 3, 32, 32) and notes and "bicubic" in notes[0]
    expected = F.interpolate(big, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(resized.images, expected) and resized.captions == caption_set.captions
    assert not torch.allclose(expected, F.interpolate(big, size=(32, 32), mode="bicubic", antialias=False,
                                                      align_corners=False))  # antialiasing did something
    flat = torch.full((1, 3, 96, 96), 0.7)
    assert torch.allclose(resize_images(flat, 32), torch.full((1, 3, 32, 32), 0.7), atol=1e-5)  # weights sum to 1
    same, notes = images_for(DistilledSet(torch.zeros(1, 3, 32, 32), "captions", captions=["a"]), vit)
    assert notes == [] and same.images.shape == (1, 3, 32, 32)
    # A set normalised with other statistics is brought to this backbone's.
    raw = torch.rand(1, 3, 32, 32)
    other = DistilledSet((raw - 0.5) / 0.25, "captions", captions=["a"],
                         meta={"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    renormed, notes = images_for(other, vit)
    mean, std = torch.tensor(vit.mean).view(1, 3, 1, 1), torch.tensor(vit.std).view(1, 3, 1, 1)
    assert torch.allclose(renormed.images, (raw - mean) / std, atol=1e-5) and "re-normalised" in notes[-1]
    hostile = dataclasses.replace(other, meta={"image_mean": [0.5] * 3, "image_std": [0.0] * 3})
    assert torch.equal(images_for(hostile, vit)[0].images, hostile.images)  # nonsense metadata is not applied


# ---- a transfer evaluation end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transferred(cache_dir, tmp_path_factory):
    """Random and CovMatch (token embeddings) distilled with tiny on shapes-mini, each scored with tiny-vit from
    the command line, and random's set also re-scored with its own backbone."""
    from mmdd_bench.cli import main
    from mmdd_bench.records import read_records

    res = tmp_path_factory.mktemp("transfer") / "res"
    quick = ["--cache-dir", str(cache_dir), "--results", str(res), "--quiet", "--set", "eval.epochs=1",
             "--set", "eval.n_students=1"]
    assert main(["run", "--datasets", "shapes-mini", "--methods", "random,covmatch", "--sizes", "4",
                 "--set", "covmatch.iterations=2", *quick]) == 0
    own = {r.method: r for r in read_records(res)}
    for rec in own.values():
        assert main(["eval", str(res / rec.artifact), "--backbone", "tiny-vit", *quick]) == 0
    assert main(["eval", str(res / own["random"].artifact), *quick]) == 0  # its own backbone: not a transfer
    return res, own


def test_cli_transfer_eval_records_the_source_backbone(transferred, tiny, vit):
    from mmdd_bench.records import SCHEMA_VERSION, read_records
    from mmdd_bench.transfer import sets_distilled_with

    res, own = transferred
    records = read_records(res)
    moved = [r for r in records if r.distilled_backbone]
    assert sorted(r.method for r in moved) == ["covmatch", "random"]
    for r in moved:
        assert (r.backbone, r.backbone_weights) == ("tiny-vit", vit.weights_id) and r.status == "ok"
        assert (r.distilled_backbone, r.distilled_backbone_weights) == ("tiny", tiny.weights_id)
        assert r.schema_version == SCHEMA_VERSION == 3 and r.source == "eval"
        assert any("transfer: distilled with backbone 'tiny'" in n for n in r.notes)
        assert r.run_id not in {o.run_id for o in own.values()}
    assert next(r for r in moved if r.method == "covmatch").protocol == "trainable-text"  # read its token embeddings
    rescored = [r for r in records if r.source == "eval" and not r.distilled_backbone]
    assert len(rescored) == 1 and rescored[0].backbone == "tiny" and rescored[0].schema_version == 2
    assert all(r.schema_version == 2 for r in own.values())  # ordinary records keep the schema old readers know
    assert sets_distilled_with(res, "tiny", 4) == sorted((res / r.artifact).resolve().with_suffix(".json")
                                                         for r in own.values())
    assert sets_distilled_with(res, "tiny-vit") == [] and sets_distilled_with(res, "tiny", 5) == []


def test_transfer_rows_stay_apart_and_the_matrix_is_written(transferred):
    from mmdd_bench.api import report

    res, _ = transferred
    with pytest.warns(UserWarning, match="several records of one seed"):  # random's set, re-scored by tiny
        names = {p.name for p in report(res)}
    assert {"transfer-matrix.csv", "shapes-mini.transfer-matrix.md"} <= names
    board = pd.read_csv(res / "leaderboard" / "leaderboard.csv", keep_default_na=False)
    vit_rows = board[board["backbone"] == "tiny-vit"]
    assert sorted(vit_rows["distilled_backbone"]) == ["tiny", "tiny"]
    tiny_rows = board[board["backbone"] == "tiny"]
    assert set(tiny_rows["distilled_backbone"]) == {""} and set(tiny_rows["n_seeds"].astype(int)) == {1}
    md = (res / "leaderboard" / "shapes-mini__tiny-vit__trainable-text.md").read_text()
    assert "| covmatch (distilled with tiny) |" in md and "| random (distilled with tiny) |" in md
    matrix = pd.read_csv(res / "leaderboard" / "transfer-matrix.csv", keep_default_na=False)
    assert set(zip(matrix["distilled_with"], matrix["evaluated_with"], strict=True)) == {("tiny", "tiny"),
                                                                                        ("tiny", "tiny-vit")}


# ---- leaderboard rows and the transfer matrix from hand-made records ------------------------------------------
def _records(values, method, backbone, source=None, protocol="trainable-text", size=100):
    return [make_record(f"{method}-{backbone}-{source}-{protocol}-{size}-{s}", seed=s, method=method, backbone=backbone,
                        backbone_weights=f"w-{backbone}", distilled_backbone=source,
                        distilled_backbone_weights=f"w-{source}" if source else None, protocol=protocol, size=size,
                        metrics=metrics(v)) for s, v in enumerate(values)]


def _grid():
    recs = _records([10, 11, 12], "random", "tiny") + _records([20, 21, 22], "random", "tiny-vit")
    recs += _records([30, 32, 34], "covmatch", "tiny") + _records([28, 29, 30], "covmatch", "tiny-vit")
    recs += _records([25, 26, 27], "covmatch", "tiny-vit", source="tiny")  # tiny's sets scored with tiny-vit
    recs += _records([16, 17, 18], "covmatch", "tiny", source="tiny-vit")  # and the other way round
    recs += _records([20, 21, 22], "random", "tiny-vit", source="tiny")  # random's sets transferred too
    return recs


def test_leaderboard_keeps_transfers_apart_with_gains_over_the_scoring_backbones_random():
    from mmdd_bench.reports.leaderboard import leaderboard, records_frame, to_markdown

    board = leaderboard(records_frame(_grid()))
    vit = board[(board["backbone"] == "tiny-vit") & (board["method"] == "covmatch")].set_index("distilled_backbone")
    assert sorted(vit.index) == ["", "tiny"] and set(vit["n_seeds"]) == {3}  # two rows, never merged
    assert vit.loc["tiny", "r_mean"] == 26.0 and vit.loc["", "r_mean"] == 29.0
    assert vit.loc["tiny", "gain_vs_random"] == 5.0  # over tiny-vit's own random (21), not tiny's (11)
    assert vit.loc["", "gain_vs_random"] == 8.0  # the transferred random row is no second baseline
    moved_random = board[(board["method"] == "random") & (board["distilled_backbone"] == "tiny")].iloc[0]
    assert moved_random["gain_vs_random"] == 0.0
    md = to_markdown(board[board["backbone"] == "tiny-vit"])
    assert "| covmatch (distilled with tiny) |" in md and "[settings" not in md
    old = make_record("old", method="covmatch", backbone="tiny-vit", metrics=metrics(1.0))
    assert records_frame([old])["distilled_backbone"].tolist() == [""]  # records without the field: own sets


def test_transfer_matrix_cells_compare_with_random_under_the_scoring_backbone():
    from mmdd_bench.reports.leaderboard import leaderboard, records_frame
    from mmdd_bench.reports.matrix import protocol_matrix
    from mmdd_bench.reports.transfer import transfer_markdown, transfer_matrix, transfer_tables

    board = leaderboard(records_frame(_grid()))
    matrix = transfer_matrix(board).set_index(["label", "distilled_with", "evaluated_with"])
    cell = matrix.loc[("covmatch", "tiny", "tiny-vit")]
    assert cell["r_mean"] == 26.0 and cell["gain_vs_random"] == 5.0  # +15 would be tiny's random: wrong
    assert cell["r_mean_ci_low"] <= 26.0 <= cell["r_mean_ci_high"] and cell["gain_ci_low"] == cell["gain_ci_high"] == 5.0
    assert matrix.loc[("covmatch", "tiny-vit", "tiny"), "gain_vs_random"] == 6.0  # 17 against tiny's random 11
    assert matrix.loc[("covmatch", "tiny", "tiny"), "gain_vs_random"] == 21.0
    assert len(matrix) == 7
    ((protocol, size, backbones, rows),) = transfer_tables(board, "shapes")
    assert (protocol, size, backbones) == ("trainable-text", 100, ["tiny", "tiny-vit"])
    by_row = {(r[0], r[1]): r[2:] for r in rows}
    assert by_row[("covmatch", "tiny")][1].startswith("26.00 [25.00, 27.00] (+5.00")
    assert by_row[("random", "tiny")] == ["11.00 [10.00, 12.00]", "21.00 [20.00, 22.00] (+0.00 [+0.00, +0.00])"]
    assert "| covmatch | tiny-vit | 17.00" in transfer_markdown(board, "shapes")
    # The protocol matrix is unchanged by the transfer rows: one cell per method and backbone, none dropped.
    pm = protocol_matrix(board)
    assert len(pm) == 4 and set(pm["gain_vs_random"]) == {0.0, 21.0, 8.0}


def test_transfer_files_only_with_transfers_and_confined_names(tmp_path):
    from mmdd_bench.reports.writer import write_leaderboards

    for r in _records([10, 11], "random", "tiny") + _records([20, 21], "covmatch", "tiny"):
        r.save(tmp_path / "plain")
    names = [p.name for p in write_leaderboards(tmp_path / "plain", plots=False)]
    assert not any("transfer" in n for n in names)
    hostile = "../x__y/<b>"
    recs = [dataclasses.replace(r, dataset=hostile) for r in _grid()]
    recs += [dataclasses.replace(r, run_id=f"t{r.run_id}", dataset="transfer") for r in _grid()]
    for r in recs:
        r.save(tmp_path / "odd")
    paths = write_leaderboards(tmp_path / "odd", plots=False)
    assert len({p.name for p in paths}) == len(paths)  # no file written twice over another
    assert all(p.parent == tmp_path / "odd" / "leaderboard" for p in paths)
    mds = [p.name for p in paths if p.name.endswith(".transfer-matrix.md")]
    assert "transfer.transfer-matrix.md" in mds and len(mds) == 2 and all("/" not in n and "__" not in n for n in mds)
    csv = pd.read_csv(tmp_path / "odd" / "leaderboard" / "transfer-matrix.csv", keep_default_na=False)
    assert set(csv["dataset"]) == {hostile, "transfer"} and not (tmp_path / "odd" / "x__y").exists()


def test_page_has_an_escaped_transfer_section(tmp_path):
    from mmdd_bench.reports.html import write_page
    from mmdd_bench.reports.leaderboard import leaderboard, records_frame

    recs = [dataclasses.replace(r, method="<img src=x onerror=alert(1)>") if r.method == "covmatch" else r
            for r in _grid()]
    board = leaderboard(records_frame(recs))
    text = write_page(tmp_path, board, {}, []).read_text()
    assert "<h2>Transfer matrix: shapes</h2>" in text and text.count('<table class="transfer">') == 1
    assert "<th>scored with tiny</th><th>scored with tiny-vit</th>" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<td>random</td><td>tiny</td><td>11.00 [10.00, 12.00]</td>" in text
    plain = leaderboard(records_frame([r for r in recs if not r.distilled_backbone]))
    assert "Transfer matrix" not in write_page(tmp_path, plain, {}, []).read_text()


def test_old_records_without_the_new_fields_load():
    from dataclasses import asdict

    from mmdd_bench.records import parse_record, schema_for

    data = asdict(make_record("r1"))
    for name in ("distilled_backbone", "distilled_backbone_weights"):
        data.pop(name)
    data["schema_version"] = 2
    rec = parse_record(json.dumps(data), "old.json")
    assert rec.distilled_backbone is None and rec.schema_version == 2 and schema_for(rec) == 2
    assert schema_for(make_record("t", distilled_backbone="tiny")) == 3


def test_learned_lrs_of_a_transferred_set_are_noted():
    from mmdd_bench.api import _transfer_notes

    d = DistilledSet(torch.zeros(1, 3, 32, 32), "captions", captions=["a"],
                     extras={"lr_image": torch.tensor(0.1), "lr_text": torch.tensor(0.1)})
    notes = _transfer_notes(d, "tiny", "tiny-vit", learned_lrs=True)
    assert len(notes) == 2 and "use_learned_lrs=false" in notes[1]
    assert len(_transfer_notes(d, "tiny", "tiny-vit", learned_lrs=False)) == 1  # trainable-text reads none
    assert _transfer_notes(d, None, "tiny", learned_lrs=True) == []


def test_the_transfer_preset_is_the_script_and_plans(cache_dir, tmp_path):
    from pathlib import Path

    from mmdd_bench.cli import main
    from mmdd_bench.config import load_experiment

    root = Path(__file__).resolve().parent.parent
    script = (root / "scripts" / "reproduce_transfer.sh").read_text()
    assert script.count("mmdd-bench run ") == 1 and "--config configs/shapes-transfer.yaml" in script
    assert "--backbone \"$target\"" in script and "--skip-done" in script
    file = load_experiment(root / "configs" / "shapes-transfer.yaml")
    embedded = load_experiment(root / "configs" / "shapes-embedded.yaml")
    grid = {m for run in embedded.runs for m in run.methods} - {"full-data"}
    assert {m for run in file.runs for m in run.methods} == grid
    assert file.backbone == "tiny-vit" and file.sizes == [100] and file.seeds == [0, 1, 2]
    # random under every protocol the matrix's methods are scored under: each cell's gain has its random
    (random_run,) = [run for run in file.runs if run.methods == ["random"]]
    assert set(random_run.protocols) == {"trainable-text", "frozen-text", "frozen-text-mtt"}
    assert main(["run", "--config", str(root / "configs" / "shapes-transfer.yaml"), "--dry-run", "--json",
                 "--results", str(tmp_path), "--cache-dir", str(cache_dir)]) == 0


# ---- the paper setting's transfer targets ------------------------------------------------------------------------
PAPER_TARGETS = {"paper": "nfnet_l0", "paper-nfresnet50": "nf_resnet50", "paper-vit": "vit_base_patch16_224"}


def _fake_paper_weights(tmp_path, monkeypatch) -> None:
    """Weight files for every paper-setting backbone (their bytes are hashed, never loaded, by describe)."""
    from mmdd_bench.encoders.identity import PAPER_IMAGE_ENCODERS

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "model.safetensors").write_bytes(b"bert weights")
    monkeypatch.setenv("MMDD_BENCH_BERT", str(bert))
    for name, encoder in PAPER_IMAGE_ENCODERS.items():
        (tmp_path / f"{name}.safetensors").write_bytes(f"{name} image weights".encode())
        monkeypatch.setenv(encoder.weights_env, str(tmp_path / f"{name}.safetensors"))


def test_paper_transfer_targets_share_papers_text_tower(tmp_path, monkeypatch):
    """nf_resnet50 and a ViT (the papers' transfer targets) are registered, hash their own image weights and
    share ``paper``'s text tower, so a paper-setting set of any text kind can be scored with them."""
    from mmdd_bench.encoders import BACKBONE_NAMES, describe_backbone

    _fake_paper_weights(tmp_path, monkeypatch)
    specs = {name: describe_backbone(name, tmp_path / "cache") for name in PAPER_TARGETS}
    for name, timm_name in PAPER_TARGETS.items():
        assert name in BACKBONE_NAMES and specs[name].weights_id.startswith(f"{timm_name}-")
    assert len({spec.weights_id for spec in specs.values()}) == 3
    assert len({spec.text_tower_id for spec in specs.values()}) == 1
    assert specs["paper"].text_tower_id.startswith("bert/cls/32-tokens:bert-base-uncased-")
    sentence = _embedding_set(specs["paper"].text_encoder_id, dim=768)
    for target in ("paper-nfresnet50", "paper-vit"):
        check_text(sentence, _spec_backbone(specs[target]))
    with pytest.raises(UsageError, match="share a text tower"):
        check_text(dataclasses.replace(sentence, encoder_id=OLD_TINY_ID), _spec_backbone(specs["paper-vit"]))


def _spec_backbone(spec):
    """A stand-in with the identity fields ``check_text`` reads (building the real encoders needs real weights)."""
    from types import SimpleNamespace

    return SimpleNamespace(name=spec.name, text_encoder_id=spec.text_encoder_id, text_tower_id=spec.text_tower_id)


@pytest.mark.parametrize("target,variable", [("paper-nfresnet50", "MMDD_BENCH_NFRESNET50_WEIGHTS"),
                                             ("paper-vit", "MMDD_BENCH_VIT_WEIGHTS")])
def test_paper_target_with_a_missing_or_broken_checkpoint_is_a_weights_error(target, variable, tmp_path, monkeypatch):
    from mmdd_bench.encoders import build_backbone, describe_backbone

    _fake_paper_weights(tmp_path, monkeypatch)
    monkeypatch.setenv(variable, str(tmp_path / "absent.safetensors"))
    with pytest.raises(WeightsError, match=f"{variable}=.*is not a file"):
        describe_backbone(target, tmp_path / "cache")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setenv(variable, str(broken))
    monkeypatch.setattr("mmdd_bench.encoders.paper.BertTextEncoder", lambda model: model)  # BERT is not the point
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr("transformers.AutoModel.from_pretrained", lambda *a, **k: None)
    with pytest.raises(WeightsError, match=f"cannot load pretrained .* locally .*{variable}"):
        build_backbone(target, tmp_path / "cache")


@pytest.mark.slow
def test_paper_targets_build_at_low_resolution_and_load_a_local_checkpoint(tmp_path, monkeypatch):
    """Both targets build without weights (their feature widths, a ViT at 64 px), and a local timm checkpoint
    (saved with its ImageNet classifier, as published ones are) is what the encoder holds afterwards."""
    import timm
    import transformers
    from safetensors.torch import save_file

    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.encoders.tiny import minilm_path

    for target, width in (("paper-nfresnet50", 2048), ("paper-vit", 768)):
        bb = build_backbone(target, tmp_path / "cache", pretrained=False, image_size=64)
        model = bb.dual_encoder(text_trainable=False, image_head=True, seed=0)
        h, g = model.image_features(torch.randn(2, 3, 64, 64))
        assert bb.image_dim == width and h.shape == (2, width) and g.shape == (2, width) and bb.text_dim == 768
    bert = tmp_path / "bert"  # a small BERT with bert-base-uncased's vocabulary (all-MiniLM-L6-v2 ships it)
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(bert)
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=37)).save_pretrained(bert)
    torch.manual_seed(1)
    checkpoint = timm.create_model("nf_resnet50", pretrained=False).state_dict()
    save_file(checkpoint, str(tmp_path / "nf_resnet50.safetensors"))
    monkeypatch.setenv("MMDD_BENCH_BERT", str(bert))
    monkeypatch.setenv("MMDD_BENCH_NFRESNET50_WEIGHTS", str(tmp_path / "nf_resnet50.safetensors"))
    bb = build_backbone("paper-nfresnet50", tmp_path / "cache")
    loaded = bb.image_encoder.state_dict()
    assert "head.fc.weight" not in loaded and torch.equal(loaded["stem.conv.weight"], checkpoint["stem.conv.weight"])
    assert bb.weights_id.startswith("nf_resnet50-") and "+bert-base-uncased-" in bb.weights_id
