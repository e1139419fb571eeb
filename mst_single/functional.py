"""Differentiable DSP for the vocal chain: pure functions on `(batch, channels, samples)` tensors.

Parameters are `(batch,)` tensors in units (dB, Hz, ms, s); every function is differentiable with
respect to the signal and to every parameter, and adds no latency.

Why our own stages instead of dasp-pytorch 0.0.1 (measured in issues 3 and 6): its compressor
ignores `release_ms` and gives NaN gradients at `knee_db = 0`, its reverb takes ~170 s backward
(direct convolution under vmap), and its EQ takes ~1.5 s forward + backward for 4 x 4 s at 48 kHz.

- EQ: RBJ-cookbook biquads (float64) evaluated on an rfft grid (frequency sampling) -> an FIR
  long enough for the slowest pole to decay 150 dB -> FFT convolution.
- Compressor: dB-domain soft-knee gain computer + one-pole attack/release smoothing of the gain
  reduction, exact gradients for every parameter. On CPU tensors the curve and the recursion run
  as one numba loop forward and one reverse-time adjoint loop backward (`_Compressor`); on other
  devices in torch on the device (`smooth_gain_reduction`: a parallel scan inside a fixed-point
  iteration on the attack/release branch). `compress_inference`: the CPU forward without
  autograd, float32 in/out, for streaming.
- Reverb: a stereo impulse response built from fixed seeded noise bands with their own exponential
  decays (tone = high-frequency damping), applied by FFT convolution.
- `fft_convolve`: linear convolution with a hand-written backward (real FFTs only; on CPU
  through scipy.fft and numpy, faster here than torch's MKL FFT and complex multiply).
- Sizes (FIR taps, IR length) are computed NaN-safely: NaN parameters give NaN output, never an
  exception (issue 7).
"""
from __future__ import annotations

import functools
import math
import time

import numba
import numpy as np
import scipy.fft
import torch


def constant_cache(maxsize: int):
    """`functools.lru_cache` for functions that build constant tensors (grids, responses, noise).

    They are built with inference mode off: a tensor made under `torch.inference_mode()` (Lightning's
    validate / test / predict) cannot be saved for backward, so a cache filled by `validate` would
    break a later `fit` in the same process (a notebook does exactly that)."""
    def decorate(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args, **kwargs):
            with torch.inference_mode(False):
                return fn(*args, **kwargs)
        return cached
    return decorate


LN10_20 = math.log(10.0) / 20.0


def _njit(fn):
    """numba.njit, compiled lazily on first use and cached on disk when a cache location is
    writable (package __pycache__, else numba's user-wide cache dir): a fresh process then
    loads a kernel in ~10 ms instead of compiling it (~0.3-0.7 s, most of a short mix).
    Read-only installs without any writable location fall back to compiling in memory."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True)(fn)


def db_to_amp(db: torch.Tensor) -> torch.Tensor:
    return torch.exp(db * LN10_20)


def _col(p: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A `(batch,)` parameter as `(batch, 1, 1)` in x's dtype/device, for broadcasting."""
    p = torch.as_tensor(p, dtype=x.dtype, device=x.device)
    return p.reshape(-1, 1, 1)


def next_fast_len(n: int) -> int:
    return scipy.fft.next_fast_len(int(n), real=True)


# ---------------------------------------------------------------------------------------------
# gain


