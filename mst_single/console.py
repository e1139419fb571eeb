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
import scipy.fft
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


def no_autocast(device_type: str):
    """A context that switches autocast off on that device type (a no-op where there is none)."""
    import contextlib

    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


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
    predelay; nothing else delays).

    Runs where raw is, and always in float32 (autocast is switched off inside: under
    `bf16-mixed` only the controller runs in bfloat16). On an accelerator nothing is read back to
    the host (`static_sizes`): the EQ's FIR length is the largest over the parameter box
    (`functional.eq_fir_length_bound`) and the reverb IR is cut at its cap, where on CPU both are
    sized from the batch's parameters (shorter, so cheaper there); the extra taps hold only the
    tails below -150 dB (EQ) and -80 dB (reverb). static_sizes: None = on every device but the
    CPU, True / False = always / never.
    """

    def __init__(self, sample_rate: int = 48000, stages: dict[str, bool] | None = None,
                 static_sizes: bool | None = None):
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.stages = _stages_on(stages)
        self.specs = specs_for(self.sample_rate, self.stages)
        self.param_names = [s.name for s in self.specs]
        self.num_params = len(self.specs)
        self.static_sizes = static_sizes
        self.reverb_ir_taps_max = int(round(REVERB_IR_SECONDS * self.sample_rate))

    @property
    def eq_fir_taps_max(self) -> int | None:
        """The EQ FIR length used with static sizes: the largest over the EQ's parameter box
        (computed on first use, cached per box: ~0.1 s, which a CPU-only mix never pays)."""
        if not self.stages["eq"]:
            return None
        sp = {s.name: s for s in self.specs}
        return F.eq_fir_length_bound(self.sample_rate, (sp["eq_band1_gain_db"].low, sp["eq_band1_gain_db"].high),
                                     tuple((sp[f"eq_{b}_freq_hz"].low, sp[f"eq_{b}_freq_hz"].high) for b in EQ_BANDS),
                                     tuple((sp[f"eq_{b}_q"].low, sp[f"eq_{b}_q"].high) for b in EQ_BANDS))

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

    def known_setting(self, units: dict) -> torch.Tensor:
        """`normalize` of the names this console has, ignoring the others: a chain that did not use a
        stage (e.g. a demo style without reverb) leaves it at its neutral default. `(1, num_params)`."""
        return self.normalize({k: v for k, v in units.items() if k in self.param_names})

    def output_gain_to(self, p: torch.Tensor, measured_lufs: float, output_lufs: float) -> tuple[torch.Tensor, float]:
        """Setting p `(1, num_params)` with its `output_gain_db` moved so that an output measured at
        `measured_lufs` (LUFS) lands at `output_lufs` -> (new setting, the dB actually applied).

        The move is clamped to the parameter's range, so the audio and the setting stay consistent
        (the output gain is the chain's last, linear stage); a silent output, or a console without
        the output gain stage, is left as it is (0 dB). For `model.match_loudness` (evaluation, `mix`).
        """
        from mst_single.loudness import SILENCE_LUFS

        if "output_gain_db" not in self.param_names or measured_lufs <= SILENCE_LUFS:
            return p, 0.0
        i = self.param_names.index("output_gain_db")
        spec = self.specs[i]
        old = float(spec.to_units(p.detach().float().reshape(-1)[i]))
        new = min(max(old + output_lufs - measured_lufs, spec.low), spec.high)
        p2 = p.detach().clone()
        p2[..., i] = spec.to_unit_interval(torch.tensor(new, dtype=torch.float32)).to(p2)
        return p2, new - old

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

    def reverb_ir(self, u: dict[str, torch.Tensor], dtype=torch.float32, device=None,
                  length: int | None = None) -> torch.Tensor:
        """The reverb send's impulse response `(batch, 2, taps)` for parameters in units."""
        return F.reverb_ir(self.sample_rate, u["reverb_decay_s"], u["reverb_predelay_ms"], u["reverb_tone"],
                           u["reverb_wet_db"], REVERB_IR_SECONDS, 0, dtype, device, length)

    def forward(self, raw: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if raw.ndim != 3 or raw.shape[1] != 1:
            raise ValueError(f"expected raw (batch, 1, samples), got {tuple(raw.shape)}")
        if raw.dtype not in (torch.float32, torch.float64):
            raw = raw.float()  # bfloat16 / float16 audio: the chain's FFTs and recursions need float32
        with no_autocast(raw.device.type):
            return self._forward(raw, p.to(device=raw.device, dtype=raw.dtype))

    def _forward(self, raw: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        static = self.static_sizes if self.static_sizes is not None else raw.device.type != "cpu"
        u = self.denormalize(p)
        x = raw
        if self.stages["gain"]:
            x = F.gain(x, u["gain_db"])
        if self.stages["eq"]:
            x = F.parametric_eq(x, self.sample_rate, *self._eq_args(u),
                                fir_length=self.eq_fir_taps_max if static else None)
        if self.stages["compressor"]:
            x = F.compressor(x, self.sample_rate, *self._comp_args(u))
        y = x.expand(-1, 2, -1)
        if self.stages["reverb"]:
            h = self.reverb_ir(u, x.dtype, x.device, self.reverb_ir_taps_max if static else None)
            y = y + F.fft_convolve(x, h)
        if self.stages["output_gain"]:
            y = F.gain(y, u["output_gain_db"])
        return y.contiguous()

    def streamer(self, p: torch.Tensor) -> "ConsoleStreamer":
        """Chunk-by-chunk processing of a long file with the fixed parameters p `(1, num_params)`."""
        return ConsoleStreamer(self, p)


def _ola_fft_size(taps: int, n: int) -> int:
    """FFT size for overlap-add of chunks of n samples with `taps`: powers of two N >= 2 taps
    (so that neighbouring pieces' tails never overlap) and the single 5-smooth size that holds
    the whole chunk, scored by the points transformed per chunk, ceil(n / (N - taps + 1)) N,
    times a per-point cost that grows with N: log2 N, and beyond 2^17 (out of cache) by up to
    1.6x (pocketfft float32 on this CPU: ~7 ns/point up to 2^17, ~11 at 2^19, ~12 at 2^20)."""
    taps, n = max(int(taps), 1), max(int(n), 1)

    def cost(size: int) -> float:
        pieces = -(-n // (size - taps + 1))
        return pieces * size * math.log2(size) * min(1.6, max(1.0, 1.0 + 0.3 * (math.log2(size) - 17)))

    sizes = [1 << k for k in range(max(12, math.ceil(math.log2(2 * taps))), 24)]
    sizes.append(max(F.next_fast_len(n + taps - 1), 2 * taps))
    return min(sizes, key=cost)


class _OverlapAdd:
    """Streaming linear convolution with a fixed FIR h `(C, taps)` (numpy float32):
    chunk `(n,)` -> `(C, n)` float32. Each chunk is cut into pieces of N - taps + 1 samples,
    transformed together (one batched rfft, one batched irfft per chunk) at the FFT size N that
    `_ola_fft_size` picks for that chunk size; the filter's spectrum is computed once per size
    (a file in equal blocks uses one), and the convolution tail past each chunk is carried into
    the next one. scipy.fft (pocketfft) is ~2x faster than torch's MKL FFT on this CPU at these
    sizes; buffers are reused while the chunk size stays the same."""

    def __init__(self, h: np.ndarray):
        self.h = np.ascontiguousarray(h, dtype=np.float32)
        self.channels, self.taps = self.h.shape
        self.carry = np.zeros((self.channels, self.taps - 1), dtype=np.float32)
        self._spectra: dict[int, np.ndarray] = {}  # FFT size -> (C, bins) complex64
        self._size = None  # (chunk length, N) of the reused buffers
        self._pieces = self._out = None

    def process(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[-1]
        C, L = self.channels, self.taps
        if self._size is None or self._size[0] != n:
            N = _ola_fft_size(L, n)
            M = N - L + 1
            k = -(-n // M)
            self._size = (n, N)
            self._pieces = np.zeros((k, N), dtype=np.float32)  # zero-padded pieces
            self._out = np.zeros((C, k * M + N), dtype=np.float32)
            if N not in self._spectra:
                if len(self._spectra) > 4:  # chunk sizes keep changing: keep memory bounded
                    self._spectra.clear()
                self._spectra[N] = scipy.fft.rfft(self.h, n=N)
        N = self._size[1]
        M = N - L + 1
        pieces, out, H = self._pieces, self._out, self._spectra[N]
        k = pieces.shape[0]
        full = n // M
        pieces[:full, :M] = x[: full * M].reshape(full, M)
        if full < k:
            pieces[full, : n - full * M] = x[full * M :]
            pieces[full, n - full * M : M] = 0.0
        workers = max(1, torch.get_num_threads())
        X = scipy.fft.rfft(pieces, axis=-1, workers=workers)  # (k, bins)
        Y = scipy.fft.irfft(X[:, None, :] * H[None], n=N, axis=-1, workers=workers)  # (k, C, N)
        out[:, : L - 1] = self.carry
        out[:, L - 1 :] = 0.0
        for j in range(k):
            out[:, j * M : j * M + N] += Y[j]
        self.carry = out[:, n : n + L - 1].copy()
        return out[:, :n].copy()


class ConsoleStreamer:
    """Stateful chunk processing, bounded memory, no autograd: the EQ runs as overlap-add of its
    impulse response (the same FIR as the whole-file path, `functional.eq_fir`), the compressor
    as one numba pass carrying its smoothed gain reduction (`functional.compress_inference`), and
    the dry path, reverb send and output gain as one overlap-add of the stereo filter
    `output_gain * (delta + reverb IR)`. Both filters' spectra are computed once per streamer.
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
        u32 = console.denormalize(p.detach().cpu().float())  # forward's float32 values
        self.u = {k: v.double() for k, v in u32.items()}
        sr, on = console.sample_rate, console.stages
        self.in_gain = float(F.db_to_amp(u32["gain_db"])[0]) if on["gain"] else 1.0
        out_gain = float(F.db_to_amp(u32["output_gain_db"])[0]) if on["output_gain"] else 1.0
        self.eq = None
        if on["eq"]:
            self.eq = _OverlapAdd(F.eq_fir(sr, *console._eq_args(self.u)).float().numpy())
        self.comp = None
        if on["compressor"]:
            self.comp = [float(v[0]) for v in console._comp_args(u32)]
        self.comp_state = 0.0
        self.out = None
        self.out_gain = out_gain
        if on["reverb"]:
            h = console.reverb_ir(self.u, dtype=torch.float64)[0].numpy().copy()  # (2, taps)
            h[:, 0] += 1.0  # the dry path
            self.out = _OverlapAdd((h * out_gain).astype(np.float32))

    @torch.no_grad()
    def process(self, chunk) -> np.ndarray | torch.Tensor:
        is_np = not isinstance(chunk, torch.Tensor)
        if is_np:
            x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        else:
            x = chunk.detach().cpu().float().numpy().reshape(-1)
        if x.shape[-1] == 0:
            y = np.zeros((2, 0), dtype=np.float32)
        else:
            x = x * np.float32(self.in_gain)
            if self.eq is not None:
                x = self.eq.process(x)[0]
            if self.comp is not None:
                x, self.comp_state = F.compress_inference(x, self.console.sample_rate, *self.comp,
                                                          initial_db=self.comp_state)
            if self.out is not None:
                y = self.out.process(x)
            else:
                y = np.empty((2, x.shape[-1]), dtype=np.float32)
                np.multiply(x, np.float32(self.out_gain), out=y[0])
                y[1] = y[0]
        return y if is_np else torch.from_numpy(y).to(chunk.device)
