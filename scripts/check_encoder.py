"""Do the offline ImageNet weights really see? Top-5 ImageNet classes of a few COCO images.

    python scripts/check_encoder.py --data-root ../shared/data --out results/encoder_check.md

Runs the captioning encoder's own preprocessing (datamodules.captions.FeatureCache) and its ImageNet
head, under the normalisation the encoder uses and under the other common one, beside each image's
first human caption, and the same for the randomly initialised encoder. A reader checks the classes
against the captions; the test suite checks the top class of known images.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.captions import FeatureCache  # noqa: E402
from datamodules.image_encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, build_encoder  # noqa: E402

CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet-1k class names, shipped with torchvision
DEFAULT_IMAGES = ("000000000802.jpg", "000000018575.jpg", "000000020247.jpg")


def top5(encoder: Encoder, image: Path, size: int = 224) -> list[tuple[str, float]]:
    pixels = FeatureCache(encoder, size, Path("/nonexistent")).load_image(image)
    with torch.no_grad():
        probs = encoder.classifier(encoder.net(pixels.unsqueeze(0))).softmax(-1)[0]
    p, idx = probs.topk(5)
    return [(CATEGORIES[i], float(q)) for q, i in zip(p.tolist(), idx.tolist())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("data"))
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--images", nargs="*", default=list(DEFAULT_IMAGES), help="file names in coco-mini/images")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folder = args.data_root / "coco-mini"
    meta = json.loads((folder / "captions.json").read_text())
    ids = {img["file_name"]: img["id"] for img in meta["images"]}
    first = {}
    for ann in meta["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"].strip())

    trained = build_encoder(args.encoder, pretrained=True)
    other = Encoder(trained.net, trained.dim, IMAGENET_MEAN, IMAGENET_STD, trained.key, trained.description,
                    trained.classifier) if trained.mean != IMAGENET_MEAN else None
    random = build_encoder(args.encoder, pretrained=False)
    lines = [f"# {trained.description}: top-5 ImageNet classes", "",
             f"Command: `{shlex.join(['python', *sys.argv])}`", ""]
    for name in args.images:
        lines += [f"## {name}", "", f"First COCO caption: \"{first.get(ids.get(name), '?')}\"", ""]
        variants = [(f"pretrained, its own normalisation (mean {trained.mean[0]:.3f}, std {trained.std[0]:.3f})", trained)]
        if other is not None:
            variants.append(("pretrained, ImageNet mean/std instead", other))
        variants.append(("random init (seed 0)", random))
        for label, enc in variants:
            classes = ", ".join(f"{c} {p:.2f}" for c, p in top5(enc, folder / "images" / name))
            lines.append(f"- {label}: {classes}")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
