"""Networks that predict the console's normalised parameters (batch, P) in [0, 1].

- :class:`AudioEncoder`: log-mel (mid and side) -> small 2-D CNN -> mean+max over time, plus
  level-preserving spectral statistics -> embedding (batch, embed_dim).
- :class:`ReferenceController` (``approach1``): raw vocal + a mixed reference -> parameters.
- :class:`DirectController` (``approach2``): raw vocal only -> the learned house style.

Both share :class:`Controller`'s interface ``forward(raw, reference=None, descriptors=None) -> (batch, P)`` and
``needs_reference``, so training, evaluation and ``mix`` never branch on the approach except to
decide whether to load a reference.

Sizing: upstream Diff-MST holds two CNN14 encoders (153 M parameters) for multitrack mixes; we have
a few hundred vocal pairs, so the default encoder has 0.57 M parameters and a whole controller
(30 console parameters, hidden 256) 0.75 M (approach1) / 0.68 M (approach2).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import MstError

APPROACHES = ("approach1", "approach2")


class ReferenceMismatch(MstError, ValueError):
    """A reference was missing for approach1 or given to approach2 (a ValueError and an MstError)."""


# ----------------------------------------------------------------------------------------------
# mel filterbank (own implementation; torchaudio does not import here)

def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / log_step, lin)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(log_step * (m - 15.0)), m * (200.0 / 3.0))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular Slaney-style mel filterbank, (n_mels, n_fft // 2 + 1) float32, area-normalised.

    Filter m rises from edge m to edge m+1 and falls to edge m+2 (edges equally spaced in mel);
    each row is scaled by 2 / (bandwidth in Hz) so a flat spectrum gives equal band energies.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bins[None] - lo) / (mid - lo)
    fall = (hi - bins[None]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(rise, fall)) * (2.0 / (hi - lo))
    return torch.from_numpy(fb.astype(np.float32))


def default_stft_sizes(sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop) for the encoder: a power-of-two window of ~43 ms, hop = window / 2 (~21 ms).

    The encoder estimates one setting per segment, so 21 ms frames resolve the level dynamics it
    needs; halving the hop from window / 4 halves the CNN's cost.
    """
    n_fft = 2 ** int(round(math.log2(0.0427 * sample_rate)))
    return n_fft, n_fft // 2


# ----------------------------------------------------------------------------------------------
# encoder

