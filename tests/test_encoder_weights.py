"""encoder.weights: initialising encoders from state dicts trained elsewhere (plain, reprlab and
Lightning checkpoints, torchvision's ResNet-18, the Neuromatch tutorial's published files), the
errors for files that do not fit, and reprlab-eval / reprlab-train with such weights."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import FAST, SHARED_DATA, compose_train, load_script
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_cli import SMOKE, run_cli

from reprlab.encoder_weights import (
    architecture_config,
    eval_config,
    eval_source,
    load_weights,
    sha256,
)
from reprlab.encoders import CoreEncoder, ResNet18Encoder, SimpleCNN
from reprlab.eval import load_run
from reprlab.methods.vae import VAE
from reprlab.train import start

TUTORIAL = SHARED_DATA.parent / "tutorial-checkpoints"
TUTORIAL_FILES = {
    "random": "random_encoder_0ep_bs0_seed2021.pth",
    "supervised": "supervised_encoder_10ep_bs1000_seed2021.pth",
    "simclr": "simclr_encoder_60ep_bs1000_deg90_trans0-2_scale0-8to1-2_seed2021.pth",
    "simclr_2neg": "simclr_encoder_2neg_60ep_bs1000_deg90_trans0-2_scale0-8to1-2_seed2021.pth",
    "vae": "vae_encoder_300ep_bs500_seed2021.pth",
    "vae_decoder": "vae_decoder_300ep_bs500_seed2021.pth",
}
VAE_HEAD = "linear_projections_logvar."


@pytest.fixture
def tutorial() -> Path:
    if not all((TUTORIAL / name).is_file() for name in TUTORIAL_FILES.values()):
        pytest.skip(f"the tutorial's published encoders are not at {TUTORIAL}")
    return TUTORIAL


def trained_core(seed: int = 0) -> CoreEncoder:
    """A core encoder whose tensors (running statistics too) differ from a fresh one's."""
    torch.manual_seed(seed)
    encoder = CoreEncoder((1, 64, 64))
    encoder.train()
    encoder(torch.rand(8, 1, 64, 64))  # moves the BatchNorm statistics off 0 / 1
    return encoder


def assert_same_tensors(module: torch.nn.Module, tensors: list[torch.Tensor]) -> None:
    loaded = list(module.state_dict().values())
    assert len(loaded) == len(tensors)
    for have, want in zip(loaded, tensors, strict=True):
        assert torch.equal(have, want)


# -- formats and matching -----------------------------------------------------------------------
def test_plain_state_dict_loads_by_name(tmp_path: Path) -> None:
    source = trained_core()
    torch.save(source.state_dict(), tmp_path / "core.pth")
    target = CoreEncoder((1, 64, 64))
    record = load_weights(target, tmp_path / "core.pth")
    assert_same_tensors(target, list(source.state_dict().values()))
    assert record["matched"] == "name" and record["loaded"] == record["total"] == 25
    assert record["sha256"] == sha256(tmp_path / "core.pth")
    assert record["file"] == str((tmp_path / "core.pth").resolve())


def test_other_names_in_the_same_order_load_in_order(tmp_path: Path) -> None:
    source = trained_core()
    renamed = OrderedDict((f"layer{i}", v) for i, v in enumerate(source.state_dict().values()))
    torch.save(renamed, tmp_path / "renamed.pth")
    target = CoreEncoder((1, 64, 64))
    assert load_weights(target, tmp_path / "renamed.pth")["matched"] == "order"
    assert_same_tensors(target, list(source.state_dict().values()))


def test_reprlab_checkpoint_takes_the_encoder_tensors(tmp_path: Path) -> None:
    source = trained_core()
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, 84)  # the method's other modules stay out
    torch.save({"reprlab": {"config": {}}, "state_dict": state}, tmp_path / "last.ckpt")
    target = CoreEncoder((1, 64, 64))
    record = load_weights(target, tmp_path / "last.ckpt")
    assert record["prefix"] == "encoder." and record["matched"] == "name"
    assert_same_tensors(target, list(source.state_dict().values()))


