"""Variational autoencoder: the encoder gives the posterior mean, a head its log-variance, and a
transposed-convolution decoder reconstructs the image from a sample.

``architecture="tutorial"`` builds the Neuromatch tutorial's VAE around the core encoder instead
(its log-variance head on the encoder's second fully connected block, its decoder), so that the
tutorial's published VAE files load into it (``decoder_weights``, ``logvar_weights``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reprlab import few_channel_layers
from reprlab.encoder_weights import load_weights
from reprlab.losses import VAELoss
from reprlab.methods.base import RepresentationModule


class Decoder(nn.Module):
    """Latent vector -> image logits of ``output_shape``, doubling the resolution per block.

    The blocks run through ``few_channel_layers.run_sequential``, so each few-channel BatchNorm
    and the ReLU after it are one step in training (the module hooks of ``self.blocks`` and of
    the fused pairs' modules are not called)."""

    def __init__(
        self, latent_dim: int, output_shape: tuple[int, int, int], base_size: int = 4
    ) -> None:
        super().__init__()
        channels, height, width = output_shape
        blocks = max(1, int(math.log2(max(height, width) / base_size)))
        # Narrow, like the encoder it mirrors: 64 -> 8 channels for 64x64 images. The last, full
        # resolution layer dominates the cost, so its width sets the VAE's speed.
        widths = [min(128, 8 * 2 ** (blocks - 1 - i)) for i in range(blocks)]
        self.start = (widths[0], base_size, base_size)
        self.project = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), nn.ReLU())
        layers: list[nn.Module] = []
        for i, width_in in enumerate(widths):
            width_out = widths[i + 1] if i + 1 < len(widths) else widths[-1]
            layers += [
                nn.ConvTranspose2d(width_in, width_out, kernel_size=4, stride=2, padding=1),
                few_channel_layers.BatchNorm2d(width_out),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(widths[-1], channels, kernel_size=3, padding=1))
        self.blocks = nn.Sequential(*layers)
        self.output_shape = output_shape
        self.generated = base_size * 2**blocks

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        start = self.project(latents).view(-1, *self.start)
        logits = few_channel_layers.run_sequential(self.blocks, start)
        if logits.shape[-2:] != self.output_shape[1:]:  # sizes that are not base_size * 2^k
            logits = nn.functional.interpolate(logits, size=self.output_shape[1:], mode="bilinear")
        return logits


