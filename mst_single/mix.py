"""`mst-single mix RAW -o OUT --ckpt CKPT [--reference REF]`: mix a raw vocal with a trained model.

1. The checkpoint is loaded on the CPU (Approach 1 needs `--reference`, Approach 2 refuses one).
2. First streaming pass over RAW (any rate, at least one 0.4 s loudness block long, mono or stereo
   -> mono mean downmix): integrated loudness (BS.1770, `loudness.StreamingLoudness`) and a 100 ms
   energy envelope.
3. Parameters: up to `max_segments` non-silent segments of `segment_seconds`, evenly spaced across
   the song, are read at the model's rate, scaled by the whole file's normalisation gain (as in
   training, where every segment of a song gets its song's gain), and the network
   predicts one setting per segment (Approach 1: each paired with a segment of the reference,
   chosen the same way). The settings are combined by the per-parameter **median in the
   normalised [0, 1] space**: robust to a few outlier segments (a breath, a shout), and in that
   space a log-scaled parameter (frequency, ratio, times) is averaged on its log scale.
4. Second streaming pass: RAW is normalised to the model's `target_lufs` (whole-file integrated
   loudness from step 2, same +-30 dB clamp as training) and run through the console **at the
   input's own sample rate**, block by block (`VocalConsole.streamer`). The parameters are
   physical units (dB, Hz, ms), so they mean the same at any rate; running at the input rate
   avoids resampling the whole file twice (quality, time, memory) and keeps the output sample-exact
   in length. Memory is bounded by the block size, not the file length.
5. OUT (WAV float32, or FLAC 24-bit for `.flac`; stereo, input rate, input length plus `tail_seconds`
   of silence run through the chain, where the compressor releases and the reverb rings out),
   `OUT.params.json` and `OUT.mixsheet.md` are written to temporary files and renamed into place
   together at the end: on any error none of them appears. An output peaking above 0 dBFS gets a
   warning (the FLAC clips those samples, the float WAV keeps them).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

import numpy as np

from mst_single import fileio
from mst_single.errors import DataError, MstError

ENVELOPE_SECONDS = 0.1  # energy envelope resolution for segment selection
SILENT_DBFS = -70.0  # a window below this RMS (dBFS) is silence whatever the song's level
SEGMENT_RANGE_DB = 30.0  # windows more than this below the loudest window are not used
DEFAULT_MAX_SEGMENTS = 8
MAX_TAIL_SECONDS = 30.0  # the reverb's impulse response is 2.5 s; beyond that a tail is only silence
DEFAULT_BLOCK = 1 << 19  # samples per streaming block (10.9 s at 48 kHz, ~20 MB of work buffers): long
# next to the 2.5 s reverb IR, so the overlap-add FFTs waste little (FFT length ~1.2x the block)
# For an unreadable RAW or --reference: audio_info's default fix is for a song of a data folder
# ("... or remove the song from raw/ and mixed/"), meaningless for the one file mix was given.
_INPUT_FIX = ("pass a WAV or FLAC file: re-export it from your audio editor, or convert it "
              "(e.g. `ffmpeg -i FILE FILE.wav`)")
_CKPT_FIX = "pass a .ckpt written by `mst-single fit` (runs/NAME/checkpoints/last.ckpt or best-*.ckpt)"
_MODEL_CACHE: dict = {}

# How `mix` tells whether a reference is a mix of the raw it refines on (``reference_alignment``): the
# GCC-PHAT peak over the next candidate, as check-data aligns pairs, at a rate and over a stretch that
# keep it to a fraction of a second. check-data's 1.5 only confirms a pair known to match; to tell a
# mix of this vocal from another song's, 5: on the 96 demo songs (both styles) each song's own mix
# scored 6.3-44, 480 raw/other-song pairs at most 4.1 (synthetic voices alike in timbre; real songs
# differ more). Refinement copies the reference's sound; from another vocal's mix that is the wrong
# target even when the producer's style is shared (experiments/e13-shared-style).
ALIGN_RATE = 16000
ALIGN_SECONDS = 60.0
SAME_VOCAL_SCORE = 5.0
REFINE_STARTS = ("network", "ridge")  # --refine-start, refine: {start}: the network's setting or the style ridge's
# --other-vocal, refine: {other_vocal}: what a reference that is not a mix of the raw gets (SAME_VOCAL_SCORE):
# the checkpoint's house preset (model.house_preset, e17) or the refinement anyway
OTHER_VOCAL = ("house", "refine")


# ----------------------------------------------------------------------------------------------
# checkpoint

def load_model(ckpt: str | os.PathLike):
    """A `VocalMST` from a checkpoint, on the CPU, in eval mode.

    Returns (model, checkpoint metadata dict). MstError naming the file when it is missing, a folder,
    unreadable/corrupt, or not a vocal-mst checkpoint.
    """
    import torch

    path = Path(ckpt)
    if not path.exists():
        raise MstError("checkpoint not found", path, _CKPT_FIX)
    if path.is_dir():
        raise MstError("the checkpoint path is a folder, not a .ckpt file", path, _CKPT_FIX)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip/EOF/RuntimeError: all mean "cannot read it"
        raise MstError(f"the checkpoint cannot be read; it is corrupt, truncated or not a PyTorch file "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})", path, _CKPT_FIX) from e
    hp = data.get("hyper_parameters") if isinstance(data, dict) else None
    if not isinstance(hp, dict) or hp.get("approach") not in ("approach1", "approach2") or "state_dict" not in data:
        raise MstError("not a vocal-mst checkpoint (no approach1/approach2 model settings in it)", path, _CKPT_FIX)
    import inspect

    from mst_single.system import VocalMST

    names = set(inspect.signature(VocalMST.__init__).parameters) - {"self"}
    try:
        model = VocalMST(**{k: v for k, v in hp.items() if k in names})
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise MstError(f"the checkpoint does not match this version's model ({str(e).splitlines()[0][:200]})",
                       path, "retrain with this version, or use the vocal-mst version that wrote it") from e
    model.eval()
    meta = {"path": str(path), "epoch": data.get("epoch"), "global_step": data.get("global_step"),
            "data": dict(data.get("datamodule_hyper_parameters") or {})}
    _MODEL_CACHE.clear()  # one model at a time: bounded memory
    _MODEL_CACHE[key] = (model, meta)
    return model, meta


def check_reference(model, ckpt, reference) -> None:
    """Approach 1 needs a reference, Approach 2 refuses one; MstError with the fix otherwise."""
    if model.approach == "approach1" and reference is None:
        raise MstError("this is an approach1 (reference-based) checkpoint: it needs a reference mix", ckpt,
                       "pass --reference REF.wav (a mixed vocal in the style you want), "
                       "or use an approach2 (house-style) checkpoint")
    if model.approach == "approach2" and reference is not None:
        raise MstError("this is an approach2 (house-style) checkpoint: it takes no reference mix", ckpt,
                       "drop --reference, or use an approach1 (reference-based) checkpoint")


def check_measurable(info, path, what: str) -> None:
    """DataError naming `path` when the file is shorter than one BS.1770 gating block: its integrated
    loudness cannot be measured (the meters read -70 LUFS, as for silence), and the mix would be
    normalised from that made-up value."""
    from mst_single.loudness import BLOCK_SECONDS

    if info.frames < BLOCK_SECONDS * info.sample_rate:
        raise DataError(f"the {what} is too short to measure its loudness: {info.frames / info.sample_rate:.3f} s "
                        f"({info.frames} samples at {info.sample_rate} Hz), and BS.1770 loudness needs at least "
                        f"{BLOCK_SECONDS:g} s (one gating block)", path,
                        f"pass a recording of at least {BLOCK_SECONDS:g} s")


def reference_alignment(raw_info, ref_info) -> dict:
    """Is the reference a mix of this raw vocal? {"lag_s": the reference's offset (s, positive = late),
    "score": GCC-PHAT peak over the next candidate (``audio.file_lag``), "same_vocal": score >= the
    ``SAME_VOCAL_SCORE``}; from at most the first ``ALIGN_SECONDS`` of singing, at ``ALIGN_RATE``."""
    from mst_single.audio import file_lag

    lag, score = file_lag(raw_info, ref_info, ALIGN_RATE, window_seconds=ALIGN_SECONDS)  # check-data's max lag
    score = float(score) if math.isfinite(score) else 1e6
    return {"lag_s": lag / ALIGN_RATE, "score": round(score, 3), "same_vocal": bool(score >= SAME_VOCAL_SCORE)}


# ----------------------------------------------------------------------------------------------
# streaming reads

def _blocks(path, info, block: int):
    """Yield (start, (channels, n) float32) blocks of a whole file, read-only; DataError for NaN/Inf."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path), "r") as f:
            start = 0
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                if len(x) == 0:
                    break
                x = x.T
                bad = ~np.isfinite(x)
                if bad.any():
                    first = start + int(np.argmax(bad.any(axis=0)))
                    raise DataError(f"contains NaN/Inf samples (first at {first / info.sample_rate:.3f} s)", path,
                                    "re-render or re-export the file; NaN/Inf usually come from a broken plugin")
                yield start, x
                start += x.shape[1]
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"the audio data cannot be decoded ({e})", path,
                        "re-export the file from your audio editor as WAV or FLAC") from e