def gain(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """x `(batch, channels, samples)` times `10^(gain_db/20)`; gain_db `(batch,)` in dB."""
    return x * db_to_amp(_col(gain_db, x))


# ---------------------------------------------------------------------------------------------
# biquads (RBJ Audio EQ Cookbook), coefficients normalised by a0


def _rbj_common(gain_db, freq_hz, q, sample_rate):
    A = torch.exp(gain_db * (math.log(10.0) / 40.0))
    w0 = 2.0 * math.pi * freq_hz / sample_rate
    cos_w0 = torch.cos(w0)
    alpha = torch.sin(w0) / (2.0 * q)
    return A, cos_w0, alpha


def _normalise(b0, b1, b2, a0, a1, a2):
    b = torch.stack([b0, b1, b2], -1) / a0.unsqueeze(-1)
    a = torch.stack([torch.ones_like(a0), a1 / a0, a2 / a0], -1)
    return b, a


def peaking_coeffs(gain_db, freq_hz, q, sample_rate: float):
    """Peaking EQ biquad. gain_db/freq_hz/q `(batch,)` -> (b, a) each `(batch, 3)`, a[:, 0] = 1."""
    A, c, alpha = _rbj_common(gain_db, freq_hz, q, sample_rate)
    return _normalise(1 + alpha * A, -2 * c, 1 - alpha * A, 1 + alpha / A, -2 * c, 1 - alpha / A)


def low_shelf_coeffs(gain_db, freq_hz, q, sample_rate: float):
    """Low-shelf biquad (cookbook Q form). `(batch,)` params -> (b, a) each `(batch, 3)`."""
    A, c, alpha = _rbj_common(gain_db, freq_hz, q, sample_rate)
    k = 2 * torch.sqrt(A) * alpha
    return _normalise(
        A * ((A + 1) - (A - 1) * c + k),
        2 * A * ((A - 1) - (A + 1) * c),
        A * ((A + 1) - (A - 1) * c - k),
        (A + 1) + (A - 1) * c + k,
        -2 * ((A - 1) + (A + 1) * c),
        (A + 1) + (A - 1) * c - k,
    )


def high_shelf_coeffs(gain_db, freq_hz, q, sample_rate: float):
    """High-shelf biquad (cookbook Q form). `(batch,)` params -> (b, a) each `(batch, 3)`."""
    A, c, alpha = _rbj_common(gain_db, freq_hz, q, sample_rate)
    k = 2 * torch.sqrt(A) * alpha
    return _normalise(
        A * ((A + 1) + (A - 1) * c + k),
        -2 * A * ((A - 1) + (A + 1) * c),
        A * ((A + 1) + (A - 1) * c - k),
        (A + 1) - (A - 1) * c + k,
        2 * ((A - 1) - (A + 1) * c),
        (A + 1) - (A - 1) * c - k,
    )


@constant_cache(maxsize=32)
def _grid(n_fft: int, device: torch.device = torch.device("cpu"), dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """cos/sin of w and 2w on the rfft grid of n_fft points, computed once per size, device and
    dtype (a training step copies nothing to the device)."""
    w = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=device) * (2 * math.pi / n_fft)
    return tuple(v.to(dtype) for v in (torch.cos(w), torch.sin(w), torch.cos(2 * w), torch.sin(2 * w)))


def _poly_response(c: torch.Tensor, grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Real/imag parts of c0 + c1 e^{-jw} + c2 e^{-2jw}; c `(..., 3)` -> two `(..., bins)`."""
    cw, sw, c2w, s2w = grid
    c0, c1, c2 = c[..., 0:1], c[..., 1:2], c[..., 2:3]
    return c0 + c1 * cw + c2 * c2w, -(c1 * sw + c2 * s2w)


def eq_coeffs(sample_rate: float, gains_db, freqs_hz, qs):
    """Biquads of the 6-band EQ. gains_db/freqs_hz/qs `(batch, 6)`, order: low shelf, 4 peaking,
    high shelf. Returns (b, a) each `(batch, 6, 3)`."""
    bs, as_ = [], []
    for k in range(gains_db.shape[-1]):
        fn = low_shelf_coeffs if k == 0 else high_shelf_coeffs if k == gains_db.shape[-1] - 1 else peaking_coeffs
        b, a = fn(gains_db[:, k], freqs_hz[:, k], qs[:, k], sample_rate)
        bs.append(b)
        as_.append(a)
    return torch.stack(bs, 1), torch.stack(as_, 1)


def eq_response(sample_rate: float, gains_db, freqs_hz, qs, n_fft: int) -> torch.Tensor:
    """Complex response of the cascade on the rfft grid: `(batch, n_fft // 2 + 1)` complex.

    Numerators and denominators are multiplied in real arithmetic and divided once, which is
    cheaper than six complex divisions and keeps autograd's graph small.
    """
    b, a = eq_coeffs(sample_rate, gains_db, freqs_hz, qs)
    grid = _grid(n_fft, b.device, b.dtype)
    br, bi = _poly_response(b, grid)  # (batch, 6, bins)
    ar, ai = _poly_response(a, grid)
    nr, ni, dr, di = br[:, 0], bi[:, 0], ar[:, 0], ai[:, 0]
    for k in range(1, b.shape[1]):
        nr, ni = nr * br[:, k] - ni * bi[:, k], nr * bi[:, k] + ni * br[:, k]
        dr, di = dr * ar[:, k] - di * ai[:, k], dr * ai[:, k] + di * ar[:, k]
    return torch.complex(nr, ni) / torch.complex(dr, di)


def eq_fir_length(sample_rate: float, gains_db, freqs_hz, qs, floor_db: float = -150.0,
                  max_seconds: float = 4.0) -> int:
    """Taps needed for the cascade's impulse response to decay below floor_db (relative to its
    onset), from the slowest pole radius r over the batch: log(floor) / log(r), rounded up to a
    power of two (few distinct FFT sizes), at least 1024, at most max_seconds. Not differentiable
    (a size); high-Q boosts at low frequencies need ~1 s, typical settings a few thousand taps.
    Reads the parameters on the host (a sync on an accelerator): `VocalConsole` passes a fixed
    length there instead, the largest over its parameter box (`eq_fir_length_bound`)."""
    _, a = eq_coeffs(sample_rate, *(torch.as_tensor(v).detach().cpu().double() for v in (gains_db, freqs_hz, qs)))
    a1, a2 = a[..., 1].numpy(), a[..., 2].numpy()
    roots = np.stack([(-a1 + np.sqrt((a1 * a1 - 4 * a2).astype(complex))) / 2,
                      (-a1 - np.sqrt((a1 * a1 - 4 * a2).astype(complex))) / 2])
    mags = np.abs(roots)
    # NaN/Inf parameters (a diverged controller) give NaN poles: size the FIR as if flat so the
    # NaN propagates into the output instead of raising here (int(NaN))
    mags = np.where(np.isfinite(mags), mags, 0.0)
    r = float(np.clip(mags.max(initial=0.0), 1e-9, 1 - 1e-12))
    n = math.log(10 ** (floor_db / 20)) / math.log(r)
    n = min(max(n, 1024.0), max_seconds * sample_rate)
    return int(min(2 ** math.ceil(math.log2(n)), max_seconds * sample_rate))


@functools.lru_cache(maxsize=8)
def eq_fir_length_bound(sample_rate: float, gain_range: tuple, freq_ranges: tuple, q_ranges: tuple,
                        points: int = 5) -> int:
    """The largest `eq_fir_length` over a box of settings: gain_range (low, high) dB for every
    band, freq_ranges / q_ranges one (low, high) per band (tuples: the result is cached).
    Evaluated on a grid of `points` values per parameter (log-spaced for frequency and Q) applied
    to all bands at once; the pole radius is monotonic in each parameter, so the corners already
    give the maximum. A fixed FIR length needs no host read of the parameters (the console uses
    it on accelerators)."""
    import itertools

    lin = lambda lo, hi: np.linspace(lo, hi, points)  # noqa: E731
    geo = lambda lo, hi: np.geomspace(lo, hi, points)  # noqa: E731
    rows = []
    for i, j, k in itertools.product(range(points), repeat=3):
        rows.append((lin(*gain_range)[i], [geo(*f)[j] for f in freq_ranges], [geo(*q)[k] for q in q_ranges]))
    g = torch.tensor([[r[0]] * len(freq_ranges) for r in rows], dtype=torch.float64)
    f = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    q = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    return eq_fir_length(sample_rate, g, f, q)


def eq_fir(sample_rate: float, gains_db, freqs_hz, qs, length: int | None = None) -> torch.Tensor:
    """The cascade's impulse response truncated to `length` samples: `(batch, length)`
    (default `eq_fir_length`). Sampled on an rfft grid of >= length points: the time aliasing
    and the truncation both drop only the tail beyond length, below -150 dB by construction."""
    if length is None:
        length = eq_fir_length(sample_rate, gains_db, freqs_hz, qs)
    n_fft = next_fast_len(length)
    dtype = gains_db.dtype
    # float64 inside: float32 biquad coefficients misplace low-frequency, high-Q poles (~1e-3 error)
    g, f, q = (torch.as_tensor(v).double() for v in (gains_db, freqs_hz, qs))
    h = torch.fft.irfft(eq_response(sample_rate, g, f, q, n_fft), n=n_fft)[..., :length]
    return h.to(dtype)


def parametric_eq(x, sample_rate: float, gains_db, freqs_hz, qs, fir_length: int | None = None):
    """Low shelf + 4 peaking + high shelf by frequency sampling.

    x `(batch, channels, samples)`; gains_db (dB), freqs_hz (Hz), qs `(batch, 6)`.
    The cascade's response is sampled on an rfft grid, turned into an impulse response long
    enough for the slowest pole to decay by 150 dB (`eq_fir_length`) and applied by (linear,
    causal) FFT convolution: zero latency, equal to the IIR filters up to that tail. A coarse grid
    keeps the per-bin complex arithmetic (and its autograd graph) small; the long FFTs see only x
    and the FIR.
    """
    h = eq_fir(sample_rate, gains_db, freqs_hz, qs, fir_length)
    return fft_convolve(x, h.unsqueeze(1))


# ---------------------------------------------------------------------------------------------
# compressor
#
# One compressor, `compressor()`: level (dB) -> soft-knee gain reduction r (`gain_computer_db`)
# -> attack/release smoothing s -> gain = makeup - s. The smoothing is a nonlinear recursion (the
# coefficient depends on whether r[i] is above the state s[i-1]); it runs
# - on CPU tensors as one fused numba loop (curve + smoothing, `_comp_fwd_kernel`) with a
#   reverse-time adjoint loop (`_comp_bwd_kernel`): the CPU fast path, ~2x less CPU time than
#   the torch composition below (issue 6);
# - on any other device (CUDA, MPS, meta) in torch on that device (`smooth_gain_reduction`):
#   no host copy; see `_smooth_forward` for how the recursion is solved in parallel.
# Both paths share the curve's definition: `gain_computer_db` in torch and `_knee` in numba (the
# same three branches, tested equal), and `compress_inference` (streaming, numpy) calls the same
# forward kernel.


def gain_computer_db(level_db, threshold_db, ratio, knee_db):
    """Gain reduction in dB (>= 0) of a soft-knee (quadratic) compressor.

    With d = level - T and knee width W: 0 below the knee (d <= -W/2); (1 - 1/R)(d + W/2)^2 / (2W)
    inside it; (1 - 1/R) d above it (d > W/2). The curve is C1 at both knee edges; at W = 0 the
    knee region is empty, so nothing divides by zero and every gradient is finite (the division
    uses max(W, 1e-6) and is masked outside the knee). All arguments broadcast; dB / ratio units.
    """
    d = level_db - threshold_db
    w = knee_db.clamp_min(0.0)
    inside = (d + 0.5 * w).pow(2) / (2.0 * w.clamp_min(1e-6))
    f = torch.where(d > 0.5 * w, d, torch.where(d > -0.5 * w, inside, torch.zeros_like(d)))
    return (1.0 - 1.0 / ratio) * f


def time_constant_coeff(time_ms, sample_rate: float):
    """One-pole coefficient for a time constant: after time_ms a step has moved 1 - 1/e (63%)."""
    return torch.exp(-1000.0 / (time_ms * sample_rate))


def level_db(x: torch.Tensor) -> torch.Tensor:
    """Instantaneous level in dB, floored at -100 dB so that silence has finite gradients."""
    return 10.0 * torch.log10(x * x + 1e-10)


_DB_PER_NEPER = 20.0 / math.log(10.0)


# --- torch: any device ------------------------------------------------------------------------


def _affine_scan(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """s[i] = c[i] s[i-1] + u[i] along the last dim, s[-1] = 0: `(rows, n)` -> `(rows, n)`.

    Hillis-Steele scan over the affine maps s -> c s + u (composition is associative): log2(n)
    rounds of elementwise ops on the device. Only products, no division: a product that
    underflows to 0 is a contribution that has decayed away, so nothing overflows."""
    n, d = c.shape[-1], 1
    while d < n:
        u = torch.cat([u[..., :d], torch.addcmul(u[..., d:], c[..., d:], u[..., :-d])], -1)
        if 2 * d < n:
            c = torch.cat([c[..., :d], c[..., d:] * c[..., :-d]], -1)
        d *= 2
    return u


def _has_data(t: torch.Tensor) -> bool:
    return t.device.type != "meta"


SMOOTH_CHECK_EVERY = 4  # fixed-point rounds between two convergence tests (each a 1-byte read)


def _smooth_forward(r, a_att, a_rel, s0):
    """The attack/release recursion without a sequential loop: `(rows, n)` -> (s, attack mask).

    Given which samples use the attack coefficient (r[i] > s[i-1]), the recursion is linear and
    `_affine_scan` solves it; the mask is then recomputed from that s, until it no longer changes
    (a fixed point: the exact sequential result). Round k makes at least the first k samples
    exact, so it ends after at most n + 1 rounds; on vocals and on random settings over the whole
    parameter box it took 5-20 rounds, independent of the length (1 s and 4 s alike). Convergence
    is tested every SMOOTH_CHECK_EVERY rounds: one boolean read by the host, the only sync.
    Tensors without data (meta, shape tracing) run one round."""
    aa, ar = a_att[:, None], a_rel[:, None]
    first = s0[:, None]
    mask = r > torch.cat([first, torch.zeros_like(r[:, :-1])], 1)  # guess: state 0 after the start
    n = r.shape[-1]
    for k in range(1, n + 2):
        c = torch.where(mask, aa, ar)
        u = (1.0 - c) * r
        u = torch.cat([u[:, :1] + c[:, :1] * first, u[:, 1:]], 1)
        s = _affine_scan(c, u)
        new = r > torch.cat([first, s[:, :-1]], 1)
        if not _has_data(r) or (k % SMOOTH_CHECK_EVERY == 0 and torch.equal(new, mask)):
            break
        mask = new
    return s, mask


class _SmoothTorch(torch.autograd.Function):
    """s[i] = a s[i-1] + (1 - a) r[i], a = a_att if r[i] > s[i-1] (reduction rising) else a_rel.

    r `(rows, samples)` gain reduction in dB; a_att, a_rel, s0 `(rows,)`. The branch is treated
    as locally constant (it is, almost everywhere), so the adjoint is exact there:
    lambda[i] = dL/ds[i] + a[i+1] lambda[i+1]; dL/dr[i] = (1 - a[i]) lambda[i];
    dL/da = sum over the samples using a of lambda[i] (s[i-1] - r[i]); dL/ds0 = a[0] lambda[0].
    The adjoint is a linear recursion backwards in time: `_affine_scan` on the reversed signal.
    """

    @staticmethod
    def forward(ctx, r, a_att, a_rel, s0):
        s, mask = _smooth_forward(r, a_att, a_rel, s0)
        ctx.save_for_backward(r, s, mask, a_att, a_rel, s0)
        return s

    @staticmethod
    def backward(ctx, gs):
        r, s, mask, a_att, a_rel, s0 = ctx.saved_tensors
        c = torch.where(mask, a_att[:, None], a_rel[:, None])
        c_next = torch.cat([c[:, 1:], torch.zeros_like(c[:, :1])], 1)  # a[i+1]; none after the end
        lam = _affine_scan(c_next.flip(-1), gs.flip(-1)).flip(-1)
        prev = torch.cat([s0[:, None], s[:, :-1]], 1)
        d = lam * (prev - r)
        zero = torch.zeros_like(d)
        return ((1.0 - c) * lam, torch.where(mask, d, zero).sum(-1), torch.where(mask, zero, d).sum(-1),
                c[:, 0] * lam[:, 0] if r.shape[-1] else torch.zeros_like(s0))


def smooth_gain_reduction(r, attack_coeff, release_coeff, initial=None):
    """Attack/release one-pole smoothing of gain reduction r `(rows, samples)` (dB), in torch on
    r's device (`_SmoothTorch`). Coefficients `(rows,)`; `initial` `(rows,)` state before the
    first sample (default 0 dB). Returns s `(rows, samples)` in r's dtype."""
    if initial is None:
        initial = torch.zeros_like(attack_coeff)
    if r.shape[-1] == 0:
        return r.clone()
    return _SmoothTorch.apply(r, attack_coeff, release_coeff, initial)


# --- numba: the CPU fast path ------------------------------------------------------------------


@_njit
def _knee(d, hw, ws, wpos):
    """`gain_computer_db`'s overshoot f (dB) for d = level - threshold (reduction = (1 - 1/R) f),
    knee half-width hw, width ws = max(W, 1e-6), wpos = 1 if W > 1e-6 else 0; returns
    (f, df/dd, df/dW): the per-sample form every numba kernel uses."""
    if d > hw:
        return d, 1.0, 0.0
    if d > -hw:
        q = d + hw
        return q * q / (2.0 * ws), q / ws, q / (2.0 * ws) - q * q / (2.0 * ws * ws) * wpos
    return 0.0, 0.0, 0.0


@_njit
def _comp_fwd_kernel(lv, thr, ratio, knee, a_att, a_rel, s0, s):
    """Soft-knee curve + attack/release smoothing in one pass per row: level lv (dB)
    `(rows, n)` -> smoothed reduction s (dB), same shape (any float dtype; the state is float64)."""
    rows, n = lv.shape
    for b in range(rows):
        w = max(knee[b], 0.0)
        ws = max(w, 1e-6)
        hw = 0.5 * w
        c = 1.0 - 1.0 / ratio[b]
        aa = a_att[b]
        ar = a_rel[b]
        prev = s0[b]
        for i in range(n):
            r = c * _knee(lv[b, i] - thr[b], hw, ws, 0.0)[0]
            a = aa if r > prev else ar
            prev = a * prev + (1.0 - a) * r
            s[b, i] = prev


@_njit
def _comp_bwd_kernel(lv, s, thr, ratio, knee, a_att, a_rel, s0, gs, gd, sums):
    """Reverse-time adjoint of `_comp_fwd_kernel` (the same as `_SmoothTorch.backward` plus the
    curve's derivative). gs: dL/ds. Out: gd = dL/dd per sample (d = level - threshold) and per row
    sums[:, :5] = (sum dL/dr * f, sum dL/dr * c * df/dW, dL/da_att, dL/da_rel, dL/ds0), with
    r = c f, c = 1 - 1/R. The curve is recomputed from lv instead of being stored."""
    rows, n = lv.shape
    for b in range(rows):
        w = max(knee[b], 0.0)
        ws = max(w, 1e-6)
        hw = 0.5 * w
        wpos = 1.0 if w > 1e-6 else 0.0
        c = 1.0 - 1.0 / ratio[b]
        aa = a_att[b]
        ar = a_rel[b]
        carry = 0.0
        gaa = 0.0
        gar = 0.0
        sf = 0.0
        sw = 0.0
        for i in range(n - 1, -1, -1):
            f, dfdd, dfdw = _knee(lv[b, i] - thr[b], hw, ws, wpos)
            r = c * f
            prev = s[b, i - 1] if i > 0 else s0[b]
            lam = gs[b, i] + carry
            if r > prev:
                gaa += lam * (prev - r)
                gr = (1.0 - aa) * lam
                carry = aa * lam
            else:
                gar += lam * (prev - r)
                gr = (1.0 - ar) * lam
                carry = ar * lam
            gd[b, i] = gr * c * dfdd
            sf += gr * f
            sw += gr * c * dfdw
        sums[b, 0] = sf
        sums[b, 1] = sw
        sums[b, 2] = gaa
        sums[b, 3] = gar
        sums[b, 4] = carry


def _np64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy(), dtype=np.float64)