class TutorialDecoder(nn.Module):
    """The Neuromatch tutorial's VAE decoder, mirroring the core encoder.

    Linear(latent->84) ReLU BN, Linear(84->120) ReLU BN, Linear(120->16*h*w) ReLU, reshaped to
    the encoder's last feature map (16 x 13 x 13 for 64x64 images); then twice nearest upsampling
    x2, BatchNorm2d and a 5x5 transposed convolution (16->6, ReLU, 6->C). The BatchNorms have no
    affine parameters. The module names are the tutorial's, so its state dict loads by name.
    """

    def __init__(self, latent_dim: int, output_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = output_shape
        # The core encoder's last feature map: two (5x5 valid conv, 2x2 pool) blocks.
        self.start = (16, ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2)
        self.decoder_linear = nn.Sequential(
            nn.Linear(latent_dim, 84),
            nn.ReLU(),
            nn.BatchNorm1d(84, affine=False),
            nn.Linear(84, 120),
            nn.ReLU(),
            nn.BatchNorm1d(120, affine=False),
            nn.Linear(120, math.prod(self.start)),
            nn.ReLU(),
        )
        self.decoder_conv = nn.Sequential(
            few_channel_layers.UpsamplingNearest2d(scale_factor=2),
            few_channel_layers.BatchNorm2d(16, affine=False),
            nn.ConvTranspose2d(16, 6, kernel_size=5),
            nn.ReLU(),
            few_channel_layers.UpsamplingNearest2d(scale_factor=2),
            few_channel_layers.BatchNorm2d(6, affine=False),
            nn.ConvTranspose2d(6, channels, kernel_size=5),
        )
        self.output_shape = output_shape

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        logits = self.decoder_conv(self.decoder_linear(latents).view(-1, *self.start))
        if logits.shape[-2:] != self.output_shape[1:]:  # sizes the two blocks do not invert
            logits = nn.functional.interpolate(logits, size=self.output_shape[1:], mode="bilinear")
        return logits


class VAE(RepresentationModule):
    """BCE-with-logits reconstruction (summed over pixels) + ``beta`` * KL, per image."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        beta: float = 1.0,
        num_logged_images: int = 8,
        cosine_epochs: int | None = None,
        optim: Mapping[str, Any] | None = None,
        architecture: str = "reprlab",
        decoder_weights: str | None = None,
        logvar_weights: str | None = None,
        logvar_weights_prefix: str | None = None,
    ) -> None:
        super().__init__(
            encoder, num_classes, epochs, lr, weight_decay, cosine_epochs=cosine_epochs, optim=optim
        )
        latent_dim = encoder.feature_dim
        if architecture == "reprlab":
            self.logvar_head: nn.Module = nn.Linear(latent_dim, latent_dim)
            self.decoder: nn.Module = Decoder(latent_dim, tuple(encoder.input_shape))
        elif architecture == "tutorial":
            if not hasattr(encoder, "forward_hidden"):
                raise ValueError(
                    f"method.architecture=tutorial feeds the log-variance head the core encoder's "
                    f"hidden features: it needs encoder=core, got {type(encoder).__name__}"
                )
            self.logvar_head = nn.Sequential(
                nn.Linear(encoder.hidden_dim, latent_dim),
                nn.ReLU(),
                nn.BatchNorm1d(latent_dim, affine=False),
            )
            self.decoder = TutorialDecoder(latent_dim, tuple(encoder.input_shape))
        else:
            raise ValueError(
                f"method.architecture must be reprlab or tutorial, got {architecture!r}"
            )
        self.architecture = architecture
        # What the decoder and the log-variance head were initialised from, for metrics.json.
        self.weights_records: dict[str, dict[str, Any]] = {}
        if decoder_weights:
            self.weights_records["decoder"] = load_weights(
                self.decoder, decoder_weights, setting="method.decoder_weights"
            )
        if logvar_weights:
            self.weights_records["logvar_head"] = load_weights(
                self.logvar_head,
                logvar_weights,
                prefix=logvar_weights_prefix,
                setting="method.logvar_weights",
            )
        self.criterion = VAELoss(beta=beta)
        self.num_logged_images = num_logged_images
        self._logged_images: torch.Tensor | None = None

    @property
    def method_loss_name(self) -> str:
        return "vae_loss"

    def objective(self, images: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(images)
        latents = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        terms = self.criterion(self.decoder(latents), images, mu, logvar)
        self.log_value(stage, "reconstruction", terms["reconstruction"])
        self.log_value(stage, "kl", terms["kl"])
        if self._logged_images is None:  # a fixed set of images, reconstructed every epoch
            self._logged_images = images[: self.num_logged_images].detach().clone()
        return terms["loss"], mu

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the posterior over latents; the mean is the encoder's output."""
        if self.architecture == "tutorial":
            mu, hidden = self.encoder.forward_hidden(images)
            return mu, self.logvar_head(hidden)
        mu = self.encoder(images)
        return mu, self.logvar_head(mu)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(images)))

    def on_train_epoch_end(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self._logged_images is None or not hasattr(experiment, "add_image"):
            return
        from torchvision.utils import make_grid

        was_training = self.training
        self.eval()
        originals = self._logged_images.to(self.device)
        grid = make_grid(torch.cat([originals, self.reconstruct(originals)]), nrow=len(originals))
        self.train(was_training)
        experiment.add_image("reconstructions", grid.clamp(0, 1).cpu(), self.current_epoch)
