"""A spectral codec fitted in minutes on a CPU: log-mel frames, a residual VQ fitted by k-means, Griffin-Lim.

    audio Tensor[B x L] -> STFT (Hann window of ``n_fft``, hop ``hop_length``) magnitudes
    -> mel filterbank (``n_mels`` bands; 0 keeps the n_fft/2 + 1 linear bins) -> log -> frames Tensor[B x D x F]
    -> ResidualVQ (K codebooks of C codes, fitted by k-means) -> tokens Tensor[B x K x F]
    -> sum of codes -> exp -> back to linear bins (the filterbank's pseudo-inverse, floored at 0)
    -> frames interpolated to a hop ``synthesis_oversampling`` times finer -> Griffin-Lim -> audio Tensor[B x L]

No network and no gradient training: the only fitted parameters are the codebooks (``fit``). A
recogniser hears speech through the same kind of log-mel frames, so words survive where a briefly
trained neural codec loses them; Griffin-Lim's phase costs naturalness (a slightly rough,
reverberant voice), not words.

Decoding is deterministic (Griffin-Lim starts from zero phase, not random phase). Griffin-Lim works on
the whole decoded window at once, so a stream that decodes a few frames at a time would restart the
phase in every window and click at the joins. Given the audio a stream already played for its context
frames (``decode(tokens, played=...)``), every Griffin-Lim iteration holds those samples fixed, as
real-time iterative spectrogram inversion does (Zhu et al., 2007), so the new frames' phase continues
the played audio (tests/test_spectral_codec.py measures the difference from a whole decode). Checkpoints are ``config.json`` +
``model.safetensors`` (model type ``spectral_codec``), loaded by ``load_pretrained`` and ``load_codec``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torchaudio.functional as AF

from mamba_audio.models.pretrained import PretrainedMixin

from .base import AudioCodec, CodecError
from .rvq import ResidualVQ

Tensor = torch.Tensor


@dataclass
class SpectralCodecConfig:
    """Settings of a :class:`SpectralCodec`. The defaults: 16 kHz, hop 320 samples (50 frames/s), 64 ms
    windows, 80 log-mel bands, 8 codebooks of 1024 codes (4 kbit/s), Griffin-Lim of 32 iterations at a
    hop of 160 samples."""

    sample_rate: int = 16000
    hop_length: int = 320  # samples per frame: 50 frames/s at 16 kHz
    n_fft: int = 1024  # STFT size and Hann window length, samples
    n_mels: int = 80  # mel bands; 0: the n_fft / 2 + 1 linear magnitude bins
    f_min: float = 0.0  # Hz, lowest mel band edge
    f_max: float | None = None  # Hz, highest mel band edge (None: sample_rate / 2)
    magnitude_floor: float = 1e-4  # log(max(magnitude, floor)): quieter bins all read as silence
    num_codebooks: int = 8
    codebook_size: int = 1024
    subframes: int = 2  # analysis frames per token frame (hop_length / subframes apart), stacked into one vector
    griffin_lim_iterations: int = 32
    griffin_lim_momentum: float = 0.99  # the "fast Griffin-Lim" acceleration (Perraudin et al., 2013)
    synthesis_oversampling: int = 1  # Griffin-Lim's hop is the analysis hop / this (frames interpolated between)

    def __post_init__(self):
        if self.hop_length < 1 or self.n_fft < self.hop_length:
            raise ValueError(f"need 1 <= hop_length <= n_fft, got hop_length {self.hop_length}, n_fft {self.n_fft}")
        if min(self.subframes, self.synthesis_oversampling) < 1 or self.hop_length % (
                self.subframes * self.synthesis_oversampling):
            raise ValueError(f"subframes * synthesis_oversampling must divide hop_length {self.hop_length}, got "
                             f"{self.subframes} * {self.synthesis_oversampling}")
        if self.n_mels < 0 or self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels must be in [0, {self.n_fft // 2 + 1}] (0: linear bins), got {self.n_mels}")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("num_codebooks must be positive and codebook_size >= 2")
        if self.griffin_lim_iterations < 1 or not 0.0 <= self.griffin_lim_momentum < 1.0:
            raise ValueError("griffin_lim_iterations must be positive and griffin_lim_momentum in [0, 1)")
        if not self.magnitude_floor > 0:
            raise ValueError(f"magnitude_floor must be positive, got {self.magnitude_floor}")

    @property
    def bands(self) -> int:
        """Values per analysis frame: mel bands, or linear bins."""
        return self.n_mels or self.n_fft // 2 + 1

    @property
    def feature_dim(self) -> int:
        """D, the size of one token frame's vector: ``subframes`` analysis frames of ``bands`` values."""
        return self.bands * self.subframes


