"""Benchmark the analyses of a feature matrix: the torch backend against scikit-learn, measured
in the same run on the same synthetic features.

Run (from the repository root, with the project's venv)::

    python scripts/bench_analysis.py                         # 45000x512, 60000x3072, 45000x8192
    python scripts/bench_analysis.py --quick                 # small sizes, a few seconds
    python scripts/bench_analysis.py --sizes 45000x512 --threads 1    # as on a shared CPU
    python scripts/bench_analysis.py --skip-sklearn-above 1000000000   # sklearn only if N*D <= 1e9

What it measures, per size ``N x D`` (training features; ``--test`` test features, default 10,000,
``--classes`` classes, default 10): the seconds of each analysis the run's stage does on such a
matrix -- kNN (k=20 cosine, the test images against the training ones), logistic regression and the
linear SVM (standardised features, the stage's defaults: C=1, tolerance 1e-4, at most 1000
iterations; torch standardises once for both, as the stage does, and logistic regression's time
includes it), k-means (k = classes, n_init 4, on the test features), PCA to 2-D (test features) and
t-SNE (``--tsne-images`` test features, default 2,000, 500 iterations) -- by the torch backend, then
by scikit-learn (``--backends`` to choose), and the ratio sklearn / torch. The probes also print
their test accuracy, iterations and whether they converged, so a fast but unconverged solve cannot
pass for a fast one. kNN is torch in both backends (timed once). ``--products`` also times the
probes' feature-matrix products in autograd's layout against the solvers'. With openTSNE
installed, t-SNE is also timed by openTSNE (its default FFT gradients) for the choice between the
two. Each result also prints its CPU seconds (on a shared machine the wall clock counts the
neighbours' work too). Freed memory is kept for reuse (``reprlab.perf.keep_freed_memory``), as in
a run, whose analysis stage runs in the training process (``--no-keep-freed-memory``: glibc's
default, which maps every large temporary afresh).

The features: ``--latent`` (64) class-dependent Gaussian latent directions mapped into D
dimensions by a random matrix, plus isotropic noise and a common offset -- correlated
dimensions that need standardising, classes that overlap (accuracy well below 100%), like the
penultimate features of a trained encoder. scikit-learn on the large sizes is slow (minutes):
``--skip-sklearn-above N`` leaves it out where N x D exceeds N, and the table says so.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from reprlab.analysis.clustering import clustering_scores, kmeans_clustering
from reprlab.analysis.knn import knn_accuracy
from reprlab.analysis.linear_models import linear_svm_probe, logistic_regression_probe
from reprlab.analysis.projection import pca_2d, tsne_2d
from reprlab.analysis.torch_linear import StandardisedFeatures, standardise, thin_product
from reprlab.perf import keep_freed_memory

DEFAULT_SIZES = "45000x512,60000x3072,45000x8192"
QUICK_SIZES = "3000x64,4000x256"
ANALYSES = ("knn", "logreg", "svm", "kmeans", "pca", "tsne")
BACKENDS = ("torch", "sklearn")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            rows, dims = (int(part) for part in item.lower().split("x"))
        except ValueError as error:
            raise SystemExit(f"--sizes: expected NxD[,NxD...], got {item!r}") from error
        sizes.append((rows, dims))
    return sizes


def synthetic_features(
    rows: int, dims: int, classes: int, latent: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, dims) float32 features and their labels (see the module doc)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (rows,), generator=generator)
    centres = torch.randn(classes, latent, generator=generator) * 0.6
    mixing = torch.randn(latent, dims, generator=generator) / latent**0.5
    features = (centres[labels] + torch.randn(rows, latent, generator=generator)) @ mixing
    features += 0.5 * torch.randn(rows, dims, generator=generator) + 2.0
    return features, labels


# CPU seconds of each timed call, beside the wall seconds: on a shared machine the wall clock
# measures the neighbours too.
CPU_SECONDS: list[float] = []


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start, cpu_start = time.perf_counter(), time.process_time()
    result = function()
    CPU_SECONDS.append(time.process_time() - cpu_start)
    return time.perf_counter() - start, result


@functools.lru_cache(maxsize=1)
def shared_standardised(train_x: torch.Tensor) -> StandardisedFeatures:
    """The training features standardised once for both torch probes, as the stage does: the
    first probe timed pays for it."""
    return standardise(train_x)


def run_analysis(
    name: str, backend: str, train, test, classes: int, seed: int, tsne_images: int = 2000
) -> tuple[float, str]:
    """Seconds of one analysis and a short description of its result."""
    train_x, train_y = train
    test_x, test_y = test
    if name == "knn":
        seconds, accuracy = timed(lambda: knn_accuracy(train_x, train_y, test_x, test_y, 20))
        return seconds, f"acc {accuracy:.4f}"
    if name in ("logreg", "svm"):
        probe = logistic_regression_probe if name == "logreg" else linear_svm_probe
        seconds, result = timed(
            lambda: probe(
                shared_standardised(train_x) if backend == "torch" else train_x,
                train_y,
                test_x,
                test_y,
                seed=seed,
                backend=backend,
            )
        )
        state = "converged" if result.converged else "NOT converged"
        return seconds, f"acc {result.accuracy:.4f}, {result.iterations} it, {state}"
    if name == "kmeans":
        seconds, fit = timed(
            lambda: kmeans_clustering(test_x, classes, seed=seed, n_init=4, backend=backend)
        )
        nmi = clustering_scores(test_y.numpy(), fit.labels)["nmi"]
        return seconds, f"NMI {nmi:.4f}, {fit.iterations} it"
    if name == "pca":
        seconds, (_, explained) = timed(lambda: pca_2d(test_x, backend=backend, seed=seed))
        return seconds, f"explained {explained.sum():.4f}"
    if name == "tsne":
        subset = test_x[torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))]
        subset = subset[:tsne_images]
        seconds, points = timed(lambda: tsne_2d(subset, seed, 30.0, 500, backend=backend))
        return seconds, f"{len(points)} points"
    raise ValueError(name)


def product_seconds(x: torch.Tensor, columns: int = 10, repeats: int = 3) -> dict[str, float]:
    """Seconds of one (N, D) x (D, M) product, and of it with its weight gradient, through
    autograd's ``x @ W`` and through the solvers' :func:`thin_product`."""
    weight = torch.randn(x.shape[1], columns, requires_grad=True)
    upstream = torch.randn(len(x), columns)

    def best(function: Callable[[], Any]) -> float:
        function()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return min(times)

    def with_gradient(product: Callable[[], torch.Tensor]) -> Callable[[], Any]:
        return lambda: torch.autograd.grad(product(), weight, upstream)

    def autograd() -> torch.Tensor:
        return x @ weight

    def thin() -> torch.Tensor:
        return thin_product(x, weight)

    with torch.no_grad():
        forward = {"forward, x @ W": best(autograd), "forward, thin": best(thin)}
    return forward | {
        "with gradient, x @ W": best(with_gradient(autograd)),
        "with gradient, thin": best(with_gradient(thin)),
    }


def opentsne_seconds(
    test_x: torch.Tensor, seed: int, threads: int, tsne_images: int
) -> float | None:
    """openTSNE on the same points (after the same PCA to 50-d), None if not installed."""
    try:
        from openTSNE import TSNE
    except ImportError:
        return None
    from reprlab.analysis.projection import pca_torch

    subset = test_x[torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))]
    reduced = pca_torch(subset[:tsne_images], 50, seed)[0].numpy().astype(np.float64)
    start = time.perf_counter()
    # 250 exaggerated + 250 plain iterations: the stage's 500.
    TSNE(
        perplexity=30, n_iter=250, early_exaggeration_iter=250, random_state=seed, n_jobs=threads
    ).fit(reduced)
    return time.perf_counter() - start


def _cell(seconds: float | None, width: int) -> str:
    """Seconds right-aligned in ``width``, or "-" where that backend did not run."""
    return f"{seconds:{width}.2f}" if seconds is not None else f"{'-':>{width}}"


def _ratio(seconds: dict[str, float]) -> str:
    """sklearn / torch seconds, or "-" unless both ran."""
    if "sklearn" in seconds and "torch" in seconds:
        return f"{seconds['sklearn'] / seconds['torch']:6.1f}x"
    return f"{'-':>7}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help=f"NxD list (default {DEFAULT_SIZES})")
    parser.add_argument(
        "--quick", action="store_true", help=f"small sizes ({QUICK_SIZES}), 2000 test features"
    )
    parser.add_argument("--test", type=int, default=10_000, help="test features per size")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--analyses", default=",".join(ANALYSES))
    parser.add_argument("--backends", default="torch,sklearn")
    parser.add_argument(
        "--skip-sklearn-above",
        type=float,
        default=None,
        help="leave scikit-learn out where N x D is above this (it takes minutes there)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads(),
        help="CPU threads of both backends (default: every core, as the stage's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--products",
        action="store_true",
        help="also time the probes' (N, D) x (D, classes) products in both layouts",
    )
    parser.add_argument("--tsne-images", type=int, default=None, help="2000 (--quick: 300)")
    parser.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed memory for reuse, as a run does (--no-keep-freed-memory: glibc's default)",
    )
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    test = min(args.test, 2000) if args.quick and args.test == 10_000 else args.test
    tsne_images = args.tsne_images or (300 if args.quick else 2000)
    analyses = [name for name in args.analyses.split(",") if name]
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise SystemExit(f"--analyses: unknown {unknown}; accepted: {', '.join(ANALYSES)}")
    backends = [name for name in args.backends.split(",") if name]
    if not backends or set(backends) - set(BACKENDS):
        raise SystemExit(f"--backends: got {args.backends!r}; accepted: {', '.join(BACKENDS)}")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    kept = keep_freed_memory() if args.keep_freed_memory else False
    print(
        f"threads {args.threads}, {test} test features, {args.classes} classes; "
        f"keep freed memory (glibc mallopt): {kept}"
    )
    with threadpool_limits(args.threads):
        for rows, dims in sizes:
            # One draw for both, so the test features share the training ones' classes.
            features, labels = synthetic_features(
                rows + test, dims, args.classes, args.latent, args.seed
            )
            shared_standardised.cache_clear()  # the last size's copy goes before this one's
            train = (features[:rows], labels[:rows])
            test_set = (features[rows:], labels[rows:])
            del features
            skip_sklearn = (
                args.skip_sklearn_above is not None and rows * dims > args.skip_sklearn_above
            )
            print(
                f"\n{rows} x {dims}"
                + (
                    "  (scikit-learn skipped: N x D above the limit)"
                    if skip_sklearn and "sklearn" in backends
                    else ""
                )
            )
            if args.products:
                timing = product_seconds(train[0], args.classes)
                for step in ("forward", "with gradient"):
                    autograd, thin = (timing[key] for key in timing if key.startswith(step))
                    print(
                        f"  {step} product: autograd's layout {autograd * 1e3:.1f} ms, "
                        f"the solvers' {thin * 1e3:.1f} ms, {autograd / thin:.1f}x"
                    )
            print(f"  {'analysis':<8} {'torch s':>9} {'sklearn s':>10} {'ratio':>7}  results")
            running = [
                b for b in BACKENDS if b in backends and not (b == "sklearn" and skip_sklearn)
            ]
            totals = dict.fromkeys(running, 0.0)
            for name in analyses:
                seconds: dict[str, float] = {}
                notes = []
                # kNN is torch in both backends: timed once, counted in each running backend.
                timed_by = (["torch"] if running else []) if name == "knn" else running
                for backend in timed_by:
                    seconds[backend], note = run_analysis(
                        name, backend, train, test_set, args.classes, args.seed, tsne_images
                    )
                    notes.append(f"{backend}: {note}, cpu {CPU_SECONDS[-1]:.2f} s")
                if name == "knn" and seconds:
                    seconds = dict.fromkeys(running, seconds["torch"])
                for backend, value in seconds.items():
                    totals[backend] += value
                print(
                    f"  {name:<8} {_cell(seconds.get('torch'), 9)} "
                    f"{_cell(seconds.get('sklearn'), 10)} {_ratio(seconds)}  " + "; ".join(notes),
                    flush=True,
                )
                if name == "tsne":
                    other = opentsne_seconds(test_set[0], args.seed, args.threads, tsne_images)
                    if other is not None:
                        print(f"  {'openTSNE':<8} {other:9.2f}  (same points, 500 iterations)")
            print(
                f"  {'all':<8} {_cell(totals.get('torch'), 9)} "
                f"{_cell(totals.get('sklearn'), 10)} {_ratio(totals)}"
            )


if __name__ == "__main__":
    main()
