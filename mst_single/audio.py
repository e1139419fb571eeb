"""Audio files of a raw/mixed data folder: reading, pairing, validation and alignment (no torch).

Arrays are numpy float32 of shape (channels, samples); sample positions are integers at the rate
named by the caller. Every unusable input raises `DataError` naming the file and the fix.
Kept free of torch so that `mst-single check-data` starts fast; the dataset lives in `data.py`.

A data folder holds `raw/NAME.wav` and `mixed/NAME.wav` (or `.flac`); the same stem is the same
song. Each song is analysed once (`prepare_song`): both files are validated, the lag of the mixed
file against the raw one is found by GCC-PHAT cross-correlation, and the raw power envelope is kept
so that near-silent segments can be skipped without reading audio again. The analysis streams the
files block by block, so its memory does not grow with the length of a song (a 1-hour take is fine).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf
import soxr

from mst_single.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac")
_FIX_BAD_FILE = "re-export the file from your audio editor as WAV or FLAC, or remove the song from raw/ and mixed/"
# Native samples read on each side of a chunk before resampling, so that the soxr filter's edge
# transient falls outside the samples we keep (HQ filter is a few hundred taps long).
_RESAMPLE_PAD = 2048
_BLOCK_FRAMES = 1 << 17  # native frames per block when a file is streamed (~2.7 s at 48 kHz)
LAG_WINDOW_SECONDS = 300.0  # the lag is estimated from at most this much non-silent raw audio
SILENT_PEAK_DB = -60.0  # a raw/mixed file whose peak is below this is treated as silent (unusable)
HOP_SECONDS = 0.1  # resolution (s) of the raw power envelope used to skip silent segments
_CACHE_VERSION = 4  # 4: SongInfo.raw_lufs
_MEMO: dict[str, "SongInfo"] = {}  # in-process alignment cache, keyed like the JSON cache


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: native `sample_rate` (Hz), `channels`, `frames` (native samples)."""
    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | os.PathLike, bad_file_fix: str = _FIX_BAD_FILE) -> AudioInfo:
    """Open the header of a WAV/FLAC file; DataError for empty, non-audio or corrupt files.

    ``bad_file_fix``: the fix those errors suggest; the default is for a song of a data folder,
    which can also be dropped from raw/ and mixed/ (a single input file, as `mix`'s, cannot)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot open the file ({e.strerror})", path,
                        "check that the file exists and is readable") from e
    if path.is_dir():
        raise DataError("this is a folder, not an audio file", path, "pass a .wav or .flac file")
    if size == 0:
        raise DataError("the file is empty (0 bytes, zero-length audio)", path, bad_file_fix)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic in (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"FORM"):
            problem = f"the audio header is corrupt or truncated (libsndfile: {_sf_reason(e)})"
        else:
            problem = f"not an audio file: it has no WAV/FLAC signature (libsndfile: {_sf_reason(e)})"
        raise DataError(problem, path, bad_file_fix) from e
    if info.frames <= 0:
        raise DataError("the file has no audio samples (zero length)", path, bad_file_fix)
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames))


def wav_declared_frames(path: str | os.PathLike) -> int | None:
    """Frames a WAV header's 'data' chunk declares (None if not a plain RIFF WAV or not found).

    libsndfile silently reads what is there when a file was cut short (interrupted copy), so a
    declared count above `audio_info(path).frames` is how a truncated file is recognised.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20:pos + 22], "little")
        if cid == b"data":
            return size // block_align if block_align else None
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def _sf_reason(e: Exception) -> str:
    msg = str(e)
    return msg.split(": ", 1)[1] if msg.startswith("Error opening") and ": " in msg else msg


