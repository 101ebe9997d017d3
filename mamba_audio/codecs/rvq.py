"""Residual vector quantisation (SoundStream, Zeghidour et al. 2021) with EMA codebooks and dead-code restarts.

Dimension names: N vectors, D dimensions, K codebooks (stages), C codes per codebook.

Stage k quantises what the stages before it left over: r_0 = x, q_k = nearest code of r_k,
r_{k+1} = r_k - q_k, and x is represented by sum_k q_k. Codebooks are not learned by gradients but
as exponential moving averages of the vectors assigned to each code (k-means in the limit, as in
VQ-VAE-2 and EnCodec); the encoder is pulled towards its codes by a commitment loss and receives the
decoder's gradient straight through the quantiser. A code that falls out of use (its moving-average
count below ``dead_code_fraction`` of an average code's) is restarted at a random vector of the batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


def _all_reduce(tensor: Tensor) -> Tensor:
    """Sum over processes under torch.distributed (identity otherwise), so every process keeps equal codebooks."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def _random_rows(x: Tensor, count: int) -> Tensor:
    """``count`` rows of x (N, D) drawn at random (with replacement when N < count), the same on every process."""
    index = torch.randint(0, x.shape[0], (count,), device=x.device)
    return _broadcast(x[index].contiguous())


