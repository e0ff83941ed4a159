"""Where every data set comes from: publisher URLs, sha256 sums, and the plain functions that turn a
publisher's archive into the layout the DataModules read. `bench fetch <name>` downloads one of
`SOURCES`; a DataModule that finds its files missing names the fix from `FETCH_HELP`.

Small data sets (`Dataset`) carry the publisher's sha256 of every file; multi-GB ones
(`LargeDataset`) ask first and record their sha256 at the first download (datamodules/download.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from datamodules import download as fetch
from datamodules.align import AUDIO_SUFFIXES, align_corpus, audio_of
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")

# -- PTB (Sec. 4.1): Mikolov's copy ---------------------------------------------------------------------
PTB = fetch.Dataset(
    name="ptb",
    url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
    members={f"ptb.{s}.txt": f"simple-examples/data/ptb.{s}.txt" for s in SPLITS},
    sha256={
        "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    },
    homepage="https://www.fit.vutbr.cz/~imikolov/rnnlm/",
)

# -- speech (Sec. 4.2) -------------------------------------------------------------------------------------
_SAMPLE_SUMS = fetch.read_sums(Path(__file__).parent / "checksums" / "timit-sample.sha256")
TIMIT_SAMPLE = fetch.Dataset(
    name="timit-sample",
    url="https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/timit.zip",
    members={name: f"timit/{name}" for name in _SAMPLE_SUMS},
    sha256=_SAMPLE_SUMS,
    homepage="https://www.nltk.org/nltk_data/",
)


def sample_digest(audio: Path) -> str:
    """sha256 of a file's 16-bit little-endian samples: the same for any lossless container."""
    import soundfile as sf  # audio only: PTB and the text tasks run where libsndfile is missing (GPU images)

    samples, _ = sf.read(audio, dtype="int16")
    return hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()


def check_an4_samples(folder: Path) -> None:
    """Every utterance of the list present with exactly its samples, whatever the container (the
    publisher's NIST SPHERE, GitHub's RIFF WAV, the shared FLAC copy)."""
    import soundfile as sf  # as in sample_digest

    wrong = []
    for stem, digest in AN4_SAMPLE_SUMS.items():
        audio = audio_of(folder / stem)
        if audio is None:
            wrong.append(f"{stem}: missing")
            continue
        try:
            same = sample_digest(audio) == digest
        except (RuntimeError, sf.LibsndfileError) as err:
            wrong.append(f"{audio}: unreadable ({err})")
            continue
        if not same:
            wrong.append(f"{audio}: its samples differ from the publisher's")
    if wrong:
        raise DataError(f"{folder}: {len(wrong)} of {len(AN4_SAMPLE_SUMS)} AN4 utterances fail the sample check "
                        f"({'; '.join(wrong[:3])}); delete {folder} and fetch it again")
    extra = [a for a in folder.glob("wav/*/*/*") if a.suffix in AUDIO_SUFFIXES
             and a.relative_to(folder).with_suffix("").as_posix() not in AN4_SAMPLE_SUMS]
    if extra:  # CMU's tarball holds cen7-fash-b, which the copy the list was made from lacks
        log.warning("an4: %d utterance(s) not in the sample list, used unchecked: %s", len(extra),
                    ", ".join(a.name for a in extra[:5]))


def label_an4(folder: Path) -> None:
    """Phone labels beside the audio by forced alignment (`bench align`); resumes a stopped run."""
    s = align_corpus(folder, layout="an4", jobs=os.cpu_count() or 1)
    log.info("an4: %d utterances labelled by forced alignment, %d already were, %d skipped (listed in %s)",
             s.aligned, s.kept, len(s.skipped), s.report)


def prepare_an4(folder: Path) -> None:
    check_an4_samples(folder)
    label_an4(folder)