class _Compressor(torch.autograd.Function):
    """The CPU compressor with a hand-written backward: x `(rows, samples)`, the rest `(rows,)`
    (threshold dB, ratio, knee dB, makeup dB, attack and release coefficients, initial state dB).
    Returns y `(rows, samples)` and the final smoothed reduction `(rows,)` (not differentiable).

    The level (log10) and the gain (exp) are vectorised torch ops; the per-sample soft-knee
    curve and the smoothing recursion are one numba loop forward (`_comp_fwd_kernel`) and one
    reverse-time adjoint loop backward (`_comp_bwd_kernel`, which recomputes the curve's parts
    from the saved level): ~25 torch ops over (rows, samples) and their buffers disappear
    (issue 6). Scalar log10/exp inside numba would cost ~30 ns/sample here (no SVML).
    CPU tensors only (numpy views, no copies); `compressor` sends other devices to torch.
    """

    @staticmethod
    def forward(ctx, x, thr, ratio, knee, makeup, a_att, a_rel, s0):
        lv = _np64(10.0 * torch.log10(x * x + 1e-10))
        s_np = np.empty_like(lv)
        _comp_fwd_kernel(lv, _np64(thr), _np64(ratio), _np64(knee), _np64(a_att), _np64(a_rel), _np64(s0), s_np)
        s = torch.from_numpy(s_np)  # float64 state
        g = torch.exp((makeup.reshape(-1, 1) - s.to(x.dtype)) / _DB_PER_NEPER)
        y = x * g
        ctx.lv = lv
        ctx.save_for_backward(x, s, g, thr, ratio, knee, a_att, a_rel, s0)
        last = s[:, -1].to(x.dtype) if s.shape[1] else s0.detach().clone()
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, gy, _):
        x, s, g, thr, ratio, knee, a_att, a_rel, s0 = ctx.saved_tensors
        lv = ctx.lv
        gg = gy * x * g / _DB_PER_NEPER  # dL / d gain_db, per sample
        gd = np.empty_like(lv)
        sums = np.empty((lv.shape[0], 5))
        _comp_bwd_kernel(lv, _np64(s), _np64(thr), _np64(ratio), _np64(knee), _np64(a_att), _np64(a_rel),
                         _np64(s0), _np64(-gg), gd, sums)
        gd = torch.from_numpy(gd).to(x.dtype)
        sums = torch.from_numpy(sums)
        gx = gy * g + gd * (_DB_PER_NEPER * x / (x * x + 1e-10))
        as_ = lambda a, like: a.to(like.dtype)  # noqa: E731
        return (gx, -gd.sum(-1), as_(sums[:, 0], ratio) / (ratio * ratio),
                as_(sums[:, 1], knee) * (knee >= 0), gg.sum(-1),
                as_(sums[:, 2], a_att), as_(sums[:, 3], a_rel), as_(sums[:, 4], s0))


