"""Sample-quality metrics of the SaShiMi and Mamba papers' SC09 experiments, and the codecs' reconstruction distance.

All four are computed from a classifier of the real data: its class probabilities
p(y|x) and its features (the pooled activations before the head).

- FID: Frechet distance between Gaussians fitted to the features of generated and
  real clips (lower is better).
- IS: exp E_x KL(p(y|x) || p(y)), p(y) the mean prediction over generated clips:
  confident and varied predictions score high (at most the number of classes).
- mIS (modified IS): exp E_{x,x'} KL(p(y|x) || p(y|x')) over pairs of generated clips,
  which also rewards diversity within a class (higher is better).
- AM: KL(p_real(y) || p(y)) + E_x H(p(y|x)): the class balance of the generated
  clips against the real ones, plus the classifier's uncertainty (lower is better).

Codecs are compared by :func:`mrstft_distance`, the multi-resolution STFT distance that also
trains our own codec (``codec_mrstft_distance`` in the reports).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
_EPS = 1e-12


def _check_probs(probs: Tensor, name: str) -> Tensor:
    if probs.dim() != 2 or probs.shape[0] < 1:
        raise ValueError(f"{name} must be (clips, classes) probabilities, got shape {tuple(probs.shape)}")
    probs = probs.double()
    if not torch.isfinite(probs).all() or (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(1, dtype=probs.dtype), atol=1e-4):
        raise ValueError(f"{name}: every row must be a probability distribution (finite, >= 0, summing to 1)")
    return probs


def _kl_rows(p: Tensor, q: Tensor) -> Tensor:
    """KL(p_i || q_j) for every pair: (n, m)."""
    entropy_term = (p * torch.log(p.clamp_min(_EPS))).sum(1, keepdim=True)  # (n, 1)
    return entropy_term - p @ torch.log(q.clamp_min(_EPS)).T


def inception_score(probs: Tensor) -> float:
    """IS of generated clips' class probabilities (n, K)."""
    probs = _check_probs(probs, "probs")
    marginal = probs.mean(0, keepdim=True)
    return float(torch.exp(_kl_rows(probs, marginal).mean()))


def modified_inception_score(probs: Tensor) -> float:
    """mIS of generated clips' class probabilities (n, K): exp of the mean pairwise KL."""
    probs = _check_probs(probs, "probs")
    return float(torch.exp(_kl_rows(probs, probs).mean()))


def am_score(probs: Tensor, real_probs: Tensor) -> float:
    """AM score: KL(mean real prediction || mean generated prediction) + mean entropy of the generated."""
    probs = _check_probs(probs, "probs")
    real_probs = _check_probs(real_probs, "real_probs")
    if probs.shape[1] != real_probs.shape[1]:
        raise ValueError(f"{probs.shape[1]} classes in probs, {real_probs.shape[1]} in real_probs")
    kl = _kl_rows(real_probs.mean(0, keepdim=True), probs.mean(0, keepdim=True))[0, 0]
    entropy = -(probs * torch.log(probs.clamp_min(_EPS))).sum(1).mean()
    return float(kl + entropy)


def frechet_distance(features: Tensor, real_features: Tensor) -> float:
    """FID between feature sets (n, F) and (m, F): |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)."""
    for name, f in (("features", features), ("real_features", real_features)):
        if f.dim() != 2 or f.shape[0] < 2 or not torch.isfinite(f).all():
            raise ValueError(f"{name} must be finite (clips >= 2, dims), got shape {tuple(f.shape)}")
    if features.shape[1] != real_features.shape[1]:
        raise ValueError(f"feature sizes differ: {features.shape[1]} vs {real_features.shape[1]}")
    a, b = features.double(), real_features.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    # tr (S1 S2)^1/2 = tr (S1^1/2 S2 S1^1/2)^1/2, whose argument is symmetric positive semi-definite
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root)