def check_finite(x: np.ndarray, sample_rate: int, path) -> None:
    """DataError if `x` (channels, samples) holds NaN or Inf (possible in float WAV files)."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argmax(bad.any(axis=0)))
        raise DataError(f"contains {int(bad.sum())} NaN/Inf samples (first at {first / sample_rate:.3f} s)", path,
                        "re-render or re-export the file; NaN/Inf usually come from a broken plugin or a float export")


def to_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    """(C, T) -> (channels, T): 1 = mean downmix, 2 = mono duplicated / first two kept, None = as is."""
    if channels is None or x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(axis=0, keepdims=True)
    if channels == 2:
        return np.repeat(x, 2, axis=0) if x.shape[0] == 1 else x[:2]
    raise ValueError(f"channels must be 1, 2 or None, got {channels}")


def resample(x: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Resample (C, T) float32 from `orig_sr` to `sample_rate` (Hz) with soxr (HQ); time-aligned."""
    if orig_sr == sample_rate:
        return x
    y = soxr.resample(np.ascontiguousarray(x.T), orig_sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(y.T, dtype=np.float32)


def resampled_length(frames: int, orig_sr: int, sample_rate: int) -> int:
    """Samples that `resample` (soxr) returns for `frames` native samples: frames * ratio, rounded."""
    return (2 * frames * sample_rate + orig_sr) // (2 * orig_sr)


def native_blocks(info: AudioInfo, block_frames: int = _BLOCK_FRAMES):
    """Yield the whole file as consecutive (C, <= block_frames) float32 native blocks; DataError if
    the audio data cannot be decoded."""
    try:
        with sf.SoundFile(info.path) as f:
            while True:
                x = f.read(block_frames, dtype="float32", always_2d=True)
                if len(x) == 0:
                    return
                yield np.ascontiguousarray(x.T)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"the audio data cannot be decoded ({e})", info.path, _FIX_BAD_FILE) from e


def mono_stream(info: AudioInfo, sample_rate: int, block_frames: int = _BLOCK_FRAMES):
    """Yield the file downmixed to mono and resampled to `sample_rate` (Hz) as (n,) float32 chunks.

    soxr's streaming resampler carries its filter state across blocks, so the concatenated chunks
    equal `resample` of the whole mono file, sample for sample.
    """
    stream = None if info.sample_rate == sample_rate else \
        soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    for x in native_blocks(info, block_frames):
        mono = np.ascontiguousarray(x.mean(axis=0), dtype=np.float32)
        yield mono if stream is None else stream.resample_chunk(mono)
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = False,
               channels: int | None = None) -> tuple[np.ndarray, int]:
    """Read a whole file, validated: returns (audio (C, T) float32 at `sample_rate`, native rate Hz).

    `sample_rate=None` keeps the native rate. `mono=True` downmixes to one channel (same as
    `channels=1`); `channels=2` duplicates a mono file. DataError for zero-length, non-audio,
    corrupt and NaN/Inf files.
    """
    info = audio_info(path)
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"the audio data cannot be decoded ({e})", path, _FIX_BAD_FILE) from e
    if len(x) == 0:
        raise DataError("the file has no audio samples (zero length)", path, _FIX_BAD_FILE)
    x = np.ascontiguousarray(x.T)
    check_finite(x, sr, path)
    x = to_channels(x, 1 if mono else channels)
    if sample_rate is not None:
        x = resample(x, info.sample_rate, int(sample_rate))
    return x, info.sample_rate


def _read_native(path, start: int, frames: int, channels_in: int) -> np.ndarray:
    """Native samples [start, start + frames) as (C, frames) float32, zero outside the file."""
    out = np.zeros((channels_in, max(frames, 0)), np.float32)
    lo = max(start, 0)
    if frames <= 0 or start + frames <= lo:
        return out
    with sf.SoundFile(str(path)) as f:
        if lo >= f.frames:
            return out
        f.seek(lo)
        x = f.read(start + frames - lo, dtype="float32", always_2d=True)
    out[:, lo - start:lo - start + len(x)] = x.T
    return out