# sample_digest() of each utterance (not the sha256 of its file): the check holds for any lossless
# container. Made from the shared copy (github.com/cmusphinx/an4 as FLAC), 1,077 utterances, with
#   root = Path("../shared/data/an4")
#   for f in sorted(root.glob("wav/*/*/*.flac")):
#       print(f"{sample_digest(f)}  {f.relative_to(root).with_suffix('').as_posix()}")
AN4_SAMPLE_SUMS = fetch.read_sums(Path(__file__).parent / "checksums" / "an4-samples.sha256")
AN4 = fetch.LargeDataset(
    name="an4",
    archives=(fetch.Archive("http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz",
                            {"wav/": "wav", "etc/": "etc"}),),
    homepage="http://www.speech.cs.cmu.edu/databases/an4/",
    after=prepare_an4,
    ask=False,  # 64 MB
)

# -- translation (Sec. 4.3) ----------------------------------------------------------------------------------
TATOEBA = fetch.Dataset(
    name="tatoeba-fra-eng",
    url="https://www.manythings.org/anki/fra-eng.zip",
    members={"fra.txt": "fra.txt", "_about.txt": "_about.txt"},
    # The 2019-04-07 export; ManyThings re-exports now and then, and a newer file fails this check.
    sha256={"fra.txt": "0bb85dbaa1c896844649094d7eaf2e34bee34e84fe362b26ce7e8f2e12aae104",
            "_about.txt": "79f39a53dbddaf7ab43c801f231089174a611f23987244056f9e3cb5aa79358b"},
    homepage="https://www.manythings.org/anki/",
)

WMT_DEV = fetch.Dataset(
    name="wmt/dev",
    url="https://www.statmt.org/wmt14/dev.tgz",
    members={f"newstest{y}.{lang}": f"dev/newstest{y}.{lang}" for y in (2012, 2013) for lang in ("en", "fr")},
    sha256={"newstest2012.en": "f9e51f85c4948033fc7d77ef427f4d88908a8dd3f778970f62d0baafac3ff97e",
            "newstest2012.fr": "29aa5aff172127f6adf5625cc2f8e44f579d524700e84f1ec0eb14f4f19719e4",
            "newstest2013.en": "ace268a1d9724ca76f6d8e5c720ffdc08f01bdce45630ed8b269dc7918e1c16e",
            "newstest2013.fr": "909b63be5df3eb8c13e1d5967bf3f0adfdb9f6ed5e638c5bffff563ee2ff7f41"},
    homepage="https://www.statmt.org/wmt14/translation-task.html",
)
# Multi30k task 1 (Elliott et al. 2016): 29,000 Flickr30k image descriptions with their French
# translations, the validation set and the 2016 Flickr test set, as the repository's raw/ folder
# holds them (one .gz per file). The sums are of the uncompressed files as in ../shared/data.
_MULTI30K_RAW = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
_MULTI30K_SUMS = {
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
}
MULTI30K = fetch.Dataset(
    name="multi30k",
    url=_MULTI30K_RAW,
    members={},
    sha256=_MULTI30K_SUMS,
    homepage="https://github.com/multi30k/dataset",
    gz_files={name: f"{_MULTI30K_RAW}/{name}.gz" for name in _MULTI30K_SUMS},
)
PUBLISHED = (TATOEBA, WMT_DEV, MULTI30K)  # fetched on first use when a corpus spec points into their folder

# Sutskever et al. trained on Schwenk's 12M-pair selection of these corpora, which is not published
# in this form; `bench fetch wmt14` gives the full WMT'14 English-French training data (~36M pairs).
WMT14_CORPORA = ("europarl-v7.fr-en", "commoncrawl.fr-en", "undoc.2000.fr-en", "news-commentary-v9.fr-en",
                 "giga-fren.release2.fixed")


def concat_wmt14(folder: Path) -> None:
    """parts/<corpus>.{en,fr}[.gz] -> train.en / train.fr, line-aligned, corpus by corpus."""
    for lang in ("en", "fr"):
        out = folder / f"train.{lang}"
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with open(tmp, "wb") as dst:
                for corpus in WMT14_CORPORA:
                    part = folder / "parts" / f"{corpus}.{lang}"
                    _copy_part(part if part.is_file() else part.with_suffix(part.suffix + ".gz"), dst, folder)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, out)
    n_en, n_fr = (sum(1 for _ in open(folder / f"train.{lang}", "rb")) for lang in ("en", "fr"))
    if n_en != n_fr:
        raise DataError(f"{folder}: train.en has {n_en} lines but train.fr {n_fr}; a corpus archive is damaged")


