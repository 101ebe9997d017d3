"""The library's own neural codec: a small convolutional autoencoder with residual vector quantisation.

No pretrained codec can be fetched offline, so this one trains here (``mamba-audio train-codec``) and
lets codec-token models and text-to-speech work end to end. The shape follows SoundStream / EnCodec /
DAC without their adversarial losses:

    audio Tensor[B x L] -> encoder: conv, then per stride s a stack of dilated residual units and a
    strided conv that doubles the width -> latents Tensor[B x D x F], F = L / hop_length
    -> ResidualVQ (K EMA codebooks of C codes) -> tokens Tensor[B x K x F]
    -> decoder: the mirror image with transposed convs that halve the width -> tanh -> audio Tensor[B x L]

It is trained on the multi-resolution STFT distance plus a waveform L1 term and the quantiser's
commitment loss (:class:`mamba_audio.training.CodecTask`). As an :class:`AudioCodec` its ``encode`` and
``decode`` never change the codebooks and are deterministic; checkpoints are ``config.json`` +
``model.safetensors`` (``save_pretrained`` / ``from_pretrained``, model type ``conv_codec``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.models.pretrained import PretrainedMixin

from .base import AudioCodec
from .rvq import ResidualVQ

Tensor = torch.Tensor


@dataclass
class ConvCodecConfig:
    """Sizes of a :class:`ConvCodec`. The defaults: 16 kHz, hop 2*4*5*8 = 320 samples (50 frames/s),
    4 codebooks of 1024 codes (2 kbit/s), 2.6M parameters (1.4M in the decoder; 14 MiB saved with the
    codebooks), small enough to ship inside the package with a voice."""

    sample_rate: int = 16000
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])  # encoder order; hop = their product
    channels: int = 16  # width of the outermost stage; doubles at every stride
    latent_dim: int = 128  # D, the size of the vectors quantised
    dilations: list[int] = field(default_factory=lambda: [1, 3, 9])  # one residual unit per dilation per stage
    kernel_size: int = 7
    num_codebooks: int = 4
    codebook_size: int = 1024
    codebook_decay: float = 0.99  # moving-average decay of the codebooks
    dead_code_fraction: float = 0.03  # restart codes used less than this fraction of an average code's usage

    def __post_init__(self):
        if not self.strides or any(s < 2 for s in self.strides):
            raise ValueError(f"strides must be a non-empty list of integers >= 2, got {self.strides}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if min(self.channels, self.latent_dim, self.num_codebooks) < 1 or self.codebook_size < 2:
            raise ValueError("channels, latent_dim and num_codebooks must be positive and codebook_size >= 2")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be a non-empty list of positive integers, got {self.dilations}")
        if not 0.0 < self.codebook_decay < 1.0:
            raise ValueError(f"codebook_decay must be in (0, 1), got {self.codebook_decay}")


NEGATIVE_SLOPE = 0.1  # of the leaky ReLUs (as HiFi-GAN); ELU cost as much as the convolutions on the CPU


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


class ResidualUnit(nn.Module):
    """x + conv1x1(act(dilated conv(act(x)))) at constant width and length; act a leaky ReLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.dilated = nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                                 padding=dilation * (kernel_size - 1) // 2)
        self.pointwise = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pointwise(_act(self.dilated(_act(x))))


def _resampling_padding(stride: int) -> int:
    # with kernel 2s: a strided conv maps L -> L / s and a transposed conv F -> F s (output_padding s % 2)
    return math.ceil(stride / 2)