@torch.no_grad()
def classifier_outputs(classifier, tokens: Tensor, lengths: Tensor | None = None,
                       batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """(features (n, F), probabilities (n, K)) of token clips (n, L) under a SaShiMiClassifier."""
    classifier.eval()
    device = next(classifier.parameters()).device
    features, probs = [], []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size].to(device)
        chunk_lengths = None if lengths is None else lengths[start:start + batch_size].to(device)
        feature = classifier.features(chunk, chunk_lengths)
        features.append(feature.float().cpu())
        probs.append(classifier.head(feature).float().softmax(-1).cpu())
    return torch.cat(features), torch.cat(probs)


def generation_scores(classifier, generated: Tensor, real: Tensor, generated_lengths: Tensor | None = None,
                      real_lengths: Tensor | None = None) -> dict[str, float]:
    """FID, IS, mIS and AM of generated token clips against real ones, plus the classifier's view
    of the real clips (its IS, an upper reference for the generated)."""
    gen_features, gen_probs = classifier_outputs(classifier, generated, generated_lengths)
    real_features, real_probs = classifier_outputs(classifier, real, real_lengths)
    return {
        "fid": frechet_distance(gen_features, real_features),
        "is": inception_score(gen_probs),
        "mis": modified_inception_score(gen_probs),
        "am": am_score(gen_probs, real_probs),
        "real_is": inception_score(real_probs),
        "generated_clips": int(generated.shape[0]),
        "real_clips": int(real.shape[0]),
    }


# -- codec reconstruction ---------------------------------------------------------------------------
MRSTFT_FFT_SIZES = (2048, 1024, 512, 256, 128)  # 128 ms .. 8 ms windows at 16 kHz
_MAGNITUDE_FLOOR = 1e-5  # about -100 dB: log magnitudes of silence stop here