@dataclass
class SpectralFitConfig:
    """How :meth:`SpectralCodec.fit` fits the codebooks: k-means ``iterations`` per codebook, on at most
    ``max_frames`` frames drawn at random (``seed``) from the clips."""

    iterations: int = 20
    max_frames: int | None = 200_000
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ValueError(f"iterations and max_frames must be positive, got {self.iterations}, {self.max_frames}")


class SpectralCodec(PretrainedMixin, AudioCodec, nn.Module):
    """Log-(mel-)spectrogram frames quantised by a k-means residual VQ, decoded by Griffin-Lim
    (see the module docstring). ``fit`` fits the codebooks; an unfitted codec refuses to encode."""

    model_type = "spectral_codec"
    config_class = SpectralCodecConfig

    def __init__(self, config: SpectralCodecConfig):
        nn.Module.__init__(self)
        self.config = config
        self.quantizer = ResidualVQ(config.num_codebooks, config.codebook_size, config.feature_dim)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        if config.n_mels:
            filterbank = AF.melscale_fbanks(config.n_fft // 2 + 1, config.f_min, config.f_max or config.sample_rate / 2,
                                            config.n_mels, config.sample_rate, norm="slaney", mel_scale="slaney")
            self.register_buffer("mel_filters", filterbank.T.contiguous(), persistent=False)  # (n_mels, bins)
            # the minimum-norm inverse: each band's magnitude spread back over its bins as a smooth curve
            self.register_buffer("mel_inverse", torch.linalg.pinv(filterbank.T.double()).float(), persistent=False)

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
        return self.config.hop_length

    @property
    def fitted(self) -> bool:
        return all(bool(codebook.initialized) for codebook in self.quantizer.codebooks)

    # -- analysis and synthesis ---------------------------------------------------------------------
    def features(self, audio: Tensor) -> Tensor:
        """audio Tensor[B x L] (L a multiple of hop_length) -> log magnitudes Tensor[B x D x F], F = L / hop_length:
        token frame f stacks the ``subframes`` analysis windows centred on samples (f + s / subframes) *
        hop_length, s = 0 .. subframes - 1 (bands of subframe s at rows s * bands .. (s + 1) * bands - 1)."""
        config = self.config
        hop = config.hop_length // config.subframes
        frames = audio.shape[1] // config.hop_length
        spectrum = torch.stft(audio.float().to(self.window.device), config.n_fft, hop, window=self.window,
                              center=True, return_complex=True).abs()[..., :frames * config.subframes]
        if config.n_mels:
            spectrum = self.mel_filters @ spectrum
        log = spectrum.clamp_min(config.magnitude_floor).log()  # (B, bands, F * subframes)
        batch, bands = log.shape[:2]
        return log.view(batch, bands, frames, config.subframes).permute(0, 3, 1, 2).reshape(batch, -1, frames)

    def synthesize(self, features: Tensor, played: Tensor | None = None) -> Tensor:
        """Log magnitudes Tensor[B x D x F] -> audio Tensor[B x F * hop_length] by Griffin-Lim from zero phase,
        or continuing ``played`` Tensor[B x n], the audio of the first n / hop_length frames (see ``decode``)."""
        config = self.config
        batch, _, frames = features.shape
        magnitude = (features.float().view(batch, config.subframes, config.bands, frames).permute(0, 2, 3, 1)
                     .reshape(batch, config.bands, frames * config.subframes).exp())
        if config.n_mels:  # floored: zeros would make Griffin-Lim's FFTs crawl through denormal numbers
            magnitude = (self.mel_inverse @ magnitude).clamp_min(config.magnitude_floor)
        hop = config.hop_length // (config.subframes * config.synthesis_oversampling)
        magnitude = _synthesis_frames(magnitude, config.synthesis_oversampling)
        return griffin_lim(magnitude, self.window, hop, config.griffin_lim_iterations, config.griffin_lim_momentum,
                           length=frames * config.hop_length, played=played)

    # -- fitting ------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, clips, config: SpectralFitConfig | None = None) -> list[float]:
        """Fit the codebooks by k-means (settings: ``config``) to the frames of ``clips``, an iterable of
        Tensor[L] waveforms at ``sample_rate``. Returns the squared error of a frame's log magnitudes left
        after each codebook (K floats, falling; summed over the D values, mean over frames)."""
        config = config or SpectralFitConfig()
        frames = []
        for clip in clips:
            self.check_audio(clip[None], None)
            clip = nn.functional.pad(clip.float(), (0, (-clip.shape[0]) % self.hop_length))
            frames.append(self.features(clip[None])[0].T)  # (F, D)
        if not frames:
            raise CodecError("no clips to fit the codec to")
        vectors = torch.cat(frames)
        generator = torch.Generator().manual_seed(config.seed)
        if config.max_frames is not None and vectors.shape[0] > config.max_frames:
            vectors = vectors[torch.randperm(vectors.shape[0], generator=generator)[:config.max_frames]]
        return self.quantizer.fit_kmeans(vectors, config.iterations, generator)

    # -- the AudioCodec interface -------------------------------------------------------------------
    def _encode(self, audio: Tensor) -> Tensor:
        if not self.fitted:
            raise CodecError("this SpectralCodec has no fitted codebooks: fit it first (SpectralCodec.fit or "
                             "`mamba-audio train-codec --kind spectral`)")
        return self.quantizer.encode(self.features(audio))

    def _decode(self, tokens: Tensor) -> Tensor:
        return self.synthesize(self.quantizer.decode(tokens.to(self.window.device)))

    def _decode_continuing(self, tokens: Tensor, played: Tensor) -> Tensor:
        return self.synthesize(self.quantizer.decode(tokens.to(self.window.device)), played.to(self.window.device))

    __repr__ = AudioCodec.__repr__


