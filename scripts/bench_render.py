"""Benchmark the procedural dSprites renderer, and measure how close it draws the real images.

Run (from the repository root, with the project's venv)::

    .venv/bin/python scripts/bench_render.py             # 20,000 images + IoU vs the real subset
    .venv/bin/python scripts/bench_render.py --full      # + all 737,280 images
    .venv/bin/python scripts/bench_render.py --data ../shared/data/dsprites_downsampled.npz

What it prints:

* seconds to render 20,000 images drawn at random from the full set (``--repeat`` timed runs
  after one untimed warm-up; best and median), and with ``--full`` all 737,280 in file order
  (the work ``render_all`` does on a cache miss);
* if the real data file (``--data``, default ``../shared/data/dsprites_subset.npz`` beside the
  checkout, or ``$REPRLAB_SHARED_DATA/dsprites_subset.npz``) is there: the seconds to render its
  images and the mean intersection-over-union of the 1-pixels between the rendered and the real
  images, overall and per shape, plus the mean number of differing pixels per image. Images are
  matched through the file's ``original_dataset_indices`` when it has them (the downsampled
  file's ``latents_classes`` index its own smaller grids), else its ``latents_classes``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    from reprlab.data import render
except ImportError:  # not installed: use the checkout's sources
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from reprlab.data import render

DEFAULT_DATA = (
    Path(
        os.environ.get(
            "REPRLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
        )
    )
    / "dsprites_subset.npz"
)


def timed(classes: np.ndarray, repeat: int, chunk_size: int) -> tuple[np.ndarray, list[float]]:
    """The images and the seconds of each of ``repeat`` renders (after one warm-up render)."""
    images = render.render(classes[: min(len(classes), 2000)], chunk_size=chunk_size)
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        images = render.render(classes, chunk_size=chunk_size)
        seconds.append(time.perf_counter() - start)
    return images, seconds


def describe(count: int, seconds: list[float]) -> str:
    best, median = min(seconds), statistics.median(seconds)
    return (
        f"render {count:>7,} images: best {best:7.3f} s, median {median:7.3f} s "
        f"({count / best:,.0f} images/s, {len(seconds)} runs)"
    )


def real_classes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Full-file class indices and images of a real dSprites npz."""
    with np.load(path, allow_pickle=False) as archive:
        images = archive["imgs"]
        if "original_dataset_indices" in archive.files:
            classes = render.all_latent_classes()[archive["original_dataset_indices"]]
        else:
            classes = archive["latents_classes"]
    return classes, images


def iou_report(ours: np.ndarray, real: np.ndarray, shapes: np.ndarray) -> str:
    ours, real = ours.astype(bool), real.astype(bool)
    union = (ours | real).sum(axis=(1, 2))
    iou = (ours & real).sum(axis=(1, 2)) / np.maximum(union, 1)
    lines = [f"mean IoU {iou.mean():.5f} (min {iou.min():.4f}) over {len(iou):,} images"]
    for shape, name in enumerate(render.SHAPE_NAMES):
        chosen = shapes == shape
        if chosen.any():
            lines.append(f"  {name:<8} {iou[chosen].mean():.5f} ({chosen.sum():,} images)")
    differing = (ours ^ real).sum(axis=(1, 2))
    lines.append(
        f"differing pixels per image: mean {differing.mean():.4f}, "
        f"images with any: {(differing > 0).mean():.2%}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real dSprites .npz")
    parser.add_argument("--full", action="store_true", help="also time all 737,280 images")
    parser.add_argument("--images", type=int, default=20000, help="random images to time")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the random set")
    parser.add_argument("--chunk-size", type=int, default=render._DEFAULT_CHUNK)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    all_classes = render.all_latent_classes()
    rng = np.random.default_rng(args.seed)
    chosen = all_classes[rng.choice(len(all_classes), size=args.images, replace=False)]
    _, seconds = timed(chosen, args.repeat, args.chunk_size)
    print(describe(len(chosen), seconds), flush=True)

    if args.full:
        _, seconds = timed(all_classes, 1, args.chunk_size)
        print(describe(len(all_classes), seconds), flush=True)

    if args.data.is_file():
        classes, real = real_classes(args.data)
        ours, seconds = timed(classes, 1, args.chunk_size)
        print(f"{args.data}: {describe(len(classes), seconds)}")
        print(iou_report(ours, real, classes[:, 0]))
    else:
        print(f"no real data at {args.data}: IoU not measured (give --data)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
