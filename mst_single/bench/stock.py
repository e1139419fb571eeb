"""The stock chain we compare against: dasp-pytorch 0.0.1 stages, auraloss 0.4.0 loss."""
from __future__ import annotations

import math


# (name, low, high, log scale) of the stock chain's parameters, in units, for the training step.
# Ranges are those a vocal chain needs; the compressor knee starts at 1 dB because dasp's
# compressor has NaN gradients at knee 0 (issue 3).
STOCK_EQ = [("low_shelf", 20.0, 1000.0), ("band0", 60.0, 500.0), ("band1", 200.0, 2000.0),
            ("band2", 800.0, 6000.0), ("band3", 2000.0, 16000.0), ("high_shelf", 2000.0, 16000.0)]
STOCK_PARAMS = (
    [("gain_db", -24.0, 24.0, False)]
    + [p for band, lo, hi in STOCK_EQ for p in ((f"{band}_gain_db", -12.0, 12.0, False),
                                                (f"{band}_cutoff_freq", lo, hi, True),
                                                (f"{band}_q_factor", 0.3, 6.0, True))]
    + [("threshold_db", -50.0, 0.0, False), ("ratio", 1.0, 12.0, True), ("attack_ms", 0.5, 100.0, True),
       ("release_ms", 10.0, 1000.0, True), ("knee_db", 1.0, 12.0, False), ("makeup_gain_db", 0.0, 24.0, False)]
    + [(f"band{i}_gain", 0.0, 1.0, False) for i in range(12)]
    + [(f"band{i}_decay", 0.0, 1.0, False) for i in range(12)]
    + [("mix", 0.0, 1.0, False), ("output_gain_db", -24.0, 24.0, False)]
)
STOCK_REVERB_NAMES = [f"band{i}_gain" for i in range(12)] + [f"band{i}_decay" for i in range(12)] + ["mix"]


def stock_param_names(reverb: bool) -> list[str]:
    return [n for n, *_ in STOCK_PARAMS if reverb or n not in STOCK_REVERB_NAMES]


def stock_denormalize(p, reverb: bool) -> dict:
    """(batch, P) in [0, 1] -> dict of (batch,) tensors in units for the stock chain."""
    import torch

    table = {n: (lo, hi, log) for n, lo, hi, log in STOCK_PARAMS}
    out = {}
    for i, name in enumerate(stock_param_names(reverb)):
        lo, hi, log = table[name]
        v = p[:, i]
        out[name] = torch.exp(math.log(lo) + v * (math.log(hi) - math.log(lo))) if log else lo + v * (hi - lo)
    return out


def stock_chain(x, sample_rate: int, u: dict, reverb: bool = True, reverb_ir: int = 65536):
    """Stock vocal chain: gain -> dasp parametric EQ -> dasp compressor -> dasp reverb -> output gain.

    x: (batch, 1, samples) -> (batch, 2, samples).
    """
    import dasp_pytorch.functional as D

    y = D.gain(x, sample_rate, u["gain_db"])
    y = D.parametric_eq(y, sample_rate, **{k: u[k] for k in _eq_arg_names()})
    y = D.compressor(y, sample_rate, u["threshold_db"], u["ratio"], u["attack_ms"], u["release_ms"],
                     u["knee_db"], u["makeup_gain_db"])
    if reverb:
        y = D.noise_shaped_reverberation(y, sample_rate, *[u[n] for n in STOCK_REVERB_NAMES],
                                         num_samples=reverb_ir)
    else:
        y = y.repeat(1, 2, 1)
    return D.gain(y, sample_rate, u["output_gain_db"])


def _eq_arg_names() -> list[str]:
    return [f"{band}_{k}" for band, _, _ in STOCK_EQ for k in ("gain_db", "cutoff_freq", "q_factor")]


def stock_loss(ours_loss):
    """auraloss MultiResolutionSTFTLoss with exactly the settings of our MRSTFTL1Loss instance."""
    import auraloss

    return auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=list(ours_loss.fft_sizes), hop_sizes=list(ours_loss.hop_sizes), win_lengths=list(ours_loss.win_lengths),
        w_sc=ours_loss.w_sc, w_log_mag=ours_loss.w_log_mag, w_lin_mag=0.0, w_phs=0.0, eps=ours_loss.eps)