class Encoder(nn.Module):
    """Tensor[B x 1 x L] -> Tensor[B x D x L / hop]."""

    def __init__(self, config: ConvCodecConfig):
        super().__init__()
        width = config.channels
        layers: list[nn.Module] = [nn.Conv1d(1, width, config.kernel_size, padding=config.kernel_size // 2)]
        for stride in config.strides:
            layers += [ResidualUnit(width, config.kernel_size, d) for d in config.dilations]
            layers += [nn.LeakyReLU(NEGATIVE_SLOPE), nn.Conv1d(width, 2 * width, 2 * stride, stride, _resampling_padding(stride))]
            width *= 2
        layers += [nn.LeakyReLU(NEGATIVE_SLOPE), nn.Conv1d(width, config.latent_dim, 3, padding=1),
                   # unit variance per dimension (batch statistics in training, their running averages after):
                   # a fresh encoder's latents barely vary between frames, and the codebooks collapse onto a
                   # handful of codes before the encoder learns to spread them
                   nn.BatchNorm1d(config.latent_dim, affine=False)]
        self.layers = nn.Sequential(*layers)

    def forward(self, audio: Tensor) -> Tensor:
        return self.layers(audio)


class Decoder(nn.Module):
    """Tensor[B x D x F] -> Tensor[B x 1 x F hop] in [-1, 1]."""

    def __init__(self, config: ConvCodecConfig):
        super().__init__()
        width = config.channels * 2 ** len(config.strides)
        layers: list[nn.Module] = [nn.Conv1d(config.latent_dim, width, config.kernel_size,
                                             padding=config.kernel_size // 2)]
        for stride in reversed(config.strides):
            layers += [nn.LeakyReLU(NEGATIVE_SLOPE), nn.ConvTranspose1d(width, width // 2, 2 * stride, stride,
                                                    _resampling_padding(stride), output_padding=stride % 2)]
            width //= 2
            layers += [ResidualUnit(width, config.kernel_size, d) for d in config.dilations]
        layers += [nn.LeakyReLU(NEGATIVE_SLOPE), nn.Conv1d(width, 1, config.kernel_size, padding=config.kernel_size // 2), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        return self.layers(latents)


class ConvCodec(PretrainedMixin, AudioCodec, nn.Module):
    """Convolutional RVQ codec: audio (B, L) at ``sample_rate`` <-> tokens (B, K, L / hop_length).

    ``forward`` is the training path (quantiser updates in training mode); ``encode`` / ``decode`` are
    the :class:`AudioCodec` interface (checked inputs, no gradients, codebooks untouched).

    Neither half is causal. With the default strides the decoder sees about 10 frames either side:
    decoding a chunk of frames with 10 frames of context on each side (then cutting the context's samples
    off) equals decoding the whole sequence to float precision; 4 frames of context leave errors below 1e-3.
    """

    model_type = "conv_codec"
    config_class = ConvCodecConfig

    def __init__(self, config: ConvCodecConfig):
        nn.Module.__init__(self)
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = ResidualVQ(config.num_codebooks, config.codebook_size, config.latent_dim,
                                    config.codebook_decay, config.dead_code_fraction)
        self.decoder = Decoder(config)

    # the AudioCodec attributes, from the config
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def hop_length(self) -> int:
        return math.prod(self.config.strides)

    def _device(self) -> torch.device:
        return self.decoder.layers[0].weight.device

    def forward(self, audio: Tensor) -> dict[str, Tensor]:
        """Reconstruct audio Tensor[B x L] (L a multiple of ``hop_length``) through the quantiser.

        Returns ``audio`` Tensor[B x L] (the reconstruction), ``tokens`` Tensor[B x K x F], ``commitment``
        (scalar loss) and ``codebook_usage`` (fraction of codes used in the batch). In training mode the
        codebooks take one moving-average step.
        """
        if audio.dim() != 2 or audio.shape[1] % self.hop_length:
            raise ValueError(f"audio must be (batch, samples) with samples a multiple of hop_length="
                             f"{self.hop_length}, got {tuple(audio.shape)}")
        latents = self.encoder(audio[:, None])
        quantised, tokens, commitment, usage = self.quantizer(latents)
        return {"audio": self.decoder(quantised)[:, 0], "tokens": tokens, "commitment": commitment,
                "codebook_usage": usage}

    def _encode(self, audio: Tensor) -> Tensor:
        training = self.encoder.training
        self.encoder.eval()  # the latent normalisation's running statistics, never the batch's
        try:
            return self.quantizer.encode(self.encoder(audio[:, None].to(self._device())))
        finally:
            self.encoder.train(training)

    def _decode(self, tokens: Tensor) -> Tensor:
        latents = self.quantizer.decode(tokens.to(self._device()))
        return self.decoder(latents.to(self.decoder.layers[0].weight.dtype))[:, 0]

    __repr__ = AudioCodec.__repr__
