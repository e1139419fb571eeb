"""`mst-single demo-data OUT --style house|adaptive|per-song`: demo raw/mixed vocal pairs with known truth.

Raw vocals come from our singing synthesiser (:mod:`mst_single.synth`). Mixed vocals are rendered by
an engine we did not write, pedalboard (GPL-3.0, the optional ``[demo]`` extra; imported only inside
the rendering functions, never by the core package). Every song gets a plugin-like latency: leading
samples in the mixed file, which the data layer's aligner has to find. Three styles:

- ``house`` (the original demo): one house style, input gain -> high-pass -> low shelf -> four peak
  filters -> high shelf -> compressor -> make-up gain -> Freeverb -> output gain -> limiter, each
  setting varied a little at random, loudness -15..-13 LUFS. One preset is nearly the best answer.
- ``adaptive``: a producer who reacts to the take. Each setting is a documented function
  (:data:`ADAPTIVE_RULES`) of a property measured on the raw audio itself (:func:`measure_take`:
  spectral balance, boominess, consonant strength, level spread, crest, pause density) plus small
  noise, delivered at a fixed loudness (:data:`FIXED_TARGET_LUFS`). The takes vary widely
  (:func:`mst_single.synth.random_take`), so the settings do too. What Approach 2 must learn.
- ``per-song``: every setting drawn from wide ranges (:data:`PER_SONG_RANGES`) independently of the
  take, same fixed loudness: only that song's mix reveals them. What Approach 1 exists for.

``adaptive`` and ``per-song`` use a console-like chain that our :class:`~mst_single.console.VocalConsole`
can follow stage by stage: input gain -> low shelf -> four peak filters -> high shelf -> compressor
(pedalboard's biquads are the RBJ ones the console uses; its compressor is hard-knee with a peak
detector and gets JUCE's 2 pi times the console's time constants) -> reverb send -> output gain ->
a peak ceiling that stays idle unless a sample would pass -1 dBFS; no high-pass, no limiter. The
raw vocal is first brought to :data:`INPUT_LUFS` (-23 LUFS, the models' ``target_lufs``), so
``gain_db``, the compressor threshold and ``output_gain_db`` in truth.json mean what they mean for
the console. The reverb is the console's own (:func:`mst_single.functional.reverb_ir`), applied as
a send. With a song's true params the console reproduces its mix closely (see the README).

Layout written::

    OUT/raw/NAME.wav     mono, 24-bit PCM
    OUT/mixed/NAME.wav   stereo, 24-bit PCM, latency + raw length + reverb tail
    OUT/truth.json       every song's voice, latency, console parameters and pedalboard settings
                         (adaptive: also the measured features and the rules)
    OUT/manifest.json    sha256 of every file above, a coarse fingerprint of each WAV (equal
                         across CPUs, see `same_audio`) and the library versions that made them

An OUT that already holds files is written only when they are an earlier run's output of the same
command, unchanged since (manifest.json records both), so that rerunning a command is harmless;
``--force`` replaces another demo run's files. demo-data never overwrites or deletes a file it did
not write (hidden files, which the data layer skips too, are left alone).

Both are 24-bit PCM (what a producer delivers; it also exercises the loader's integer path) and the
mix is rendered from the raw file's own samples as read back, so the pair is exactly consistent.
The same seed gives byte-identical files on one machine; song i is the same whatever ``songs`` is.
Another CPU can differ in the last bit of some samples (numpy picks SIMD kernels per CPU), which
the WAV fingerprints in the manifest tolerate.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mst_single.errors import MstError
from mst_single.fileio import write_audio, write_json
from mst_single.synth import VOICES, random_take, sing

# Per-song settings are drawn uniformly from centre +- spread (spread 0: fixed). Chain order matters.
HOUSE_STYLE = {
    "input_gain": ("Gain", {"gain_db": (2.0, 2.0)}),
    "highpass": ("HighpassFilter", {"cutoff_frequency_hz": (80.0, 10.0)}),
    "low_shelf": ("LowShelfFilter", {"cutoff_frequency_hz": (180.0, 30.0), "gain_db": (-2.5, 1.0), "q": (0.707, 0.0)}),
    "band1": ("PeakFilter", {"cutoff_frequency_hz": (300.0, 50.0), "gain_db": (-3.0, 1.5), "q": (1.2, 0.3)}),
    "band2": ("PeakFilter", {"cutoff_frequency_hz": (900.0, 120.0), "gain_db": (-2.0, 1.0), "q": (2.0, 0.4)}),
    "band3": ("PeakFilter", {"cutoff_frequency_hz": (3000.0, 400.0), "gain_db": (3.0, 1.0), "q": (1.0, 0.2)}),
    "band4": ("PeakFilter", {"cutoff_frequency_hz": (7000.0, 700.0), "gain_db": (-2.0, 1.0), "q": (3.0, 0.5)}),
    "high_shelf": ("HighShelfFilter", {"cutoff_frequency_hz": (10000.0, 1000.0), "gain_db": (3.0, 1.0),
                                       "q": (0.707, 0.0)}),
    "compressor": ("Compressor", {"threshold_db": (-22.0, 3.0), "ratio": (4.0, 1.0), "attack_ms": (5.0, 2.0),
                                  "release_ms": (90.0, 25.0)}),
    "makeup_gain": ("Gain", {"gain_db": (4.0, 1.0)}),
    "reverb": ("Reverb", {"room_size": (0.45, 0.05), "damping": (0.5, 0.1), "wet_level": (0.1, 0.02),
                          "dry_level": (0.5, 0.0), "width": (1.0, 0.0), "freeze_mode": (0.0, 0.0)}),
    "output_gain": ("Gain", {"gain_db": (0.0, 0.0)}),  # set per song to reach the target loudness
    # pedalboard's (JUCE) Limiter is a maximiser: a -10 dB 4:1 first stage, a brick wall at the
    # threshold, then make-up that puts the threshold at 0 dBFS; the ceiling gain restores headroom.
    "limiter": ("Limiter", {"threshold_db": (-3.0, 0.0), "release_ms": (100.0, 0.0)}),
    "ceiling": ("Gain", {"gain_db": (-1.0, 0.0)}),
}
TARGET_LUFS = (-15.0, -13.0)  # integrated loudness of the mixed file, uniform per song
LATENCY_MS = (0.0, 40.0)
TAIL_SECONDS = 1.0  # lets the reverb ring out after the last phrase
# The output gain and limiter follow the loudness measurement; everything before it is "pre".
_POST = ("output_gain", "limiter", "ceiling", "peak_ceiling")

# pedalboard setting -> our console's parameter (same units) where the console has a direct counterpart.
_PARAM_MAP = {
    ("input_gain", "gain_db"): "gain_db",
    **{(s, k): f"eq_{s}_{u}" for s in ("low_shelf", "band1", "band2", "band3", "band4", "high_shelf")
       for k, u in (("gain_db", "gain_db"), ("cutoff_frequency_hz", "freq_hz"), ("q", "q"))},
    ("compressor", "threshold_db"): "comp_threshold_db",
    ("compressor", "ratio"): "comp_ratio",
    ("compressor", "attack_ms"): "comp_attack_ms",
    ("compressor", "release_ms"): "comp_release_ms",
    ("makeup_gain", "gain_db"): "comp_makeup_db",
    ("output_gain", "gain_db"): "output_gain_db",
}
NO_COUNTERPART = {
    "highpass": "the console has no high-pass filter",
    "limiter": "the console has no limiter; pedalboard's Limiter also raises loudness (JUCE maximiser) and "
               "the fixed -1 dB ceiling gain after it has no counterpart either",
    "reverb": "pedalboard's Reverb (Freeverb-style room_size, damping, wet_level, dry_level, width) has no "
              "direct counterpart in reverb_decay_s / reverb_predelay_ms / reverb_tone / reverb_wet_db",
    "compressor knee": "pedalboard's Compressor is hard-knee (comp_knee_db would be 0) with a peak detector; "
                       "its attack/release are ballistics of that detector, close to but not the console's",
    "eq filters": "pedalboard's shelf/peak biquads use JUCE's Q convention; gains/freqs/Qs map by name",
}


# --- adaptive and per-song: the console-like chain --------------------------------------------
STYLES = ("house", "adaptive", "per-song")
FIXED_TARGET_LUFS = -20.0  # every adaptive / per-song mix lands here (a vocal stem with headroom)
PEAK_CEILING_DBFS = -1.0  # a rare transient above this is turned down locally (PeakCeiling), nothing else
PEAK_LOOKAHEAD_MS = 2.5
INPUT_LUFS = -23.0  # the raw vocal is normalised to this first (= the models' target_lufs)
REVERB_SEED = 0  # the console's own reverb: the same impulse response for the same parameters
# pedalboard's (JUCE) compressor smooths with exp(-2 pi 1000 / (T_ms fs)), the console with
# exp(-1000 / (T_ms fs)): a JUCE time is 2 pi times the console time constant that behaves alike.
JUCE_TIME_FACTOR = 2.0 * np.pi
# Chain order (role, pedalboard plugin or one of ours: ConsoleReverb, PeakCeiling); every stage but
# the peak ceiling has a console counterpart.
CONSOLE_CHAIN = (("input_gain", "Gain"), ("low_shelf", "LowShelfFilter"), ("band1", "PeakFilter"),
                 ("band2", "PeakFilter"), ("band3", "PeakFilter"), ("band4", "PeakFilter"),
                 ("high_shelf", "HighShelfFilter"), ("compressor", "Compressor"), ("reverb", "ConsoleReverb"),
                 ("output_gain", "Gain"), ("peak_ceiling", "PeakCeiling"))
# Console parameter -> (role, setting) in CONSOLE_CHAIN. `gain_db` is the gain after the -23 LUFS
# normalisation; the Gain plugin applies both (its gain_db = normalisation + gain_db).
_CONSOLE_PARAM_MAP = {
    "gain_db": ("input_gain", "gain_db"),
    **{f"eq_{b}_{u}": (b, k) for b in ("low_shelf", "band1", "band2", "band3", "band4", "high_shelf")
       for k, u in (("gain_db", "gain_db"), ("cutoff_frequency_hz", "freq_hz"), ("q", "q"))},
    "comp_threshold_db": ("compressor", "threshold_db"),
    "comp_ratio": ("compressor", "ratio"),
    "comp_attack_ms": ("compressor", "attack_ms"),
    "comp_release_ms": ("compressor", "release_ms"),
    "reverb_decay_s": ("reverb", "decay_s"),
    "reverb_predelay_ms": ("reverb", "predelay_ms"),
    "reverb_tone": ("reverb", "tone"),
    "reverb_wet_db": ("reverb", "wet_db"),
    "output_gain_db": ("output_gain", "gain_db"),
}
# Fixed by the chain (no stage of their own): pedalboard's compressor is hard-knee, and there is no
# make-up stage (the output gain carries all level, so the two are not confused).
_CONSOLE_FIXED = {"comp_knee_db": 0.0, "comp_makeup_db": 0.0}
CONSOLE_CHAIN_CAVEATS = {
    "compressor": "pedalboard's Compressor (JUCE) smooths a peak detector and has a hard knee; the console "
                  "smooths its gain reduction (comp_knee_db 0 here): close, not identical. JUCE's attack/release "
                  "times are 2 pi times a one-pole time constant, so the plugin gets 2 pi x params "
                  "comp_attack_ms / comp_release_ms (the console's convention)",
    "reverb": "the console's own reverb (mst_single.functional.reverb_ir, noise seed 0): the same impulse "
              "response as the console's for the same parameters",
    "peak_ceiling": "ours, no console counterpart: where a sample would pass ceiling_db, the gain dips to "
                    "just below it (minimum over +-lookahead_ms, Hann-smoothed); everywhere else it is exactly 1. "
                    "songs[NAME]['ceiling_reduction_db'] is the largest dip: 0 for almost every song",
    "input_gain": "params gain_db is relative to the raw vocal normalised to input_lufs; the Gain plugin "
                  "applies normalisation_gain_db + gain_db",
}

# Per-song settings: (low, high, scale). "log": drawn log-uniformly. Every value independent of the take.
PER_SONG_RANGES = {
    "gain_db": (-3.0, 6.0, "linear"),
    "eq_low_shelf_gain_db": (-8.0, 4.0, "linear"), "eq_low_shelf_freq_hz": (80.0, 250.0, "log"),
    "eq_low_shelf_q": (0.5, 1.0, "linear"),
    "eq_band1_gain_db": (-10.0, 3.0, "linear"), "eq_band1_freq_hz": (150.0, 500.0, "log"),
    "eq_band1_q": (0.6, 2.5, "log"),
    "eq_band2_gain_db": (-6.0, 4.0, "linear"), "eq_band2_freq_hz": (500.0, 1500.0, "log"),
    "eq_band2_q": (0.6, 3.0, "log"),
    "eq_band3_gain_db": (-3.0, 9.0, "linear"), "eq_band3_freq_hz": (1800.0, 5000.0, "log"),
    "eq_band3_q": (0.5, 2.0, "log"),
    "eq_band4_gain_db": (-10.0, 3.0, "linear"), "eq_band4_freq_hz": (5000.0, 9000.0, "log"),
    "eq_band4_q": (1.0, 5.0, "log"),
    "eq_high_shelf_gain_db": (-4.0, 8.0, "linear"), "eq_high_shelf_freq_hz": (7000.0, 14000.0, "log"),
    "eq_high_shelf_q": (0.5, 1.0, "linear"),
    "comp_threshold_db": (-40.0, -14.0, "linear"), "comp_ratio": (1.2, 10.0, "log"),
    "comp_attack_ms": (0.5, 25.0, "log"), "comp_release_ms": (30.0, 300.0, "log"),
    "reverb_decay_s": (0.3, 3.0, "log"), "reverb_predelay_ms": (0.0, 60.0, "linear"),
    "reverb_tone": (0.1, 0.9, "linear"), "reverb_wet_db": (-32.0, -8.0, "linear"),
}
# = console.MAX_FREQ_FRACTION (not imported: that would import torch with this module): bands stay
# below 0.45 * sample_rate, where RBJ biquads keep their shape.
_MAX_FREQ_FRACTION = 0.45


@dataclasses.dataclass(frozen=True)
class Rule:
    """One adaptive decision: ``param`` = interpolation of ``feature`` between two anchor points,
    clipped at both ends, plus noise.

    value = at_low + (at_high - at_low) * clip((f - feature_low) / (feature_high - feature_low), 0, 1)
    (scale "log": the same on log(value)), then + N(0, noise) (scale "log": x exp(N(0, noise))).
    feature None: a constant (at_low) plus noise.
    """

    param: str
    feature: str | None
    feature_low: float
    feature_high: float
    at_low: float
    at_high: float
    scale: str = "linear"
    noise: float = 0.0
    why: str = ""

    def apply(self, features: dict, rng: np.random.Generator) -> float:
        if self.feature is None:
            u = 0.0
        else:
            u = (features[self.feature] - self.feature_low) / (self.feature_high - self.feature_low)
            u = float(np.clip(u, 0.0, 1.0))
        e = float(rng.standard_normal())  # always drawn: every rule consumes one number
        if self.scale == "log":
            v = np.exp(np.log(self.at_low) + u * (np.log(self.at_high) - np.log(self.at_low)) + self.noise * e)
        else:
            v = self.at_low + u * (self.at_high - self.at_low) + self.noise * e
        return float(v)

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        if self.feature is None:
            d["formula"] = (f"{self.param} = {self.at_low:g}" + (" * exp(N(0, noise))" if self.scale == "log"
                                                                   else " + N(0, noise)"))
        else:
            lerp = "log-linear" if self.scale == "log" else "linear"
            d["formula"] = (f"{self.param}: {self.at_low:g} at {self.feature} <= {self.feature_low:g}, "
                            f"{self.at_high:g} at {self.feature} >= {self.feature_high:g}, {lerp} between, "
                            + ("x exp(N(0, noise))" if self.scale == "log" else "+ N(0, noise)"))
        return d


# The adaptive producer. Feature anchors are the 5th and 95th percentiles of the feature over 48
# whole takes (seed 0, 48 kHz, 15 s), so that the settings cover their ranges.
ADAPTIVE_RULES = (
    Rule("gain_db", None, 0, 1, 0.0, 0.0, noise=0.5, why="constant: the input is normalised first"),
    Rule("eq_low_shelf_freq_hz", None, 0, 1, 120.0, 120.0, "log", 0.05),
    Rule("eq_low_shelf_q", None, 0, 1, 0.707, 0.707),
    Rule("eq_low_shelf_gain_db", "low_db", -55.0, 5.0, 2.0, -8.0, noise=0.5,
         why="more energy below 150 Hz -> a deeper low-shelf cut"),
    Rule("eq_band1_freq_hz", "boom_hz", 255.0, 490.0, 200.0, 450.0, "log", 0.04,
         why="the low-mid cut sits where the take's 150-600 Hz energy is centred"),
    Rule("eq_band1_q", None, 0, 1, 1.2, 1.2, "log", 0.05),
    Rule("eq_band1_gain_db", "boom_db", -35.0, 20.0, 0.0, -10.0, noise=0.5,
         why="boomier take (150-500 Hz vs 0.5-2 kHz) -> deeper low-mid cut"),
    Rule("eq_band2_freq_hz", None, 0, 1, 900.0, 900.0, "log", 0.05),
    Rule("eq_band2_q", None, 0, 1, 1.5, 1.5, "log", 0.05),
    Rule("eq_band2_gain_db", None, 0, 1, -2.0, -2.0, noise=0.5),
    Rule("eq_band3_freq_hz", None, 0, 1, 3200.0, 3200.0, "log", 0.05),
    Rule("eq_band3_q", None, 0, 1, 1.0, 1.0, "log", 0.05),
    Rule("eq_band3_gain_db", "presence_db", -20.0, -8.5, 9.0, -2.0, noise=0.5,
         why="duller take (2-6 kHz vs 0.5-2 kHz) -> more presence"),
    Rule("eq_band4_freq_hz", None, 0, 1, 7000.0, 7000.0, "log", 0.05),
    Rule("eq_band4_q", None, 0, 1, 3.0, 3.0, "log", 0.05),
    Rule("eq_band4_gain_db", "sibilance_db", -56.0, -32.5, 0.0, -10.0, noise=0.5,
         why="stronger sibilants -> deeper de-essing cut"),
    Rule("eq_high_shelf_freq_hz", None, 0, 1, 10000.0, 10000.0, "log", 0.05),
    Rule("eq_high_shelf_q", None, 0, 1, 0.707, 0.707),
    Rule("eq_high_shelf_gain_db", "air_db", -48.0, -29.5, 8.0, -3.0, noise=0.5,
         why="less air (6-12 kHz vs 0.5-2 kHz) -> more high-shelf boost"),
    Rule("comp_threshold_db", "dynamics_db", 9.0, 17.0, -16.0, -36.0, noise=1.0,
         why="wider level spread -> lower threshold"),
    Rule("comp_ratio", "dynamics_db", 9.0, 17.0, 1.5, 8.0, "log", 0.05,
         why="wider level spread -> higher ratio"),
    Rule("comp_attack_ms", "crest_db", 4.6, 8.7, 20.0, 1.0, "log", 0.1,
         why="peakier take (higher crest factor) -> faster attack"),
    Rule("comp_release_ms", "pause_fraction", 0.15, 0.42, 40.0, 250.0, "log", 0.1,
         why="sparser phrasing -> slower release"),
    Rule("reverb_decay_s", "pause_fraction", 0.15, 0.42, 0.5, 2.8, "log", 0.05,
         why="more pauses -> a longer reverb to fill them"),
    Rule("reverb_wet_db", "pause_fraction", 0.15, 0.42, -28.0, -10.0, noise=1.0,
         why="more pauses -> more reverb"),
    Rule("reverb_predelay_ms", None, 0, 1, 20.0, 20.0, noise=3.0),
    Rule("reverb_tone", "presence_db", -20.0, -8.5, 0.8, 0.3, noise=0.03,
         why="brighter take -> darker reverb"),
)
FEATURES = {
    "low_db": "median over active frames of the 60-150 Hz energy relative to 0.5-2 kHz (dB)",
    "boom_db": "median over active frames of the 150-500 Hz energy relative to 0.5-2 kHz (dB)",
    "boom_hz": "power-weighted geometric-mean frequency of the mean spectrum of active frames in 150-600 Hz (Hz)",
    "presence_db": "median over active frames of the 2-6 kHz energy relative to 0.5-2 kHz (dB)",
    "air_db": "median over active frames of the 6-12 kHz (capped at 0.45 fs) energy relative to 0.5-2 kHz (dB)",
    "sibilance_db": "90th percentile over active frames of the 4-10 kHz energy, relative to the 95th "
                    "percentile of the frame energy (dB): how loud the hissy frames are",
    "dynamics_db": "90th minus 10th percentile of the 100 ms RMS level (dB, hop 50 ms) over windows within "
                   "25 dB of the 95th-percentile window level",
    "crest_db": "median over 20 ms blocks within 20 dB of the loud ones of the block's peak-to-RMS ratio (dB): "
                "how peaky the waveform is",
    "pause_fraction": "fraction of 100 ms windows (hop 50 ms) more than 40 dB below the 95th-percentile "
                      "window level",
}
FEATURE_NOTES = ("Frames: Hann, ~40 ms (a power of two), 50 % overlap; active frames: within 30 dB of the "
                 "95th-percentile frame energy. All features are level-independent, computed from the raw "
                 "file's samples by mst_single.demo.measure_take.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", type=Path,
                        help="output folder (raw/, mixed/, truth.json, manifest.json)")
    parser.add_argument("--style", choices=STYLES, default="house",
                        help="house: one house style, a little random variation (the original demo); "
                             "adaptive: every setting a documented function of the take's measured "
                             "properties (what approach2 must learn); per-song: every setting drawn "
                             "independently of the take (only the song's mix reveals it; approach1). "
                             "Default house")
    parser.add_argument("--songs", type=int, default=48, help="number of songs (default 48)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each raw vocal in s (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical files")
    parser.add_argument("--sample-rate", type=int, default=48000, help="Hz (default 48000)")
    parser.add_argument("--describe", action="store_true",
                        help="write nothing: print the spread of every console parameter in the existing OUT "
                             "and how well a random segment of each raw vocal predicts each adaptive rule's setting")
    parser.add_argument("--segment-seconds", type=float, default=2.0,
                        help="segment length for --describe (s, default 2)")
    parser.add_argument("--force", action="store_true",
                        help="OUT holds demo data made with other arguments: replace it, deleting the earlier "
                             "run's songs this one does not make. Files demo-data did not write (or that changed "
                             "since) are never overwritten or deleted")


def run(args) -> int:
    if args.describe:
        if not (Path(args.out) / "truth.json").is_file():
            raise MstError("no truth.json: not a demo data folder", Path(args.out) / "truth.json",
                           "build one first: mst-single demo-data OUT --style adaptive")
        print(describe(args.out, segment_seconds=args.segment_seconds, seed=args.seed))
        return 0
    out = make_demo_data(args.out, songs=args.songs, seconds=args.seconds, seed=args.seed,
                         sample_rate=args.sample_rate, style=args.style, force=args.force)
    print(f"wrote {args.songs} {args.style} songs to {out}/raw, {out}/mixed, {out}/truth.json and {out}/manifest.json")
    return 0


def make_demo_data(out, songs: int = 48, seconds: float = 15.0, seed: int = 0, sample_rate: int = 48000,
                   style: str = "house", force: bool = False) -> Path:
    """Write the demo data set to ``out`` and return ``out`` as a Path.

    Song ``i`` is ``song{i:03d}_{voice}``; voices cycle through :data:`mst_single.synth.VOICES`. Its
    raw vocal uses ``default_rng([seed, i, 0])``, its mix settings ``default_rng([seed, i, 1])`` and
    (adaptive, per-song) its varied voice and take ``default_rng([seed, i, 2])``, so song i is the
    same whatever ``songs`` is. ``house`` writes exactly what the original demo wrote.

    An existing ``out`` must hold nothing but an earlier run's output of these same arguments,
    unchanged (see :func:`check_out_folder`); ``force`` replaces another run's demo data.
    """
    import soundfile as sf

    from mst_single.progress import progress

    out = Path(out)
    if style not in STYLES:
        raise MstError(f"--style must be one of {', '.join(STYLES)} (got {style!r})", fix="pass --style adaptive")
    if songs < 1:
        raise MstError(f"--songs must be at least 1 (got {songs})", fix="pass --songs 48 or another positive number")
    if not seconds >= 2.0:
        raise MstError(f"--seconds must be at least 2 (got {seconds})", fix="pass --seconds 15")
    if sample_rate < 16000:
        raise MstError(f"--sample-rate must be at least 16000 Hz (got {sample_rate})", fix="pass --sample-rate 48000")
    if seed < 0:
        raise MstError(f"--seed must be >= 0 (got {seed})", fix="pass --seed 0")
    _pedalboard()  # fail before writing anything if the extra is missing

    names = list(VOICES)
    song_names = [f"song{i:03d}_{VOICES[names[i % len(names)]].name}" for i in range(songs)]
    written = [f"{d}/{n}.wav" for n in song_names for d in ("raw", "mixed")] + ["truth.json"]
    generator = dict(style=style, songs=songs, seconds=seconds, seed=seed, sample_rate=sample_rate)
    stale, left = check_out_folder(out, generator, written, force)
    for f in stale:
        (out / f).unlink()
    if stale:
        print(f"{out}: deleted {_files(stale)} of the earlier demo run that this one does not make", file=sys.stderr)
    # Recorded before any audio is written: a run cut off midway is still recognised as this
    # command's output, so rerunning the command (make demo) completes it instead of being refused.
    write_json(out / MANIFEST, {"algorithm": "sha256", "generator": generator, "files": dict.fromkeys(written)})
    truth_songs = {}
    for i in progress(range(songs), desc=f"{style} demo songs", unit="song"):
        voice = VOICES[names[i % len(names)]]
        name = song_names[i]
        if style != "house":
            truth_songs[name] = _console_style_song(out, name, i, voice, style, seconds, seed, sample_rate)
            continue
        raw_path = out / "raw" / f"{name}.wav"
        write_audio(raw_path, sing(seconds, sample_rate, voice, np.random.default_rng([seed, i, 0])),
                    sample_rate, subtype="PCM_24")
        raw, _ = sf.read(raw_path, dtype="float32")  # mix exactly what the raw file holds

        rng = np.random.default_rng([seed, i, 1])
        settings = draw_settings(rng)
        latency = int(round(rng.uniform(*LATENCY_MS) * 1e-3 * sample_rate))
        target = round(float(rng.uniform(*TARGET_LUFS)), 2)
        pre = _render(_pad_tail(raw, sample_rate), sample_rate, settings, post=False)
        gain, tried = target - _lufs(pre, sample_rate), []
        for _ in range(3):  # the limiter is not linear: correct the output gain (secant) from the result
            gain = settings["output_gain"]["gain_db"] = round(float(np.clip(gain, -24.0, 24.0)), 2)
            post = _render(pre, sample_rate, settings, post=True)
            mixed = np.concatenate([np.zeros((2, latency), np.float32), post], 1)
            mixed_lufs = _lufs(mixed, sample_rate)
            tried.append((gain, mixed_lufs))
            slope = 1.0
            if len(tried) > 1 and abs(tried[-1][1] - tried[-2][1]) > 1e-3:
                slope = float(np.clip((tried[-1][1] - tried[-2][1]) / (tried[-1][0] - tried[-2][0] + 1e-9), 0.2, 1.0))
            gain += (target - mixed_lufs) / slope
        write_audio(out / "mixed" / f"{name}.wav", mixed, sample_rate, subtype="PCM_24")

        actual = _actual_settings(settings)
        truth_songs[name] = {
            "voice": voice.name,
            "latency_samples": latency,
            "raw_lufs": round(_lufs(raw, sample_rate), 2),
            "mixed_lufs": round(mixed_lufs, 2),
            "target_lufs": target,
            "params": {p: actual[role][key] for (role, key), p in _PARAM_MAP.items()},
            "pedalboard": actual,
        }
    if style == "house":
        truth = {"sample_rate": int(sample_rate), "seed": int(seed), "seconds": float(seconds),
                 "house_style": house_style(), "songs": truth_songs}
    else:
        truth = {"style": style, "sample_rate": int(sample_rate), "seed": int(seed), "seconds": float(seconds),
                 "chain": console_chain(style), "songs": truth_songs}
    write_json(out / "truth.json", truth)
    write_json(out / MANIFEST, manifest(out, written, **generator))
    if left:
        print(f"warning: {out}: left {_files(left)} that demo-data did not write (or that changed since) in "
              f"place: {_some(left)}; they are not part of the demo data", file=sys.stderr)
    return out


MANIFEST = "manifest.json"
# demo-data's arguments as they are spelled on the command line (what a refusal names)
_FLAGS = {"style": "--style", "songs": "--songs", "seconds": "--seconds", "seed": "--seed",
          "sample_rate": "--sample-rate"}


def _files(paths: list) -> str:
    return f"{len(paths)} file" + "s" * (len(paths) != 1)


def _some(paths: list[str], n: int = 5) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _present(out: Path) -> list[str]:
    """Every non-hidden file under ``out`` (relative POSIX paths), and every symlink to a folder as
    ``NAME/`` (not followed: whatever it points to is not ours to write into)."""
    found = []
    for folder, dirs, files in os.walk(out):
        rel = Path(folder).relative_to(out)
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d)) and not d.startswith(".")]
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in links]
        found += [(rel / f).as_posix() for f in files if not f.startswith(".")]
        found += [(rel / d).as_posix() + "/" for d in links]
    return sorted(found)


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:  # a dangling symlink or an unreadable file: not what demo-data wrote
        return None
    return h.hexdigest()


def _earlier_run(out: Path) -> tuple[dict | None, dict]:
    """(arguments, {file: sha256, or None while that run had not finished it}) of the demo-data run
    whose manifest.json is in ``out``; (None, {}) without a readable demo-data manifest."""
    try:
        m = json.loads((out / MANIFEST).read_text())
        generator, files = m["generator"], m["files"]
        if not (isinstance(generator, dict) and isinstance(files, dict)
                and all(isinstance(v, (str, type(None))) for v in files.values())):
            return None, {}
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}
    return generator, {**files, MANIFEST: None}


def check_out_folder(out, generator: dict, written: list[str], force: bool = False) -> tuple[list[str], list[str]]:
    """Whether demo-data with arguments ``generator`` may write ``written`` (and manifest.json) into
    ``out``: (stale files to delete, files to leave in place), or MstError naming ``out``.

    Without ``force``, ``out`` must be missing, empty, or hold only files that an earlier run with
    the same arguments wrote (its manifest.json's sha256, or the file listed but not yet hashed by
    a run cut off midway). With ``force``, the demo files of an earlier run with other arguments
    are replaced and those this run does not make deleted, so raw/, mixed/ and truth.json agree
    again; any other file is left in place. Never, even with ``force``, is a file overwritten or
    deleted that demo-data did not write or that changed since (the user's own recordings may carry
    a demo song's name). Hidden files are ignored: demo-data never writes one, and the data layer
    skips them.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MstError("the output folder exists as a file", out, "pass a folder path (missing or empty) as OUT")
    present = _present(out) if out.is_dir() else []
    if not present:
        return [], []
    ours = set(written) | {MANIFEST}
    earlier, record = _earlier_run(out)
    mine, foreign = [], []  # files an earlier demo-data run wrote, unchanged since; all others
    for f in present:
        unchanged = f in record and not f.endswith("/") and record[f] in (None, _sha256(out / f))
        (mine if unchanged else foreign).append(f)
    blocked = [f for f in foreign if f in ours or any(w.startswith(f.rstrip("/") + "/") for w in ours)]
    if blocked:
        raise MstError(f"holds {_files(blocked)} that demo-data would overwrite but did not write, or that "
                       f"changed since it wrote them: {_some(blocked)}", out,
                       "pass another folder as OUT, or move those files out of it (demo-data never overwrites "
                       "them, not even with --force)")
    same = earlier is not None and set(earlier) == set(generator) and all(earlier[k] == generator[k] for k in generator)
    if not force and (foreign or not same):
        if foreign:
            problem = f"holds {_files(foreign)} that demo-data did not write: {_some(foreign)}"
        elif set(earlier) != set(generator):
            problem = f"holds demo data whose {MANIFEST} does not record the arguments it was made with"
        else:
            diff = [f"{_FLAGS[k]} {earlier[k]}" for k in generator if earlier[k] != generator[k]]
            now = [f"{_FLAGS[k]} {generator[k]}" for k in generator if earlier[k] != generator[k]]
            problem = f"holds demo data made with {' '.join(diff)}, not {' '.join(now)}"
        raise MstError(problem, out, "pass another folder as OUT, or --force to replace the demo data there "
                                     "(files demo-data did not write are left untouched)")
    stale = [f for f in mine if f not in ours and record[f] is not None]
    left = [f for f in present if f not in ours and f not in stale]
    return stale, left


def _console_style_song(out: Path, name: str, i: int, voice, style: str, seconds: float, seed: int,
                        sample_rate: int) -> dict:
    """Write song i of the adaptive or per-song style; return its truth.json entry."""
    import soundfile as sf

    from mst_single.loudness import integrated_loudness

    sr = int(sample_rate)
    varied, take = random_take(np.random.default_rng([seed, i, 2]), voice)
    raw_path = out / "raw" / f"{name}.wav"
    write_audio(raw_path, sing(seconds, sr, varied, np.random.default_rng([seed, i, 0]), take), sr, subtype="PCM_24")
    raw, _ = sf.read(raw_path, dtype="float32")  # mix exactly what the raw file holds

    rng = np.random.default_rng([seed, i, 1])
    latency = int(round(rng.uniform(*LATENCY_MS) * 1e-3 * sr))
    raw_lufs = integrated_loudness(raw, sr)
    norm_db = round(INPUT_LUFS - raw_lufs, 3)
    features = measure_take(raw, sr)
    params = adaptive_params(features, rng, sr) if style == "adaptive" else per_song_params(rng, sr)
    settings = _actual_settings(console_chain_settings(params, norm_db))
    pre = np.concatenate([np.zeros((2, latency), np.float32), _render(_pad_tail(raw, sr), sr, settings, post=False)], 1)
    # After the loudness measurement: one linear gain and the peak ceiling (idle almost always). Only
    # the -70 LUFS absolute gate (quiet blocks let in once louder) and the ceiling's rare dips make a
    # second correction necessary.
    target = FIXED_TARGET_LUFS
    gain = target - integrated_loudness(pre, sr)
    for _ in range(4):
        settings["output_gain"]["gain_db"] = round(float(gain), 3)
        settings = _actual_settings(settings)
        mixed = _render(pre, sr, settings, post=True)
        mixed_lufs = integrated_loudness(mixed, sr)
        if abs(mixed_lufs - target) < 0.005:
            break
        gain += target - mixed_lufs
    write_audio(out / "mixed" / f"{name}.wav", mixed, sr, subtype="PCM_24")

    truth_params = {p: settings[role][key] for p, (role, key) in _CONSOLE_PARAM_MAP.items()}
    for p in ("gain_db", "comp_attack_ms", "comp_release_ms"):  # not the plugin's own values (see chain caveats)
        truth_params[p] = params[p]
    truth_params.update(_CONSOLE_FIXED)
    return {
        "voice": voice.name,
        "voice_params": dataclasses.asdict(varied),
        "take": dataclasses.asdict(take),
        "latency_samples": latency,
        "raw_lufs": round(raw_lufs, 3),
        "normalisation_gain_db": norm_db,
        "mixed_lufs": round(mixed_lufs, 3),
        "target_lufs": target,
        # how far the loudest sample would have passed the ceiling (dB; 0: the ceiling stayed idle)
        "ceiling_reduction_db": round(max(0.0, float(20 * np.log10(np.abs(pre).max() + 1e-12))
                                          + settings["output_gain"]["gain_db"] - PEAK_CEILING_DBFS), 2),
        "peak_dbfs": round(float(20 * np.log10(np.abs(mixed).max() + 1e-12)), 2),
        "features": {k: round(v, 4) for k, v in features.items()},
        "params": truth_params,
        "pedalboard": settings,
    }


def console_chain(style: str) -> dict:
    """The JSON description of the adaptive / per-song chain, and its rules or ranges."""
    out = {
        "engine": "pedalboard (Spotify, GPL-3.0) built-in plugins; the reverb send is the console's reverb "
                  "impulse response; the peak ceiling is ours",
        "chain": [{"role": role, "plugin": plugin} for role, plugin in CONSOLE_CHAIN],
        "input_lufs": INPUT_LUFS,
        "input": "the raw vocal is normalised to input_lufs first (BS.1770 integrated, whole file); params "
                 "gain_db is the gain after that, the input_gain plugin applies both",
        "target_lufs": FIXED_TARGET_LUFS,
        "output_gain": "set per song so that the mixed file reaches target_lufs; then a peak ceiling at "
                       "peak_ceiling_dbfs (see caveats) keeps the rare transient that would pass it from clipping",
        "peak_ceiling_dbfs": PEAK_CEILING_DBFS,
        "latency_ms": list(LATENCY_MS),
        "latency": "leading zero samples in the mixed file (mixed is late by latency_samples)",
        "tail_seconds": TAIL_SECONDS,
        "stereo": "the mono raw is duplicated to 2 channels; the reverb send (decorrelated L/R noise) makes the image",
        "params": "console parameter names with a direct counterpart, in the console's units; comp_knee_db "
                  "and comp_makeup_db are fixed by the chain (hard knee, no make-up stage)",
        "caveats": CONSOLE_CHAIN_CAVEATS,
        "format": "raw mono and mixed stereo WAV, PCM_24; the mix is rendered from the raw file's samples",
        "take": "each raw vocal is a varied voice and take (mst_single.synth.random_take): dynamics, phrase "
                "density, spectral tilt, chest resonance, consonant level; truth.json songs[NAME]['take']",
        "features": FEATURES,
        "features_note": FEATURE_NOTES,
    }
    if style == "adaptive":
        out["rules"] = [r.describe() for r in ADAPTIVE_RULES]
        out["rules_note"] = ("each setting is a function of one feature measured on the raw file (features in "
                             "songs[NAME]['features']) plus the stated noise, drawn in this order from "
                             "default_rng([seed, i, 1]) after the latency")
    else:
        out["ranges"] = {k: {"low": lo, "high": hi, "scale": sc} for k, (lo, hi, sc) in PER_SONG_RANGES.items()}
        out["ranges_note"] = ("each setting drawn uniformly (scale log: log-uniformly) from its range, in this "
                              "order, from default_rng([seed, i, 1]) after the latency: independent of the take "
                              "(songs[NAME]['features'] are measured for reference only)")
    return out


FINGERPRINT_PROBES = 32
FINGERPRINT_TOL = {"rms_db": 0.01, "probes": 1e-4}  # ~100x what a different CPU changes
FINGERPRINT_FLOOR_DB = -70.0  # quieter seconds (reverb tails) are a few LSBs: last bits move them


def audio_fingerprint(path) -> dict:
    """What a WAV sounds like, coarsely: frames, channels, the RMS (dB, floored at
    FINGERPRINT_FLOOR_DB) of each second over all channels and the first channel's value at
    FINGERPRINT_PROBES evenly spaced samples. A change of the generator moves these far beyond
    FINGERPRINT_TOL; last-bit float noise does not."""
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    seconds = [x[i:i + sr] for i in range(0, len(x), sr)]
    return {"frames": len(x), "channels": x.shape[1],
            "rms_db": [round(max(10 * float(np.log10(np.mean(s ** 2) + 1e-20)), FINGERPRINT_FLOOR_DB), 4)
                       for s in seconds],
            "probes": [round(float(v), 6) for v in x[np.linspace(0, len(x) - 1, FINGERPRINT_PROBES).astype(int), 0]]}


def same_audio(a: dict, b: dict) -> bool:
    """Two `audio_fingerprint`s agree within FINGERPRINT_TOL (same length and channels)."""
    if (a["frames"], a["channels"], len(a["rms_db"])) != (b["frames"], b["channels"], len(b["rms_db"])):
        return False
    return all(abs(u - v) <= tol for key, tol in FINGERPRINT_TOL.items() for u, v in zip(a[key], b[key]))


def manifest(root, files, **generator) -> dict:
    """sha256 of ``files`` (paths relative to ``root``), the `audio_fingerprint` of each WAV, plus
    what made them: the arguments, the versions of the libraries that decide the bytes (numpy,
    scipy, pedalboard, soundfile, torch) and the CPU (machine and numpy's SIMD features)."""
    import importlib.metadata as md
    import platform

    versions = {}
    for pkg in ("numpy", "scipy", "pedalboard", "soundfile", "torch", "pyloudnorm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    root = Path(root)
    try:  # numpy's private table of the CPU features its kernels dispatch on
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        features = {}
    simd = sorted(k for k, on in features.items() if on)
    return {"algorithm": "sha256", "generator": generator, "versions": versions,
            "platform": {"machine": platform.machine(), "numpy_simd": " ".join(simd)},
            "files": {f: _sha256(root / f) for f in sorted(files)},
            "fingerprints": {f: audio_fingerprint(root / f) for f in sorted(files) if f.endswith(".wav")}}


def house_style() -> dict:
    """The JSON description of the house style: chain, per-song ranges, loudness, latency, caveats."""
    return {
        "engine": "pedalboard (Spotify, GPL-3.0), built-in plugins",
        "chain": [{"role": role, "plugin": plugin,
                   "ranges": {k: [round(c - s, 4), round(c + s, 4)] for k, (c, s) in spec.items()}}
                  for role, (plugin, spec) in HOUSE_STYLE.items()],
        "target_lufs": list(TARGET_LUFS),
        "output_gain": "set per song (before the limiter) so that the mixed file reaches target_lufs",
        "latency_ms": list(LATENCY_MS),
        "latency": "leading zero samples in the mixed file (mixed is late by latency_samples)",
        "tail_seconds": TAIL_SECONDS,
        "stereo": "the mono raw is duplicated to 2 channels before the chain; the reverb makes the stereo image",
        "params": "console parameter names with a direct pedalboard counterpart, in the console's units",
        "no_counterpart": NO_COUNTERPART,
        "format": "raw mono and mixed stereo WAV, PCM_24; the mix is rendered from the raw file's samples",
    }


def draw_settings(rng: np.random.Generator) -> dict:
    """One song's pedalboard settings {role: {"plugin": name, setting: value}} in chain order."""
    out = {}
    for role, (plugin, spec) in HOUSE_STYLE.items():
        out[role] = {"plugin": plugin}
        for k, (c, s) in spec.items():
            v = c + s * rng.uniform(-1.0, 1.0) if s else c
            out[role][k] = round(float(v), 1 if k == "cutoff_frequency_hz" else 3)
    return out


def measure_take(raw: np.ndarray, sample_rate: int) -> dict:
    """The take's measurable properties that the adaptive rules read (see :data:`FEATURES`).

    Args:
        raw: (samples,) mono, any level (every feature is a level ratio or a fraction).
        sample_rate: Hz.

    Returns:
        {feature: float}. Works on a whole song or on a 1.5-4 s segment of it.
    """
    x = np.asarray(raw, np.float64).reshape(-1)
    sr = int(sample_rate)
    n_fft = 2 ** int(round(np.log2(0.04 * sr)))
    hop = n_fft // 2
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    fr = sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    P = np.abs(np.fft.rfft(fr, axis=1)) ** 2  # (frames, bins)
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    e_db = 10 * np.log10(P.sum(1) + 1e-20)
    active = e_db > np.percentile(e_db, 95) - 30.0
    Pa = P[active]
    top = _MAX_FREQ_FRACTION * sr

    def band_db(lo, hi):  # (active frames,) energy in [lo, hi) Hz, dB
        m = (f >= lo) & (f < min(hi, top))
        return 10 * np.log10(Pa[:, m].sum(1) + 1e-20)

    mid = band_db(500, 2000)
    ltas = Pa.mean(0)
    low_mid = (f >= 150) & (f < 600)
    boom_hz = float(np.exp(np.sum(ltas[low_mid] * np.log(f[low_mid])) / (ltas[low_mid].sum() + 1e-20)))

    # 100 ms windows, hop 50 ms: pauses, level spread; 20 ms blocks: waveform crest
    w = max(1, int(0.1 * sr))
    pw = sliding_window_view(x * x, w)[:: w // 2].mean(1) if x.size >= w else np.array([np.mean(x * x)])
    lv = 10 * np.log10(pw + 1e-20)
    ref = np.percentile(lv, 95)
    voiced = lv > ref - 25.0  # the singing itself
    b = max(1, int(0.02 * sr))
    blocks = x[: x.size // b * b].reshape(-1, b)
    rms = np.sqrt(np.mean(blocks ** 2, 1)) + 1e-12
    blk_db = 20 * np.log10(rms)
    loud = blk_db > np.percentile(blk_db, 95) - 20.0
    return {
        "low_db": float(np.median(band_db(60, 150) - mid)),
        "boom_db": float(np.median(band_db(150, 500) - mid)),
        "boom_hz": boom_hz,
        "presence_db": float(np.median(band_db(2000, 6000) - mid)),
        "air_db": float(np.median(band_db(6000, 12000) - mid)),
        "sibilance_db": float(np.percentile(band_db(4000, 10000), 90) - np.percentile(e_db, 95)),
        "dynamics_db": float(np.percentile(lv[voiced], 90) - np.percentile(lv[voiced], 10)),
        "crest_db": float(np.median(20 * np.log10(np.abs(blocks[loud]).max(1) / rms[loud]))),
        "pause_fraction": float(np.mean(lv < ref - 40.0)),
    }


def adaptive_params(features: dict, rng: np.random.Generator, sample_rate: int) -> dict:
    """The adaptive producer's console settings {console name: value in units} for measured features."""
    return _limit({r.param: r.apply(features, rng) for r in ADAPTIVE_RULES}, sample_rate)


def per_song_params(rng: np.random.Generator, sample_rate: int) -> dict:
    """One song's settings drawn from :data:`PER_SONG_RANGES`, independent of the take."""
    out = {}
    for name, (lo, hi, scale) in PER_SONG_RANGES.items():
        u = float(rng.uniform())
        out[name] = float(np.exp(np.log(lo) + u * np.log(hi / lo))) if scale == "log" else lo + u * (hi - lo)
    return _limit(out, sample_rate)


def _limit(params: dict, sample_rate: int) -> dict:
    """Round to what a producer would type and keep the values where both engines accept them."""
    out = {}
    for k, v in params.items():
        if k.endswith("_hz"):
            v = round(min(v, _MAX_FREQ_FRACTION * sample_rate), 1)
        elif k == "comp_ratio":
            v = round(max(v, 1.0), 3)
        elif k in ("comp_attack_ms", "comp_release_ms", "reverb_decay_s"):
            v = round(max(v, 0.1), 3)
        elif k == "reverb_predelay_ms":
            v = round(min(max(v, 0.0), 100.0), 2)
        elif k == "reverb_tone":
            v = round(min(max(v, 0.0), 1.0), 3)
        else:
            v = round(v, 3)
        out[k] = float(v)
    return out


def console_chain_settings(params: dict, normalisation_gain_db: float) -> dict:
    """Pedalboard settings {role: {"plugin": name, setting: value}} of the console-like chain for
    console parameters in units (output gain 0 until it is set for the loudness target)."""
    settings = {role: {"plugin": plugin} for role, plugin in CONSOLE_CHAIN}
    for name, (role, key) in _CONSOLE_PARAM_MAP.items():
        if name in params:
            settings[role][key] = params[name]
    settings["input_gain"]["gain_db"] = round(normalisation_gain_db + params["gain_db"], 3)
    for key in ("attack_ms", "release_ms"):
        settings["compressor"][key] = round(params[f"comp_{key}"] * JUCE_TIME_FACTOR, 3)
    settings["output_gain"]["gain_db"] = 0.0
    settings["reverb"]["seed"] = REVERB_SEED
    settings["peak_ceiling"].update(ceiling_db=PEAK_CEILING_DBFS, lookahead_ms=PEAK_LOOKAHEAD_MS)
    return settings


def render_mixed(raw: np.ndarray, sample_rate: int, settings: dict, latency_samples: int = 0) -> np.ndarray:
    """Mix a raw vocal with pedalboard exactly as the demo data does.

    Args:
        raw: (samples,) mono float32.
        settings: a song's ``"pedalboard"`` entry of truth.json (or :func:`draw_settings` output
            with the output gain set).
        latency_samples: leading zero samples.

    Returns:
        (2, latency_samples + samples + tail) float32.
    """
    pre = _render(_pad_tail(np.asarray(raw, np.float32), sample_rate), sample_rate, settings, post=False)
    mixed = _render(pre, sample_rate, settings, post=True)
    return np.concatenate([np.zeros((2, int(latency_samples)), np.float32), mixed], axis=1)


def _pad_tail(raw, sample_rate):
    x = np.concatenate([raw.astype(np.float32), np.zeros(int(TAIL_SECONDS * sample_rate), np.float32)])
    return np.stack([x, x])


def _render(x, sample_rate, settings, post):
    """Run the pre (post=False) or post (post=True) part of the chain on (2, samples) float32."""
    pb = _pedalboard()
    x = np.ascontiguousarray(x, np.float32)
    plugins = []
    for role, s in settings.items():
        if (role in _POST) != post:
            continue
        if s["plugin"] in ("ConsoleReverb", "PeakCeiling"):  # ours: run what came before, then this stage
            if plugins:
                x = pb.Pedalboard(plugins)(x, float(sample_rate), reset=True)
            stage = _reverb_send if s["plugin"] == "ConsoleReverb" else _peak_ceiling
            x, plugins = stage(x, sample_rate, s), []
            continue
        kw = {k: v for k, v in s.items() if k != "plugin"}
        if "freeze_mode" in kw:
            kw["freeze_mode"] = float(kw["freeze_mode"])
        plugins.append(getattr(pb, s["plugin"])(**kw))
    if not plugins:
        return x
    return pb.Pedalboard(plugins)(x, float(sample_rate), reset=True)


def _reverb_send(x, sample_rate, s):
    """(2, samples) float32 -> dry + each channel convolved with the console's reverb IR for ``s``."""
    import torch
    from scipy import signal

    from mst_single.console import REVERB_IR_SECONDS
    from mst_single.functional import reverb_ir

    ir = reverb_ir(int(sample_rate), s["decay_s"], s["predelay_ms"], s["tone"], s["wet_db"], REVERB_IR_SECONDS,
                   int(s["seed"]), dtype=torch.float64)[0].numpy()
    wet = np.stack([signal.fftconvolve(x[c].astype(np.float64), ir[c])[:x.shape[1]] for c in range(2)])
    return (x + wet).astype(np.float32)


def _ceiling_gain(x, sample_rate, ceiling_db, lookahead_ms):
    """(samples,) gain <= 1 that keeps (channels, samples) x at or below ceiling_db: the sample-wise
    need min(1, ceiling / |x|), its minimum over +-lookahead, smoothed by a Hann of the same span (an
    average of minima over windows that all contain the sample, so never above the need)."""
    from scipy.ndimage import minimum_filter1d

    c = 10 ** (ceiling_db / 20)
    need = np.minimum(1.0, c / np.maximum(np.abs(x).max(0).astype(np.float64), 1e-12))
    if need.min() >= 1.0:
        return np.ones(x.shape[-1])
    w = max(1, int(round(lookahead_ms * 1e-3 * sample_rate)))
    g = minimum_filter1d(need, 2 * w + 1, mode="nearest")
    h = np.hanning(2 * w + 3)[1:-1]
    g = np.convolve(np.pad(g, w, mode="edge"), h / h.sum(), mode="valid")
    g = np.minimum(g, need)  # rounding of the average must not overshoot the need
    g[g > 1.0 - 1e-9] = 1.0  # exactly idle where nothing is near the ceiling
    return g


def _peak_ceiling(x, sample_rate, s):
    g = _ceiling_gain(x, sample_rate, s["ceiling_db"], s["lookahead_ms"])
    return x if (g == 1.0).all() else (x * g).astype(np.float32)


def _actual_settings(settings):
    """Read every setting back from the constructed plugins (pedalboard stores float32)."""
    pb = _pedalboard()
    out = copy.deepcopy(settings)
    for role, s in out.items():
        if s["plugin"] in ("ConsoleReverb", "PeakCeiling"):
            continue
        kw = {k: v for k, v in s.items() if k != "plugin"}
        plugin = getattr(pb, s["plugin"])(**kw)
        for k in kw:  # 6 significant digits: the float32 value without its binary noise
            s[k] = float(f"{float(getattr(plugin, k)):.6g}")
    return out


def _lufs(x, sample_rate):
    """Integrated loudness (LUFS, BS.1770 via pyloudnorm) of (channels, samples) or (samples,); silent -> -70."""
    import pyloudnorm

    x = np.asarray(x, np.float64)
    data = x.T if x.ndim == 2 else x
    value = pyloudnorm.Meter(int(sample_rate)).integrated_loudness(data)
    return float(max(value, -70.0)) if np.isfinite(value) else -70.0


def _pedalboard():
    try:
        import pedalboard
    except ImportError as e:
        raise MstError("the demo data needs pedalboard (the optional [demo] extra), which is not installed",
                       fix="pip install -e .[demo]") from e
    return pedalboard


def describe(root, segment_seconds: float = 2.0, seed: int = 0) -> str:
    """A markdown report on demo data in ``root``: each console parameter's spread across songs
    (min / median / max) and, per adaptive rule, how well a random ``segment_seconds`` segment of
    the raw vocal predicts the song's setting (Pearson r between the feature measured on the
    segment and the setting; the same for the whole song). Segments from ``default_rng(seed)``."""
    import soundfile as sf

    root = Path(root)
    truth = json.loads((root / "truth.json").read_text())
    songs = truth["songs"]
    names = list(songs)
    params = {k: np.array([songs[n]["params"][k] for n in names]) for k in songs[names[0]]["params"]}
    lines = [f"{root}: {len(names)} songs, style {truth.get('style', 'house')}", "",
             "| parameter | min | median | max |", "|---|---|---|---|"]
    fmt = lambda v: f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"  # noqa: E731
    lines += [f"| `{k}` | {fmt(v.min())} | {fmt(np.median(v))} | {fmt(v.max())} |" for k, v in params.items()]
    rules = [r for r in ADAPTIVE_RULES if r.feature is not None]
    if "features" not in songs[names[0]]:
        return "\n".join(lines)
    rng = np.random.default_rng(seed)
    seg = {}
    for n in names:
        x, sr = sf.read(root / "raw" / f"{n}.wav", dtype="float32")
        m = int(segment_seconds * sr)
        a = int(rng.integers(0, max(1, x.size - m)))
        seg[n] = measure_take(x[a:a + m], sr)
    lines += ["", f"| rule | r(feature on a {segment_seconds:g} s segment, setting) | r(whole-song feature, setting) |",
              "|---|---|---|"]
    for r in rules:
        y = params[r.param]
        y = np.log(y) if r.scale == "log" else y
        whole = np.array([songs[n]["features"][r.feature] for n in names])
        part = np.array([seg[n][r.feature] for n in names])
        lines.append(f"| `{r.param}` <- `{r.feature}` | {np.corrcoef(part, y)[0, 1]:+.2f} | "
                     f"{np.corrcoef(whole, y)[0, 1]:+.2f} |")
    return "\n".join(lines)