def test_lightning_checkpoint_with_a_prefix_and_a_nested_key(tmp_path: Path) -> None:
    source = trained_core()
    state = {f"model.backbone.{k}": v for k, v in source.state_dict().items()}
    state["model.head.weight"] = torch.zeros(10, 84)
    torch.save({"pytorch-lightning_version": "2.0", "state_dict": state}, tmp_path / "pl.ckpt")
    with pytest.raises(ValueError, match="weights_prefix"):  # the head's tensor is in the way
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "pl.ckpt")
    target = CoreEncoder((1, 64, 64))
    load_weights(target, tmp_path / "pl.ckpt", prefix="model.backbone.")
    assert_same_tensors(target, list(source.state_dict().values()))
    torch.save({"outer": {"weights": source.state_dict()}}, tmp_path / "nested.pth")
    target = CoreEncoder((1, 64, 64))
    load_weights(target, tmp_path / "nested.pth", key="outer.weights")
    assert_same_tensors(target, list(source.state_dict().values()))


# -- bad input ----------------------------------------------------------------------------------
def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"encoder\.weights=.*nothere\.pth: no such file"):
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "nothere.pth")


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth is not a PyTorch state dict"):
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "notes.pth")
    # weights_only=True: a pickle of arbitrary objects is refused rather than run.
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "module.pth")
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="holds no tensors"):
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "meta.pth")


def test_another_architecture_fails_naming_the_first_mismatching_tensor(tmp_path: Path) -> None:
    torch.save(SimpleCNN((1, 64, 64)).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(ValueError) as error:
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "cnn.pth")
    message = str(error.value)
    assert "cnn.pth does not fit CoreEncoder" in message
    assert "#0 features.0.weight: expected shape (6, 1, 5, 5)" in message
    assert "found features.0.weight with shape (64, 1, 3, 3)" in message
    assert "0 of 25 tensors matched in order (4 in the file), 0 by name" in message


def test_three_channel_weights_on_one_channel_data(tmp_path: Path) -> None:
    torch.save(CoreEncoder((3, 64, 64)).state_dict(), tmp_path / "rgb.pth")
    with pytest.raises(ValueError) as error:
        load_weights(CoreEncoder((1, 64, 64)), tmp_path / "rgb.pth")
    message = str(error.value)
    assert "rgb.pth" in message
    assert "tensor features.0.weight: expected shape (6, 1, 5, 5), found (6, 3, 5, 5)" in message
    assert "3-channel images, the data has 1 channels" in message
    assert "24 of 25 tensors matched by name" in message


