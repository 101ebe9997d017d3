"""A spectral codec fitted in minutes on a CPU: log-mel frames, a residual VQ fitted by k-means, Griffin-Lim.

    audio Tensor[B x L] -> STFT (Hann window of ``n_fft``, hop ``hop_length``) magnitudes
    -> mel filterbank (``n_mels`` bands; 0 keeps the n_fft/2 + 1 linear bins) -> log -> frames Tensor[B x D x F]
    -> ResidualVQ (K codebooks of C codes, fitted by k-means) -> tokens Tensor[B x K x F]
    -> sum of codes -> back to linear bins: exp, then the filterbank's pseudo-inverse floored at 0, or
       (``inverse_layers`` > 0) log-linear magnitudes predicted by a small convolutional network, then exp
    -> frames interpolated to a hop ``synthesis_oversampling`` times finer -> Griffin-Lim -> audio Tensor[B x L]

The codebooks are fitted by k-means (``fit``), without gradients. A recogniser hears speech through the
same kind of log-mel frames, so words survive where a briefly trained neural codec loses them. What loses
words is mostly the way back from 80 mel bands to the 513 linear bins Griffin-Lim needs: the
pseudo-inverse spreads each band's energy smoothly over its bins, losing the fine structure inside a
band (a voice's harmonics, where bands are wider than its pitch). Given the true linear magnitudes,
Griffin-Lim's 32 iterations are nearly as intelligible as the recording (recipes/tts/README.md has the
figures). The optional learned inverse (``fit_inverse``: a regression on log magnitudes, minutes of
training, the codebooks and so the tokens unchanged) predicts the linear magnitudes from the decoded
mel frames instead.

Decoding is deterministic (Griffin-Lim starts from zero phase, not random phase). Griffin-Lim works on
the whole decoded window at once, so a stream that decodes a few frames at a time would restart the
phase in every window and click at the joins. Given the audio a stream already played for its context
frames (``decode(tokens, played=...)``), every Griffin-Lim iteration holds those samples fixed, as
real-time iterative spectrogram inversion does (Zhu et al., 2007), so the new frames' phase continues
the played audio (tests/test_spectral_codec.py measures the difference from a whole decode). Checkpoints are ``config.json`` +
``model.safetensors`` (model type ``spectral_codec``), loaded by ``load_pretrained`` and ``load_codec``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchaudio.functional as AF
from tqdm.auto import tqdm

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
    # the way back from mel bands to linear bins: 0 layers, the filterbank's pseudo-inverse; more, the learned
    # MelInverse (residual 1-D convolutions over analysis frames, fitted by SpectralCodec.fit_inverse)
    inverse_layers: int = 0
    inverse_channels: int = 256
    inverse_kernel: int = 3  # odd; the network sees (kernel // 2) * (layers + 1) analysis frames on each side

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
        if self.inverse_layers < 0 or self.inverse_channels < 1 or self.inverse_kernel < 1 or \
                self.inverse_kernel % 2 == 0:
            raise ValueError("inverse_layers must be >= 0, inverse_channels positive and inverse_kernel odd and "
                             f"positive, got {self.inverse_layers}, {self.inverse_channels}, {self.inverse_kernel}")
        if self.inverse_layers and not self.n_mels:
            raise ValueError("a learned inverse (inverse_layers > 0) maps mel bands to linear bins: it needs "
                             "n_mels > 0")

    @property
    def bands(self) -> int:
        """Values per analysis frame: mel bands, or linear bins."""
        return self.n_mels or self.n_fft // 2 + 1

    @property
    def feature_dim(self) -> int:
        """D, the size of one token frame's vector: ``subframes`` analysis frames of ``bands`` values."""
        return self.bands * self.subframes


# the settings that decide what a token means (analysis and codebooks); the rest only change the synthesis
ANALYSIS_FIELDS = ("sample_rate", "hop_length", "n_fft", "n_mels", "f_min", "f_max", "magnitude_floor", "num_codebooks",
                   "codebook_size", "subframes")