def read_segment(path: str | os.PathLike, start: int, length: int, sample_rate: int | None = None,
                 channels: int | None = None, info: AudioInfo | None = None) -> np.ndarray:
    """Read `length` samples from `start` (both at `sample_rate`, Hz) without loading the file.

    Returns (C, length) float32; positions outside the file read as zeros. When the file's rate
    differs, a padded native chunk is read and resampled with soxr; the chunk start is snapped to a
    whole number of resampling periods (gcd of the two rates) so the result matches resampling the
    whole file to within the filter's numerical error. Pass `info` (from `audio_info`) to skip a
    header read.
    """
    info = info or audio_info(path)
    sr_in = info.sample_rate
    if sample_rate is None or int(sample_rate) == sr_in:
        x = _read_native(path, start, length, info.channels)
        return to_channels(x, channels)
    sr_out = int(sample_rate)
    g = math.gcd(sr_in, sr_out)
    step_in, step_out = sr_in // g, sr_out // g
    pad_out = math.ceil(_RESAMPLE_PAD * sr_out / sr_in)
    first = start - pad_out
    if step_in <= 100_000:
        b0 = max(math.floor(first / step_out), 0)
        in0, out0 = b0 * step_in, b0 * step_out
    else:  # rates with a huge common period: accept a sub-sample misalignment
        in0 = max(math.floor(first * sr_in / sr_out), 0)
        out0 = round(in0 * sr_out / sr_in)
    in1 = math.ceil((start + length + pad_out) * sr_in / sr_out) + 1
    chunk = _read_native(path, in0, min(in1, info.frames) - in0, info.channels)
    if chunk.shape[1] == 0:  # entirely past the end of the file
        return to_channels(np.zeros((info.channels, length), np.float32), channels)
    y = resample(to_channels(chunk, channels), sr_in, sr_out)
    out = np.zeros((y.shape[0], length), np.float32)
    lo = start - out0
    piece = y[:, max(lo, 0):max(lo + length, 0)]
    out[:, max(-lo, 0):max(-lo, 0) + piece.shape[1]] = piece
    return out


def peak_db(x: np.ndarray) -> float:
    """Sample peak in dBFS (-inf for digital silence)."""
    p = float(np.max(np.abs(x))) if x.size else 0.0
    return 20 * math.log10(p) if p > 0 else -math.inf


# ----------------------------------------------------------------------------------------------
# pairing

@dataclass(frozen=True)
class SongPair:
    """One song: its name (file stem) and the raw and mixed file paths."""
    name: str
    raw_path: str
    mixed_path: str


