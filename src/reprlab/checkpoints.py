"""Finding and checking the checkpoints a run resumes from or is evaluated on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """``None``, ``last`` (this run folder's last.ckpt) or a path that must exist."""
    if ckpt_path is None:
        return None
    path = (
        run_dir / "checkpoints" / "last.ckpt"
        if str(ckpt_path) == "last"
        else Path(ckpt_path).expanduser()
    )
    if not path.is_file():
        hint = (
            " (ckpt_path=last looks in this run folder: set hydra.run.dir to the run to resume)"
            if str(ckpt_path) == "last"
            else ""
        )
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no checkpoint at {path}{hint}")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise ValueError(f"ckpt_path={path} is not a readable checkpoint: {error}") from error
    if (
        not isinstance(checkpoint, dict)
        or "reprlab" not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise ValueError(f"ckpt_path={path} is not a reprlab pretraining checkpoint")
    return checkpoint


def check_compatible(checkpoint: dict[str, Any], path: Path, method: Any, encoder: Any) -> None:
    """Refuse to resume a run from a checkpoint of another method or encoder."""
    saved = checkpoint["reprlab"].get("config") or {}
    for group, current in (("method", method), ("encoder", encoder)):
        saved_target = (saved.get(group) or {}).get("_target_")
        current_target = current.get("_target_")
        if saved_target != current_target:
            raise ValueError(
                f"ckpt_path={path} was trained with {group} {saved_target}, "
                f"but this run uses {current_target}"
            )


def resave_last_checkpoint(trainer: Any) -> None:
    """Write the trainer's model into its ``last.ckpt`` again (atomically), so that the file holds
    what is tested and probed after fitting (e.g. precise BatchNorm statistics), not the state at
    the last epoch's end. Every process calls it; under DDP rank 0 writes."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") if callback is not None else ""
    if path:
        trainer.save_checkpoint(path)