def analyse(path, info, block: int = DEFAULT_BLOCK, bar=None, descriptors: bool = False) -> dict:
    """First pass over a file (mono downmix): integrated loudness (LUFS), a 100 ms RMS envelope (dBFS)
    and, with `descriptors`, the take descriptors of the whole file (`mst_single.descriptors`)."""
    from mst_single.descriptors import DescriptorMeter
    from mst_single.loudness import StreamingLoudness

    meter = StreamingLoudness(info.sample_rate, 1)
    dmeter = DescriptorMeter(info.sample_rate) if descriptors else None
    hop = max(1, int(round(ENVELOPE_SECONDS * info.sample_rate)))
    energies, carry, peak = [], np.zeros(0, np.float64), 0.0
    for _, x in _blocks(path, info, block):
        mono = x.mean(axis=0, keepdims=True)
        peak = max(peak, float(np.abs(x).max()))
        meter.update(mono)
        if dmeter is not None:
            dmeter.update(mono[0])
        sq = np.concatenate([carry, mono[0].astype(np.float64) ** 2])
        n = len(sq) // hop
        if n:
            energies.append(sq[: n * hop].reshape(n, hop).mean(1))
        carry = sq[n * hop:]
        if bar is not None:
            bar.update(x.shape[1] / info.sample_rate)
    if len(carry):
        energies.append(np.array([carry.mean()]))
    env = np.concatenate(energies) if energies else np.zeros(1)
    return {"lufs": meter.integrated(), "env_db": 10 * np.log10(np.maximum(env, 1e-14)), "hop": hop, "peak": peak,
            "descriptors": dmeter.result() if dmeter is not None and dmeter.samples else None}


