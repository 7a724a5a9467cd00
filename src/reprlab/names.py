"""Short names for the classes a config names, as tables and plots show them."""

from __future__ import annotations


def short_name(target: str | None) -> str:
    """``reprlab.methods.SimCLR`` -> ``simclr``, ``reprlab.encoders.CoreEncoder`` -> ``core``,
    no target (no pretraining) -> ``none``."""
    if not target or target == "none":
        return "none"
    name = str(target).rsplit(".", 1)[-1]
    if name.endswith("Encoder") and name != "Encoder":
        name = name[: -len("Encoder")]
    return name.lower()
