"""The vocal chain: mono raw vocal in, stereo mixed vocal out, driven by parameters in [0, 1].

input gain -> parametric EQ (low shelf, 4 peaking, high shelf) -> compressor -> dry to L/R +
stereo reverb send -> output gain. Every stage can be switched off; its parameters then leave the
table. Ranges follow Diff-MST's / dasp-pytorch's track ranges where they suit a vocal (see
`PARAMS`); frequencies are capped below Nyquist at the console's sample rate.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from mst_single import functional as F
from mst_single.errors import MstError

STAGES = ("gain", "eq", "compressor", "reverb", "output_gain")
EQ_BANDS = ("low_shelf", "band1", "band2", "band3", "band4", "high_shelf")
# Keep every band at least this far below Nyquist: RBJ biquads near w = pi lose their shape.
MAX_FREQ_FRACTION = 0.45
REVERB_IR_SECONDS = 2.5


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One console parameter: `low`..`high` in `unit`; [0, 1] maps linearly or logarithmically."""

    name: str
    stage: str
    unit: str
    low: float
    high: float
    scale: str  # "linear" | "log"
    default: float

    def to_units(self, p: torch.Tensor) -> torch.Tensor:
        p = p.clamp(0.0, 1.0)
        if self.scale == "log":
            return self.low * torch.exp(p * math.log(self.high / self.low))
        return self.low + p * (self.high - self.low)

    def to_unit_interval(self, v: torch.Tensor) -> torch.Tensor:
        if self.scale == "log":
            p = torch.log(v.clamp_min(1e-12) / self.low) / math.log(self.high / self.low)
        else:
            p = (v - self.low) / (self.high - self.low)
        return p.clamp(0.0, 1.0)


def _eq_specs() -> list[ParamSpec]:
    # (freq low, high, default) per band: overlapping vocal regions, ordered low to high
    freqs = {
        "low_shelf": (30.0, 1000.0, 100.0),
        "band1": (60.0, 600.0, 200.0),  # chest / mud
        "band2": (200.0, 2500.0, 800.0),  # body / boxiness
        "band3": (800.0, 8000.0, 2500.0),  # presence
        "band4": (2500.0, 16000.0, 8000.0),  # sibilance / air
        "high_shelf": (2000.0, 16000.0, 8000.0),
    }
    out = []
    for band in EQ_BANDS:
        lo, hi, d = freqs[band]
        shelf = band.endswith("shelf")
        out += [
            ParamSpec(f"eq_{band}_gain_db", "eq", "dB", -12.0, 12.0, "linear", 0.0),
            ParamSpec(f"eq_{band}_freq_hz", "eq", "Hz", lo, hi, "log", d),
            ParamSpec(f"eq_{band}_q", "eq", "Q", 0.3, 3.0 if shelf else 6.0, "log", 0.707 if shelf else 1.0),
        ]
    return out


PARAMS: tuple[ParamSpec, ...] = tuple(
    [ParamSpec("gain_db", "gain", "dB", -18.0, 18.0, "linear", 0.0)]
    + _eq_specs()
    + [
        ParamSpec("comp_threshold_db", "compressor", "dB", -60.0, 0.0, "linear", 0.0),
        ParamSpec("comp_ratio", "compressor", ":1", 1.0, 20.0, "log", 1.0),
        ParamSpec("comp_attack_ms", "compressor", "ms", 0.1, 100.0, "log", 10.0),
        ParamSpec("comp_release_ms", "compressor", "ms", 10.0, 1000.0, "log", 100.0),
        ParamSpec("comp_knee_db", "compressor", "dB", 0.0, 12.0, "linear", 6.0),
        ParamSpec("comp_makeup_db", "compressor", "dB", 0.0, 24.0, "linear", 0.0),
        ParamSpec("reverb_decay_s", "reverb", "s", 0.1, 4.0, "log", 1.0),
        ParamSpec("reverb_predelay_ms", "reverb", "ms", 0.0, 100.0, "linear", 20.0),
        ParamSpec("reverb_tone", "reverb", "", 0.0, 1.0, "linear", 0.5),
        ParamSpec("reverb_wet_db", "reverb", "dB", -60.0, 0.0, "linear", -60.0),
        ParamSpec("output_gain_db", "output_gain", "dB", -24.0, 24.0, "linear", 0.0),
    ]
)