def _compressor_torch(x, thr, ratio, knee, makeup, a_att, a_rel, s0):
    """The same compressor as `_Compressor`, composed of torch ops on x's device: x `(rows, n)`,
    the rest `(rows,)`. Curve and smoothing in float64 (as the numba path); autograd
    differentiates the curve and the gain, `_SmoothTorch` the recursion."""
    f64 = torch.float64
    r = gain_computer_db(level_db(x).to(f64), thr.to(f64)[:, None], ratio.to(f64)[:, None], knee.to(f64)[:, None])
    s = smooth_gain_reduction(r, a_att.to(f64), a_rel.to(f64), s0.to(f64))
    y = x * torch.exp((makeup[:, None] - s.to(x.dtype)) / _DB_PER_NEPER)
    last = s[:, -1].detach().to(x.dtype) if s.shape[1] else s0.detach().clone()
    return y, last


def compressor(x, sample_rate: float, threshold_db, ratio, attack_ms, release_ms, knee_db,
               makeup_db, initial_db=None, return_state: bool = False, backend: str | None = None):
    """Feed-forward compressor, each channel detected on its own; no look-ahead, zero latency.

    x `(batch, channels, samples)`; threshold_db (dB), ratio (:1), attack_ms, release_ms (ms),
    knee_db (dB), makeup_db (dB) `(batch,)`. Level in dB per sample (floored at -100 dB) ->
    soft-knee gain reduction (`gain_computer_db`) -> one-pole smoothing with the attack
    coefficient while the reduction rises and the release one while it falls (time constants:
    63 % of a step after attack_ms / release_ms) -> gain = makeup - smoothed reduction.
    Every parameter, release included, has its exact gradient. `initial_db` `(batch * channels,)`:
    smoothed reduction carried from a previous chunk (streaming); with return_state the final
    state is returned too. backend: "numba" (CPU tensors only: the fused kernels, fastest there),
    "torch" (any device, runs where x is), None = "numba" on CPU, "torch" elsewhere.
    """
    B, C, T = x.shape
    backend = backend or ("numba" if x.device.type == "cpu" else "torch")
    if backend not in ("numba", "torch"):
        raise ValueError(f"backend must be 'numba', 'torch' or None, got {backend!r}")
    if backend == "numba" and x.device.type != "cpu":
        raise ValueError(f"the numba compressor runs on CPU tensors only, x is on {x.device}: use backend='torch'")
    rep = lambda p: torch.as_tensor(p, dtype=x.dtype, device=x.device).reshape(B, 1).expand(B, C).reshape(-1)  # noqa: E731
    a_att = time_constant_coeff(rep(attack_ms), sample_rate)
    a_rel = time_constant_coeff(rep(release_ms), sample_rate)
    s0 = torch.zeros(B * C, dtype=x.dtype, device=x.device) if initial_db is None else initial_db.to(x.dtype)
    fn = _Compressor.apply if backend == "numba" else _compressor_torch
    y, last = fn(x.reshape(B * C, T), rep(threshold_db), rep(ratio), rep(knee_db), rep(makeup_db), a_att, a_rel, s0)
    y = y.reshape(B, C, T)
    return (y, last) if return_state else y


