"""What each bias keeps of a dSprites file's training split: images and posX range per shape.

Run (from the repository root, with the project's venv)::

    python scripts/bias_counts.py ../shared/data/dsprites_subset.npz \
        ../shared/data/dsprites_downsampled.npz

For each file and each bias (and its control) it builds the datamodule with the bias study's
split (``data.train_fraction=0.95``, no validation, seed 2021) and prints, per shape, how many
training images the bias keeps and the smallest and largest posX value among them, as a
Markdown table. The same bias should keep the same posX range on every file, whatever grid the
file's own ``latents_classes`` index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from reprlab.data import DSpritesDataModule
except ImportError:  # not installed: use the checkout's sources
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from reprlab.data import DSpritesDataModule

SHAPES = ("square", "ellipse", "heart")
BIASES = ("none", "shape_posX", "shape_posX_spaced", "heart_left")


def kept_by_shape(path: str, bias: str, control: bool) -> list[str]:
    """One cell per shape: ``count [lowest posX, highest posX]`` of the kept training images."""
    dm = DSpritesDataModule(
        source="file",
        path=path,
        num_images=None,
        train_fraction=0.95,
        val_fraction=0.0,
        split_seed=2021,
        batch_size=100,
        bias=bias,
        bias_control=control,
    )
    dm.setup()
    train = dm.split_index("train")
    shapes = dm.latents_values[train, 0].round().long() - 1  # shape values are 1, 2, 3
    pos_x = dm.latents_values[train, 3]
    cells = []
    for shape in range(len(SHAPES)):
        kept = pos_x[shapes == shape]
        span = f" [{kept.min():.4f}, {kept.max():.4f}]" if len(kept) else ""
        cells.append(f"{len(kept)}{span}")
    return [*cells, str(len(train))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="dSprites .npz files")
    args = parser.parse_args()
    print("| file | bias | " + " | ".join(SHAPES) + " | all |")
    print("|---|---|" + "---|" * (len(SHAPES) + 1))
    for path in args.files:
        for bias in BIASES:
            for control in (False, True) if bias != "none" else (False,):
                name = bias + (" (control)" if control else "")
                cells = kept_by_shape(path, bias, control)
                print(f"| {Path(path).name} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
