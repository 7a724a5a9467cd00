"""What every pretraining method shares: the encoder, a linear classifier head, the optimiser and
the metrics. A method only says how it turns a batch of images into its own loss."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from reprlab.optim import check_optim, configure_optimization
from reprlab.steps import StagedSteps


class RepresentationModule(StagedSteps, L.LightningModule):
    """Base LightningModule: encoder + linear classifier head.

    Subclasses implement :meth:`objective`, returning their loss (or ``None``) and the encoder
    features the classifier head should see. The head is trained with cross-entropy on the labels:

    - ``detach_classifier = True`` (self-supervised methods): the head sees detached features, so it
      is an online probe that reports ``train/acc`` and ``val/acc`` every epoch without the labels
      ever reaching the encoder.
    - ``detach_classifier = False`` (supervised): the head's loss trains the encoder end to end.

    Metrics are logged as ``{train,val,test}/{loss,ce,acc}`` plus whatever the method adds.
    """

    detach_classifier: bool = True

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine_epochs: int | None = None,
        optim: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"method.lr must be > 0, got {lr}")
        if epochs < 1:
            raise ValueError(f"method.epochs must be >= 1 for a pretraining method, got {epochs}")
        optim_settings = check_optim(optim, epochs)  # checked now, not when training starts
        # Modules passed in (encoder, augmentation) live in the state dict, not in the hparams.
        self.save_hyperparameters(ignore=["encoder", "augment"])
        # A plain dict (Hydra passes a DictConfig), so checkpoints still load weights-only.
        self.hparams["optim"] = optim_settings
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feature_dim, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # The run's resolved config, stored in every checkpoint so `reprlab-eval` can rebuild it.
        self.run_config: dict[str, Any] | None = None

    def objective(
        self, images: torch.Tensor, stage: str
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(method loss or None, encoder features of ``images`` for the classifier head);
        ``stage`` ("train", "val" or "test") names what the method logs."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        method_loss, features = self.objective(images, stage)
        if self.detach_classifier:
            features = features.detach()
        logits = self.classifier(features)
        ce = F.cross_entropy(logits, labels)
        loss = ce if method_loss is None else method_loss + ce
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        on_step = stage == "train"
        # sync_dist: under DDP the logged value is the mean over processes (no-op in one).
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log(f"{stage}/ce", ce, on_step=False, on_epoch=True, sync_dist=True)
        if method_loss is not None:
            self.log(
                f"{stage}/{self.method_loss_name}",
                method_loss,
                on_step=on_step,
                on_epoch=True,
                sync_dist=True,
            )
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    @property
    def method_loss_name(self) -> str:
        return f"{type(self).__name__.lower()}_loss"

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optim = check_optim(hp.get("optim"))
        # Per-step schedules need the run's length: epochs x batches (after limit_train_batches).
        total_steps = (
            int(self.trainer.estimated_stepping_batches)
            if optim["scheduler"] == "warmup_cosine"
            else None
        )
        return configure_optimization(
            self,
            hp.lr,
            hp.weight_decay,
            hp.epochs,
            optim,
            total_steps=total_steps,
            cosine_epochs=hp.get("cosine_epochs"),
            # A detached head is an online probe, not part of the model being regularised.
            undecayed=self.classifier.parameters() if self.detach_classifier else (),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from reprlab import __version__

        checkpoint["reprlab"] = {"config": self.run_config, "version": __version__}
        # The random streams (shuffling, augmentation, sampled negatives) as of this checkpoint,
        # so a resumed run draws what the uninterrupted run would have drawn next.
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch random states in types ``torch.load(weights_only=True)`` reads."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