def compress_inference(x: np.ndarray, sample_rate: float, threshold_db: float, ratio: float,
                       attack_ms: float, release_ms: float, knee_db: float, makeup_db: float,
                       initial_db: float = 0.0) -> tuple[np.ndarray, float]:
    """`compressor` for one channel without autograd (streaming/inference): x `(samples,)`
    float32 numpy, parameters as Python floats in units -> (y `(samples,)` float32, final
    smoothed reduction dB). The level's log and the gain's exp run as float32 SIMD ufuncs,
    the curve and the recursion in the training path's forward kernel (`_comp_fwd_kernel`,
    float64 state). Scalar libm log10/exp inside numba cost ~30 ns/sample here (no SVML), the
    ufuncs ~2 ns."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    lv = np.multiply(x, x)
    lv += np.float32(1e-10)
    np.log(lv, out=lv)  # float32 log is SIMD in numpy, log10 is not (3x slower)
    lv *= np.float32(10.0 / math.log(10.0))
    if lv.shape[0] == 0:
        return lv, float(initial_db)
    p = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    a_att = math.exp(-1000.0 / (attack_ms * sample_rate))
    a_rel = math.exp(-1000.0 / (release_ms * sample_rate))
    s = lv[None]  # in place: level in, smoothed reduction out (each sample read before it is written)
    _comp_fwd_kernel(s, p(threshold_db), p(ratio), p(knee_db), p(a_att), p(a_rel), p(initial_db), s)
    last = float(s[0, -1])
    lv -= np.float32(makeup_db)
    lv *= np.float32(-1.0 / _DB_PER_NEPER)
    np.exp(lv, out=lv)
    lv *= x
    return lv, last


def _warm_up() -> float:
    """Compile and run every kernel once (seconds). Kernels compile lazily on first use (each
    ~0.2-0.7 s, then cached on disk where writable, see `_njit`): importing this module stays
    cheap. Benchmarks call this before timing."""
    t0 = time.perf_counter()
    r = np.zeros((1, 4))
    z = np.zeros(1)
    p = z + 0.5
    _comp_fwd_kernel(r, p, p, p, p, p, z, r.copy())
    _comp_bwd_kernel(r, r, p, p, p, p, p, z, r, r.copy(), np.zeros((1, 5)))
    compress_inference(np.zeros(4, np.float32), 48000.0, -20.0, 2.0, 5.0, 50.0, 6.0, 0.0)
    return time.perf_counter() - t0

# ---------------------------------------------------------------------------------------------
# reverb

REVERB_BAND_EDGES_HZ = (500.0, 1000.0, 2000.0, 4000.0, 8000.0)
_DAMPING_REF_HZ = 500.0


@constant_cache(maxsize=8)
def _noise_bands_on(sample_rate: int, length: int, seed: int, device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`_noise_bands` on a device and dtype, kept there: the reverb copies nothing per call."""
    bands, octaves = _noise_bands(sample_rate, length, seed)
    return bands.to(device=device, dtype=dtype), octaves.to(device=device, dtype=dtype)


