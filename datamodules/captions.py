"""Image captions in the COCO captions format, with CNN features computed once and cached.

    images/                      the image files
    captions.json                {"images": [{"id", "file_name", ["split"]}, ...],
                                  "annotations": [{"image_id", "caption"}, ...]}  (captions_train2014.json)

Splits, first that applies: Karpathy's `dataset_coco.json` (`karpathy_split:`; restval counts as
train); each image's own `split` field (Flickr8k here: train / dev / test); a salted hash of the
image id (`split: {valid, test}` fractions). Extra test sets (`test_sets:`) score all their images.

Captions follow NeuralTalk's preprocessing (Karpathy's prepro for Show-and-Tell style models):
lower-case, punctuation removed, split on white space; words seen fewer than `min_count` (5) times
in training captions become <unk>; training captions are cut to `max_len` (16) words. References
for BLEU get the same lower-casing and punctuation stripping (as the COCO caption evaluation does),
so a hypothesis is never marked wrong for case or commas.

Each image becomes one feature vector from a frozen ImageNet CNN (datamodules/image_encoders.py),
computed once and cached per image under the project cache, keyed by the image file's sha256, the
encoder's weights and the whole pixel transform (resize, crop, interpolation, normalisation): a
changed image, encoder or transform recomputes, a renamed file does not. The transform is the one
the encoder's ImageNet weights were evaluated with (short side 256, centre crop 224), unless `resize`
says otherwise.
With `finetune: true` batches carry the cropped pixels instead and the model trains its own copy
of the CNN (BatchNorm statistics kept from ImageNet) at `model.encoder_lr`.

A batch holds B images and N captions of them (training: one caption per image, every caption of
every training image once per epoch; evaluation: all captions of each image, so perplexity uses
them all while each image is decoded once):

    feats     (B, D)      image features
    cap_in    (T, N)      <bos> w1 .. wn <pad> ..
    cap_out   (T, N)      w1 .. wn <eos> <pad> ..
    cap_image (N,)        which of the B images each caption describes
    refs      B lists of normalised reference captions
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from tqdm import tqdm

from datamodules import download as fetch
from datamodules import sources
from datamodules.bad_records import BadRecordPolicy, BadRecords
from datamodules.base import StreamsDataModule
from datamodules.image_encoders import Encoder, build_encoder
from datamodules.vocab import WordVocab
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "restval": "train", "dev": "valid", "val": "valid", "valid": "valid", "test": "test"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")

def normalize_caption(text: str) -> list[str]:
    """NeuralTalk's caption preprocessing: 'A dog, running.' -> ['a', 'dog', 'running']."""
    return _PUNCT.sub("", text.lower()).split()


@dataclass(frozen=True)
class ImageEntry:
    id: Any
    path: Path
    captions: tuple[str, ...]  # raw captions
    split: str | None = None  # from the JSON's own `split` field, if any


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: not found. Put {sources.FETCH_HELP['captions']}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def read_coco(images_dir: Path, captions_json: Path) -> list[ImageEntry]:
    """Images with at least one non-empty caption; everything skipped is counted and logged with
    examples, never a crash halfway through an epoch. Whether each image's file is there is left to
    `present`: a missing one is a bad record of the split it belongs to."""
    data = _load_json(captions_json)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{captions_json}: expected the COCO captions format, an object with `images` and "
                        f"`annotations` lists")
    caps: dict[Any, list[str]] = {}
    known = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataError(f"{captions_json}: images[{i}] lacks `id` or `file_name`")
        if not isinstance(img["file_name"], str) or not isinstance(img["id"], (int, str)) \
                or not isinstance(img.get("split"), (str, type(None))):
            raise DataError(f"{captions_json}: images[{i}] has an `id`, `file_name` or `split` that is not a number "
                            f"or text ({img})")
        known.add(img["id"])
    orphans, empty = [], 0
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{captions_json}: annotations[{i}] lacks `image_id` or `caption`")
        if not isinstance(ann["image_id"], (int, str)):
            raise DataError(f"{captions_json}: annotations[{i}] has `image_id` {ann['image_id']!r}, not a number or text")
        if ann["caption"] is None:  # as an empty caption, not the word "None"
            empty += 1
        elif ann["image_id"] not in known:
            orphans.append(ann["image_id"])
        elif not normalize_caption(str(ann["caption"])):
            empty += 1
        else:
            caps.setdefault(ann["image_id"], []).append(str(ann["caption"]).strip())
    if orphans:
        log.warning("%s: skipped %d captions of image ids not in `images` (e.g. %s)", captions_json, len(orphans),
                    orphans[:3])
    if empty:
        log.warning("%s: skipped %d empty captions", captions_json, empty)
    out, uncaptioned = [], 0
    for img in data["images"]:
        if img["id"] not in caps:
            uncaptioned += 1
        else:
            out.append(ImageEntry(img["id"], images_dir / img["file_name"], tuple(caps[img["id"]]), img.get("split")))
    if uncaptioned:
        log.warning("%s: %d images have no caption and are left out", captions_json, uncaptioned)
    if not out:
        raise DataError(f"{captions_json}: no image with a caption")
    return out