def _audio_files(folder: Path) -> dict[str, Path]:
    """stem -> path of the WAV/FLAC files in `folder` (hidden files such as macOS `._x.wav` skipped)."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        if p.stem in files:
            raise DataError(f"two files for the song '{p.stem}': {files[p.stem].name} and {p.name}", folder,
                            "keep one file per song name")
        files[p.stem] = p
    return files


_FIX_LAYOUT = "put the vocals in DATA/raw/NAME.wav and DATA/mixed/NAME.wav (same NAME for a pair)"


def ignored_files(root: str | os.PathLike) -> list[Path]:
    """What pairing skips in `root/raw` and `root/mixed` although it is not hidden: files of another
    format (.mp3, .ogg, .aiff, ...), sub-folders (only the files directly in raw/ and mixed/ are read)
    and dangling links."""
    out = []
    for sub in ("raw", "mixed"):
        folder = Path(root) / sub
        if folder.is_dir():
            out += [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")
                    and (not p.is_file() or p.suffix.lower() not in AUDIO_SUFFIXES)]
    return out


def ignored_reason(path: Path) -> str:
    """Why `ignored_files` lists `path`, with the fix."""
    if path.is_dir():
        return (f"a folder inside {path.parent.name}/: ignored (only the files directly in raw/ and mixed/ are "
                "read; move the songs up if they belong to the data)")
    if not path.is_file():
        return "a link to nothing, or not a regular file: ignored (fix the link, or copy the file there)"
    formats = " and ".join(s.lstrip(".").upper() for s in AUDIO_SUFFIXES)
    return (f"not a {' or '.join(AUDIO_SUFFIXES)} file: ignored (only {formats} are read; convert it if it is a "
            "vocal of the data)")


def find_pairs(root: str | os.PathLike) -> tuple[list[SongPair], list[Path], list[Path]]:
    """(pairs sorted by name, files only in raw/, files only in mixed/); DataError for a bad folder."""
    root = Path(root)
    if not root.exists():
        raise DataError("the data folder does not exist", root, "check the path; " + _FIX_LAYOUT)
    if not root.is_dir():
        raise DataError("this is a file, not a data folder", root, "pass the folder that holds raw/ and mixed/")
    for sub in ("raw", "mixed"):
        if not (root / sub).is_dir():
            raise DataError(f"the data folder has no '{sub}/' sub-folder", root, _FIX_LAYOUT)
    raw, mixed = _audio_files(root / "raw"), _audio_files(root / "mixed")
    for sub, found in (("raw", raw), ("mixed", mixed)):
        if not found:
            other = [p.name for p in ignored_files(root) if p.parent.name == sub and p.is_file()]
            also = f" (other formats are not read: {', '.join(other[:5])}{' ...' if len(other) > 5 else ''})" * bool(other)
            raise DataError(f"no .wav or .flac files in {sub}/{also}", root / sub,
                            f"put the {sub} vocals there as NAME.wav or NAME.flac")
    pairs = [SongPair(n, str(raw[n]), str(mixed[n])) for n in sorted(raw) if n in mixed]
    return pairs, [raw[n] for n in sorted(set(raw) - set(mixed))], [mixed[n] for n in sorted(set(mixed) - set(raw))]


def index_pairs(root: str | os.PathLike, allow_unmatched: bool = False, skip_hint: str | None = None) -> list[SongPair]:
    """Pair `root/raw/NAME.*` with `root/mixed/NAME.*`, sorted by name.

    Names on one side only raise a DataError listing every one of them, or, with
    `allow_unmatched=True`, are skipped with a warning. `skip_hint` ends the error's fix with how the
    calling command skips them (e.g. "pass --allow-unmatched to skip them"); None where it cannot.
    """
    pairs, only_raw, only_mixed = find_pairs(root)
    ignored = ignored_files(root)
    if ignored:
        # pairing skips them; without a word the user believes those songs are in the data
        lines = "\n".join(f"  {p}: {ignored_reason(p)}" for p in ignored)
        warnings.warn(f"{root}: {len(ignored)} entries of raw/ and mixed/ are ignored:\n{lines}", stacklevel=2)
    if only_raw or only_mixed:
        lines = [f"  raw/{p.name}: no mixed/{p.stem}.wav or .flac" for p in only_raw]
        lines += [f"  mixed/{p.name}: no raw/{p.stem}.wav or .flac" for p in only_mixed]
        msg = f"{len(lines)} song names have no partner file:\n" + "\n".join(lines)
        if not allow_unmatched or not pairs:
            fix = "rename the files so each raw/NAME has a mixed/NAME, or remove those without a partner"
            # each command skips them its own way (or not at all): naming another command's flag misleads
            raise DataError(msg, root, fix + (f"; or {skip_hint}" if skip_hint and not allow_unmatched else ""))
        warnings.warn(f"{root}: skipping {msg}", stacklevel=2)
    return pairs


# ----------------------------------------------------------------------------------------------
# alignment

def lag_search(raw: np.ndarray, mixed: np.ndarray, sample_rate: int, max_lag_seconds: float = 0.5,
               block_seconds: float = 4.0) -> tuple[int, float]:
    """GCC-PHAT lag of `mixed` (T,) against `raw` (T,), both mono at `sample_rate` (Hz).

    Returns (lag in samples, positive = mixed is late; score = peak / largest value more than 1 ms
    away, >~2 means a clear peak). The cross-spectrum is summed over raw blocks of `block_seconds`
    (each against the mixed block widened by +-max lag, so the sum is exactly the full-song
    correlation for lags within +-`max_lag_seconds`), then PHAT-whitened (divided by its magnitude)
    so the peak stays sharp after EQ, compression and reverb, which only smear a plain correlation.
    Blocks keep the FFTs small (fast, cache-friendly) and memory flat for long songs.
    """
    max_lag, block, n = _lag_geometry(sample_rate, max_lag_seconds, block_seconds)
    raw = np.asarray(raw, np.float32)
    padded = np.concatenate([np.zeros(max_lag, np.float32), np.asarray(mixed, np.float32),
                             np.zeros(max_lag + block, np.float32)])  # padded[i + max_lag] = mixed[i]
    spec = np.zeros(n // 2 + 1, np.complex128)
    for b0 in range(0, len(raw), block):
        x = raw[b0:b0 + block]
        if x.any():  # silent blocks add nothing but FFT time
            spec += _cross_spectrum(x, padded[b0:b0 + block + 2 * max_lag], n)
    return _phat_peak(spec, n, max_lag, sample_rate)


def _lag_geometry(sample_rate: int, max_lag_seconds: float, block_seconds: float) -> tuple[int, int, int]:
    """(max lag, raw block length, FFT size), all in samples, of a GCC-PHAT search."""
    max_lag = max(0, int(round(max_lag_seconds * sample_rate)))
    block = max(int(block_seconds * sample_rate), 2 * max_lag, 1024)
    return max_lag, block, scipy.fft.next_fast_len(block + 2 * max_lag, real=True)


def _cross_spectrum(raw_block: np.ndarray, mixed_block: np.ndarray, n: int) -> np.ndarray:
    """Cross-spectrum (n // 2 + 1,) of a raw block against the mixed block that starts max lag earlier."""
    return np.conj(scipy.fft.rfft(raw_block, n)) * scipy.fft.rfft(mixed_block, n)


def _phat_peak(spec: np.ndarray, n: int, max_lag: int, sample_rate: int) -> tuple[int, float]:
    """(lag, score) from a summed cross-spectrum: PHAT-whiten, back to time, pick the peak."""
    mag = np.abs(spec)
    # the small floor keeps bins with no energy in either signal (e.g. above a low-rate file's
    # Nyquist) from being amplified into noise
    spec /= mag + 1e-6 * float(mag.max() or 1.0)
    c = np.abs(scipy.fft.irfft(spec, n)[:2 * max_lag + 1])  # c[j] is lag j - max_lag
    i = int(np.argmax(c))
    guard = max(1, int(sample_rate * 1e-3))
    rest = np.concatenate([c[:max(i - guard, 0)], c[i + guard + 1:]])
    score = float(c[i] / rest.max()) if rest.size and rest.max() > 0 else math.inf
    return i - max_lag, score


def estimate_lag(raw: np.ndarray, mixed: np.ndarray, sample_rate: int, max_lag_seconds: float = 0.5) -> int:
    """Lag in samples of `mixed` (T,) relative to `raw` (T,) (positive = mixed is late); see `lag_search`."""
    return lag_search(raw, mixed, sample_rate, max_lag_seconds)[0]


@dataclass
class SongInfo:
    """Everything known about one song after analysis; small (no audio), JSON-serialisable.

    Native file properties (`raw_sr`, `raw_channels`, `raw_frames`, same for mixed), the alignment
    at `sample_rate` (`lag` samples, positive = mixed late; `raw_offset`, `mixed_offset`, `length`
    of the aligned overlap), and the raw power envelope `env_db` (dBFS per `hop` samples of the
    aligned timeline). `stats` (loudness LUFS, peak dBFS) is filled only for check-data.
    """
    name: str
    raw_path: str
    mixed_path: str
    sample_rate: int
    raw_sr: int
    mixed_sr: int
    raw_channels: int
    mixed_channels: int
    raw_frames: int
    mixed_frames: int
    lag: int
    lag_score: float
    raw_offset: int
    mixed_offset: int
    length: int
    hop: int
    env_db: list = field(repr=False)
    stats: dict | None = None
    raw_peak_db: float | None = None  # sample peak of the native raw file (dBFS)
    # Integrated loudness (LUFS, BS.1770) of the whole native raw file downmixed to mono, -70.0 for
    # silence: the ONE measurement every input normalisation uses (training segments, evaluation,
    # baselines and `mix`, which measures the same quantity the same way), see loudness.song_gain_db.
    raw_lufs: float | None = None
    # The take descriptors of the whole native raw file (mst_single.descriptors), measured only when a
    # model asks for them (model.take_descriptors), then kept here; not part of the alignment cache.
    descriptors: list | None = None

    @property
    def seconds(self) -> float:
        """Aligned duration in seconds."""
        return self.length / self.sample_rate

    def raw_info(self) -> AudioInfo:
        return AudioInfo(self.raw_path, self.raw_sr, self.raw_channels, self.raw_frames)

    def mixed_info(self) -> AudioInfo:
        return AudioInfo(self.mixed_path, self.mixed_sr, self.mixed_channels, self.mixed_frames)


def scan_file(info: AudioInfo, what: str, loudness: bool = False,
              mono_loudness: bool = False) -> tuple[float, float | None, float | None]:
    """Validate a whole file block by block: (sample peak dBFS, integrated loudness LUFS or None,
    integrated loudness of the mono downmix LUFS or None).

    DataError (naming the file) for NaN/Inf samples or a silent file (peak below SILENT_PEAK_DB);
    `what` ("raw"/"mixed") names the file in the message. With `loudness`, the native audio is
    also fed to a streaming BS.1770 meter (-inf for silence or audio shorter than 0.4 s); with
    `mono_loudness`, its mono downmix to another one (-70.0 for silence, as `mix` measures it).
    """
    meter = mono_meter = None
    if loudness or mono_loudness:  # loudness.py imports torch: only pay for it when measuring
        from mst_single.loudness import StreamingLoudness

        meter = StreamingLoudness(info.sample_rate, info.channels) if loudness else None
        mono_meter = StreamingLoudness(info.sample_rate, 1) if mono_loudness else None
    peak, bad, first_bad, pos = 0.0, 0, None, 0
    for x in native_blocks(info):
        finite = np.isfinite(x)
        if not finite.all():
            if first_bad is None:
                first_bad = pos + int(np.argmax(~finite.all(axis=0)))
            bad += int(x.size - finite.sum())
        elif not bad:  # past the first NaN only the count matters
            peak = max(peak, float(np.max(np.abs(x))))
            if meter is not None:
                meter.update(x)
            if mono_meter is not None:
                mono_meter.update(x.mean(axis=0, keepdims=True))
        pos += x.shape[1]
    if bad:
        raise DataError(f"contains {bad} NaN/Inf samples (first at {first_bad / info.sample_rate:.3f} s)", info.path,
                        "re-render or re-export the file; NaN/Inf usually come from a broken plugin or a float export")
    pk = 20 * math.log10(peak) if peak > 0 else -math.inf
    if pk < SILENT_PEAK_DB:
        raise DataError(f"the {what} vocal is silent (peak {pk:.1f} dBFS)", info.path,
                        "check the export (muted track?) or remove the song from raw/ and mixed/")
    mono_lufs = mono_meter.integrated() if mono_meter is not None else None
    if meter is None:
        return pk, None, mono_lufs
    lufs = meter.integrated()
    return pk, lufs if lufs > -70.0 else -math.inf, mono_lufs  # the meter reads -70.0 for silence or < 0.4 s


def file_lag(ri: AudioInfo, mi: AudioInfo, sample_rate: int, max_lag_seconds: float = 0.5,
             window_seconds: float = LAG_WINDOW_SECONDS, block_seconds: float = 4.0) -> tuple[int, float]:
    """`lag_search` on two files read block by block: (lag samples at `sample_rate`, score).

    Uses the first non-silent raw blocks up to `window_seconds` (the offset is constant over a song,
    and a few minutes of singing pin it down), each against the mixed block widened by +-max lag;
    memory stays at one block whatever the song length. A song shorter than the window gives
    exactly the whole-song search.
    """
    max_lag, block, n = _lag_geometry(sample_rate, max_lag_seconds, block_seconds)
    length = resampled_length(ri.frames, ri.sample_rate, sample_rate)
    spec = np.zeros(n // 2 + 1, np.complex128)
    budget = math.ceil(window_seconds * sample_rate / block)  # non-silent raw blocks to use
    for b0 in range(0, length, block):
        x = read_segment(ri.path, b0, min(block, length - b0), sample_rate, 1, ri)[0]
        if not x.any():
            continue
        y = read_segment(mi.path, b0 - max_lag, block + 2 * max_lag, sample_rate, 1, mi)[0]
        spec += _cross_spectrum(x, y, n)
        budget -= 1
        if budget <= 0:
            break
    return _phat_peak(spec, n, max_lag, sample_rate)


def envelope_db(info: AudioInfo, sample_rate: int, offset: int, length: int, hop: int) -> list[float]:
    """Mean power (dBFS, 0.01 dB steps) per `hop` samples of the mono file at `sample_rate` (Hz),
    over samples [offset, offset + length); streamed, so memory is one block plus the envelope."""
    nh = math.ceil(length / hop)
    energy = np.zeros(nh)
    pos = -offset  # envelope position of the next streamed sample
    for chunk in mono_stream(info, sample_rate):
        lo, hi = max(pos, 0), min(pos + len(chunk), length)
        if hi > lo:
            k0 = lo // hop
            part = np.bincount(np.arange(lo, hi) // hop - k0, weights=chunk[lo - pos:hi - pos].astype(np.float64) ** 2)
            energy[k0:k0 + len(part)] += part
        pos += len(chunk)
        if pos >= length:
            break
    counts = np.full(nh, float(hop))
    counts[-1] = length - (nh - 1) * hop
    return np.round(10 * np.log10(np.maximum(energy / counts, 1e-12)), 2).tolist()


def prepare_song(pair: SongPair, sample_rate: int = 48000, max_lag_seconds: float = 0.5,
                 stats: bool = False) -> SongInfo:
    """Validate and align one song, streaming both files (memory does not grow with the length).

    DataError (naming the file) for an unreadable, empty, NaN/Inf or silent file, a mixed file with
    more than 2 channels, or raw and mixed that do not overlap after alignment. The lag comes from
    the first `LAG_WINDOW_SECONDS` of non-silent raw audio. With `stats`, also measures loudness
    (LUFS) and peak (dBFS) of both native files.
    """
    ri, mi = audio_info(pair.raw_path), audio_info(pair.mixed_path)
    if mi.channels > 2:
        raise DataError(f"the mixed file has {mi.channels} channels; expected mono or stereo", pair.mixed_path,
                        "export the mixed vocal as a stereo (or mono) file")
    found = {}
    for what, info in (("raw", ri), ("mixed", mi)):
        pk, lufs, mono_lufs = scan_file(info, what, loudness=stats, mono_loudness=what == "raw")
        if what == "raw":
            raw_peak, raw_lufs = pk, mono_lufs
        if stats:
            found[f"{what}_peak_db"], found[f"{what}_lufs"] = pk, lufs
    lag, score = file_lag(ri, mi, sample_rate, max_lag_seconds)
    raw_offset, mixed_offset = max(-lag, 0), max(lag, 0)
    length = min(resampled_length(ri.frames, ri.sample_rate, sample_rate) - raw_offset,
                 resampled_length(mi.frames, mi.sample_rate, sample_rate) - mixed_offset)
    if length <= 0:
        raise DataError(f"raw and mixed do not overlap after aligning them (lag {1000 * lag / sample_rate:.1f} ms)",
                        pair.mixed_path, "check that the mixed file belongs to this raw vocal")
    hop = max(1, int(round(HOP_SECONDS * sample_rate)))
    env_db = envelope_db(ri, sample_rate, raw_offset, length, hop)
    return SongInfo(pair.name, str(pair.raw_path), str(pair.mixed_path), int(sample_rate), ri.sample_rate,
                    mi.sample_rate, ri.channels, mi.channels, ri.frames, mi.frames, int(lag), round(score, 3),
                    raw_offset, mixed_offset, int(length), hop, env_db, found or None, round(raw_peak, 3),
                    round(float(raw_lufs), 4))


def _cache_key(pair: SongPair, sample_rate: int, max_lag_seconds: float) -> str:
    parts = [_CACHE_VERSION, sample_rate, max_lag_seconds, HOP_SECONDS]
    for p in (pair.raw_path, pair.mixed_path):
        st = os.stat(p)
        parts += [os.path.abspath(p), st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def index_songs(root: str | os.PathLike, sample_rate: int = 48000, max_lag_seconds: float = 0.5,
                allow_unmatched: bool = False, cache_dir: str | os.PathLike | None = None,
                progress: bool = True, skip_hint: str | None = None) -> list[SongInfo]:
    """Pair, validate and align every song of `root`; each song is analysed once.

    Results are memoised in this process and, if `cache_dir` is given, in
    `cache_dir/alignment.json` (keyed by path, size and mtime of both files, rate and lag window),
    so a second run or another split does not re-read the audio. Nothing is written next to the
    data. All unusable songs are reported together in one DataError. `skip_hint`: see `index_pairs`.
    """
    from mst_single.fileio import write_json
    from mst_single.progress import progress as progress_bar

    pairs = index_pairs(root, allow_unmatched, skip_hint)
    cache_path = Path(cache_dir) / "alignment.json" if cache_dir else None
    disk: dict = {}
    if cache_path and cache_path.exists():
        try:
            disk = json.loads(cache_path.read_text())["songs"]
        except (ValueError, KeyError, OSError):
            disk = {}  # a damaged cache is rebuilt, not an error
    songs, errors, changed = [], [], False
    bar = progress_bar(pairs, desc="analysing songs", unit="songs", enabled=progress and len(pairs) >= 8, leave=False)
    for pair in bar:
        key = _cache_key(pair, sample_rate, max_lag_seconds)
        if key not in _MEMO and key in disk:
            _MEMO[key] = SongInfo(**disk[key])
        if key not in _MEMO:
            try:
                _MEMO[key] = prepare_song(pair, sample_rate, max_lag_seconds)
            except DataError as e:
                errors.append(e)
                continue
        if key not in disk:
            disk[key], changed = asdict(_MEMO[key]), True
        songs.append(_MEMO[key])
    if cache_path and changed:
        write_json(cache_path, {"version": _CACHE_VERSION, "songs": disk}, indent=None)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        lines = "\n".join(f"  {e.path}: {e.problem}" for e in errors)
        raise DataError(f"{len(errors)} of {len(pairs)} songs are unusable:\n{lines}", root,
                        f"fix or remove these files; `mst-single check-data {root}` prints a full report")
    return songs


def song_loudness(song: SongInfo) -> float:
    """`song.raw_lufs`, measured now (and stored on `song`) if the SongInfo was built without it."""
    if song.raw_lufs is None:
        song.raw_lufs = round(float(scan_file(song.raw_info(), "raw", mono_loudness=True)[2]), 4)
    return song.raw_lufs


def song_descriptors(song: SongInfo) -> np.ndarray:
    """`song.descriptors` (13,) float32 of the whole native raw file (mono downmix, its own rate; the
    same numbers `mix` measures), computed now (and kept on `song`) if not yet known."""
    if song.descriptors is None:
        from mst_single.descriptors import DescriptorMeter

        info = song.raw_info()
        meter = DescriptorMeter(info.sample_rate)
        for x in native_blocks(info):
            meter.update(x.mean(axis=0))
        song.descriptors = [float(v) for v in meter.result()]
    return np.asarray(song.descriptors, np.float32)


def house_loudness(songs: list[SongInfo]) -> float:
    """The median integrated loudness (LUFS) of the songs' mixed files, silent ones left out.
    `model.match_loudness` and the descriptor-ridge baseline mix every song at it (experiments/e08).

    Raises:
        DataError: every mixed file is silent, naming the folder that holds them.
    """
    from mst_single.loudness import SILENCE_LUFS, integrated_loudness

    values = [v for v in (integrated_loudness(*load_audio(s.mixed_path)) for s in songs) if v > SILENCE_LUFS]
    if not values:
        where = Path(songs[0].mixed_path).parent if songs else None
        raise DataError("every training mix is silent: no house loudness to learn", where,
                        "check the mixed files (`mst-single check-data DATA`)")
    return float(np.median(values))


def load_aligned(song: SongInfo) -> tuple[np.ndarray, np.ndarray]:
    """Full-length aligned audio of one song: (raw (1, N), mixed (2, N)) float32 at song.sample_rate."""
    raw = read_segment(song.raw_path, song.raw_offset, song.length, song.sample_rate, 1, song.raw_info())
    mixed = read_segment(song.mixed_path, song.mixed_offset, song.length, song.sample_rate, 2, song.mixed_info())
    return raw, mixed