def mrstft_distance(estimate: Tensor, reference: Tensor, fft_sizes: tuple[int, ...] = MRSTFT_FFT_SIZES,
                    reduction: str = "mean") -> Tensor:
    """Multi-resolution STFT distance between waveforms (Yamamoto et al., 2020, Parallel WaveGAN).

    At every FFT size n (Hann window of n samples, hop n/4) it adds the spectral convergence
    ``||S_ref| - |S_est||_F / ||S_ref||_F`` and the mean absolute difference of the log magnitudes;
    the distance is the mean over the sizes. 0 for identical waveforms; lower is closer. It is
    differentiable, and is the reconstruction loss of :class:`mamba_audio.codecs.ConvCodec`.

    Args:
        estimate, reference: Tensor[B x L] float waveforms of the same shape (computed in float32).
        fft_sizes: the window lengths in samples; each must be at most L.
        reduction: "mean" (a scalar) or "none" (Tensor[B], one distance per clip).
    """
    if estimate.shape != reference.shape or estimate.dim() != 2:
        raise ValueError(f"estimate and reference must both be (batch, samples), got {tuple(estimate.shape)} "
                         f"and {tuple(reference.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not fft_sizes or min(fft_sizes) < 4 or max(fft_sizes) > reference.shape[1]:
        raise ValueError(f"fft_sizes {tuple(fft_sizes)} must lie in [4, {reference.shape[1]}] "
                         f"(clips of {reference.shape[1]} samples)")
    with torch.autocast(estimate.device.type, enabled=False):
        estimate, reference = estimate.float(), reference.float()
        distance = estimate.new_zeros(estimate.shape[0])
        for n_fft in fft_sizes:
            window = torch.hann_window(n_fft, device=estimate.device)
            est, ref = (torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
                        for x in (estimate, reference))
            convergence = (ref - est).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(_MAGNITUDE_FLOOR)
            log_magnitude = (torch.log(ref.clamp_min(_MAGNITUDE_FLOOR)) -
                             torch.log(est.clamp_min(_MAGNITUDE_FLOOR))).abs().flatten(1).mean(1)
            distance = distance + convergence + log_magnitude
        distance = distance / len(fft_sizes)
    return distance.mean() if reduction == "mean" else distance


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, over all pairs.

    Words are compared lower-cased with punctuation other than apostrophes removed, so "Home." and
    "home" match. An empty hypothesis counts every reference word as deleted.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = _words(reference), _words(hypothesis)
        previous = list(range(len(hyp) + 1))  # edit distance, one row of the table at a time
        for i, ref_word in enumerate(ref, 1):
            current = [i]
            for j, hyp_word in enumerate(hyp, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
            previous = current
        errors += previous[-1]
        words += len(ref)
    if words == 0:
        raise ValueError("the references hold no words")
    return errors / words


def _words(text: str) -> list[str]:
    import re

    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


@torch.no_grad()
def codec_round_trip(codec, clips, fft_sizes: tuple[int, ...] = MRSTFT_FFT_SIZES) -> dict:
    """How well ``codec`` (an AudioCodec) reconstructs ``clips`` (Tensor[L] waveforms at its sample rate).

    Every clip is encoded and decoded alone (after one untimed warm-up round trip); the decoded audio is
    cut to the clip's length and compared with :func:`mrstft_distance` (at the FFT sizes that fit the clip).

    Returns:
        ``mrstft_distance`` (mean over clips), ``clips``, ``audio_seconds`` and ``realtime_factor``: the
        round trips' wall-clock time over the audio's duration (below 1: faster than real time).
    """
    import time

    distances, samples, elapsed, warm = [], 0, 0.0, False
    for clip in clips:
        if not warm:  # the first call pays for kernel selection and allocation, not for coding
            codec.decode(codec.encode(clip[None], sample_rate=codec.sample_rate)).cpu()
            warm = True
        sizes = tuple(n for n in fft_sizes if n <= clip.shape[-1])
        if not sizes:
            raise ValueError(f"a clip of {clip.shape[-1]} samples is shorter than every FFT size {tuple(fft_sizes)}")
        started = time.perf_counter()
        decoded = codec.decode(codec.encode(clip[None], sample_rate=codec.sample_rate)).cpu()  # waits for the device
        elapsed += time.perf_counter() - started
        distances.append(float(mrstft_distance(decoded[:, : clip.shape[-1]], clip[None].cpu(), sizes)))
        samples += clip.shape[-1]
    if not distances:
        raise ValueError("no clips to score")
    seconds = samples / codec.sample_rate
    return {"mrstft_distance": sum(distances) / len(distances), "clips": len(distances),
            "audio_seconds": round(seconds, 3), "realtime_factor": elapsed / seconds}


@torch.no_grad()
def decode_in_chunks(codec, tokens: Tensor, chunk_frames: int, context_frames: int, lookahead_frames: int,
                     continuing: bool = True) -> Tensor:
    """Decode tokens Tensor[1 x K x F] as a stream does (``mamba_audio.tts.SpeechStream``): ``chunk_frames`` at a
    time, each decoded with up to ``context_frames`` before it (and, with ``continuing``, the audio already
    kept for them) and ``lookahead_frames`` after it, keeping only the chunk's samples. Returns
    Tensor[1 x F * hop_length], to compare with ``codec.decode(tokens)``."""
    if tokens.dim() != 3 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must be (1, codebooks, frames), got {tuple(tokens.shape)}")
    if chunk_frames < 1 or min(context_frames, lookahead_frames) < 0:
        raise ValueError("chunk_frames must be positive and the context and lookahead frames non-negative")
    frames, hop, pieces = tokens.shape[2], codec.hop_length, []
    played = torch.zeros(tokens.shape[0], 0)  # the output of frames first .. start: the context already played
    for start in range(0, frames, chunk_frames):
        stop = min(start + chunk_frames, frames)
        first, last = max(0, start - context_frames), min(frames, stop + lookahead_frames)
        audio = codec.decode(tokens[:, :, first:last], played.to(codec.device) if continuing else None)
        pieces.append(audio[:, (start - first) * hop:(stop - first) * hop].cpu())
        if continuing:
            played = torch.cat([played, pieces[-1]], 1)
            played = played[:, max(0, played.shape[1] - context_frames * hop):]
    return torch.cat(pieces, 1)