def specs_for(sample_rate: int, stages: dict[str, bool] | None = None) -> tuple[ParamSpec, ...]:
    """The parameter table for a sample rate and a stage selection: frequencies capped at
    0.45 * sample_rate (identical to `PARAMS` at 44.1 kHz and above)."""
    on = _stages_on(stages)
    cap = MAX_FREQ_FRACTION * sample_rate
    out = []
    for s in PARAMS:
        if not on[s.stage]:
            continue
        if s.unit == "Hz" and s.high > cap:
            low = min(s.low, 0.5 * cap)
            s = dataclasses.replace(s, low=low, high=cap, default=min(max(s.default, low), cap))
        out.append(s)
    return tuple(out)


def _stages_on(stages: dict[str, bool] | None) -> dict[str, bool]:
    on = {s: True for s in STAGES}
    for k, v in (stages or {}).items():
        if k not in on:
            raise MstError(f"unknown console stage {k!r}", fix=f"use one of {', '.join(STAGES)}")
        on[k] = bool(v)
    return on


class VocalConsole(torch.nn.Module):
    """Differentiable vocal chain. raw `(batch, 1, samples)` + p `(batch, num_params)` in [0, 1]
    -> mixed `(batch, 2, samples)`, same length, zero latency (the reverb's wet path starts at its
    predelay; nothing else delays)."""

    def __init__(self, sample_rate: int = 48000, stages: dict[str, bool] | None = None):
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.stages = _stages_on(stages)
        self.specs = specs_for(self.sample_rate, self.stages)
        self.param_names = [s.name for s in self.specs]
        self.num_params = len(self.specs)

    # -- parameter mapping ------------------------------------------------------------------
    def denormalize(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """p `(batch, num_params)` in [0, 1] (clamped) -> {name: `(batch,)` in units}."""
        if p.ndim != 2 or p.shape[1] != self.num_params:
            raise ValueError(f"expected parameters (batch, {self.num_params}), got {tuple(p.shape)}")
        return {s.name: s.to_units(p[:, i]) for i, s in enumerate(self.specs)}

    def normalize(self, units: dict) -> torch.Tensor:
        """{name: float | `(batch,)`} in units -> `(batch, num_params)` in [0, 1] (clamped to the
        ranges). Missing names take their default; unknown names are an error."""
        unknown = set(units) - set(self.param_names)
        if unknown:
            raise MstError(f"unknown console parameter(s): {', '.join(sorted(unknown))}",
                           fix=f"use names from: {', '.join(self.param_names)}")
        vals = {k: torch.as_tensor(v, dtype=torch.float32).reshape(-1) for k, v in units.items()}
        batch = max([v.numel() for v in vals.values()] + [1])
        cols = []
        for s in self.specs:
            v = vals.get(s.name, torch.tensor([s.default], dtype=torch.float32))
            cols.append(s.to_unit_interval(v.expand(batch) if v.numel() == 1 else v))
        return torch.stack(cols, 1)

    def default_params(self, batch: int = 1) -> torch.Tensor:
        """The neutral setting, `(batch, num_params)` in [0, 1]."""
        return self.normalize({s.name: s.default for s in self.specs}).expand(batch, -1).clone()

    # -- processing --------------------------------------------------------------------------
    def _eq_args(self, u):
        g = torch.stack([u[f"eq_{b}_gain_db"] for b in EQ_BANDS], 1)
        f = torch.stack([u[f"eq_{b}_freq_hz"] for b in EQ_BANDS], 1)
        q = torch.stack([u[f"eq_{b}_q"] for b in EQ_BANDS], 1)
        return g, f, q

    def _comp_args(self, u):
        return (u["comp_threshold_db"], u["comp_ratio"], u["comp_attack_ms"], u["comp_release_ms"],
                u["comp_knee_db"], u["comp_makeup_db"])

    def reverb_ir(self, u: dict[str, torch.Tensor], dtype=torch.float32, device=None) -> torch.Tensor:
        """The reverb send's impulse response `(batch, 2, taps)` for parameters in units."""
        return F.reverb_ir(self.sample_rate, u["reverb_decay_s"], u["reverb_predelay_ms"], u["reverb_tone"],
                           u["reverb_wet_db"], REVERB_IR_SECONDS, 0, dtype, device)

    def forward(self, raw: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if raw.ndim != 3 or raw.shape[1] != 1:
            raise ValueError(f"expected raw (batch, 1, samples), got {tuple(raw.shape)}")
        u = {k: v.to(raw.dtype) for k, v in self.denormalize(p.to(raw.device)).items()}
        x = raw
        if self.stages["gain"]:
            x = F.gain(x, u["gain_db"])
        if self.stages["eq"]:
            x = F.parametric_eq(x, self.sample_rate, *self._eq_args(u))
        if self.stages["compressor"]:
            x = F.compressor(x, self.sample_rate, *self._comp_args(u))
        y = x.expand(-1, 2, -1)
        if self.stages["reverb"]:
            y = y + F.fft_convolve(x, self.reverb_ir(u, x.dtype, x.device))
        if self.stages["output_gain"]:
            y = F.gain(y, u["output_gain_db"])
        return y.contiguous()

    def streamer(self, p: torch.Tensor) -> "ConsoleStreamer":
        """Chunk-by-chunk processing of a long file with the fixed parameters p `(1, num_params)`."""
        return ConsoleStreamer(self, p)


class _OverlapAdd:
    """Streaming linear convolution with a fixed FIR h `(C, taps)`: chunk `(1|C, n)` -> `(C, n)`.
    The convolution tail past each chunk is carried into the next one."""

    def __init__(self, h: torch.Tensor):
        self.h = h
        self.carry = torch.zeros(h.shape[0], h.shape[-1] - 1, dtype=h.dtype)
        self._spectrum = (0, None)  # h's spectrum for the last FFT size: equal chunks reuse it

    def process(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        m = n + self.h.shape[-1] - 1
        n_fft = F.next_fast_len(m)
        if self._spectrum[0] != n_fft:
            self._spectrum = (n_fft, torch.fft.rfft(self.h, n=n_fft))
        y = torch.fft.irfft(torch.fft.rfft(x, n=n_fft) * self._spectrum[1], n=n_fft)[..., :m]
        y[..., : self.carry.shape[-1]] += self.carry
        self.carry = y[..., n:].clone()
        return y[..., :n]


class ConsoleStreamer:
    """Stateful chunk processing, bounded memory: the EQ runs as overlap-add of its impulse
    response (the same FIR as the whole-file path, `functional.eq_fir`), the
    reverb as overlap-add of its IR, and the compressor carries its smoothed gain reduction.
    `.process(chunk (1, n))` -> `(2, n)` (numpy in -> float32 numpy out, tensor in -> tensor
    out). Concatenated output equals `VocalConsole.forward` on the whole file (batch of one) to
    ~1e-5 (float32); in a batch, forward cuts every reverb IR at the batch's longest, which
    differs below -80 dB. Chunks of ~10 s keep memory near 100 MB at 48 kHz whatever the length.
    """

    @torch.no_grad()
    def __init__(self, console: VocalConsole, p: torch.Tensor):
        if p.ndim != 2 or p.shape[0] != 1:
            raise ValueError(f"expected parameters (1, {console.num_params}), got {tuple(p.shape)}")
        self.console = console
        self.u = {k: v.double() for k, v in console.denormalize(p.detach().cpu().float()).items()}
        sr, on = console.sample_rate, console.stages
        self.eq = None
        if on["eq"]:
            h = F.eq_fir(sr, *console._eq_args(self.u))
            self.eq = _OverlapAdd(h.float())
        self.reverb = _OverlapAdd(console.reverb_ir(self.u)[0].float()) if on["reverb"] else None
        self.comp_state = torch.zeros(1, dtype=torch.float32)

    @torch.no_grad()
    def process(self, chunk) -> np.ndarray | torch.Tensor:
        is_np = not isinstance(chunk, torch.Tensor)
        x = torch.as_tensor(np.asarray(chunk, dtype=np.float32) if is_np else chunk).float().reshape(1, 1, -1)
        u, on, sr = self.u, self.console.stages, self.console.sample_rate
        if x.shape[-1] == 0:
            y = torch.zeros(2, 0)
            return y.numpy() if is_np else y.to(chunk.device)
        if on["gain"]:
            x = F.gain(x, u["gain_db"].float())
        if self.eq is not None:
            x = self.eq.process(x[0]).unsqueeze(0)
        if on["compressor"]:
            x, self.comp_state = F.compressor(x, sr, *[v.float() for v in self.console._comp_args(u)],
                                              initial_db=self.comp_state, return_state=True)
        y = x.expand(-1, 2, -1)
        if self.reverb is not None:
            y = y + self.reverb.process(x[0]).unsqueeze(0)
        if on["output_gain"]:
            y = F.gain(y, u["output_gain_db"].float())
        y = y[0]
        return y.numpy().astype(np.float32) if is_np else y.to(chunk.device)