@constant_cache(maxsize=8)
def _noise_bands(sample_rate: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed, seeded white noise for L and R (independent, so decorrelated) split into bands.

    Returns (bands `(K, 2, length)` float32 that sum to the noise, octaves above 500 Hz of each
    band's centre `(K,)`). Band masks are raised-cosine crossfades one octave wide on a log-f axis,
    so they sum to one: with no damping the IR is exactly the noise times one envelope.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, length, generator=g, dtype=torch.float64)
    n_fft = next_fast_len(length)
    spec = torch.fft.rfft(noise, n=n_fft)
    f = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate, dtype=torch.float64)
    lf = torch.log2(f.clamp_min(1.0))
    edges = [e for e in REVERB_BAND_EDGES_HZ if e < 0.45 * sample_rate]
    # cumulative "above edge e" masks: 0 one half-octave below e, 1 one half-octave above
    above = [0.5 - 0.5 * torch.cos(math.pi * ((lf - math.log2(e) + 0.5).clamp(0, 1))) for e in edges]
    masks, prev = [], torch.ones_like(lf)
    for m in above:
        masks.append(prev - m)
        prev = m
    masks.append(prev)
    bands = torch.stack([torch.fft.irfft(spec * m, n=n_fft)[..., :length] for m in masks])
    centres = [edges[0] / 2 ** 0.5] + [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])] + [edges[-1] * 2 ** 0.5]
    octaves = torch.tensor([max(0.0, math.log2(c / _DAMPING_REF_HZ)) for c in centres], dtype=torch.float64)
    return bands.float(), octaves.float()


