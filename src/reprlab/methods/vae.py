"""Variational autoencoder: the encoder gives the posterior mean, a head its log-variance, and a
transposed-convolution decoder reconstructs the image from a sample."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reprlab.losses import VAELoss
from reprlab.methods.base import RepresentationModule


class Decoder(nn.Module):
    """Latent vector -> image logits of ``output_shape``, doubling the resolution per block."""

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
                nn.BatchNorm2d(width_out),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(widths[-1], channels, kernel_size=3, padding=1))
        self.blocks = nn.Sequential(*layers)
        self.output_shape = output_shape
        self.generated = base_size * 2**blocks

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        logits = self.blocks(self.project(latents).view(-1, *self.start))
        if logits.shape[-2:] != self.output_shape[1:]:  # sizes that are not base_size * 2^k
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
    ) -> None:
        super().__init__(
            encoder, num_classes, epochs, lr, weight_decay, cosine_epochs=cosine_epochs, optim=optim
        )
        latent_dim = encoder.feature_dim
        self.logvar_head = nn.Linear(latent_dim, latent_dim)
        self.decoder = Decoder(latent_dim, tuple(encoder.input_shape))
        self.criterion = VAELoss(beta=beta)
        self.num_logged_images = num_logged_images
        self._logged_images: torch.Tensor | None = None

    @property
    def method_loss_name(self) -> str:
        return "vae_loss"

    def objective(self, images: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.encoder(images)
        logvar = self.logvar_head(mu)
        latents = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        terms = self.criterion(self.decoder(latents), images, mu, logvar)
        self.log(
            f"{stage}/reconstruction",
            terms["reconstruction"],
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        self.log(f"{stage}/kl", terms["kl"], on_step=False, on_epoch=True, sync_dist=True)
        if self._logged_images is None:  # a fixed set of images, reconstructed every epoch
            self._logged_images = images[: self.num_logged_images].detach().clone()
        return terms["loss"], mu

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
