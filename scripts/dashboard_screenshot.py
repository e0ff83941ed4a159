"""The README's picture of the dashboard: results/dashboard.html rendered by headless Chromium
(Debian's `chromium`), the whole page, cropped to its content and scaled to a width a README shows.

    python scripts/dashboard_screenshot.py [--page results/dashboard.html] [--out results/dashboard.png]

Chromium's --screenshot takes the window, not the page, so the window is made taller than any page
here and the blank below the last section is cropped off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

WIDTH, TALL = 1280, 16000  # the page's layout width; a window taller than the page


def screenshot(page: Path, out: Path, width: int = 900) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium here: on Debian or Ubuntu, apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--virtual-time-budget=20000", f"--window-size={WIDTH},{TALL}", f"--screenshot={raw}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=300)
        image = Image.open(raw).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, image.getpixel((0, image.height - 1)))).getbbox()
    if box is None:
        sys.exit(f"{page}: the page rendered blank")
    image = image.crop((0, 0, image.width, min(image.height, box[3] + 20)))
    if image.height >= TALL:
        print(f"warning: {page} is taller than {TALL} px; the picture stops there", file=sys.stderr)
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    tmp_out = out.with_name(f".{out.name}.tmp.png")
    image.quantize(colors=256).save(tmp_out, optimize=True)  # a palette: a quarter of the bytes, text still crisp
    tmp_out.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", type=Path, default=Path("results/dashboard.html"))
    ap.add_argument("--out", type=Path, default=Path("results/dashboard.png"))
    ap.add_argument("--width", type=int, default=900, help="the picture's width in pixels")
    args = ap.parse_args()
    if not args.page.is_file():
        sys.exit(f"{args.page}: no such page; `bench leaderboard --results-dir {args.page.parent}` writes it")
    out = screenshot(args.page, args.out, args.width)
    width, height = Image.open(out).size
    print(f"{out} ({width}x{height})")


if __name__ == "__main__":
    main()
