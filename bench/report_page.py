"""The report page as a browser shows it: a head trained on generated images (random-weight
features, so it makes mistakes to show), its report/index.html rendered by headless
Chromium (Debian's `chromium`) to a PNG.

    python bench/report_page.py [--out docs/report_page.png] [--width 1100] [--height 1700]

Prints where the page and the picture are, the page's size and its thumbnails; look at the
picture. Needs chromium on PATH (apt-get install chromium); the tests parse the page
instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

from headstart.extractor import embed
from headstart.extractor.samples import make_sample_images
from headstart.heads.train import train_head


def render(page: Path, out: Path, width: int, height: int) -> float:
    """Seconds Chromium took to render `page` into `out`."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    started = time.monotonic()
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/report_page.png"))
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1420)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        images = make_sample_images(work / "images", classes=3, per_class=40, seed=0)
        embed(images, work / "features", weights="random", image_size=75)
        trained = train_head(work / "features", work / "head", "svm")
        page = trained.report_dir / "index.html"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        seconds = render(page, args.out.resolve(), args.width, args.height)
        with Image.open(args.out) as picture:  # 256 colours: a third of the bytes, for git
            picture.convert("RGB").quantize(256).save(args.out, optimize=True)
        thumbnails = len(list(trained.report_dir.glob("gallery-*.png")))
        print(
            f"page: {page.stat().st_size:,} bytes, {thumbnails} thumbnails, validation "
            f"accuracy {trained.accuracy:.3f}; rendered in {seconds:.1f} s to {args.out}"
        )


if __name__ == "__main__":
    main()