def _copy_part(part: Path, dst: BinaryIO, folder: Path) -> None:
    try:
        with gzip.open(part) if part.suffix == ".gz" else open(part, "rb") as src:
            shutil.copyfileobj(src, dst)
    # A .gz cut short (EOFError), with a bad CRC (BadGzipFile) or damaged data (zlib.error). The
    # archive it came from was recorded in SHA256SUMS once unpacked (a plain tar has no CRC of its own).
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        archive = next((a.url.rsplit("/", 1)[-1] for a in WMT14.archives
                        if any(part.name.startswith(p.rsplit("/", 1)[-1]) for p in a.extract)), "its archive")
        raise DataError(f"{part}: damaged ({err}); delete {folder / '.downloads' / archive} and its line in "
                        f"{folder / 'SHA256SUMS'}, then fetch again") from err


WMT14 = fetch.LargeDataset(
    name="wmt14",
    archives=(
        fetch.Archive("https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz",
                      {"training/europarl-v7.fr-en.": "parts"}),
        fetch.Archive("https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz", {"commoncrawl.fr-en.": "parts"}),
        fetch.Archive("https://www.statmt.org/wmt13/training-parallel-un.tgz", {"un/undoc.2000.fr-en.": "parts"}),
        fetch.Archive("https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz",
                      {"training/news-commentary-v9.fr-en.": "parts"}),
        fetch.Archive("https://www.statmt.org/wmt10/training-giga-fren.tar", {"giga-fren.release2.fixed.": "parts"}),
    ),
    homepage="https://www.statmt.org/wmt14/translation-task.html",
    after=concat_wmt14,
)


# -- captioning (Sec. 4.4) -----------------------------------------------------------------------------------


def flickr8k_to_coco(folder: Path) -> Path:
    """text/Flickr8k.token.txt ("<file>#<n>\t<caption>") + the official split lists -> captions.json
    in the COCO captions format, each image's split in its `split` field (`unused` if unlisted)."""
    split_of = {}
    for split in ("train", "dev", "test"):
        for name in (folder / "text" / f"Flickr_8k.{split}Images.txt").read_text().split():
            split_of[name] = split
    images: dict[str, dict] = {}
    annotations = []
    for lineno, line in enumerate((folder / "text" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, _, caption = line.partition("\t")
        name = key.split("#")[0]
        if not caption or not name:
            raise DataError(f"{folder / 'text' / 'Flickr8k.token.txt'}:{lineno}: expected '<file>#<n><TAB>caption'")
        img = images.setdefault(name, {"id": len(images) + 1, "file_name": name,
                                       "split": split_of.get(name, "unused")})
        annotations.append({"image_id": img["id"], "id": len(annotations) + 1, "caption": caption.strip()})
    out = folder / "captions.json"
    tmp = out.with_name(".captions.json.tmp")
    tmp.write_text(json.dumps({"images": list(images.values()), "annotations": annotations}))
    os.replace(tmp, out)
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err}); delete {path.parent.parent} and fetch it again") from err


def merge_coco_captions(folder: Path) -> Path:
    """annotations/captions_{train,val}2014.json -> one captions.json (Karpathy's split draws from both)."""
    merged: dict[str, Any] = {"images": [], "annotations": []}
    for part in ("train2014", "val2014"):
        data = _read_json(folder / "annotations" / f"captions_{part}.json")
        merged["images"] += data["images"]
        merged["annotations"] += data["annotations"]
    out = folder / "captions.json"
    tmp = out.with_name(".captions.json.tmp")
    tmp.write_text(json.dumps(merged))
    os.replace(tmp, out)
    return out