def choose_segments(env_db: np.ndarray, hop: int, frames: int, seg_len: int, k: int, path) -> list[int]:
    """Up to `k` non-overlapping non-silent segment starts (samples), evenly spaced across the file.

    A window is usable when its RMS is above -70 dBFS and within 30 dB of the loudest window.
    Files shorter than one segment give one segment at 0 (zero-padded when read). DataError for
    an all-silent file.
    """
    if frames <= seg_len:
        if env_db.max() < SILENT_DBFS:
            raise DataError("the vocal is silent (no audio above -70 dBFS)", path, "check the file (muted export?)")
        return [0]
    w = max(1, int(round(seg_len / hop)))
    csum = np.concatenate([[0.0], np.cumsum(10 ** (env_db / 10))])
    last = max(0, min((frames - seg_len) // hop, len(env_db) - 1))
    starts = np.arange(last + 1)
    win_db = 10 * np.log10(np.maximum((csum[np.minimum(starts + w, len(env_db))] - csum[starts]) / w, 1e-14))
    ok = (win_db > SILENT_DBFS) & (win_db >= win_db.max() - SEGMENT_RANGE_DB)
    cands = starts[ok]
    if len(cands) == 0:
        raise DataError("the vocal is silent (no segment above -70 dBFS)", path, "check the file (muted export?)")
    lo, hi = int(cands[0]), int(cands[-1])
    # evenly spaced targets, as many as fit without overlap, each snapped to the nearest free candidate
    n = max(1, min(k, (hi - lo) // w + 1))
    targets = [lo + (hi - lo) * j / (n - 1) for j in range(n)] if n > 1 else [(lo + hi) / 2]
    chosen: list[int] = []
    for target in targets:
        free = cands[np.all(np.abs(cands[:, None] - np.array(chosen or [-10 ** 9])[None]) >= w, axis=1)]
        if len(free) == 0:
            break
        chosen.append(int(free[np.argmin(np.abs(free - target))]))
    return sorted(min(c * hop, frames - seg_len) for c in chosen)


def _read_segments(path, info, starts_native: list[int], seg_native: int, sample_rate: int, channels: int):
    """Segments (n, channels, seg) at the model's `sample_rate` from native start positions."""
    from mst_single.audio import read_segment

    seg = int(round(seg_native * sample_rate / info.sample_rate))
    out = [read_segment(path, int(round(s * sample_rate / info.sample_rate)), seg, sample_rate, channels, info)
           for s in starts_native]
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# readable outputs

def _signed(v: float, unit: str, digits: int = 1) -> str:
    s = f"{abs(v):.{digits}f}"
    sign = "+" if v > 0.05 else ("\u2212" if v < -0.05 else "")
    return f"{sign}{s} {unit}".strip() if sign else f"{s} {unit}".strip()


def _hz(v: float) -> str:
    return f"{v / 1000:.1f} kHz" if v >= 1000 else f"{v:.0f} Hz"


def _ms(v: float) -> str:
    return f"{v:.1f} ms" if v < 10 else f"{v:.0f} ms"


def mixsheet_lines(params: dict, stages: dict) -> list[str]:
    """One readable line per console stage, e.g. "Comp: −18.0 dB, 3.5:1, 8.0 ms / 120 ms, …"."""
    p = params
    lines = []
    lines.append("Input gain: " + (_signed(p["gain_db"], "dB") if stages.get("gain") else "off"))
    if stages.get("eq"):
        bands = []
        for band in ("low_shelf", "band1", "band2", "band3", "band4", "high_shelf"):
            g, f, q = (p[f"eq_{band}_{k}"] for k in ("gain_db", "freq_hz", "q"))
            text = f"{_signed(g, 'dB')} at {_hz(f)}"
            if band == "low_shelf":
                text = f"low shelf {text}"
            elif band == "high_shelf":
                text = f"high shelf {text}"
            else:
                text += f", Q {q:.1f}"
            bands.append(text)
        lines.append("EQ: " + "; ".join(bands))
    else:
        lines.append("EQ: off")
    if stages.get("compressor"):
        lines.append(f"Comp: {_signed(p['comp_threshold_db'], 'dB')}, {p['comp_ratio']:.1f}:1, "
                     f"{_ms(p['comp_attack_ms'])} / {_ms(p['comp_release_ms'])}, knee {p['comp_knee_db']:.0f} dB, "
                     f"makeup {_signed(p['comp_makeup_db'], 'dB')}")
    else:
        lines.append("Comp: off")
    if stages.get("reverb"):
        lines.append(f"Reverb: {p['reverb_decay_s']:.1f} s, predelay {p['reverb_predelay_ms']:.0f} ms, "
                     f"tone {p['reverb_tone']:.2f}, wet {_signed(p['reverb_wet_db'], 'dB')}")
    else:
        lines.append("Reverb: off")
    lines.append("Output gain: " + (_signed(p["output_gain_db"], "dB") if stages.get("output_gain") else "off"))
    return lines


def mixsheet(report: dict) -> str:
    r = report
    sr = r["sample_rate"]
    segs = r["segments"]
    head = [
        f"# Mix sheet: {Path(r['output']).name}",
        "",
        f"- Input: `{r['input']}` ({sr / 1000:g} kHz, {r['input_channels']} ch"
        f"{' downmixed to mono' if r['input_channels'] > 1 else ''}, {r['seconds']:.1f} s)",
        f"- Model: {r['approach']} "
        f"({'reference-based' if r['approach'] == 'approach1' else 'house style'}), `{r['checkpoint']}`",
    ]
    if r.get("reference"):
        head.append(f"- Reference: `{r['reference']}`")
    head += [
        f"- Loudness: input {r['input_lufs']:.1f} LUFS, normalised to {r['target_lufs']:.1f} LUFS "
        f"({_signed(r['normalization_gain_db'], 'dB')}) before the chain",
        ("- Settings: the checkpoint's house preset (`--other-vocal house`): the reference is not a mix of this "
         "vocal, so it was not refined on"
         if (r.get("refine") or {}).get("house_preset") else
         f"- Settings: median of {len(segs['raw'])} segment(s) of {segs['seconds']:g} s, per parameter in the "
         "normalised [0, 1] space (robust to outlier segments)"
         + (f", then refined on the reference's style for {r['refine']['steps']} steps (`--refine-steps`)"
           + (" from the checkpoint's style ridge (`--refine-start ridge`), not the network's setting,"
              if r["refine"].get("start") == "ridge" else "")
           + " and its output level set to the reference's loudness"
           if r.get("refine") else "")),
        f"- Output: stereo, {sr / 1000:g} kHz, peak {r['output_peak_dbfs']:.1f} dBFS"
        + (f", normalised to the house loudness {r['output_lufs']:.1f} LUFS by the output gain"
           if r.get("output_lufs") is not None else ""),
        "",
        "## Settings",
        "",
    ]
    body = [f"- {line}" for line in mixsheet_lines(r["params"], r["stages"])]
    d = r.get("take_descriptors")
    if d:  # what the model read of the whole take (model.take_descriptors)
        bands = ", ".join(f"{k[5:]} {v:.0f}" for k, v in d.items() if k.startswith("band_"))
        body += ["", "## What the model read of the take", "",
                 f"- Share of the energy per octave band (dB): {bands}",
                 f"- Spectral centroid {1000 * 2 ** d['centroid_oct']:.0f} Hz; level spread (p90 - p10 of the "
                 f"100 ms level) {d['level_spread_db']:.1f} dB; pauses {100 * d['pause_fraction']:.0f} % of the "
                 f"time; crest factor {d['crest_db']:.1f} dB"]
    return "\n".join(head + body) + "\n"


# ----------------------------------------------------------------------------------------------
# the mix

def _seconds(s: float) -> str:
    return f"{s:.1f}".removesuffix(".0")


class _Progress:
    """Progress in seconds of audio read (a bar on a terminal, lines otherwise), over every pass mix
    makes: `passes` over RAW (`seconds` long) plus, with `reference_seconds`, one over the reference.
    The total and the unit say so ("540/540 s audio read in 3 passes x 180 s"), and `stage` names the
    current pass, so a 180 s file is not taken for 540 s. Float rounding never overshoots the total."""

    def __init__(self, name: str, seconds: float, passes: int, reference_seconds: float | None, enabled: bool):
        from mst_single.progress import progress

        self.name, self.passes, self.done = name, passes, 0
        total = seconds * passes + (reference_seconds or 0.0)
        unit = f"s audio read in {passes} passes x {_seconds(seconds)} s" + (
            f" + reference {_seconds(reference_seconds)} s" if reference_seconds is not None else "")
        self.bar = progress(total=total, desc=f"mix {name}", enabled=enabled, unit=unit,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} " + unit + " [{elapsed}<{remaining}]")

    def stage(self, what: str, raw_pass: bool = True) -> None:
        """Start the next pass over RAW (`raw_pass`) or another read (the reference), named `what`."""
        if raw_pass:
            self.done += 1
            what = f"pass {self.done}/{self.passes} ({what})"
        self.bar.set_description(f"mix {self.name}, {what}")

    def update(self, seconds: float) -> None:
        self.bar.update(max(0.0, min(seconds, self.bar.total - self.bar.n)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


# What mix writes, by the output's extension (case-insensitive). soundfile would write anything under
# any name (a float WAV called .mp3), so other extensions are refused rather than guessed at.
OUTPUT_FORMATS = {".wav": ("WAV", "FLOAT", "float WAV"), ".flac": ("FLAC", "PCM_24", "24-bit FLAC")}


def side_paths(out_path: Path) -> tuple[Path, Path]:
    """OUT.params.json and OUT.mixsheet.md, written beside OUT."""
    return out_path.with_name(out_path.name + ".params.json"), out_path.with_name(out_path.name + ".mixsheet.md")


def check_output(out_path: Path) -> None:
    """MstError naming `out_path` when mix could not write it as asked: an extension it does not write,
    or a folder in the way of OUT or a side file. Cheap: run before the checkpoint and the audio are
    read, so a typo in -o costs nothing (otherwise it surfaced only at the rename, after the whole mix)."""
    suffix = out_path.suffix.lower()
    if out_path.is_dir():
        raise MstError("the output path is an existing folder; -o takes the output file's name", out_path,
                       f"name a file in it, e.g. -o {out_path / 'mix.wav'}")
    if suffix not in OUTPUT_FORMATS:
        what = f"the extension {out_path.suffix!r}" if out_path.suffix else "no extension"
        raise MstError(f"the output has {what}; mix writes only .wav (float32) and .flac (24-bit)", out_path,
                       f"use -o {out_path.with_suffix('.wav')} or -o {out_path.with_suffix('.flac')}")
    for side in side_paths(out_path):
        if side.is_dir():
            raise MstError(f"a folder is in the way of the output's {side.name[len(out_path.name):]} file", side,
                           "remove or rename that folder, or choose another -o path")


def mix_file(raw_path, out_path, ckpt, reference=None, segment_seconds: float | None = None,
             max_segments: int = DEFAULT_MAX_SEGMENTS, block_size: int = DEFAULT_BLOCK,
             progress: bool = False, command: list[str] | None = None, refine_steps: int = 0,
             refine_lr: float = 0.05, refine_crops: int = 4, refine_start: str = "network",
             other_vocal: str | None = None,
             tail_seconds: float = 0.0) -> dict:
    """Mix the raw vocal `raw_path` with checkpoint `ckpt`, write OUT, OUT.params.json, OUT.mixsheet.md.

    Args:
        raw_path: raw vocal, WAV/FLAC, any rate, at least 0.4 s, mono or stereo (mean downmix).
        out_path: output file (`.wav` float32, or `.flac` 24-bit); stereo at the input's rate.
        ckpt: checkpoint written by `mst-single fit`.
        reference: mixed reference vocal (Approach 1 only; required there, refused for Approach 2).
        segment_seconds: analysis segment length (s); default: the training segment length.
        max_segments: at most this many segments are analysed; their settings are combined by the
            median in the normalised [0, 1] space.
        block_size: samples per streaming block (memory is bounded by it, not by the file length).
        progress: show a progress bar (stderr).
        refine_steps: Approach 1: after the network, this many optimiser steps move the setting so that
            the chain's output on the raw segments has the reference's style statistics, then the
            output gain is set so that their loudness is the reference segments' (``style.refine_setting``;
            0: the network's setting as it is). refine_lr: Adam's step on the setting's logits;
            refine_crops: raw segments per step. refine_start: "network" (its setting) or "ridge" (the
            checkpoint's style ridge, ``model.style_ridge``; experiments/e09-refine, ridge-start).
        other_vocal: with refinement, a reference that does not align with the raw (not a mix of this
            vocal, ``reference_alignment``) gets "house": the checkpoint's house preset instead
            (``model.house_preset``; experiments/e17), or "refine": refined on anyway, with a warning.
            None: "house" when the checkpoint has one, else "refine".
        tail_seconds: seconds of silence appended to the raw and run through the chain, so that the
            reverb rings out past the raw's end (0: the output has the raw's length, sample for sample;
            the reverb's impulse response is 2.5 s long). Loudness matching reads the raw's length only.
    Returns:
        the content of OUT.params.json (parameters in units, approach, segments, loudness, ...).
    """
    raw_path, out_path = Path(raw_path), Path(out_path)
    check_output(out_path)
    json_path, md_path = side_paths(out_path)

    import torch

    from mst_single import provenance
    from mst_single.audio import audio_info
    from mst_single.console import VocalConsole
    from mst_single.descriptors import DESCRIPTOR_NAMES

    model, meta = load_model(ckpt)
    check_reference(model, ckpt, reference)
    if refine_steps and not model.needs_reference:
        raise MstError("--refine-steps needs a reference mix, and this is an approach2 checkpoint", ckpt,
                       "drop --refine-steps, or use an approach1 checkpoint with --reference")
    if refine_start not in REFINE_STARTS:
        raise MstError(f"--refine-start must be one of {', '.join(REFINE_STARTS)}, got {refine_start!r}",
                       fix="e.g. --refine-start ridge")
    if refine_start == "ridge" and not refine_steps:
        raise MstError("--refine-start ridge starts the refinement, and --refine-steps is 0 (no refinement)",
                       fix="add --refine-steps 60 (e09 ridge-start-60), or drop --refine-start")
    if refine_start == "ridge" and not getattr(model, "style_ridge", False):
        raise MstError("--refine-start ridge needs a checkpoint trained with model.style_ridge: true, and this one "
                       "has no style ridge", ckpt, "use --refine-start network, or train with model.style_ridge: true")
    has_house = bool(getattr(model, "house_preset", False))
    if other_vocal is not None and not refine_steps:
        raise MstError(f"--other-vocal {other_vocal} chooses between the house preset and refinement, and "
                       "--refine-steps is 0 (no refinement: the network's setting is used as it is)",
                       fix="add --refine-steps 30 --refine-start ridge (e17), or drop --other-vocal")
    if other_vocal is None:
        other_vocal = "house" if has_house else "refine"
    if other_vocal not in OTHER_VOCAL:
        raise MstError(f"--other-vocal must be one of {', '.join(OTHER_VOCAL)}, got {other_vocal!r}",
                       fix="e.g. --other-vocal house")
    if other_vocal == "house" and refine_steps and not has_house:
        raise MstError("--other-vocal house needs a checkpoint trained with model.house_preset: true, and this one "
                       "has no house preset", ckpt, "use --other-vocal refine, or train with model.house_preset: true")
    if refine_steps < 0 or refine_crops < 1 or refine_lr <= 0:
        raise MstError(f"--refine-steps must be >= 0, --refine-crops >= 1 and --refine-lr > 0 (got "
                       f"{refine_steps}, {refine_crops}, {refine_lr})", fix="e.g. --refine-steps 30")
    if not 0.0 <= tail_seconds <= MAX_TAIL_SECONDS:
        raise MstError(f"--tail must be between 0 and {MAX_TAIL_SECONDS:g} s, got {tail_seconds:g}",
                       fix="e.g. --tail 2.5 (the reverb's impulse response is 2.5 s long)")
    info = audio_info(raw_path, _INPUT_FIX)
    rinfo = audio_info(reference, _INPUT_FIX) if reference is not None else None
    check_measurable(info, raw_path, "raw vocal")
    if rinfo is not None:
        check_measurable(rinfo, reference, "reference mix")
    for src in [raw_path] + ([Path(reference)] if reference is not None else []):
        if (out_path.exists() and os.path.samefile(src, out_path)) or out_path.resolve() == Path(src).resolve():
            raise MstError("the output would overwrite an input file", out_path, "choose another -o path")
    alignment = reference_alignment(info, rinfo) if refine_steps and rinfo is not None else None
    house = bool(alignment and not alignment["same_vocal"] and other_vocal == "house")
    if house:
        print(f"{reference}: not a mix of {raw_path.name} as far as alignment tells (score {alignment['score']:.2f} < "
              f"{SAME_VOCAL_SCORE:g}): mixed with the checkpoint's house preset instead of refining on it "
              "(--other-vocal house; --other-vocal refine makes the mix sound like the reference's vocal)",
              file=sys.stderr)
    elif alignment and not alignment["same_vocal"]:
        print(f"warning: {reference}: not a mix of {raw_path.name} as far as alignment tells (score "
              f"{alignment['score']:.2f} < {SAME_VOCAL_SCORE:g}): --refine-steps makes the mix sound like the reference's vocal, "
              "not like its processing; with another song's mix this was far worse than one preset for every song "
              "(experiments/e13-shared-style). Use --refine-steps with a mix of this vocal (e.g. your rough mix); "
              "with another song's mix, drop it", file=sys.stderr)
    block_size = max(int(block_size), 1024)

    sr_in, frames = info.sample_rate, info.frames
    msr = model.sample_rate
    seg_s = float(segment_seconds if segment_seconds is not None else meta["data"].get("segment_seconds") or 4.0)
    if seg_s <= 0:
        raise MstError(f"--segment-seconds must be positive, got {seg_s}", fix="e.g. --segment-seconds 4")
    passes = 3 if model.output_lufs is not None else 2  # match_loudness: one more pass to measure the output
    bar = _Progress(raw_path.name, frames / sr_in, passes, rinfo.seconds if rinfo else None, progress)
    with bar:
        # pass 1: loudness + where the singing is
        bar.stage("loudness, segments")
        take = bool(getattr(model, "take_descriptors", False))
        ana = analyse(raw_path, info, block_size, bar, descriptors=take)
        if ana["peak"] >= 10 ** (-0.01 / 20):
            print(f"warning: {raw_path}: peak {20 * math.log10(ana['peak']):+.2f} dBFS: the raw vocal is probably "
                  "clipped; the mix keeps the distortion", file=sys.stderr)
        seg_native = int(round(seg_s * sr_in))
        starts = choose_segments(ana["env_db"], ana["hop"], frames, seg_native, max(1, int(max_segments)), raw_path)
        raw_segs = torch.from_numpy(_read_segments(raw_path, info, starts, seg_native, msr, 1))
        ref_segs, ref_starts = None, []
        if rinfo is not None:
            bar.stage(f"reference {Path(reference).name}", raw_pass=False)
            rana = analyse(reference, rinfo, block_size, bar)
            rseg_native = int(round(seg_s * rinfo.sample_rate))
            ref_starts = choose_segments(rana["env_db"], rana["hop"], rinfo.frames, rseg_native, len(starts), reference)
            picked = [ref_starts[i % len(ref_starts)] for i in range(len(starts))]
            ref_segs = torch.from_numpy(_read_segments(reference, rinfo, picked, rseg_native, msr, 2))
            if ref_segs.shape[-1] != raw_segs.shape[-1]:  # rounding at odd rates: same length for the network
                n = min(ref_segs.shape[-1], raw_segs.shape[-1])
                ref_segs, raw_segs = ref_segs[..., :n], raw_segs[..., :n]

        with torch.no_grad():
            # every segment by the whole file's gain, as in training (SongInfo.raw_lufs is this measurement)
            per_seg = model.predict_params(raw_segs, ref_segs,
                                           raw_lufs=torch.full((raw_segs.shape[0],), ana["lufs"]),
                                           descriptors=torch.from_numpy(ana["descriptors"]) if take else None).float()
        if not torch.isfinite(per_seg).all():
            raise MstError("the model predicted NaN/Inf parameters for this input", ckpt,
                           "check the checkpoint (was its training stable?) and the input file")
        p = per_seg.median(dim=0, keepdim=True).values  # (1, P) in [0, 1]
        p_network = p
        if refine_steps:
            from mst_single.loudness import normalize_loudness
            from mst_single.style import refine_setting

            x, _ = normalize_loudness(raw_segs, msr, model.target_lufs,
                                      lufs=torch.full((raw_segs.shape[0],), ana["lufs"]))
            if house:
                p = model.house_start()
            else:
                if refine_start == "ridge":
                    p = model.style_ridge_start(x, ref_segs)
                p = refine_setting(model.console, x, ref_segs, p, refine_steps, lr=refine_lr, crops=refine_crops,
                                   progress=progress)
        units_t = model.console.denormalize(p)
        units = {k: float(v[0]) for k, v in units_t.items()}

        # pass 2: the chain over the whole file at the input's rate, block by block
        console = VocalConsole(sr_in, model.console.stages)
        p_in = console.normalize({k: v for k, v in units.items()})
        lufs = ana["lufs"]
        from mst_single.loudness import song_gain_db

        gain_db = song_gain_db(lufs, model.target_lufs)
        gain = 10 ** (gain_db / 20)
        output_lufs = model.output_lufs
        if output_lufs is not None:
            # match_loudness models: one more pass measures the chain's output, then the output gain
            # (the chain's last, linear stage) is moved so the song lands at the house loudness
            from mst_single.loudness import StreamingLoudness

            meter, streamer = StreamingLoudness(sr_in, 2), console.streamer(p_in)
            bar.stage("output loudness")
            for _, x in _blocks(raw_path, info, block_size):
                meter.update(streamer.process(x.mean(axis=0, keepdims=True) * gain))
                bar.update(x.shape[1] / sr_in)
            p_in, _ = console.output_gain_to(p_in, meter.integrated(), output_lufs)
            units = {k: float(v[0]) for k, v in console.denormalize(p_in).items()}
            i = console.param_names.index("output_gain_db") if "output_gain_db" in console.param_names else None
            if i is not None:  # the same [0, 1] value at any rate (only Hz ranges depend on it)
                p = p.clone()
                p[0, i] = p_in[0, i]
        streamer = console.streamer(p_in)
        import soundfile as sf

        out_fmt, subtype, out_kind = OUTPUT_FORMATS[out_path.suffix.lower()]
        if out_fmt == "WAV" and frames * 2 * 4 > 3.9e9:
            out_fmt = "RF64"  # plain WAV stops at 4 GB
        # Counted while writing, as the file is not read back: an integer PCM output (24-bit FLAC)
        # saturates every sample beyond full scale, a float WAV keeps it (a player or converter clips it).
        peak, clipped, saturates = 0.0, 0, subtype != "FLOAT"
        bar.stage(f"writing {out_path.name}")
        with contextlib.ExitStack() as stack:
            tmp_wav = stack.enter_context(fileio.atomic_path(out_path))
            tmp_json = stack.enter_context(fileio.atomic_path(json_path))
            tmp_md = stack.enter_context(fileio.atomic_path(md_path))
            with sf.SoundFile(str(tmp_wav), "w", samplerate=sr_in, channels=2, subtype=subtype, format=out_fmt) as f:
                def emit(y: np.ndarray, at: int) -> None:
                    nonlocal peak, clipped
                    if not np.isfinite(y).all():
                        raise MstError(f"the chain produced NaN/Inf output near {at / sr_in:.1f} s", raw_path,
                                       "report this with the file and checkpoint; no output was written")
                    a = np.abs(y)
                    peak = max(peak, float(a.max()))
                    if saturates:
                        clipped += int(np.count_nonzero(a > 1.0))
                    f.write(y.T)

                for start, x in _blocks(raw_path, info, block_size):
                    emit(streamer.process(x.mean(axis=0, keepdims=True) * gain), start)
                    bar.update(x.shape[1] / sr_in)
                tail = int(round(tail_seconds * sr_in))
                for start in range(0, tail, block_size):  # silence in: the compressor and reverb ring out
                    emit(streamer.process(np.zeros((1, min(block_size, tail - start)), np.float32)), frames + start)
                written = f.frames - tail
            if written != frames:
                raise MstError(f"wrote {written} samples but the input has {frames}", raw_path,
                               "the input file may have changed while mixing; run again")
            specs = {s.name: s for s in model.console.specs}
            report = {
                "output": str(out_path),
                "input": str(raw_path),
                "reference": str(reference) if reference is not None else None,
                "approach": model.approach,
                "checkpoint": str(ckpt),
                "checkpoint_epoch": meta.get("epoch"),
                "checkpoint_step": meta.get("global_step"),
                "sample_rate": sr_in,
                "model_sample_rate": msr,
                "samples": frames,  # the raw's; the output has tail_samples more
                "seconds": frames / sr_in,
                "tail_samples": tail,
                "input_channels": info.channels,
                "input_lufs": lufs,
                "target_lufs": model.target_lufs,
                "normalization_gain_db": gain_db,
                "output_lufs": output_lufs,  # null: the predicted output gain sets the level
                "stages": dict(model.console.stages),
                "params": units,
                "units": {k: specs[k].unit for k in units},
                "params_normalized": {k: float(v) for k, v in zip(model.console.param_names, p[0].tolist())},
                "combine": "median over segments, per parameter, in the normalised [0, 1] space",
                # what the model read of the whole take (model.take_descriptors), null when it reads none
                "take_descriptors": (dict(zip(DESCRIPTOR_NAMES, ana["descriptors"].tolist())) if take else None),
                "refine": ({"steps": int(refine_steps), "lr": float(refine_lr), "crops": int(refine_crops),
                            "start": refine_start, "reference_alignment": alignment,
                            "other_vocal": other_vocal, "house_preset": house,
                            "network_params_normalized": dict(zip(model.console.param_names, p_network[0].tolist()))}
                           if refine_steps else None),
                "segments": {
                    "seconds": seg_s,
                    "raw": [{"start_s": s / sr_in, "params_normalized": q} for s, q in zip(starts, per_seg.tolist())],
                    "reference": [{"start_s": s / rinfo.sample_rate} for s in ref_starts] if rinfo else [],
                },
                "output_peak_dbfs": 20 * math.log10(peak) if peak > 0 else -math.inf,
                "provenance": provenance.collect(command=command),
            }
            if report["output_peak_dbfs"] == -math.inf:
                report["output_peak_dbfs"] = -200.0
            import json

            tmp_json.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=fileio._jsonable) + "\n",
                                encoding="utf-8")
            tmp_md.write_text(mixsheet(report), encoding="utf-8")
    if peak > 1.0:  # after the rename: the warning is about a file that exists
        warn_output_peak(out_path, peak, out_kind, clipped if saturates else None)
    return report


def warn_output_peak(out_path: Path, peak: float, kind: str, clipped: int | None) -> None:
    """A `warning:` line on stderr for an output (of `kind`, e.g. "24-bit FLAC") peaking above full
    scale (`peak` > 1.0): `clipped` samples were saturated (integer PCM), or None: a float file kept them."""
    db = 20 * math.log10(peak)
    if clipped is not None:
        what = (f"{clipped} samples (both channels counted) were clipped to full scale in the {kind}; fix: mix "
                f"to a float WAV (-o {out_path.with_suffix('.wav')}), which keeps them, and turn it down by at least "
                f"{db:.1f} dB before converting it")
    else:
        what = (f"the {kind} keeps the samples above full scale, but they may clip on playback or when converted "
                f"to 16/24-bit or MP3; fix: turn it down by at least {db:.1f} dB before playing or converting it")
    print(f"warning: {out_path}: the mix peaks at {db:+.2f} dBFS, above full scale: {what}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("raw", metavar="RAW", help="raw vocal (WAV/FLAC, any rate, at least 0.4 s, mono or stereo)")
    parser.add_argument("-o", "--out", required=True, metavar="OUT",
                        help="output .wav (float32) or .flac (24-bit), stereo at the input's rate; also writes "
                             "OUT.params.json and OUT.mixsheet.md")
    parser.add_argument("--ckpt", required=True, help="checkpoint from `mst-single fit` (runs/NAME/checkpoints/*.ckpt)")
    parser.add_argument("--reference", metavar="REF", default=None,
                        help="reference mixed vocal (required for approach1 checkpoints, refused for approach2)")
    parser.add_argument("--segment-seconds", type=float, default=None,
                        help="analysis segment length in s (default: the training segment length)")
    parser.add_argument("--max-segments", type=int, default=DEFAULT_MAX_SEGMENTS,
                        help=f"segments analysed; settings combined by their median (default {DEFAULT_MAX_SEGMENTS})")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK, help="samples per streaming block")
    parser.add_argument("--refine-steps", type=int, default=0,
                        help="approach1: refine the predicted setting on the reference's style for N optimiser "
                             "steps (experiments/e09-refine: 30 from the network's setting, 60 from --refine-start "
                             "ridge; ~0.2 s a step on a CPU core at 44.1 kHz; default 0: off). It makes the mix "
                             "sound like the reference: only with a mix of this vocal, not another song's (e13)")
    parser.add_argument("--refine-lr", type=float, default=0.05, help="refinement step size (Adam, on logits)")
    parser.add_argument("--refine-crops", type=int, default=4, help="raw segments per refinement step (default 4)")
    parser.add_argument("--refine-start", choices=REFINE_STARTS, default="network",
                        help="where refinement starts: the network's setting, or the checkpoint's style ridge "
                             "(trained with model.style_ridge: true; experiments/e09-refine, ridge-start)")
    parser.add_argument("--other-vocal", choices=OTHER_VOCAL, default=None,
                        help="with --refine-steps, a reference that is not a mix of this vocal (it does not align "
                             "with the raw) gets: house = the checkpoint's house preset (trained with "
                             "model.house_preset: true; experiments/e17), refine = refined on anyway (the mix then "
                             "sounds like the reference's vocal). Default: house when the checkpoint has one")
    parser.add_argument("--tail", type=float, default=0.0, metavar="SECONDS",
                        help="append this much silence to the raw and run it through the chain, so the reverb "
                             "rings out past the raw's end (its impulse response is 2.5 s; default 0: the output "
                             "has the raw's length, sample for sample)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _command(args) -> list[str]:
    cmd = ["mst-single", "mix", str(args.raw), "-o", str(args.out), "--ckpt", str(args.ckpt)]
    if args.reference is not None:
        cmd += ["--reference", str(args.reference)]
    if args.segment_seconds is not None:
        cmd += ["--segment-seconds", str(args.segment_seconds)]
    cmd += ["--max-segments", str(args.max_segments), "--block-size", str(args.block_size)]
    if args.tail:
        cmd += ["--tail", str(args.tail)]
    if args.refine_steps:
        cmd += ["--refine-steps", str(args.refine_steps), "--refine-lr", str(args.refine_lr),
                "--refine-crops", str(args.refine_crops), "--refine-start", args.refine_start]
        if args.other_vocal is not None:
            cmd += ["--other-vocal", args.other_vocal]
    return cmd


def run(args) -> int:
    report = mix_file(args.raw, args.out, args.ckpt, reference=args.reference, segment_seconds=args.segment_seconds,
                      max_segments=args.max_segments, block_size=args.block_size, progress=not args.quiet,
                      command=_command(args), refine_steps=args.refine_steps, refine_lr=args.refine_lr,
                      refine_crops=args.refine_crops, refine_start=args.refine_start, tail_seconds=args.tail,
                      other_vocal=args.other_vocal)
    print(mixsheet(report))
    print(f"wrote {report['output']} (+ .params.json, .mixsheet.md)")
    return 0