REVERB_TAIL_DB = 80.0  # the IR is cut where its slowest band has decayed by this much


def reverb_ir_length(sample_rate: int, decay_s, predelay_ms, ir_seconds: float = 2.5) -> int:
    """Taps for a batch: predelay + the time to decay by REVERB_TAIL_DB at the longest RT60,
    rounded up to 1/8 s (few distinct FFT sizes), capped at ir_seconds. Not differentiable."""
    need = float(torch.max(torch.as_tensor(predelay_ms).detach() / 1000.0 + 0.001
                           + torch.as_tensor(decay_s).detach() * REVERB_TAIL_DB / 60.0))
    if not math.isfinite(need):  # NaN/Inf parameters: the cap (the output is NaN anyway), no int(NaN)
        need = ir_seconds
    need = math.ceil(max(need, 0.125) * 8.0) / 8.0
    return int(round(min(need, ir_seconds) * sample_rate))


def reverb_ir(sample_rate: int, decay_s, predelay_ms, tone, wet_db, ir_seconds: float = 2.5,
              seed: int = 0, dtype=torch.float32, device=None, length: int | None = None) -> torch.Tensor:
    """Stereo reverb impulse response `(batch, 2, taps)`, taps = `length` or, by default,
    `reverb_ir_length(...)` (a host read of the parameters: the console passes the cap on
    accelerators; the extra taps hold the tail below -80 dB).

    decay_s: RT60 (s) of bands at or below 500 Hz; tone in [0, 1]: high-frequency damping, each
    octave above 500 Hz decays faster by a factor 0.5 + 0.5 * tone (tone 1 = same RT60 at all
    frequencies, tone 0 = RT60 halved per octave). predelay_ms (ms): the envelope starts there
    with a 1 ms raised-cosine onset; it is continuous in predelay, so predelay has a gradient.
    Each channel is normalised to unit energy, then scaled by wet_db (dB): the wet level relative
    to the dry signal for broadband input. The IR ends once decayed by 80 dB, or at ir_seconds
    (the cap) with its last 10 % faded out. The noise is the same whatever the length.
    """
    decay_s = torch.as_tensor(decay_s, dtype=dtype, device=device).reshape(-1, 1, 1)
    predelay_ms = torch.as_tensor(predelay_ms, dtype=dtype, device=device).reshape(-1, 1, 1)
    tone = torch.as_tensor(tone, dtype=dtype, device=device).reshape(-1, 1, 1)
    wet_db = torch.as_tensor(wet_db, dtype=dtype, device=device).reshape(-1, 1)
    L_cap = int(round(ir_seconds * sample_rate))
    L = reverb_ir_length(sample_rate, decay_s, predelay_ms, ir_seconds) if length is None else min(int(length), L_cap)
    bands, octaves = _noise_bands_on(int(sample_rate), L_cap, seed, decay_s.device, dtype)
    bands = bands[..., :L]
    octaves = octaves.reshape(1, -1, 1)
    t = torch.arange(L, device=decay_s.device, dtype=dtype).reshape(1, 1, -1) / sample_rate
    t0 = predelay_ms / 1000.0
    rt60 = decay_s * torch.exp(octaves * torch.log(0.5 + 0.5 * tone))  # (batch, K, 1)
    # -60 dB at RT60: amplitude envelope exp(-ln(1000) (t - t0) / RT60)
    rel = torch.relu(t - t0)
    env = torch.exp(rel * (-math.log(1000.0) / rt60))  # (batch, K, L); scalars folded first
    shape = 0.5 - 0.5 * torch.cos(math.pi * (rel * 1000.0).clamp(max=1.0))  # 1 ms onset
    if L == L_cap:
        fade_len = max(1, L // 10)
        fade = torch.ones(L, dtype=dtype, device=decay_s.device)
        fade[-fade_len:] = 0.5 + 0.5 * torch.cos(torch.linspace(0, math.pi, fade_len, dtype=dtype, device=decay_s.device))
        shape = shape * fade
    ir = env[:, :1] * bands[0]
    for k in range(1, bands.shape[0]):  # a loop of fused multiply-adds beats einsum's tiny bmm
        ir = ir + env[:, k : k + 1] * bands[k]
    ir = ir * shape
    energy = ir.pow(2).sum(-1).clamp_min(1e-12)
    return ir * (db_to_amp(wet_db) / torch.sqrt(energy)).unsqueeze(-1)


def _workers() -> int:
    return max(1, torch.get_num_threads())


class _FFTConv(torch.autograd.Function):
    """First T samples of the linear convolution x * h by one FFT size N >= T + taps - 1.

    Written out so that the backward pass is three real FFT products (cross-correlations by
    conj spectra, valid because N leaves no wrap-around) instead of autograd's complex-to-complex
    FFTs and full-length zero fills. On CPU the transforms and spectral products run in
    scipy.fft / numpy: pocketfft is ~2x faster than torch's MKL FFT on this CPU, and torch's
    complex multiply (plus the copy that materialises a conj) was ~10 ns/bin, numpy's ~1 (issue 6).
    """

    @staticmethod
    def forward(ctx, x, h):
        T, L = x.shape[-1], h.shape[-1]
        n = next_fast_len(T + L - 1)
        ctx.sizes = (T, L, n, x.shape, h.shape)
        if x.device.type != "cpu":
            X, H = torch.fft.rfft(x, n=n), torch.fft.rfft(h, n=n)
            ctx.save_for_backward(X, H)
            return torch.fft.irfft(X * H, n=n)[..., :T]
        X = scipy.fft.rfft(x.detach().numpy(), n=n, axis=-1, workers=_workers())
        H = scipy.fft.rfft(h.detach().numpy(), n=n, axis=-1, workers=_workers())
        ctx.spectra = (X, H)
        y = scipy.fft.irfft(X * H, n=n, axis=-1, workers=_workers())[..., :T]
        return torch.from_numpy(np.ascontiguousarray(y))

    @staticmethod
    def backward(ctx, gy):
        T, L, n, xs, hs = ctx.sizes
        gx = gh = None
        if gy.device.type != "cpu":
            X, H = ctx.saved_tensors
            G = torch.fft.rfft(gy, n=n)
            # a broadcast input's gradient is summed over channels before the inverse FFT (linear)
            if ctx.needs_input_grad[0]:
                GX = G * H.conj()
                GX = GX.sum(1, keepdim=True) if xs[1] == 1 and GX.shape[1] != 1 else GX
                gx = torch.fft.irfft(GX, n=n)[..., :T]
            if ctx.needs_input_grad[1]:
                GH = G * X.conj()
                GH = GH.sum(1, keepdim=True) if hs[1] == 1 and GH.shape[1] != 1 else GH
                gh = torch.fft.irfft(GH, n=n)[..., :L]
            return gx, gh
        X, H = ctx.spectra
        G = scipy.fft.rfft(gy.detach().numpy(), n=n, axis=-1, workers=_workers())
        if ctx.needs_input_grad[0]:
            GX = G * np.conj(H)
            GX = GX.sum(1, keepdims=True) if xs[1] == 1 and GX.shape[1] != 1 else GX
            gx = torch.from_numpy(np.ascontiguousarray(
                scipy.fft.irfft(GX, n=n, axis=-1, workers=_workers())[..., :T]))
        if ctx.needs_input_grad[1]:
            GH = G * np.conj(X)
            GH = GH.sum(1, keepdims=True) if hs[1] == 1 and GH.shape[1] != 1 else GH
            gh = torch.from_numpy(np.ascontiguousarray(
                scipy.fft.irfft(GH, n=n, axis=-1, workers=_workers())[..., :L]))
        return gx, gh


def fft_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal linear convolution, first `samples` outputs: x `(batch, 1|C, samples)`,
    h `(batch, 1|C, taps)` -> `(batch, C, samples)`."""
    return _FFTConv.apply(x, h)


def reverb(x, sample_rate: int, decay_s, predelay_ms, tone, wet_db, ir_seconds: float = 2.5,
           seed: int = 0) -> torch.Tensor:
    """Mono-in, stereo wet out: x `(batch, 1, samples)` -> `(batch, 2, samples)` = x * reverb_ir
    (see `reverb_ir` for the parameters). Only the wet signal; the console adds the dry path."""
    h = reverb_ir(sample_rate, decay_s, predelay_ms, tone, wet_db, ir_seconds, seed, x.dtype, x.device)
    return fft_convolve(x, h)
