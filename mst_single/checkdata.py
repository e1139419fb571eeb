"""`mst-single check-data DATA`: a per-song table and every problem found, with the file named.

Exit code 0 when every pair is usable (warnings allowed), 1 when any pair is unusable (the table
still lists all the others), 2 when the folder itself is unusable (no raw/ or mixed/).
"""
from __future__ import annotations

import argparse
import math
import sys

from mst_single.audio import find_pairs, ignored_files, ignored_reason, prepare_song, wav_declared_frames
from mst_single.errors import DataError

CLIP_DB = -0.01  # a peak at or above this (dBFS) is treated as clipped
MIN_LAG_SCORE = 1.5  # below this the correlation peak is not clearly above the next candidate
FULL_BAND_HZ = 32000  # the console's top EQ bands reach 16 kHz: a file below this rate has nothing up there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data folder holding raw/NAME.wav and mixed/NAME.wav")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="names with only a raw or only a mixed file are warnings, not errors")
    parser.add_argument("--sample-rate", type=int, default=48000, help="rate used for alignment (Hz)")
    parser.add_argument("--max-lag-seconds", type=float, default=0.5, help="alignment search window (+- s)")


def song_warnings(info, max_lag_seconds: float) -> list[tuple[str, str, str]]:
    """(level, path, message) warnings for a usable song (`SongInfo` with stats)."""
    out = []
    for what, path in (("raw", info.raw_path), ("mixed", info.mixed_path)):
        pk = info.stats[f"{what}_peak_db"]
        if pk >= CLIP_DB:
            out.append(("warning", path, f"peak {pk:+.2f} dBFS: the {what} file is probably clipped"))
    sr, lag_ms = info.sample_rate, 1000 * info.lag / info.sample_rate
    if abs(info.lag) >= round(max_lag_seconds * sr) - sr // 100:
        out.append(("warning", info.mixed_path,
                    f"lag {lag_ms:+.1f} ms is at the edge of the +-{1000 * max_lag_seconds:.0f} ms search window; "
                    "the real offset may be larger: rerun with a larger --max-lag-seconds"))
    elif info.lag_score < MIN_LAG_SCORE:
        out.append(("warning", info.mixed_path, f"alignment is uncertain (lag {lag_ms:+.1f} ms; correlation peak only "
                                                f"{info.lag_score:.2f}x the next candidate): check the pair matches, "
                                                f"or that the offset is not beyond the search window: rerun with "
                                                f"--max-lag-seconds {3 * max_lag_seconds:g}"))
    for path, frames, sr_in in ((info.raw_path, info.raw_frames, info.raw_sr),
                                (info.mixed_path, info.mixed_frames, info.mixed_sr)):
        declared = wav_declared_frames(path)
        if declared is not None and declared > frames:
            out.append(("warning", path, f"the file is truncated: its header declares {declared / sr_in:.2f} s "
                                         f"but only {frames / sr_in:.2f} s are there (only those are used)"))
    low = min(info.raw_sr, info.mixed_sr)
    if low < min(FULL_BAND_HZ, sr):
        if info.raw_sr < info.mixed_sr:
            out.append(("warning", info.raw_path,
                        f"raw is {info.raw_sr} Hz, mixed {info.mixed_sr} Hz: the mix has content from "
                        f"{info.raw_sr / 2000:g} to {min(info.mixed_sr, sr) / 2000:g} kHz that the raw lacks and no "
                        "console setting can make, so the loss always sees it; use a raw recorded at the mix's "
                        "rate, or resample the mix to the raw's"))
        else:
            path = info.mixed_path if info.mixed_sr < info.raw_sr else info.raw_path
            out.append(("warning", path,
                        f"{'mixed' if info.mixed_sr < info.raw_sr else 'both files'} at {low} Hz: nothing above "
                        f"{low / 2000:g} kHz, where the console's top EQ bands (up to 16 kHz) would be fitted to "
                        f"silence; train on such pairs at their rate (fit --data.sample_rate {low}) or use "
                        "full-band files"))
    raw_s, mixed_s = info.raw_frames / info.raw_sr, info.mixed_frames / info.mixed_sr
    if mixed_s < raw_s - 1.0:
        out.append(("warning", info.mixed_path, f"mixed is {raw_s - mixed_s:.1f} s shorter than raw ({mixed_s:.1f} s "
                                                f"vs {raw_s:.1f} s); only the {info.seconds:.1f} s overlap is used"))
    elif mixed_s > raw_s + 10.0:
        out.append(("warning", info.mixed_path, f"mixed is {mixed_s - raw_s:.1f} s longer than raw, more than a "
                                                "reverb tail: check the pair matches"))
    if info.seconds < 4.0:
        out.append(("warning", info.raw_path, f"only {info.seconds:.1f} s after alignment: shorter than the default "
                                              "4 s segment, so it is skipped in training"))
    return out


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else ("-inf" if x < 0 else "inf")


def run(args) -> int:
    from mst_single.progress import progress

    pairs, only_raw, only_mixed = find_pairs(args.data)
    level = "warning" if args.allow_unmatched else "error"
    fix = " (fix: rename it so raw/NAME and mixed/NAME match, or pass --allow-unmatched to skip it)"
    problems = [(level, str(p), f"no mixed/{p.stem}.wav or .flac partner" + fix * (level == "error")) for p in only_raw]
    problems += [(level, str(p), f"no raw/{p.stem}.wav or .flac partner" + fix * (level == "error"))
                 for p in only_mixed]
    ignored = ignored_files(args.data)
    problems += [("warning", str(p), ignored_reason(p)) for p in ignored]

    head = ("song", "dur s", "raw Hz", "mix Hz", "raw ch", "mix ch", "lag ms", "raw LUFS", "mix LUFS",
            "raw pk dBFS", "mix pk dBFS")
    rows, usable = [], 0
    bar = progress(pairs, desc="checking songs", unit="songs", file=sys.stderr, enabled=len(pairs) >= 8, leave=False)
    for pair in bar:
        try:
            info = prepare_song(pair, args.sample_rate, args.max_lag_seconds, stats=True)
        except DataError as e:
            problems.append(("error", e.path or pair.raw_path, e.problem + (f" (fix: {e.fix})" if e.fix else "")))
            rows.append((pair.name, "UNUSABLE (see problems)"))
            continue
        usable += 1
        st = info.stats
        rows.append((info.name, f"{info.seconds:.1f}", str(info.raw_sr), str(info.mixed_sr), str(info.raw_channels),
                     str(info.mixed_channels), f"{1000 * info.lag / info.sample_rate:+.1f}",
                     _num(st["raw_lufs"], ".1f"), _num(st["mixed_lufs"], ".1f"),
                     _num(st["raw_peak_db"], ".1f"), _num(st["mixed_peak_db"], ".1f")))
        problems += song_warnings(info, args.max_lag_seconds)

    widths = [max([len(head[i])] + [len(r[i]) for r in rows if len(r) == len(head)]) for i in range(len(head))]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for r in rows:
        if len(r) == len(head):
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        else:
            print(f"{r[0].ljust(widths[0])}  {r[1]}")

    errors = sum(p[0] == "error" for p in problems)
    if problems:
        print(f"\nproblems ({errors} errors, {len(problems) - errors} warnings):")
        for lvl, path, msg in problems:
            print(f"  {lvl.upper():7s} {path}: {msg}")
    print(f"\n{len(pairs)} pairs, {usable} usable, {len(pairs) - usable} unusable, "
          f"{len(only_raw) + len(only_mixed)} unmatched files, {len(ignored)} ignored")
    return 1 if errors else 0