class EMACodebook(nn.Module):
    """One codebook of C codes in D dimensions, updated by moving averages in training.

    Buffers (saved with the weights): ``codes`` (C, D), ``usage`` (C,) the moving-average count of
    vectors per code, ``code_sums`` (C, D) the moving-average sum of those vectors, and
    ``initialized`` (set once the codes are drawn from the first training batch).
    """

    def __init__(self, codebook_size: int, dim: int, decay: float, dead_code_fraction: float, eps: float = 1e-5):
        super().__init__()
        self.decay, self.dead_code_fraction, self.eps = decay, dead_code_fraction, eps
        self.register_buffer("codes", torch.randn(codebook_size, dim))
        self.register_buffer("usage", torch.ones(codebook_size))
        self.register_buffer("code_sums", self.codes.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # host-side copy of ``initialized`` once seen True (saves a device sync per step)

    def nearest(self, x: Tensor) -> Tensor:
        """x (N, D) float32 -> index (N,) of the closest code in Euclidean distance."""
        distances = x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codes.T + self.codes.pow(2).sum(1)[None]
        return distances.argmin(1)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Draw the C codes from vectors x (N, D) of the first training batch (once; a loaded codebook is kept)."""
        if self._ready or bool(self.initialized):
            self._ready = True
            return
        self.codes.copy_(_random_rows(x, self.codes.shape[0]))
        # no usage yet: a code that the next batches do not pick is restarted at once (the encoder moves fast
        # early on, and codes left where its first outputs were would never be used again)
        self.usage.zero_()
        self.code_sums.zero_()
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def update(self, x: Tensor, index: Tensor) -> None:
        """One training step's moving-average update from vectors x (N, D) assigned to codes ``index`` (N,).

        Written without host synchronisation: restart candidates are drawn every step and used where needed.
        """
        size = self.codes.shape[0]
        counts = _all_reduce(torch.bincount(index, minlength=size).float())
        sums = _all_reduce(torch.zeros_like(self.code_sums).index_add_(0, index, x))
        self.usage.lerp_(counts, 1 - self.decay)
        self.code_sums.lerp_(sums, 1 - self.decay)
        total = self.usage.sum()
        smoothed = (self.usage + self.eps) / (total + size * self.eps) * total  # Laplace smoothing: no division by 0
        codes = self.code_sums / smoothed[:, None]
        floor = self.dead_code_fraction * total / size
        dead = (self.usage < floor)[:, None]
        fresh = _random_rows(x, size)
        self.codes.copy_(torch.where(dead, fresh, codes))
        self.usage.copy_(torch.where(dead[:, 0], floor, self.usage))
        self.code_sums.copy_(torch.where(dead, fresh * floor, self.code_sums))


class ResidualVQ(nn.Module):
    """K EMA codebooks applied in turn to the residual.

    Args:
        num_codebooks: K stages.
        codebook_size: C codes per stage.
        dim: D, the size of the vectors quantised.
        decay: moving-average decay of the codebooks (0.99 as in EnCodec).
        dead_code_fraction: restart codes used less than this fraction of an average code's usage.
    """

    def __init__(self, num_codebooks: int, codebook_size: int, dim: int, decay: float = 0.99,
                 dead_code_fraction: float = 0.03):
        super().__init__()
        self.codebooks = nn.ModuleList(EMACodebook(codebook_size, dim, decay, dead_code_fraction)
                                       for _ in range(num_codebooks))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Quantise latents x Tensor[B x D x F]; in training mode also update the codebooks.

        Returns:
            quantised Tensor[B x D x F] (x plus the quantisation error, so gradients pass straight
            through to x), codes Tensor[B x K x F] long, the commitment loss (mean squared distance of
            every stage's residual to its code, summed over stages) and the fraction of codes used in
            this batch (mean over codebooks).
        """
        with torch.autocast(x.device.type, enabled=False):
            flat = x.float().transpose(1, 2).reshape(-1, x.shape[1])  # (B F, D)
            residual, total, commitment = flat, torch.zeros_like(flat), flat.new_zeros(())
            codes, used = [], []
            for codebook in self.codebooks:
                if self.training:
                    codebook.initialize(residual.detach())
                index = codebook.nearest(residual.detach())
                quantised = codebook.codes[index]
                commitment = commitment + F.mse_loss(residual, quantised)
                if self.training:
                    codebook.update(residual.detach(), index)
                codes.append(index)
                used.append((torch.bincount(index, minlength=codebook.codes.shape[0]) > 0).float().mean())
                total = total + quantised
                residual = residual - quantised
            out = flat + (total - flat).detach()
        batch, _, frames = x.shape
        out = out.reshape(batch, frames, -1).transpose(1, 2).to(x.dtype)
        codes = torch.stack(codes, 1).reshape(batch, frames, -1).transpose(1, 2)
        return out, codes, commitment, torch.stack(used).mean()

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Latents Tensor[B x D x F] -> codes Tensor[B x K x F] long; never changes the codebooks."""
        flat = x.float().transpose(1, 2).reshape(-1, x.shape[1])
        codes = []
        for codebook in self.codebooks:
            index = codebook.nearest(flat)
            codes.append(index)
            flat = flat - codebook.codes[index]
        return torch.stack(codes, 1).reshape(x.shape[0], x.shape[2], -1).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes Tensor[B x K x F] long -> latents Tensor[B x D x F] float32, the sum of the K codes."""
        total = sum(codebook.codes[codes[:, k]] for k, codebook in enumerate(self.codebooks))  # (B, F, D)
        return total.transpose(1, 2)

    @torch.no_grad()
    def fit_kmeans(self, vectors: Tensor, iterations: int = 20, generator: torch.Generator | None = None) -> list[float]:
        """Fit the codebooks to ``vectors`` Tensor[N x D] by k-means, stage by stage on the residual (no gradients:
        for features that need no encoder, like a spectral codec's frames). Marks every codebook initialised.

        Returns the mean squared quantisation error left after each stage (K floats, non-increasing).
        """
        if vectors.dim() != 2 or vectors.shape[1] != self.codebooks[0].codes.shape[1]:
            raise ValueError(f"vectors must be (N, {self.codebooks[0].codes.shape[1]}), got {tuple(vectors.shape)}")
        residual, errors = vectors.float(), []
        for codebook in self.codebooks:
            codes = kmeans(residual, codebook.codes.shape[0], iterations, generator).to(codebook.codes)
            codebook.codes.copy_(codes)
            index = codebook.nearest(residual)
            codebook.usage.copy_(torch.bincount(index, minlength=codes.shape[0]).float())
            codebook.code_sums.copy_(codes * codebook.usage[:, None])
            codebook.initialized.fill_(True)
            residual = residual - codes[index]
            errors.append(float(residual.pow(2).sum(1).mean()))
        return errors


def _nearest_chunked(x: Tensor, centres: Tensor, chunk: int = 16384) -> tuple[Tensor, Tensor]:
    """(index (N,), squared distance (N,)) of each row of x (N, D) to its nearest centre (C, D), in row chunks."""
    index, distance = [], []
    centre_norms = centres.pow(2).sum(1)[None]
    for rows in x.split(chunk):
        d = rows.pow(2).sum(1, keepdim=True) - 2 * rows @ centres.T + centre_norms
        best = d.min(1)
        index.append(best.indices)
        distance.append(best.values.clamp_min(0))
    return torch.cat(index), torch.cat(distance)


def kmeans(x: Tensor, num_codes: int, iterations: int, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means of x Tensor[N x D] into ``num_codes`` centres (C x D), started at random rows of x.

    A centre left without vectors restarts at the vector worst served (largest distance to its centre),
    so no code is wasted; with fewer distinct vectors than codes, the extra codes repeat vectors.
    """
    if x.shape[0] == 0 or iterations < 1:
        raise ValueError(f"k-means needs vectors and iterations >= 1, got {x.shape[0]} vectors, {iterations} iterations")
    x = x.float()
    start = torch.randperm(x.shape[0], generator=generator)[:num_codes]
    if start.numel() < num_codes:  # fewer vectors than codes
        start = torch.cat([start, torch.randint(0, x.shape[0], (num_codes - start.numel(),), generator=generator)])
    centres = x[start].clone()
    for _ in range(iterations):
        index, distance = _nearest_chunked(x, centres)
        counts = torch.bincount(index, minlength=num_codes).float()
        sums = torch.zeros_like(centres).index_add_(0, index, x)
        empty = (counts == 0).nonzero().flatten()
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        if empty.numel():
            worst = distance.topk(min(empty.numel(), x.shape[0])).indices
            centres[empty[: worst.numel()]] = x[worst]
    return centres