COCO2014 = fetch.LargeDataset(
    name="coco",
    archives=(
        fetch.Archive("http://images.cocodataset.org/zips/train2014.zip", {"train2014/": "images"}),
        fetch.Archive("http://images.cocodataset.org/zips/val2014.zip", {"val2014/": "images"}),
        fetch.Archive("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                      {"annotations/captions_": "annotations"}),
        fetch.Archive("https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
                      {"dataset_coco.json": "."}),
    ),
    homepage="https://cocodataset.org/#download",
    after=merge_coco_captions,
)


# Flickr8k's publisher hands it out by form (hockenmaier.cs.illinois.edu/8k-pictures.html); these
# are the widely used copies of its two zips. Full-size images: features differ from the shared
# 224x224 copy's, so results on the two are not interchangeable.
FLICKR8K = fetch.LargeDataset(
    name="flickr8k",
    archives=(
        fetch.Archive("https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
                      {"Flicker8k_Dataset/": "images"}),  # sic: the zip's folder is misspelt
        fetch.Archive("https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
                      {name: "text" for name in ("Flickr8k.token.txt", "Flickr_8k.trainImages.txt",
                                                 "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt")}),
    ),
    homepage="https://hockenmaier.cs.illinois.edu/8k-pictures.html",
    after=flickr8k_to_coco,
)


# What to put where when a data set is missing: by its folder under the data root, and "captions" for
# the captioning data sets (COCO, Flickr8k).
FETCH_HELP = {
    "an4": "CMU AN4 with phone labels: `bench fetch an4` downloads it from CMU (64 MB) and labels it by forced "
           "alignment; with the audio and etc/ already there (e.g. from https://github.com/cmusphinx/an4), "
           "`bench align <data-root>/an4` writes the labels",
    "timit-sample": "NLTK's TIMIT sample: https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/"
                    "corpora/timit.zip, unpacked so that timit-sample/dr1-fvmh0/sa1.wav exists",
    "timit": "the LDC TIMIT corpus (LDC93S1, licensed: https://catalog.ldc.upenn.edu/LDC93S1), copied so "
             "that timit/TRAIN/DR1/FCJF0/SI1027.WAV and .PHN exist (upper or lower case both work)",
    "tatoeba-fra-eng": "the ManyThings/Tatoeba export (`bench fetch tatoeba`, or unzip "
                       "https://www.manythings.org/anki/fra-eng.zip so that tatoeba-fra-eng/fra.txt exists)",
    "multi30k": "Multi30k task 1 (`bench fetch multi30k`, 4 MB, or by hand: the train, val and test_2016_flickr "
                "files of https://github.com/multi30k/dataset/tree/master/data/task1/raw, gunzipped, as "
                "multi30k/train.en, train.fr, ...)",
    "wmt": "the WMT news test sets: https://www.statmt.org/wmt14/dev.tgz unpacked, one sentence per line, as "
           "wmt/dev/newstest2013.en and .fr (the .sgm files work too)",
    "wmt14": "the WMT'14 English-French training data (`bench fetch wmt14 --yes`, several GB; or by hand from "
             "https://www.statmt.org/wmt14/translation-task.html: "
             "(Europarl v7, Common Crawl, UN, News Commentary v9, 10^9 French-English), each corpus's "
             "English and French files concatenated in the same order into wmt14/train.en and wmt14/train.fr "
             "(line-aligned); newstest2012/2013 from https://www.statmt.org/wmt14/dev.tgz into wmt/dev/",
    "captions": (
        "COCO: images from https://cocodataset.org/#download (train2014.zip 13 GB, val2014.zip 6 GB) unpacked into "
        "one images/ folder, annotations_trainval2014.zip's captions_train2014.json and captions_val2014.json merged "
        "into captions.json (or run `bench fetch coco2014 --yes`), and Karpathy's split file dataset_coco.json "
        "(https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip). Flickr8k: `bench fetch flickr8k --yes` "
        "(1 GB), or get Flickr8k_Dataset.zip and Flickr8k_text.zip (https://hockenmaier.cs.illinois.edu/8k-pictures.html) "
        "into flickr8k/.downloads/ and run that command to unpack them and write flickr8k/captions.json"),
}

# `bench fetch <name>`
SOURCES: dict[str, fetch.Dataset | fetch.LargeDataset] = {
    "ptb": PTB, "an4": AN4, "timit-sample": TIMIT_SAMPLE, "tatoeba": TATOEBA, "multi30k": MULTI30K, "wmt-dev": WMT_DEV, "wmt14": WMT14,
    "coco2014": COCO2014, "flickr8k": FLICKR8K,
}