@dataclass
class SpectralFitConfig:
    """How :meth:`SpectralCodec.fit` fits the codebooks: k-means ``iterations`` per codebook, on at most
    ``max_frames`` frames drawn at random (``seed``) from the clips; and how :meth:`SpectralCodec.fit_inverse`
    trains a learned inverse: ``inverse_steps`` Adam steps (learning rate ``inverse_lr``, cosine decay) on
    batches of ``inverse_batch`` random crops of ``inverse_segment_seconds`` from at most ``inverse_clips``
    clips (drawn at random by the command line, which holds them in memory)."""

    iterations: int = 20
    max_frames: int | None = 200_000
    seed: int = 0
    inverse_steps: int = 1500
    inverse_batch: int = 16
    inverse_segment_seconds: float = 2.0
    inverse_lr: float = 1e-3
    inverse_clips: int = 2000

    def __post_init__(self):
        if self.iterations < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ValueError(f"iterations and max_frames must be positive, got {self.iterations}, {self.max_frames}")
        if min(self.inverse_steps, self.inverse_batch, self.inverse_clips) < 1 or \
                not self.inverse_segment_seconds > 0 or not self.inverse_lr > 0:
            raise ValueError("inverse_steps, inverse_batch, inverse_clips, inverse_segment_seconds and inverse_lr must "
                             "be positive")