def present(images: list[ImageEntry], bad: BadRecords, listed_in: Path) -> list[ImageEntry]:
    """The images whose file is there. A missing one is a bad record: a strict corpus stops at the
    first, counting them all (a folder half copied is one fix, not one run per file); a tolerant one
    skips and notes each."""
    found, missing = [], []
    for img in images:
        (found if img.path.is_file() else missing).append(img)
    if missing and not bad.tolerant:
        raise DataError(f"{missing[0].path}: image file not found ({len(missing)} of the {len(images)} {bad.source} "
                        f"listed in {listed_in} are missing); put them in {missing[0].path.parent} or fetch the data "
                        f"set again")
    for img in missing:
        bad.add(DataError(f"{img.path}: image file not found (listed in {listed_in})"))
    return found


def assign_splits(images: list[ImageEntry], karpathy: Path | None, fractions: dict[str, float],
                  salt: str) -> dict[str, list[ImageEntry]]:
    by_file: dict[str, str] = {}
    if karpathy is not None:
        listed = _load_json(karpathy)
        images_of = listed.get("images") if isinstance(listed, dict) else None
        if not isinstance(images_of, list) or not all(isinstance(i, dict) and isinstance(i.get("filename"), str)
                                                       and isinstance(i.get("split"), str) for i in images_of):
            raise DataError(f"{karpathy}: not Karpathy's dataset_*.json (an object whose `images` each have "
                            f"`filename` and `split`); check data.karpathy_split")
        for img in images_of:
            by_file[img["filename"]] = SPLIT_NAMES.get(img["split"], "unused")
    splits: dict[str, list[ImageEntry]] = {"train": [], "valid": [], "test": []}
    for img in images:
        if karpathy is not None:
            split = by_file.get(img.path.name, "unused")
        elif img.split is not None:
            split = SPLIT_NAMES.get(img.split, "unused")
        else:
            u = int.from_bytes(hashlib.sha256(f"{salt}\0{img.id}".encode()).digest()[:8], "big") / 2**64
            test, valid = fractions.get("test", 0.05), fractions.get("valid", 0.05)
            split = "test" if u < test else "valid" if u < test + valid else "train"
        splits.setdefault(split, []).append(img)
    for name in ("train", "valid", "test"):
        if not splits[name]:
            raise DataError(f"the {name} split is empty: check the images' `split` fields, karpathy_split or split")
    return splits


