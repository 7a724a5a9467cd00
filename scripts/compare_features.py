"""Compare encoders' features on the same images: the tutorial's published encoders and any others.

    python scripts/compare_features.py DATA_NPZ FILE [FILE ...] [--labels NAME ...]

Each FILE is anything ``encoder.weights`` accepts for the core encoder (the tutorial's .pth files,
a reprlab-train ``last.ckpt``); the tutorial's VAE file needs its log-variance head left out, so
it is not meant here. On the tutorial's split (80:20, seed 2021) of DATA_NPZ, per encoder, with its
stored BatchNorm statistics and with statistics recomputed over the training images, it prints

- ``logreg``: logistic regression (standardised features, scikit-learn) test accuracy, %;
- ``top5``: share of the standardised test features' variance in their 5 largest directions, %;
- ``eff. rank``: the effective rank exp(entropy of the normalised eigenvalues) of that covariance;
- ``NT-Xent``, ``2-neg``: the mean SimCLR loss over two RandomAffine(90, 0.2, 0.8-1.2) views of
  the test images (batches of 1000, BatchNorm in training mode as in pretraining, temperature 0.5)
  with all negatives, and decoupled with 2 sampled negatives (the tutorial's 2-negative loss).

The same seed draws the same views and negatives for every encoder.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from reprlab.analysis.linear_models import logistic_regression_probe
from reprlab.augment import RandomAffine
from reprlab.batchnorm import batchnorms, recalibrate_batchnorm
from reprlab.builders import build_datamodule
from reprlab.encoder_weights import load_weights
from reprlab.encoders import CoreEncoder
from reprlab.features import extract_features
from reprlab.losses import NTXentLoss


def spectrum(features: torch.Tensor) -> tuple[float, float]:
    """(share of variance in the 5 largest directions, effective rank) of standardised features."""
    x = features.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    eig = torch.linalg.eigvalsh(torch.cov(x.T)).clamp_min(0).flip(0)
    p = eig / eig.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(p[:5].sum()), float(entropy.exp())


@torch.no_grad()
def losses(
    encoder: torch.nn.Module, images: torch.Tensor, to_float, seed: int
) -> tuple[float, float]:
    encoder = copy.deepcopy(encoder).train()  # batch statistics, as in pretraining
    augment = RandomAffine(degrees=90, translate=(0.2, 0.2), scale=(0.8, 1.2))
    all_negatives = NTXentLoss(0.5, "all", gather_distributed=False)
    two_negatives = NTXentLoss(0.5, 2, gather_distributed=False, decoupled=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    totals = [0.0, 0.0]
    batches = range(0, len(images) - 999, 1000)
    for start in batches:
        batch = to_float(images[start : start + 1000])
        z1 = encoder(augment(batch, generator=generator))
        z2 = encoder(augment(batch, generator=generator))
        totals[0] += float(all_negatives(z1, z2))
        totals[1] += float(two_negatives(z1, z2, generator=generator))
    return totals[0] / len(batches), totals[1] / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--labels", nargs="*", help="a name per file (default: the file names)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    labels = args.labels or [f.name[:40] for f in args.files]
    if len(labels) != len(args.files):
        parser.error(f"{len(args.files)} files but {len(labels)} labels")
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        cfg = compose(
            "train", overrides=["experiment=tutorial", f"data.path={args.data.resolve()}"]
        )
    data = build_datamodule(cfg.data, cfg.bias, labelled_only=False)
    train, test = data.split_index("train"), data.split_index("test")
    y_train, y_test = data.targets[train], data.targets[test]
    device = torch.device("cpu")
    print("| encoder | BatchNorm | logreg | top5 | eff. rank | NT-Xent | 2-neg |")
    print("|---|---|---|---|---|---|---|")
    for label, path in zip(labels, args.files, strict=True):
        encoder = CoreEncoder(data.input_shape)
        load_weights(encoder, path)
        nt_xent, two_neg = losses(encoder, data.images[test], data.to_float, args.seed)
        for statistics in ("stored", "recomputed"):
            if statistics == "recomputed":
                order = train[
                    torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
                ]
                recalibrate_batchnorm(
                    encoder,
                    lambda order=order: (
                        data.to_float(data.images[order[i : i + 1000]])
                        for i in range(0, len(order), 1000)
                    ),
                    batchnorms(encoder),
                )
            encoder.eval()
            f_train = extract_features(encoder, data.images[train], data.to_float, 1000, device)
            f_test = extract_features(encoder, data.images[test], data.to_float, 1000, device)
            accuracy = logistic_regression_probe(f_train, y_train, f_test, y_test).accuracy
            top5, rank = spectrum(f_test)
            print(
                f"| {label} | {statistics} | {100 * accuracy:.2f} | {100 * top5:.1f} | "
                f"{rank:.1f} | {nt_xent:.3f} | {two_neg:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