class MelInverse(nn.Module):
    """Log mel bands Tensor[B x n_mels x T] -> log linear magnitudes Tensor[B x bins x T] over analysis frames:
    an interpolation of the bands (below) plus a correction from residual 1-D convolutions (edges padded by
    repeating the end frames, so a decoded window's ends are not read as silence), capped at the largest
    magnitude a window of ``n_fft`` samples in [-1, 1] can have (``ceiling``: n_fft / 2 for a Hann window).

    The interpolation, not the pseudo-inverse, is the starting point: each bin is the mean of the bands
    covering it, each band's value divided by its filter's total weight (exact for a flat spectrum, never
    negative). The pseudo-inverse swings between large positive and negative weights in the narrow low
    bands, and a correction added to its floored logarithm learned to overshoot there by a factor of 400.
    """

    def __init__(self, filters: Tensor, floor: float, ceiling: float, channels: int, layers: int, kernel: int):
        super().__init__()
        n_mels, bins = filters.shape
        self.floor, self.ceiling, self.pad = floor, ceiling, kernel // 2
        weight = filters.sum(1, keepdim=True).clamp_min(1e-12)  # a band's value for a flat spectrum of 1
        share = filters / filters.sum(0, keepdim=True).clamp_min(1e-12)  # a bin's bands, weights summing to 1
        self.register_buffer("interpolation", (share / weight).T.contiguous(), persistent=False)  # (bins, n_mels)
        self.input = nn.Conv1d(n_mels, channels, kernel)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv1d(channels, channels, kernel), nn.Conv1d(channels, channels, 1)])
            for _ in range(layers))
        self.output = nn.Conv1d(channels, bins, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def _padded(self, x: Tensor) -> Tensor:
        return nn.functional.pad(x, (self.pad, self.pad), mode="replicate") if self.pad else x

    def forward(self, log_mel: Tensor) -> Tensor:
        base = (self.interpolation @ log_mel.exp()).clamp_min(self.floor).log()
        hidden = self.input(self._padded(log_mel))
        for wide, pointwise in self.blocks:
            hidden = hidden + pointwise(nn.functional.gelu(wide(self._padded(nn.functional.gelu(hidden)))))
        return (base + self.output(nn.functional.gelu(hidden))).clamp_max(math.log(self.ceiling))


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
        self.inverse = (MelInverse(self.mel_filters, config.magnitude_floor, config.n_fft / 2, config.inverse_channels,
                                   config.inverse_layers, config.inverse_kernel) if config.inverse_layers else None)

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
    def _stft_magnitudes(self, audio: Tensor, frames: int) -> Tensor:
        """audio Tensor[B x L] -> |STFT| Tensor[B x n_fft/2+1 x frames * subframes], the analysis frames."""
        config = self.config
        return torch.stft(audio.float().to(self.window.device), config.n_fft, config.hop_length // config.subframes,
                          window=self.window, center=True, return_complex=True).abs()[..., :frames * config.subframes]

    def features(self, audio: Tensor) -> Tensor:
        """audio Tensor[B x L] (L a multiple of hop_length) -> log magnitudes Tensor[B x D x F], F = L / hop_length:
        token frame f stacks the ``subframes`` analysis windows centred on samples (f + s / subframes) *
        hop_length, s = 0 .. subframes - 1 (bands of subframe s at rows s * bands .. (s + 1) * bands - 1)."""
        return self._token_frames(self._stft_magnitudes(audio, audio.shape[1] // self.config.hop_length))

    def _token_frames(self, spectrum: Tensor) -> Tensor:
        """|STFT| Tensor[B x n_fft/2+1 x F * subframes] (``_stft_magnitudes``) -> ``features``' Tensor[B x D x F]."""
        config = self.config
        frames = spectrum.shape[2] // config.subframes
        if config.n_mels:
            spectrum = self.mel_filters @ spectrum
        log = spectrum.clamp_min(config.magnitude_floor).log()  # (B, bands, F * subframes)
        batch, bands = log.shape[:2]
        return log.view(batch, bands, frames, config.subframes).permute(0, 3, 1, 2).reshape(batch, -1, frames)

    def synthesize(self, features: Tensor, played: Tensor | None = None) -> Tensor:
        """Log magnitudes Tensor[B x D x F] -> audio Tensor[B x F * hop_length] by Griffin-Lim from zero phase,
        or continuing ``played`` Tensor[B x n], the audio of the first n / hop_length frames (see ``decode``)."""
        config = self.config
        frames = features.shape[2]
        magnitude = self._linear_magnitudes(features)
        hop = config.hop_length // (config.subframes * config.synthesis_oversampling)
        magnitude = _synthesis_frames(magnitude, config.synthesis_oversampling)
        return griffin_lim(magnitude, self.window, hop, config.griffin_lim_iterations, config.griffin_lim_momentum,
                           length=frames * config.hop_length, played=played)

    def _analysis_frames(self, features: Tensor) -> Tensor:
        """Token frames Tensor[B x D x F] -> their analysis frames Tensor[B x bands x F * subframes] (log)."""
        config = self.config
        batch, _, frames = features.shape
        return (features.float().view(batch, config.subframes, config.bands, frames).permute(0, 2, 3, 1)
                .reshape(batch, config.bands, frames * config.subframes))

    def _linear_magnitudes(self, features: Tensor) -> Tensor:
        """Token frames Tensor[B x D x F] -> magnitudes of the linear bins, Tensor[B x bins x F * subframes]:
        the learned inverse's or the pseudo-inverse's, floored (zeros would make Griffin-Lim's FFTs crawl
        through denormal numbers)."""
        log_bands = self._analysis_frames(features)
        if not self.config.n_mels:
            return log_bands.exp()
        if self.inverse is not None:
            return self.inverse(log_bands).exp().clamp_min(self.config.magnitude_floor)
        return (self.mel_inverse @ log_bands.exp()).clamp_min(self.config.magnitude_floor)

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

    def fit_inverse(self, clips, config: SpectralFitConfig | None = None, progress: bool = False) -> list[float]:
        """Train the learned inverse (``inverse_layers`` > 0) of a fitted codec: from the quantised mel frames
        of random crops of ``clips`` (a sequence of Tensor[L] waveforms at ``sample_rate``) to the log linear
        magnitudes of the same audio, L1 (settings: ``config``). The codebooks are untouched, so tokens made
        before stay valid. Returns the mean loss of each tenth of the steps. Runs where the codec is."""
        config = config or SpectralFitConfig()
        if self.inverse is None:
            raise CodecError("this SpectralCodec has no learned inverse to fit: set inverse_layers > 0")
        if not self.fitted:
            raise CodecError("fit the codebooks first (SpectralCodec.fit): the inverse learns from quantised frames")
        clips = list(clips)
        if not clips:
            raise CodecError("no clips to fit the inverse to")
        for clip in clips:
            self.check_audio(clip[None], None)
        hop, generator = self.hop_length, torch.Generator().manual_seed(config.seed)
        segment = max(1, round(config.inverse_segment_seconds * self.sample_rate / hop)) * hop
        optimizer = torch.optim.Adam(self.inverse.parameters(), lr=config.inverse_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.inverse_steps)
        losses, report_every = [], max(1, config.inverse_steps // 10)
        self.inverse.train()
        for step in tqdm(range(config.inverse_steps), desc="fitting the mel inverse", disable=not progress):
            crops = []
            for index in torch.randint(len(clips), (config.inverse_batch,), generator=generator).tolist():
                clip = clips[index].float()
                start = int(torch.randint(max(1, clip.shape[0] - segment + 1), (), generator=generator))
                crop = clip[start:start + segment]
                crops.append(nn.functional.pad(crop, (0, segment - crop.shape[0])))
            audio = torch.stack(crops).to(self.window.device)
            with torch.no_grad():  # one STFT gives both the input frames and the target
                spectrum = self._stft_magnitudes(audio, segment // hop)
                quantised = self.quantizer.decode(self.quantizer.encode(self._token_frames(spectrum)))
                target = spectrum.clamp_min(self.config.magnitude_floor).log()
            loss = (self.inverse(self._analysis_frames(quantised)) - target).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        self.inverse.eval()
        return [sum(chunk) / len(chunk) for chunk in (losses[i:i + report_every]
                                                      for i in range(0, len(losses), report_every))]

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