def _group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class AudioEncoder(nn.Module):
    """Audio (batch, channels, samples), channels 1 or 2 -> embedding (batch, embed_dim).

    - Stereo is turned into mid = (L + R) / 2 and side = (L - R) / 2 (mono: side = 0). A dry vocal
      is mono and centred, so the side channel holds what the stereo reverb send added: keeping it
      (rather than downmixing) lets the network see reverb level and width.
    - Log-mel power in dB / 20 (64 Slaney bands, 0 Hz .. Nyquist; STFT ~43 ms / ~21 ms hop at any
      sample rate), one CNN input plane each for mid and side.
    - CNN: per stage one 3x3 conv -> GroupNorm -> ReLU -> 2x2 max-pool (ceil mode, so any length
      >= 1 frame works); channels double per stage (16 .. 256), so every stage costs about the
      same and the deep, wide stages (where the parameters are) run on small maps. GroupNorm, not BatchNorm: batches are ~4 segments, too few for
      stable batch statistics, and train/eval behave the same.
    - Pooling: the CNN map is flattened over (channels, mel) and pooled by mean and max over time.
    - ``feature_norm``: the pooled features are standardised (BatchNorm without affine: batch
      statistics in training, running statistics at inference) before the projection.
    - GroupNorm removes each item's overall level, but gain/EQ/compression decisions depend on it,
      so the per-band mean and standard deviation over time of the mid and side log-mels
      (the long-term spectrum and its dynamics, 4 x n_mels values) skip the CNN and join the
      pooled features before the final linear layer.
    """

    def __init__(self, sample_rate: int = 48000, n_fft: int | None = None, hop: int | None = None,
                 n_mels: int = 64, channels: Sequence[int] = (16, 32, 64, 128, 256), embed_dim: int = 128,
                 feature_norm: bool = True):
        super().__init__()
        d_fft, d_hop = default_stft_sizes(sample_rate)
        self.sample_rate, self.n_mels, self.embed_dim = int(sample_rate), int(n_mels), int(embed_dim)
        self.n_fft = int(n_fft or d_fft)
        self.hop = int(hop or (self.n_fft // 2 if n_fft else d_hop))
        self.register_buffer("mel_fb", mel_filterbank(self.sample_rate, self.n_fft, self.n_mels), persistent=False)
        window = torch.hann_window(self.n_fft)
        self.register_buffer("window", window, persistent=False)
        # scale so a full-scale sine reads ~0 dB in its band
        self.power_scale = float(2.0 / window.sum()) ** 2

        layers, c_in, f = [], 2, self.n_mels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), _group_norm(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in, f = c, math.ceil(f / 2)
        self.cnn = nn.Sequential(*layers)
        n_feat = 2 * c_in * f + 4 * self.n_mels
        # Songs differ little in these features next to their common offset (a log-mel band's mean is
        # ~-3 for every vocal), so without standardising them every song gets nearly the same
        # embedding and the head learns one preset (issue 10). Batch statistics in training, running
        # ones at inference (momentum 0.1: the last ~10 steps); no affine part, the next linear layer has its own.
        self.norm = nn.BatchNorm1d(n_feat, affine=False) if feature_norm else nn.Identity()
        self.proj = nn.Sequential(nn.Linear(n_feat, embed_dim), nn.ReLU(inplace=True), nn.Linear(embed_dim, embed_dim))

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels 1|2, samples) -> (batch, 2 [mid, side], n_mels, frames) in dB / 20."""
        if x.dim() != 3 or x.shape[1] not in (1, 2):
            raise ValueError(f"audio must have shape (batch, 1 or 2, samples), got {tuple(x.shape)}")
        b = x.shape[0]
        if x.shape[1] == 2:
            ms = torch.stack([(x[:, 0] + x[:, 1]) * 0.5, (x[:, 0] - x[:, 1]) * 0.5], dim=1)
        else:
            ms = x  # mono: the side plane is silence, filled in below without an STFT
        # constant (not reflect) padding so even inputs shorter than half a window work
        spec = torch.stft(ms.reshape(-1, ms.shape[-1]), self.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = torch.view_as_real(spec).square().sum(-1) * self.power_scale
        mel = torch.matmul(self.mel_fb, power)  # (b * planes, n_mels, frames)
        feats = (10.0 / 20.0) * torch.log10(mel + 1e-10).reshape(b, ms.shape[1], self.n_mels, -1)
        if x.shape[1] == 1:
            feats = torch.cat([feats, torch.full_like(feats, (10.0 / 20.0) * math.log10(1e-10))], dim=1)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.log_mel(x)
        stats = torch.cat([feats.mean(-1), feats.std(-1, unbiased=False)], dim=1).flatten(1)
        h = self.cnn(feats)  # (batch, C, F', T')
        h = h.flatten(1, 2)  # (batch, C * F', T')
        pooled = torch.cat([h.mean(-1), h.amax(-1), stats], dim=1)
        if self.training and pooled.shape[0] < 2 and isinstance(self.norm, nn.BatchNorm1d):
            # one item has no batch statistics (e.g. a last training batch of one): use the running ones
            n = self.norm
            return self.proj(nn.functional.batch_norm(pooled, n.running_mean, n.running_var, training=False, eps=n.eps))
        return self.proj(self.norm(pooled))


# ----------------------------------------------------------------------------------------------
# controllers

def _init_bias(init_params, num_params: int) -> torch.Tensor:
    if init_params is None:
        return torch.zeros(num_params)  # sigmoid(0) = 0.5: the middle of every range
    p = torch.as_tensor(init_params, dtype=torch.float32).flatten()
    if p.numel() != num_params:
        raise ValueError(f"init_params has {p.numel()} values but the console has {num_params} parameters")
    if not torch.all((p >= 0) & (p <= 1)):
        raise ValueError("init_params must be normalised values in [0, 1]")
    return torch.logit(p.clamp(1e-3, 1 - 1e-3))


def _mlp(n_in: int, hidden: int, num_params: int, dropout: float, init_params,
         head_init_scale: float = 1.0) -> nn.Sequential:
    head = nn.Linear(hidden, num_params)
    with torch.no_grad():
        # head_init_scale < 1 starts every prediction near init_params whatever the audio, but it
        # also scales the gradient reaching the encoder by the same factor: at 0.01 (the recipe
        # before e05) the encoder barely trained and every song got the same setting (issue 10)
        head.weight.mul_(float(head_init_scale))
        head.bias.copy_(_init_bias(init_params, num_params))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), head)


class Controller(nn.Module):
    """Common interface: ``forward(raw (batch, 1, samples), reference (batch, 2, samples) | None)``
    -> normalised console parameters (batch, num_params) in [0, 1] (sigmoid).

    Attributes: ``approach`` ("approach1"/"approach2"), ``needs_reference``, ``num_params``,
    ``encoder`` (an :class:`AudioEncoder`).
    """

    approach: str = ""
    needs_reference: bool = False

    def __init__(self, num_params: int, sample_rate: int, encoder: dict | None = None, num_descriptors: int = 0):
        super().__init__()
        if int(num_params) < 1:
            raise ValueError(f"num_params must be >= 1, got {num_params}")
        self.num_params, self.sample_rate = int(num_params), int(sample_rate)
        self.encoder = AudioEncoder(sample_rate=sample_rate, **(encoder or {}))
        self.num_descriptors = int(num_descriptors)
        self.descriptor_head = None
        if self.num_descriptors > 0:
            # A linear map from the standardised take descriptors to the logits, added to the head's.
            # Zero at the start, so the network begins exactly as it would without them; the audio
            # loss then moves each setting with the descriptors that predict it (experiments/e10).
            # skip_init draws nothing from the RNG: a seed gives the same network with or without them.
            self.descriptor_head = nn.utils.skip_init(nn.Linear, self.num_descriptors, self.num_params)
            nn.init.zeros_(self.descriptor_head.weight)
            nn.init.zeros_(self.descriptor_head.bias)

    def _logits(self, logits: torch.Tensor, descriptors: torch.Tensor | None) -> torch.Tensor:
        if self.descriptor_head is None:
            if descriptors is not None:
                raise ValueError("this controller takes no take descriptors (built with num_descriptors=0)")
            return logits
        if descriptors is None or descriptors.shape != (logits.shape[0], self.num_descriptors):
            got = None if descriptors is None else tuple(descriptors.shape)
            raise ValueError(f"descriptors must have shape ({logits.shape[0]}, {self.num_descriptors}), got {got}")
        return logits + self.descriptor_head(descriptors.to(logits))

    def _check(self, raw: torch.Tensor, reference: torch.Tensor | None) -> None:
        if raw.dim() != 3 or raw.shape[1] not in (1, 2):
            raise ValueError(f"raw must have shape (batch, 1, samples), got {tuple(raw.shape)}")
        if self.needs_reference and reference is None:
            raise ReferenceMismatch(
                "approach1 (ReferenceController) needs a reference: a mixed vocal whose style to copy",
                fix="pass reference audio of shape (batch, 2, samples) (CLI: --reference REF.wav), "
                    "or use an approach2 model, which needs none")
        if not self.needs_reference and reference is not None:
            raise ReferenceMismatch(
                "approach2 (DirectController) takes no reference: it applies the house style it learned",
                fix="pass reference=None (CLI: drop --reference), or use an approach1 model to copy a reference")
        if reference is not None:
            if reference.dim() != 3 or reference.shape[1] not in (1, 2):
                raise ValueError(f"reference must have shape (batch, 2, samples), got {tuple(reference.shape)}")
            if reference.shape[0] != raw.shape[0]:
                raise ValueError(f"raw has batch {raw.shape[0]} but reference has batch {reference.shape[0]}")

    def forward(self, raw: torch.Tensor, reference: torch.Tensor | None = None,
                descriptors: torch.Tensor | None = None) -> torch.Tensor:
        """``descriptors`` (batch, num_descriptors): standardised take descriptors, needed exactly
        when the controller was built with ``num_descriptors`` > 0."""
        raise NotImplementedError


class ReferenceController(Controller):
    """approach1: parameters from the raw vocal and a mixed reference.

    One shared (siamese) encoder embeds both: raw and reference then live in the same space, so
    ``reference - raw`` directly measures "what the mix did", and weights are not doubled for a
    small dataset (the mono raw simply has an empty side channel). An MLP maps
    ``[raw, reference, reference - raw]`` (3 x embed_dim) to the parameters. Upstream Diff-MST
    attends over many track tokens plus mix tokens; with exactly one track and one reference token
    a transformer's attention reduces to a learned mixing of two fixed-role vectors, which an MLP
    over the concatenation expresses with fewer parameters and no permutation symmetry we would
    not use.
    """

    approach = "approach1"
    needs_reference = True

    def __init__(self, num_params: int, sample_rate: int = 48000, encoder: dict | None = None,
                 hidden: int = 256, dropout: float = 0.1, init_params: Sequence[float] | None = None,
                 head_init_scale: float = 1.0, num_descriptors: int = 0):
        super().__init__(num_params, sample_rate, encoder, num_descriptors)
        e = self.encoder.embed_dim
        self.head = _mlp(3 * e, hidden, self.num_params, dropout, init_params, head_init_scale)

    def forward(self, raw: torch.Tensor, reference: torch.Tensor | None = None,
                descriptors: torch.Tensor | None = None) -> torch.Tensor:
        self._check(raw, reference)
        b = raw.shape[0]
        if raw.shape[-1] == reference.shape[-1]:
            # one batched encoder pass; a mono raw as L = R = raw has exactly mid = raw, side = 0
            both = torch.cat([raw.expand(-1, 2, -1), reference.expand(-1, 2, -1)], dim=0)
            z = self.encoder(both)
            z_raw, z_ref = z[:b], z[b:]
        else:
            z_raw, z_ref = self.encoder(raw), self.encoder(reference)
        return torch.sigmoid(self._logits(self.head(torch.cat([z_raw, z_ref, z_ref - z_raw], dim=1)), descriptors))


class DirectController(Controller):
    """approach2: parameters from the raw vocal alone (the producer's house style, learned).

    Accepts ``reference=None`` only and raises :class:`ReferenceMismatch` (a ValueError) if a
    reference is passed, so a user never believes a reference was used when it was not.
    """

    approach = "approach2"
    needs_reference = False

    def __init__(self, num_params: int, sample_rate: int = 48000, encoder: dict | None = None,
                 hidden: int = 256, dropout: float = 0.1, init_params: Sequence[float] | None = None,
                 head_init_scale: float = 1.0, num_descriptors: int = 0):
        super().__init__(num_params, sample_rate, encoder, num_descriptors)
        self.head = _mlp(self.encoder.embed_dim, hidden, self.num_params, dropout, init_params, head_init_scale)

    def forward(self, raw: torch.Tensor, reference: torch.Tensor | None = None,
                descriptors: torch.Tensor | None = None) -> torch.Tensor:
        self._check(raw, reference)
        return torch.sigmoid(self._logits(self.head(self.encoder(raw)), descriptors))


def build_controller(approach: str, num_params: int, sample_rate: int = 48000, **kw) -> Controller:
    """``approach1`` -> :class:`ReferenceController`, ``approach2`` -> :class:`DirectController`.

    ``kw``: encoder (dict of :class:`AudioEncoder` kwargs), hidden, dropout, init_params,
    head_init_scale (factor on the output layer's initial weights), num_descriptors (take
    descriptors added to the logits through a zero-initialised linear map; 0 = none).
    """
    classes = {"approach1": ReferenceController, "approach2": DirectController}
    if approach not in classes:
        raise ValueError(f"unknown approach {approach!r}: use one of {', '.join(APPROACHES)}")
    return classes[approach](num_params, sample_rate, **kw)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
