"""Files are replaced atomically: a failure mid-write leaves the previous file intact."""

from __future__ import annotations

import json

import pytest
import torch

from reprlab.io import AtomicCheckpointIO, atomic_write, write_json


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"test/acc": 0.9})

    def crash(handle) -> None:
        handle.write(b'{"test/acc": 0.')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert json.loads(target.read_text()) == {"test/acc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_checkpoint_io_round_trip_and_crash(tmp_path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1

    def broken_save(obj, handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