class FeatureCache:
    """One feature vector per image file, computed by `encoder` on a miss and kept on disk.

    Pixels: decoded as RGB, short side resized to `resize` (default: what the encoder's weights
    declare, 256 for a 224 crop), centre crop `image_size`, normalised as the weights expect. The
    cache folder is named by the weights and a digest of that whole transform, so a change to any
    step computes new features instead of reusing stale ones."""

    def __init__(self, encoder: Encoder, image_size: int, cache_dir: Path, batch_size: int = 32,
                 resize: int | None = None) -> None:
        self.encoder, self.batch_size = encoder, batch_size
        resize = resize or round(image_size * encoder.resize_ratio)
        if resize < image_size:
            raise DataError(f"image resize {resize} is smaller than the {image_size}-pixel crop")
        self.transform = v2.Compose([
            v2.Resize(resize, interpolation=v2.InterpolationMode(encoder.interpolation), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(encoder.mean, encoder.std),
        ])
        digest = hashlib.sha256(f"RGB {self.transform!r}".encode()).hexdigest()[:10]
        self.folder = cache_dir / "caption-features" / f"{encoder.key}-{resize}to{image_size}px-{digest}"

    def load_image(self, path: Path, data: bytes | None = None) -> Tensor:
        data = path.read_bytes() if data is None else data
        if not data:  # torch.frombuffer refuses an empty buffer with a ValueError
            raise DataError(f"{path}: not a decodable image (an empty file)")
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise DataError(f"{path}: not a decodable image ({err})") from err
        if image.ndim == 4:  # an animated GIF: its frames; the first is the picture
            image = image[0]
        return self.transform(image)

    def __call__(self, images: list[ImageEntry], desc: str,
                 bad: BadRecords | None = None) -> tuple[Tensor, list[ImageEntry]]:
        """(N, D) features of the images that decode, and those images. A file that does not read or
        decode is an error, or, where `bad` tolerates it (a large corpus), skipped and noted there."""
        bad = bad or BadRecords(desc, len(images))
        feats: dict[int, Tensor] = {}
        todo: list[tuple[int, Path, Path, bytes]] = []
        for i, img in enumerate(images):
            try:
                data = img.path.read_bytes()
            except OSError as err:
                bad.add(DataError(f"{img.path}: unreadable ({err.strerror or err})"))
                continue
            entry = self.folder / f"{hashlib.sha256(data).hexdigest()}.pt"
            if entry.is_file():
                try:
                    feats[i] = torch.load(entry, weights_only=True)
                    continue
                except Exception:  # a damaged entry is recomputed, never trusted
                    log.warning("%s: unreadable cache entry, recomputing", entry)
            todo.append((i, img.path, entry, data))
        if todo:
            self.folder.mkdir(parents=True, exist_ok=True)
            log.info("%s: computing %s features of %d images (cached for later runs in %s)", desc,
                     self.encoder.key, len(todo), self.folder)
            with torch.no_grad(), tqdm(total=len(todo), desc=f"encode {desc}", unit="img") as bar:
                for start in range(0, len(todo), self.batch_size):
                    chunk, pixels = [], []
                    for i, path, entry, data in todo[start : start + self.batch_size]:
                        try:
                            pixels.append(self.load_image(path, data))
                            chunk.append((i, entry))
                        except DataError as err:
                            bad.add(err)
                    if pixels:
                        out = self.encoder.net(torch.stack(pixels)).float()
                        for (i, entry), vec in zip(chunk, out):
                            feats[i] = vec.clone()
                            tmp = entry.with_suffix(f".{os.getpid()}.tmp")
                            torch.save(feats[i], tmp)
                            os.replace(tmp, entry)
                    bar.update(len(todo[start : start + self.batch_size]))
        kept = sorted(feats)
        if not kept:
            raise DataError(f"{desc}: no image could be read and decoded"
                            + (f"; the first: {bad.found[0]}" if bad.found else ""))
        return torch.stack([feats[i] for i in kept]), [images[i] for i in kept]


class Pixels:
    """Images decoded and cropped on access, for fine-tuning the CNN (the feature pass in setup()
    has already weeded out files that do not decode)."""

    def __init__(self, paths: list[Path], cache: FeatureCache) -> None:
        self.paths, self.cache = paths, cache

    def __getitem__(self, i: int) -> Tensor:
        return self.cache.load_image(self.paths[i])


class CaptionSet(Dataset):
    """Training (`per_caption`): one item per caption. Evaluation: one item per image, all its captions.
    `feats` holds an image's cached feature vector, or its pixels (`Pixels`) when the CNN is fine-tuned."""

    def __init__(self, feats: Tensor | Pixels, captions: list[list[list[int]]], refs: list[list[str]],
                 per_caption: bool) -> None:
        self.feats, self.captions, self.refs = feats, captions, refs
        self.index = ([(i, j) for i, caps in enumerate(captions) for j in range(len(caps))] if per_caption
                      else [(i, None) for i in range(len(captions))])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[Tensor, list[list[int]], list[str]]:
        i, j = self.index[k]
        caps = self.captions[i] if j is None else [self.captions[i][j]]
        return self.feats[i], caps, self.refs[i]


def collate(items: list[tuple[Tensor, list[list[int]], list[str]]], pad: int, bos: int, eos: int) -> dict[str, Any]:
    caps = [c for _, cs, _ in items for c in cs]
    pad_seq = torch.nn.utils.rnn.pad_sequence
    x = torch.stack([f for f, _, _ in items])
    return {
        "images" if x.dim() == 4 else "feats": x,  # (B, 3, H, W) pixels to fine-tune on, or (B, D) features
        "cap_in": pad_seq([torch.tensor([bos, *c]) for c in caps], padding_value=pad),
        "cap_out": pad_seq([torch.tensor([*c, eos]) for c in caps], padding_value=pad),
        "cap_image": torch.tensor([i for i, (_, cs, _) in enumerate(items) for _ in cs]),
        "num_tokens": torch.tensor(sum(len(c) + 1 for c in caps)),
        "refs": [r for _, _, r in items],
    }


class CaptionsDataModule(StreamsDataModule):
    def __init__(
        self,
        data_root: str | Path = "data",
        images: str = "flickr8k/images",
        captions: str = "flickr8k/captions.json",
        karpathy_split: str | None = None,
        split: dict[str, Any] | None = None,
        test_sets: dict[str, dict[str, str]] | None = None,
        encoder: str = "efficientnet_lite0",
        pretrained: bool = True,
        encoder_weights: str | None = None,
        image_size: int = 224,
        resize: int | None = None,
        min_count: int = 5,
        max_len: int = 16,
        batch_size: int = 128,
        eval_batch_size: int = 100,
        finetune: bool = False,
        cache_dir: str | Path | None = None,
        bad_records: dict[str, Any] | None = None,
        test_only: bool = False,
    ) -> None:
        super().__init__()
        self.keep_settings()
        self.test_only = test_only
        self.data_root = Path(data_root)
        self.images_dir, self.captions_json = self._path(images), self._path(captions)
        self.karpathy = self._path(karpathy_split) if karpathy_split else None
        self.split = {"valid": 0.05, "test": 0.05, "salt": "rnnreg", **(split or {})}
        self.test_sets = dict(test_sets or {})
        for name, spec in self.test_sets.items():
            if not isinstance(spec, dict) or set(spec) != {"images", "captions"}:
                raise DataError(f"data.test_sets.{name}: give `images:` (a folder) and `captions:` (a COCO captions "
                                f"file), nothing else; got {spec!r}")
        self.encoder_args = (encoder, pretrained, encoder_weights)
        self.image_size, self.resize, self.min_count, self.max_len = image_size, resize, min_count, max_len
        self.batch_size, self.eval_batch_size, self.finetune = batch_size, eval_batch_size, finetune
        self.cache_dir = Path(cache_dir) if cache_dir else fetch.default_cache_dir()
        self.bad_records = BadRecordPolicy.of(bad_records)
        self.sets: dict[str, CaptionSet] = {}

    def _path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.data_root / path

    def data_files(self) -> list[Path]:
        """What the run reads: the settings hash covers their names and sizes, so Flickr8k's
        224x224 re-encoded copy does not pool with the publisher's full-size images."""
        extra = [self._path(spec[k]) for spec in self.test_sets.values() for k in ("images", "captions")]
        if self.test_only:
            return extra
        return [self.images_dir, self.captions_json, *([self.karpathy] if self.karpathy else []), *extra]

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        if self.test_only and not self.restored:
            raise DataError("test_only needs the vocabulary of a trained model (load_state_dict)")
        entries = {}
        if not self.test_only:
            if not self.images_dir.is_dir():
                raise DataError(f"{self.images_dir}: image folder not found. Put {sources.FETCH_HELP['captions']}")
            entries = assign_splits(read_coco(self.images_dir, self.captions_json), self.karpathy, self.split,
                                    str(self.split["salt"]))
        listed_in = dict.fromkeys(entries, self.captions_json)
        for name, spec in self.test_sets.items():
            listed_in[f"test_{name}"] = self._path(spec["captions"])
            entries[f"test_{name}"] = read_coco(self._path(spec["images"]), listed_in[f"test_{name}"])
        streams = [*([] if self.test_only else ["train", "valid"]), *self.stream_names()]
        cache = self.feature_cache()
        feats = {}
        for name in streams:
            bad = BadRecords(f"{name} images", len(entries[name]), self.bad_records)
            entries[name] = present(entries[name], bad, listed_in[name])
            feats[name], entries[name] = cache(entries[name], name, bad)
            self.skipped += bad.check()
        if self.restored:
            self.vocab = WordVocab(self.restored["itos"])
        else:
            train_words = [normalize_caption(c)[: self.max_len] for img in entries["train"] for c in img.captions]
            self.vocab = WordVocab.build(train_words, min_count=self.min_count)
        for name in streams:
            words = [[normalize_caption(c) for c in img.captions] for img in entries[name]]
            ids = [[self.vocab.encode(w[: self.max_len] if name == "train" else w) for w in ws] for ws in words]
            refs = [[" ".join(w) for w in ws] for ws in words]
            source = Pixels([e.path for e in entries[name]], cache) if self.finetune else feats[name]
            self.sets[name] = CaptionSet(source, ids, refs, per_caption=name == "train")
        log.info("captions: %s images; %d-word vocabulary (min count %d); encoder %s", 
                 {k: len(v.captions) for k, v in self.sets.items()}, len(self.vocab), self.min_count,
                 self.encoder.description)

    def feature_cache(self) -> FeatureCache:
        """The image pipeline the model was trained on: encoder, resize, crop, normalisation. Its
        name covers the encoder's weights and the whole transform; with a checkpoint's state, one
        that differs (other weights behind the same name) is refused, not silently used."""
        if not hasattr(self, "encoder"):
            self.encoder = build_encoder(*self.encoder_args)
        cache = FeatureCache(self.encoder, self.image_size, self.cache_dir, resize=self.resize)
        trained = (self.restored or {}).get("pipeline")
        if trained and trained != cache.folder.name:
            raise DataError(f"the image encoder here ({cache.folder.name}) is not the one the model was trained with "
                            f"({trained}): other weights or another transform; install the same weights")
        self.pipeline = cache.folder.name
        return cache

    def learned(self) -> dict[str, Any]:
        if not hasattr(self, "vocab"):
            return {}
        return {"itos": self.vocab.itos, "pipeline": getattr(self, "pipeline", "")}

    def model_kwargs(self) -> dict[str, Any]:
        description = self.encoder.description + (", fine-tuned" if self.finetune else "")
        return {"feat_dim": self.encoder.dim, "itos": self.vocab.itos, "test_streams": self.stream_names(),
                "encoder": description, "finetune": list(self.encoder_args) if self.finetune else None}

    def loader(self, name: str, shuffle: bool) -> DataLoader:
        v = self.vocab
        data = self.sets[name]
        return DataLoader(data, batch_size=self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle,
                          sampler=None if shuffle else self.eval_sampler(data, f"the {name} images"),
                          collate_fn=functools.partial(collate, pad=v.pad, bos=v.bos, eos=v.eos))