def test_bad_weights_fail_before_training(tmp_path: Path) -> None:
    torch.save(SimpleCNN((1, 64, 64)).state_dict(), tmp_path / "cnn.pth")
    cfg = compose_train(*FAST, f"encoder.weights={tmp_path / 'cnn.pth'}")
    # train() and eval prepare the run this way before any training.
    with pytest.raises(ValueError, match=r"cnn\.pth does not fit CoreEncoder: .*features\.0\."):
        start(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        composed = compose(config_name="eval")
    with pytest.raises(ValueError, match="needs ckpt_path=PATH .* or encoder.weights=PATH"):
        load_run(composed, [], tmp_path / "eval")


# -- torchvision --------------------------------------------------------------------------------
def test_torchvision_resnet18_loads_as_far_as_the_cifar_stem_allows(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet = resnet18(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"conv1\.weight: expected shape \(64, 3, 3, 3\)"):
        load_weights(ResNet18Encoder((3, 32, 32)), tmp_path / "resnet18.pth")
    encoder = ResNet18Encoder((3, 32, 32))
    stem = encoder.network.conv1.weight.detach().clone()
    record = load_weights(encoder, tmp_path / "resnet18.pth", strict=False)
    # The CIFAR stem's 3x3 convolution keeps its init; the ImageNet 7x7 one and fc are unused.
    assert record["matched"] == "partial"
    assert record["loaded"] == record["total"] - 1 == len(imagenet) - 3
    assert record["kept_init"] == ["conv1.weight (64, 3, 3, 3) (file: (64, 3, 7, 7))"]
    assert record["unused"] == ["fc.weight (1000, 512)", "fc.bias (1000,)"]
    assert torch.equal(encoder.network.conv1.weight, stem)
    assert torch.equal(encoder.network.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
    assert torch.equal(encoder.network.bn1.running_var, imagenet["bn1.running_var"])


# -- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["core", "identity", "resnet18", "simple_cnn"])
def test_every_encoder_config_has_the_weight_keys(name: str) -> None:
    cfg = compose_train(f"encoder={name}")
    assert cfg.encoder.weights is None and cfg.encoder.weights_strict is True
    assert {"weights_key", "weights_prefix", "weights_exclude"} <= set(cfg.encoder)
    encoder = instantiate(architecture_config(cfg.encoder), input_shape=(3, 32, 32))
    assert encoder.feature_dim > 0


def test_eval_needs_a_checkpoint_or_weights() -> None:
    cfg = compose_train()
    with pytest.raises(ValueError, match="needs ckpt_path=PATH .* or encoder.weights=PATH"):
        eval_source(None, cfg.encoder)
    assert eval_source("x.ckpt", cfg.encoder) == "checkpoint"
    cfg = compose_train("encoder.weights=x.pth")
    assert eval_source(None, cfg.encoder) == "weights"
    assert eval_config(cfg).method.get("_target_") is None  # SimCLR adds nothing to a frozen one
    kept = eval_config(compose_train("encoder.weights=x.pth", "method=vae"))
    assert kept.method._target_ == "reprlab.methods.VAE"  # reconstructs


# -- the command line ---------------------------------------------------------------------------
def test_eval_probes_and_analyses_an_encoder_without_a_checkpoint(tmp_path: Path) -> None:
    torch.save(trained_core().state_dict(), tmp_path / "core.pth")
    run_cli(
        "reprlab.eval",
        *SMOKE,
        f"encoder.weights={tmp_path / 'core.pth'}",
        "probe.label_fractions=[0.5,1.0]",
        "hydra.run.dir=eval",
        cwd=tmp_path,
    )
    run = tmp_path / "eval"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["checkpoint"] is None and metrics["method"] == "none"
    assert metrics["encoder_weights"]["sha256"] == sha256(tmp_path / "core.pth")
    assert metrics["encoder_weights"]["matched"] == "name"
    assert 0.0 <= metrics["frac_0.5/test/acc"] <= 1.0 and 0.0 <= metrics["analysis/knn_acc"] <= 1
    assert (run / "label_fractions.png").is_file() and (run / "analysis" / "rsm.png").is_file()
    config = OmegaConf.load(run / "config.yaml")
    assert config.encoder.weights_record.sha256 == metrics["encoder_weights"]["sha256"]
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


# -- the tutorial's published files -------------------------------------------------------------
@pytest.mark.parametrize("model", ["random", "supervised", "simclr", "simclr_2neg", "vae"])
def test_the_tutorials_encoders_load_into_the_core_encoder(tutorial: Path, model: str) -> None:
    path = tutorial / TUTORIAL_FILES[model]
    tensors = torch.load(path, weights_only=True)
    encoder = CoreEncoder((1, 64, 64))
    exclude = [VAE_HEAD] if model == "vae" else []
    record = load_weights(encoder, path, exclude=exclude)
    assert record["matched"] == "order" and record["loaded"] == 25
    assert_same_tensors(encoder, [v for k, v in tensors.items() if not k.startswith(VAE_HEAD)])
    if model == "vae":  # the log-variance head is not the encoder's: the whole file does not fit
        with pytest.raises(ValueError, match=f"unexpected {VAE_HEAD}0.weight"):
            load_weights(CoreEncoder((1, 64, 64)), path)


def test_the_tutorials_vae_reconstructs_real_images(tutorial: Path, real_subset: Path) -> None:
    import numpy as np

    images = torch.from_numpy(np.load(real_subset)["imgs"][::100][:200]).float().unsqueeze(1)
    encoder = CoreEncoder((1, 64, 64))
    load_weights(encoder, tutorial / TUTORIAL_FILES["vae"], exclude=[VAE_HEAD])
    vae = VAE(
        encoder,
        num_classes=3,
        epochs=1,
        architecture="tutorial",
        decoder_weights=str(tutorial / TUTORIAL_FILES["vae_decoder"]),
        logvar_weights=str(tutorial / TUTORIAL_FILES["vae"]),
        logvar_weights_prefix=VAE_HEAD,
    )
    assert vae.weights_records["decoder"]["matched"] == "name"
    assert vae.weights_records["logvar_head"]["loaded"] == 5
    untrained = VAE(CoreEncoder((1, 64, 64)), num_classes=3, epochs=1, architecture="tutorial")
    vae.eval(), untrained.eval()

    def bce(model: VAE) -> float:
        recon = model.reconstruct(images).clamp(1e-6, 1 - 1e-6)
        return float(torch.nn.functional.binary_cross_entropy(recon, images))

    # The published VAE reconstructs the shapes; an untrained one only the mean intensity.
    assert bce(vae) < 0.5 * bce(untrained)
    assert torch.isfinite(vae.posterior(images[:8])[1]).all()


@pytest.mark.slow  # a whole train run in a subprocess: ~45 s on a busy 2-core CPU
def test_simclr_fine_tunes_from_the_tutorials_supervised_encoder(
    tutorial: Path, tmp_path: Path
) -> None:
    path = tutorial / TUTORIAL_FILES["supervised"]
    run_cli(
        "reprlab.train",
        *SMOKE,
        "analysis=none",
        "method=simclr",
        f"encoder.weights={path}",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["encoder_weights"]["matched"] == "order"
    assert metrics["encoder_weights"]["sha256"] == sha256(path)
    assert metrics["pretrain_epochs"] == 1
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["reprlab"]["config"]["encoder"]["weights_record"]["file"] == str(path)
    published = list(torch.load(path, weights_only=True).values())
    trained = [v for k, v in checkpoint["state_dict"].items() if k.startswith("encoder.")]
    first_conv = trained[0]
    # Started from the file and trained: near the published weights, not equal to them.
    assert not torch.equal(first_conv, published[0])
    assert (first_conv - published[0]).abs().max() < 0.1 * published[0].abs().max()


# The tutorial's protocol: its split, batch 1000, its probe epochs, the stored BatchNorm statistics
# (the tutorial evaluates trained encoders in eval mode).
@pytest.mark.slow
@pytest.mark.parametrize(("model", "published"), [("simclr", 97.53), ("simclr_2neg", 66.75)])
def test_the_tutorials_simclr_encoders_probe_as_published(
    tutorial: Path, real_subset: Path, tmp_path: Path, model: str, published: float
) -> None:
    run_cli(
        "reprlab.eval",
        f"experiment=tutorial_published_{model}",
        f"tutorial_checkpoints={tutorial}",
        f"data.path={real_subset}",
        "precise_bn=false",
        "analysis=none",
        "trainer.accelerator=cpu",
        "hydra.run.dir=eval",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert abs(100 * metrics["test/acc"] - published) <= 2.0


def test_compare_features_measures_the_spectrum_and_both_losses() -> None:
    compare = load_script("compare_features")
    generator = torch.Generator().manual_seed(0)
    # Two strong directions among 20: nearly all the variance in the top 5, effective rank ~2.
    basis = torch.randn(2, 20, generator=generator)
    features = torch.randn(3000, 2, generator=generator) @ basis
    features += 1e-3 * torch.randn(3000, 20, generator=generator)
    top5, rank = compare.spectrum(features)
    assert top5 > 0.99 and 1.5 < rank < 2.5
    encoder = CoreEncoder((1, 64, 64))
    images = (torch.rand(1000, 1, 64, 64, generator=generator) > 0.9).to(torch.uint8)
    nt_xent, two_neg = compare.losses(encoder, images, lambda x: x.float(), seed=0)
    # Against 1998 negatives the loss of a random encoder is near log(1999); against 2, far lower.
    assert abs(nt_xent - math.log(1999)) < 0.5 and two_neg < nt_xent - 5
