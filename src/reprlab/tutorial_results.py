"""The Neuromatch self-supervised-learning tutorial's published results, in one place.

Shape classification on ``dsprites_subset.npz`` (20,000 images, 80:20 split drawn with seed
2021), linear-probe test accuracy in percent. ``reprlab-report --compare tutorial`` sets our runs
beside these. Each entry's ``match`` says which runs it compares with: the method and encoder
short names (``reprlab.names.short_name``) and, where needed, a config key's value; its
``file``, where the tutorial published that encoder, the file's name (runs whose
``encoder.weights`` is that file are the tutorial's encoder probed by reprlab).
"""

from __future__ import annotations

from typing import Any

SOURCE = (
    "Neuromatch Academy 2021 tutorial on self-supervised learning, dsprites_subset.npz, "
    "80:20 split with seed 2021"
)

# Every label, full training set, no bias.
FULL_LABELS: list[dict[str, Any]] = [
    {"name": "raw pixels", "match": {"method": "none", "encoder": "identity"}, "acc": 39.55},
    {
        "name": "random encoder",
        "match": {"method": "none", "encoder": "core"},
        "acc": 44.67,
        "file": "random_encoder_0ep_bs0_seed2021.pth",
    },
    {
        "name": "supervised",
        "match": {"method": "supervised", "encoder": "core"},
        "acc": 98.70,
        "file": "supervised_encoder_10ep_bs1000_seed2021.pth",
    },
    {
        "name": "VAE",
        "match": {"method": "vae", "encoder": "core"},
        "acc": 45.75,
        "file": "vae_encoder_300ep_bs500_seed2021.pth",
    },
    {
        "name": "SimCLR",
        "match": {"method": "simclr", "encoder": "core", "method.neg_pairs": "all"},
        "acc": 97.53,
        "file": "simclr_encoder_60ep_bs1000_deg90_trans0-2_scale0-8to1-2_seed2021.pth",
    },
    {
        "name": "SimCLR, 2 negative pairs",
        "match": {"method": "simclr", "encoder": "core", "method.neg_pairs": "2"},
        "acc": 66.75,
        "file": "simclr_encoder_2neg_60ep_bs1000_deg90_trans0-2_scale0-8to1-2_seed2021.pth",
    },
]

# Few labels: the classifier (and, for supervised, the encoder) trained on a stratified fraction
# of the training labels. Read off the tutorial's figure, so approximate; VAE and random encoders
# stay within a band at every fraction, given as (low, high).
FEW_LABELS: list[dict[str, Any]] = [
    {
        "name": "SimCLR",
        "match": {"method": "simclr", "encoder": "core", "method.neg_pairs": "all"},
        "acc": {0.05: 92.5, 0.1: 93.0, 0.2: 96.0, 0.4: 97.0, 0.75: 96.0, 1.0: 97.0},
    },
    {
        "name": "supervised",
        "match": {"method": "supervised", "encoder": "core"},
        "acc": {0.05: 45.0, 0.1: 52.0, 0.2: 68.0, 0.4: 89.5, 0.75: 98.0, 1.0: 98.7},
    },
    {"name": "VAE", "match": {"method": "vae", "encoder": "core"}, "band": (40.0, 47.0)},
    {
        "name": "random encoder",
        "match": {"method": "none", "encoder": "core"},
        "band": (40.0, 47.0),
    },
]

FRACTIONS = (0.05, 0.1, 0.2, 0.4, 0.75, 1.0)  # the tutorial's DEFAULT_LABELLED_FRACTIONS
