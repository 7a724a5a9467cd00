"""A diverging run stops with a message naming the step."""

from __future__ import annotations

import pytest
import torch

from reprlab.callbacks import FiniteLossGuard, NonFiniteLossError


class _Trainer:
    current_epoch = 2
    global_step = 37


def test_nan_loss_stops_with_the_step_named() -> None:
    guard = FiniteLossGuard()
    guard.on_train_batch_end(_Trainer(), None, {"loss": torch.tensor(1.0)}, None, 4)
    with pytest.raises(NonFiniteLossError, match="nan at epoch 2, global step 37 \\(batch 4\\)"):
        guard.on_train_batch_end(_Trainer(), None, {"loss": torch.tensor(float("nan"))}, None, 4)
    with pytest.raises(NonFiniteLossError, match="inf"):
        guard.on_train_batch_end(_Trainer(), None, torch.tensor(float("inf")), None, 0)