def _synthesis_frames(frames: Tensor, factor: int) -> Tensor:
    """Tensor[B x D x F] -> Tensor[B x D x (F * factor + 1)], Griffin-Lim's frames for F * hop_length samples:
    linear between the input's frame centres (frame j of the result sits at j / factor on the input's frame
    axis), the last input frame held to the end."""
    position = torch.arange(frames.shape[2] * factor + 1, device=frames.device) / factor
    left = position.floor().long().clamp_max(frames.shape[2] - 1)
    right = (left + 1).clamp_max(frames.shape[2] - 1)
    weight = (position - left).clamp(0, 1)
    return frames[..., left] * (1 - weight) + frames[..., right] * weight


def griffin_lim(magnitude: Tensor, window: Tensor, hop_length: int, iterations: int, momentum: float, length: int,
                played: Tensor | None = None) -> Tensor:
    """Fast Griffin-Lim (Perraudin et al., 2013): magnitudes Tensor[B x bins x frames] of a centred STFT with
    ``window`` (n_fft = its length) and ``hop_length`` -> audio Tensor[B x length], from zero phase.

    With ``played`` Tensor[B x n], the first n samples are known: every iteration puts them back into the
    estimate before the STFT, and the phase starts from the STFT of the played audio followed by silence
    (zero phase where that is silent), so the new samples continue the played ones. Without it this is
    ``torchaudio.functional.griffinlim(..., power=1, rand_init=False)``, step for step (``momentum`` enters
    as momentum / (1 + momentum), as there)."""
    n_fft, known = window.shape[0], 0 if played is None else played.shape[1]

    def stft(audio: Tensor) -> Tensor:
        return torch.stft(audio, n_fft, hop_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True)

    def istft(spectrum: Tensor) -> Tensor:
        audio = torch.istft(spectrum, n_fft, hop_length, window=window, length=length)
        if known:
            audio[:, :known] = played
        return audio

    angles = torch.ones(magnitude.shape, dtype=magnitude.dtype.to_complex(), device=magnitude.device)
    if known:
        start = stft(torch.nn.functional.pad(played, (0, length - known)))
        size = start.abs()
        loudest = size.amax(dim=(1, 2), keepdim=True)  # per row: a batch decodes as its rows would alone
        angles = torch.where(size > 1e-8 * loudest, start / size.clamp_min(1e-30), angles)
    previous, step = torch.zeros((), dtype=magnitude.dtype, device=magnitude.device), momentum / (1 + momentum)
    for _ in range(iterations):
        rebuilt = stft(istft(magnitude * angles))
        angles = rebuilt - previous.mul_(step) if momentum else rebuilt
        angles = angles.div(angles.abs().add(1e-16))
        previous = rebuilt
    return istft(magnitude * angles)
