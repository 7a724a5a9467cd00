"""Initialising a network from weights trained elsewhere: ``encoder.weights=PATH``.

A file may hold a plain ``torch.save`` state dict (torchvision's, the Neuromatch tutorial's), a
``reprlab-train`` checkpoint or any Lightning checkpoint (the state dict under ``state_dict``).
Its tensors are matched to the network's

1. by name, after ``prefix`` is stripped from the file's names (and, for a wrapper such as
   ``ResNet18Encoder.network``, with or without the wrapper's single child's prefix), where every
   name matches; else
2. in order, where the whole sequence of shapes matches exactly (the tutorial's files: the same
   layers as ``CoreEncoder``, other names).

Anything else fails, before any training, naming the file, the first mismatching tensor (name,
expected shape, found shape) and how many matched. ``strict=False`` instead loads what matches
by name and shape and reports the rest (torchvision's ImageNet ResNet-18 into the CIFAR-stem one).
Files are read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

log = logging.getLogger(__name__)

# The keys of an encoder's config that say where its weights come from; not constructor arguments.
WEIGHT_KEYS = ("weights", "weights_key", "weights_prefix", "weights_exclude", "weights_strict")
RECORD_KEY = "weights_record"  # where the run's config keeps what was loaded

# A whole checkpoint's top-level keys that are not the network's tensors.
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")


def architecture_config(encoder_cfg: DictConfig) -> DictConfig:
    """The encoder's config without the weight-source keys: what its constructor takes."""
    container = OmegaConf.to_container(encoder_cfg, resolve=True)
    assert isinstance(container, dict)
    return OmegaConf.create(
        {k: v for k, v in container.items() if k not in (*WEIGHT_KEYS, RECORD_KEY)}
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(
    path: str | Path, key: str | None = None, setting: str = "encoder.weights"
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The file's tensors by name, and the prefix a reprlab checkpoint implies (``encoder.``).

    ``key`` (dots for nesting, e.g. ``state_dict`` or ``model.encoder``) selects a nested dict;
    without it a checkpoint's ``state_dict`` (or ``model``, ...) is used when the file's top level
    holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{setting}={path}: no such file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise ValueError(
            f"{setting}={path} is not a PyTorch state dict or checkpoint readable with "
            f"weights_only=True: {str(error).splitlines()[0]}"
        ) from error
    implied_prefix = None
    if key:
        for part in str(key).split("."):
            if not isinstance(content, Mapping) or part not in content:
                found = sorted(content)[:10] if isinstance(content, Mapping) else type(content)
                raise ValueError(
                    f"{setting}={path}: no key {part!r} of weights_key={key} (found {found})"
                )
            content = content[part]
    elif isinstance(content, Mapping) and not any(
        isinstance(v, torch.Tensor) for v in content.values()
    ):
        nested = next((k for k in _CHECKPOINT_KEYS if isinstance(content.get(k), Mapping)), None)
        if nested is None:
            raise ValueError(
                f"{setting}={path} holds no tensors at its top level and none of the usual "
                f"checkpoint keys {list(_CHECKPOINT_KEYS)}; found keys {sorted(content)[:10]}: "
                f"name the nested state dict with weights_key"
            )
        if "reprlab" in content:  # a reprlab-train checkpoint: the method's module, encoder.*
            implied_prefix = "encoder."
        content = content[nested]
    if not isinstance(content, Mapping) or not content:
        raise ValueError(f"{setting}={path} is not a state dict (found {type(content).__name__})")
    tensors = {str(k): v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{setting}={path}: the state dict holds no tensors")
    return tensors, implied_prefix


def _select(
    tensors: dict[str, torch.Tensor], prefix: str | None, exclude: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with it stripped, less those whose names start with one of
    ``exclude`` (after stripping)."""
    if prefix:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {k: v for k, v in tensors.items() if not any(k.startswith(e) for e in exclude)}


def _target_views(module: nn.Module) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The module's state dict, and again without the prefix of each single-child wrapper level
    (``network.`` of ResNet18Encoder, ``encoder.`` of NormalizedInput), so that a file saved from
    the wrapped network matches by name."""
    views = [("", module.state_dict())]
    prefix, current = "", module
    while True:
        children = list(current.named_children())
        own = [n for n, _ in current.named_parameters(recurse=False)] + [
            n for n, _ in current.named_buffers(recurse=False) if n in current.state_dict()
        ]
        if len(children) != 1 or own:
            return views
        name, current = children[0]
        prefix += name + "."
        views.append((prefix, current.state_dict()))


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _channel_hint(expected: tuple[int, ...], found: tuple[int, ...]) -> str:
    """Why a first convolution's shapes differ, when it is the images' channels."""
    if (
        len(expected) == len(found) == 4
        and expected[1] != found[1]
        and (expected[0], expected[2:]) == (found[0], found[2:])
    ):
        return (
            f" (the file's weights take {found[1]}-channel images, the data has "
            f"{expected[1]} channels)"
        )
    return ""


def match(
    target: dict[str, torch.Tensor],
    found: dict[str, torch.Tensor],
    views: list[tuple[str, dict[str, torch.Tensor]]] | None = None,
) -> tuple[str, dict[str, torch.Tensor], str | None]:
    """Map ``found`` onto ``target``'s names: (how, mapped state dict, error or None).

    ``views`` are (prefix, state dict) alternatives for the target's names (see _target_views).
    """
    views = views or [("", target)]
    for view_prefix, view in views:
        if set(view) == set(found):
            for name, tensor in view.items():
                if _shape(tensor) != _shape(found[name]):
                    return (
                        "name",
                        {},
                        f"tensor {name}: expected shape {_shape(tensor)}, found "
                        f"{_shape(found[name])}{_channel_hint(_shape(tensor), _shape(found[name]))}"
                        f"; {_count_same(view, found)} of {len(view)} tensors matched by name",
                    )
            return "name", {view_prefix + k: v for k, v in found.items()}, None
    expected = list(target.items())
    given = list(found.items())
    in_order = 0
    for (_, want), (_, have) in zip(expected, given, strict=False):
        if _shape(want) != _shape(have):
            break
        in_order += 1
    if in_order == len(expected) == len(given):
        return "order", {name: given[i][1] for i, (name, _) in enumerate(expected)}, None
    # Neither: say where the order breaks, and how far names went.
    by_name = max(_count_same(view, found) for _, view in views)
    if in_order < min(len(expected), len(given)):
        want_name, want = expected[in_order]
        have_name, have = given[in_order]
        where = (
            f"first mismatching tensor #{in_order} {want_name}: expected shape {_shape(want)}, "
            f"found {have_name} with shape {_shape(have)}"
            + _channel_hint(_shape(want), _shape(have))
        )
    elif len(given) < len(expected):
        want_name, want = expected[len(given)]
        where = f"first mismatching tensor #{len(given)} {want_name} (shape {_shape(want)}): absent"
    else:
        have_name, have = given[len(expected)]
        where = f"first mismatching tensor #{len(expected)}: unexpected {have_name} {_shape(have)}"
    return (
        "none",
        {},
        f"{where}; {in_order} of {len(expected)} tensors matched in order ({len(given)} in the "
        f"file), {by_name} by name",
    )


def _count_same(view: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> int:
    return sum(1 for k, v in view.items() if k in found and _shape(found[k]) == _shape(v))


def _partial(
    views: list[tuple[str, dict[str, torch.Tensor]]], found: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The view sharing most names with the file: (what loads, what keeps its init, unused)."""
    view_prefix, view = max(views, key=lambda item: _count_same(item[1], found))
    loaded = {
        view_prefix + k: found[k]
        for k, v in view.items()
        if k in found and _shape(found[k]) == _shape(v)
    }
    kept = [
        f"{k} {_shape(v)}" + (f" (file: {_shape(found[k])})" if k in found else " (not in file)")
        for k, v in view.items()
        if view_prefix + k not in loaded
    ]
    unused = [f"{k} {_shape(v)}" for k, v in found.items() if k not in view]
    return loaded, kept, unused


def load_weights(
    module: nn.Module,
    path: str | Path,
    key: str | None = None,
    prefix: str | None = None,
    exclude: Sequence[str] = (),
    strict: bool = True,
    setting: str = "encoder.weights",
) -> dict[str, Any]:
    """Load the file's tensors into ``module``; returns the record of what was loaded.

    ``setting`` names the config key in error messages. The record holds the file, its sha256,
    how the tensors were matched (``name``, ``order`` or ``partial``) and the counts.
    """
    path = Path(path).expanduser().resolve()
    tensors, implied_prefix = read_state_dict(path, key, setting)
    prefix = implied_prefix if prefix is None else prefix
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    found = _select(tensors, prefix, exclude)
    if not found:
        raise ValueError(
            f"{setting}={path}: no tensors left after weights_prefix={prefix!r} and "
            f"weights_exclude={exclude}; the file's first names: {list(tensors)[:5]}"
        )
    target = module.state_dict()
    views = _target_views(module)
    how, mapped, error = match(target, found, views)
    kept: list[str] = []
    unused: list[str] = []
    if error is not None:
        if strict:
            raise ValueError(
                f"{setting}={path} does not fit {type(module).__name__}: {error}. "
                f"The file's top-level names: {sorted({k.split('.')[0] for k in tensors})[:10]}. "
                f"Set weights_prefix / weights_exclude to select the network's tensors, or "
                f"weights_strict=false to load only those whose names and shapes match."
            )
        how = "partial"
        mapped, kept, unused = _partial(views, found)
        if not mapped:
            raise ValueError(
                f"{setting}={path}: no tensor matches {type(module).__name__} by name and shape "
                f"({error})"
            )
    module.load_state_dict(mapped, strict=how != "partial")
    record = {
        "file": str(path),
        "sha256": sha256(path),
        "matched": how,
        "loaded": len(mapped),
        "total": len(target),
        "in_file": len(found),
        "key": key,
        "prefix": prefix,
    }
    if how == "partial":
        record["kept_init"] = kept
        record["unused"] = unused
    log.info(
        "%s: loaded %d of %d tensors from %s (matched by %s)",
        setting,
        len(mapped),
        len(target),
        path,
        how,
    )
    return record


def load_configured(encoder: nn.Module, encoder_cfg: DictConfig) -> dict[str, Any] | None:
    """``encoder.weights`` and its companion keys applied to ``encoder``; None without a file."""
    path = encoder_cfg.get("weights")
    if not path:
        return None
    return load_weights(
        encoder,
        path,
        key=encoder_cfg.get("weights_key"),
        prefix=encoder_cfg.get("weights_prefix"),
        exclude=list(encoder_cfg.get("weights_exclude") or ()),
        strict=bool(encoder_cfg.get("weights_strict", True)),
    )


def with_record(cfg: DictConfig, record: dict[str, Any] | None) -> DictConfig:
    """``cfg`` with the record kept in ``encoder.weights_record``, so config.yaml, the
    checkpoint's run config and metrics.json say which file, by sha256, the encoder started from."""
    if record is None:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.encoder[RECORD_KEY] = record
    return cfg


def recorded(cfg: DictConfig) -> dict[str, Any] | None:
    """The record :func:`remember` kept, as plain data for metrics.json."""
    record = cfg.encoder.get(RECORD_KEY)
    return None if record is None else OmegaConf.to_container(record, resolve=True)


# ---------------------------------------------------------------- reprlab-eval without checkpoint


def eval_source(ckpt_path: str | None, encoder_cfg: DictConfig) -> str:
    """What ``reprlab-eval`` evaluates: ``checkpoint`` or ``weights``; neither is an error."""
    if ckpt_path:
        return "checkpoint"
    if encoder_cfg.get("weights"):
        return "weights"
    raise ValueError(
        "reprlab-eval needs ckpt_path=PATH (a checkpoint reprlab-train wrote) or "
        "encoder.weights=PATH (a state dict: torch.save, reprlab or Lightning checkpoint), "
        "got neither"
    )


def eval_config(composed: DictConfig) -> DictConfig:
    """The command line's config for evaluating ``encoder.weights``: nothing is pretrained, so
    the method is kept only when it adds to a frozen encoder (it reconstructs: the VAE, whose
    decoder's weights may be given) and is otherwise recorded as none."""
    from hydra.utils import get_class

    cfg = OmegaConf.create(OmegaConf.to_container(composed, resolve=True))
    target = cfg.method.get("_target_")
    if target is not None and not hasattr(get_class(target), "reconstruct"):
        log.info("reprlab-eval without a checkpoint: method %s has nothing to add; none", target)
        cfg.method = {"epochs": 0}
    return cfg


def drop_weights(cfg: DictConfig) -> DictConfig:
    """A checkpoint's config without ``encoder.weights``: the checkpoint's own tensors replace the
    file's, which need not exist where the checkpoint is evaluated."""
    with open_dict(cfg):
        cfg.encoder.weights = None
    return cfg


def save_reconstructions(
    module: nn.Module, images: torch.Tensor, path: Path, device: torch.device
) -> Path | None:
    """A grid of ``images`` (top row) and the module's reconstructions of them (bottom row), for
    methods that reconstruct (the VAE); None for the others."""
    if not hasattr(module, "reconstruct"):
        return None
    from torchvision.utils import make_grid, save_image

    was_training = module.training
    module.eval().to(device)
    images = images.to(device)
    with torch.no_grad():
        grid = make_grid(torch.cat([images, module.reconstruct(images)]), nrow=len(images))
    module.train(was_training)
    save_image(grid.clamp(0, 1).cpu(), path)
    return path


def method_outputs(
    cfg: DictConfig, module: nn.Module, datamodule: Any, run_dir: Path
) -> dict[str, Any]:
    """What ``reprlab-eval`` adds for a method module: the records of the weights it loaded
    (``method_weights``), and for a reconstructing method (the VAE) reconstructions.png: the first
    test images above their reconstructions."""
    from reprlab.dist import compute_device

    outputs: dict[str, Any] = {}
    records = getattr(module, "weights_records", None)
    if records:
        outputs["method_weights"] = records
    if not hasattr(module, "reconstruct"):
        return outputs
    count = int(cfg.method.get("num_logged_images", 8))
    test_index = datamodule.split_index("test")[:count]
    images = datamodule.to_float(datamodule.images[test_index])
    device = compute_device(cfg.trainer)
    path = save_reconstructions(module, images, run_dir / "reconstructions.png", device)
    if path is not None:
        outputs["reconstructions"] = str(path)
    return outputs
