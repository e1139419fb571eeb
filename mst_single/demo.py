"""`mst-single demo-data OUT`: the embedded demo data set, raw/mixed vocal pairs with known truth.

Raw vocals come from our singing synthesiser (:mod:`mst_single.synth`). Mixed vocals are rendered by
an engine we did not write, pedalboard (GPL-3.0, the optional ``[demo]`` extra; imported only inside
:func:`render_mixed`, never by the core package), with one house style: input gain -> high-pass ->
low shelf -> four peak filters -> high shelf -> compressor -> make-up gain -> reverb -> output gain
-> limiter. Each song varies the settings a little (seeded) and gets a plugin-like latency: leading
samples in the mixed file, which the data layer's aligner has to find.

Layout written::

    OUT/raw/NAME.wav     mono, 24-bit PCM
    OUT/mixed/NAME.wav   stereo, 24-bit PCM, latency + raw length + reverb tail
    OUT/truth.json       every song's voice, latency, console parameters and pedalboard settings

Both are 24-bit PCM (what a producer delivers; it also exercises the loader's integer path) and the
mix is rendered from the raw file's own samples as read back, so the pair is exactly consistent.
The same seed gives byte-identical files; song i is the same whatever ``songs`` is.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

from mst_single.errors import MstError
from mst_single.fileio import write_audio, write_json
from mst_single.synth import VOICES, sing

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
_POST = ("output_gain", "limiter", "ceiling")

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", type=Path, help="output folder (raw/, mixed/, truth.json)")
    parser.add_argument("--songs", type=int, default=24, help="number of songs (default 24)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each raw vocal in s (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical files")
    parser.add_argument("--sample-rate", type=int, default=48000, help="Hz (default 48000)")


def run(args) -> int:
    out = make_demo_data(args.out, songs=args.songs, seconds=args.seconds, seed=args.seed,
                         sample_rate=args.sample_rate)
    print(f"wrote {args.songs} songs to {out}/raw, {out}/mixed and {out}/truth.json")
    return 0


def make_demo_data(out, songs: int = 24, seconds: float = 20.0, seed: int = 0, sample_rate: int = 48000) -> Path:
    """Write the demo data set to ``out`` and return ``out`` as a Path.

    Song ``i`` is ``song{i:03d}_{voice}``; voices cycle through :data:`mst_single.synth.VOICES`. Its
    raw vocal uses ``default_rng([seed, i, 0])`` and its mix settings ``default_rng([seed, i, 1])``.
    """
    import soundfile as sf
    from tqdm import tqdm

    out = Path(out)
    if songs < 1:
        raise MstError(f"--songs must be at least 1 (got {songs})", fix="pass --songs 24 or another positive number")
    if not seconds >= 2.0:
        raise MstError(f"--seconds must be at least 2 (got {seconds})", fix="pass --seconds 20")
    if sample_rate < 16000:
        raise MstError(f"--sample-rate must be at least 16000 Hz (got {sample_rate})", fix="pass --sample-rate 48000")
    if seed < 0:
        raise MstError(f"--seed must be >= 0 (got {seed})", fix="pass --seed 0")
    _pedalboard()  # fail before writing anything if the extra is missing

    names = list(VOICES)
    truth_songs = {}
    for i in tqdm(range(songs), desc="demo songs", unit="song"):
        voice = VOICES[names[i % len(names)]]
        name = f"song{i:03d}_{voice.name}"
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
    write_json(out / "truth.json", {
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "seconds": float(seconds),
        "house_style": house_style(),
        "songs": truth_songs,
    })
    return out


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
    plugins = []
    for role, s in settings.items():
        if (role in _POST) != post:
            continue
        kw = {k: v for k, v in s.items() if k != "plugin"}
        if "freeze_mode" in kw:
            kw["freeze_mode"] = float(kw["freeze_mode"])
        plugins.append(getattr(pb, s["plugin"])(**kw))
    return pb.Pedalboard(plugins)(np.ascontiguousarray(x, np.float32), float(sample_rate), reset=True)


def _actual_settings(settings):
    """Read every setting back from the constructed plugins (pedalboard stores float32)."""
    pb = _pedalboard()
    out = copy.deepcopy(settings)
    for role, s in out.items():
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
