"""Procedural singing-voice synthesiser for the embedded demo data (numpy/scipy only).

A source-filter model: a band-limited glottal pulse train (Rosenberg flow derivative, polyBLEP at the
closure step) follows a sung pitch contour (scale notes, portamento, delayed vibrato, jitter,
drift); it and aspiration noise are shaped by five formant resonances that move between vowels; noise
consonants (fricatives, plosive bursts, ``h``) start syllables; phrases are separated by quiet
breaths and silences. The time-varying filters are applied in the STFT domain (one multiplication
per frame), which keeps a 20 s song at 48 kHz well under a second on one core.

A :class:`Take` (optional) varies what a recording adds beyond the singer: how dynamic the
singing is (syllable accents, phrase levels, a song-long quiet-verse/loud-chorus arc), how dense the
phrasing is (pause lengths, phrase lengths), the microphone/room colour (spectral tilt, a chest or
proximity resonance) and how strong the consonants are. Without one, :func:`sing` is unchanged
(the house demo data stays byte-identical).

Public API: :class:`Voice`, :data:`VOICES`, :class:`Take`, :func:`random_take`, :func:`sing`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sp_fft
from scipy import signal


@dataclass(frozen=True)
class Voice:
    """One singer.

    Args:
        name: ASCII identifier (used in song names).
        f0_low_hz, f0_high_hz: the singable range (Hz); melodies stay inside it.
        formant_scale: formant frequencies relative to the (tenor) vowel table; ~0.9 bass .. ~1.2 soprano.
        breathiness: aspiration noise mixed into voiced sound, 0 (pressed) .. 1 (very breathy).
        vibrato_rate_hz: vibrato rate (Hz), typically 5-6.
        vibrato_depth_semitones: peak vibrato excursion (semitones).
        jitter: relative cycle-to-cycle f0 perturbation (std, e.g. 0.004 = 0.4 %).
        shimmer: relative amplitude perturbation (std).
        brightness: 0..1, how much loud notes sharpen the glottal closure (more high harmonics).
    """

    name: str
    f0_low_hz: float
    f0_high_hz: float
    formant_scale: float
    breathiness: float
    vibrato_rate_hz: float
    vibrato_depth_semitones: float
    jitter: float = 0.004
    shimmer: float = 0.05
    brightness: float = 0.6


VOICES: dict[str, Voice] = {v.name: v for v in (
    Voice("bass", 82.0, 294.0, 0.90, 0.10, 5.0, 0.35, jitter=0.005, brightness=0.5),
    Voice("baritone", 98.0, 370.0, 0.95, 0.12, 5.3, 0.40),
    Voice("tenor", 131.0, 440.0, 1.00, 0.15, 5.6, 0.45, brightness=0.8),
    Voice("alto", 175.0, 622.0, 1.10, 0.28, 5.4, 0.40),
    Voice("mezzo", 196.0, 698.0, 1.14, 0.45, 5.8, 0.25, shimmer=0.06),  # breathy pop voice, light vibrato
    Voice("soprano", 247.0, 880.0, 1.20, 0.20, 5.9, 0.55, jitter=0.003, brightness=0.7),
)}

@dataclass(frozen=True)
class Take:
    """How one recording sounds beyond the singer (every field is stable along the song).

    Args:
        dynamics: 0 (even) .. 1 (very dynamic): syllable levels (std 0.3 .. 5.5 dB, accents 0 .. 9 dB),
            swells within notes (+-0.5 .. 6 dB), phrase levels (spread 2 .. 10 dB) and the depth of the
            song-long arc all grow with it.
        arc_db: depth (dB) of the song-long level arc (quiet verse, loud chorus).
        arc_shape: 0 crescendo, 1 verse/chorus step, 2 arch (loud middle), 3 decrescendo.
        density: 0 (sparse: short, slow, detached phrases, up to 0.35 s of silence between
            syllables, pauses of 1.2-2.8 s) .. 1 (dense: long, quick, legato phrases, pauses of
            0.1-0.3 s).
        tilt_db_per_octave: microphone/room colour, a spectral tilt around 1 kHz (dB/octave;
            negative = dull, positive = bright), limited to +-15 dB.
        chest_db, chest_hz, chest_q: a resonance added to the take (dB, Hz, Q): chest voice,
            proximity effect or a boomy room.
        consonant_db: level of the noise consonants relative to the voice's usual level (dB).
    """

    dynamics: float = 0.5
    arc_db: float = 0.0
    arc_shape: int = 0
    density: float = 0.5
    tilt_db_per_octave: float = 0.0
    chest_db: float = 0.0
    chest_hz: float = 250.0
    chest_q: float = 1.0
    consonant_db: float = 0.0


def random_take(rng: np.random.Generator, voice: Voice | str) -> tuple[Voice, Take]:
    """A singer varied from ``voice`` (formants +-5 %, breathiness, brightness, vibrato) and a
    random :class:`Take`, both from ``rng`` alone. Fields are drawn so that songs spread widely
    in brightness, boominess, dynamics and phrase density."""
    if isinstance(voice, str):
        voice = VOICES[voice]
    v = Voice(voice.name, voice.f0_low_hz, voice.f0_high_hz,
              formant_scale=round(voice.formant_scale * rng.uniform(0.95, 1.05), 4),
              breathiness=round(rng.uniform(0.05, 0.5), 3),
              vibrato_rate_hz=round(rng.uniform(4.8, 6.2), 3),
              vibrato_depth_semitones=round(rng.uniform(0.2, 0.6), 3),
              jitter=round(rng.uniform(0.002, 0.006), 4), shimmer=round(rng.uniform(0.03, 0.07), 3),
              brightness=round(rng.uniform(0.3, 0.95), 3))
    dyn = float(rng.uniform(0.0, 1.0))
    t = Take(dynamics=round(dyn, 3), arc_db=round(float(dyn * rng.uniform(2.0, 10.0)), 2),
             arc_shape=int(rng.integers(4)), density=round(float(rng.uniform(0.0, 1.0)), 3),
             tilt_db_per_octave=round(float(rng.uniform(-4.0, 2.0)), 2),
             chest_db=round(float(rng.uniform(0.0, 12.0)), 2),
             chest_hz=round(float(np.exp(rng.uniform(np.log(120.0), np.log(400.0)))), 1),
             chest_q=round(float(rng.uniform(0.7, 1.5)), 2), consonant_db=round(float(rng.uniform(-6.0, 4.0)), 2))
    return v, t


# Formant table (tenor; frequencies Hz, levels dB re F1, bandwidths Hz) for the vowels, plus the nasal
# murmurs m/n (strong low resonance, weak upper formants). Published singing-voice measurements.
_ARTIC = ("a", "e", "i", "o", "u", "m", "n")
_F = np.array([[650, 1080, 2650, 2900, 3250], [400, 1700, 2600, 3200, 3580], [290, 1870, 2800, 3250, 3540],
               [400, 800, 2600, 2800, 3000], [350, 600, 2700, 2900, 3300],
               [250, 1000, 2200, 2900, 3500], [250, 1500, 2500, 3200, 3700]], dtype=np.float64)
_A = np.array([[0, -6, -7, -8, -22], [0, -14, -12, -14, -20], [0, -15, -18, -20, -30],
               [0, -10, -12, -12, -26], [0, -20, -17, -14, -26],
               [0, -24, -30, -36, -40], [0, -22, -28, -34, -40]], dtype=np.float64)
_B = np.array([[80, 90, 120, 130, 140], [70, 80, 100, 120, 120], [40, 90, 100, 120, 120],
               [40, 80, 100, 120, 120], [40, 60, 100, 120, 120],
               [60, 150, 200, 200, 250], [60, 150, 200, 200, 250]], dtype=np.float64)
_VOWELS = (0, 1, 2, 3, 4)
_VOWEL_P = np.array([0.3, 0.2, 0.18, 0.2, 0.12])

# Unvoiced consonant noise shapes: (centre Hz, width in octaves, level dB re the voiced level).
_CONS = {"s": (7000.0, 0.45, -16.0), "sh": (3000.0, 0.6, -17.0), "f": (4500.0, 1.6, -26.0),
         "t": (4500.0, 1.0, -9.0), "k": (2200.0, 0.8, -11.0), "p": (1000.0, 1.4, -15.0)}
_CONS_NAMES = tuple(_CONS)
_ONSETS = ("", "m", "n", "s", "sh", "f", "p", "t", "k", "h", "l")
_ONSET_P = np.array([0.22, 0.12, 0.08, 0.1, 0.07, 0.06, 0.07, 0.1, 0.07, 0.05, 0.06])

_SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9), (0, 3, 5, 7, 10))


def sing(seconds: float, sample_rate: int, voice: Voice | str, rng: np.random.Generator,
         take: Take | None = None) -> np.ndarray:
    """Synthesise ``seconds`` of a cappella singing.

    Args:
        seconds: duration (s).
        sample_rate: Hz (works from 16 kHz up).
        voice: a :class:`Voice` or the name of one in :data:`VOICES`.
        rng: the only source of randomness (same generator state -> same samples).
        take: how the recording varies (:class:`Take`); None keeps the original, take-less
            synthesis sample for sample.

    Returns:
        (samples,) float32, peak-normalised to -6 dBFS; phrase levels vary by several dB, and a
        room-tone floor around -75 dBFS fills the silences.
    """
    if isinstance(voice, str):
        voice = VOICES[voice]
    sr = int(sample_rate)
    n = int(round(seconds * sr))
    if n <= 0:
        return np.zeros(0, np.float32)
    ctl = _controls(_plan(seconds, voice, rng, take), n, sr, voice, rng,
                    take.consonant_db if take is not None else 0.0)

    n_fft = 2 ** int(round(np.log2(0.04 * sr)))
    hop = n_fft // 4
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    centres = np.clip(np.arange(_frames(n, n_fft, hop)) * hop - n_fft // 2, 0, n - 1)  # frame centres
    fenv = _formant_envelope(ctl, centres, freqs, sr, hop, voice)

    glottal, flow = _glottal(ctl["f0"], ctl["amp_v"], voice.brightness, sr)
    g = ctl["amp_v"] * (1.0 + voice.shimmer * _smooth_noise(n, sr, 0.004, rng)) * glottal
    # Aspiration (breathiness: noise pulsed by the glottal flow; 'h' and plosive release: steady)
    # is shaped by the same formants; consonant noise by its own band shapes.
    asp = _hp(rng.standard_normal(n), sr) * (voice.breathiness * 0.12 * ctl["amp_v"] * (0.35 + 0.65 * flow)
                                               + ctl["amp_h"])
    cons = rng.standard_normal(n) * ctl["amp_c"]
    X = _stft(np.stack([g, asp, cons]), n_fft, hop)  # (3, frames, bins)

    # Scale the voiced part so its RMS equals the amplitude envelope: every other level is relative
    # to singing. Filter gain from frame energies (Parseval), source RMS from the time signal.
    loud = ctl["amp_v"] > 0.3 * max(ctl["amp_v"].max(), 1e-9)
    loud_fr = loud[centres]
    gain_v = 1.0
    if loud.any() and loud_fr.any():
        e_in = np.mean(np.abs(X[0, loud_fr]) ** 2)
        e_out = np.mean(np.abs(X[0, loud_fr] * fenv[loud_fr]) ** 2)
        src = np.sqrt(np.mean(g[loud] ** 2)) / ctl["amp_v"][loud].mean()
        gain_v = 1.0 / (np.sqrt(e_out / e_in) * src + 1e-12)
    fenv_n = fenv / np.sqrt(np.mean(fenv ** 2, axis=1, keepdims=True))  # noise level == its envelope
    shapes = np.stack([np.zeros_like(freqs)] + [_cons_shape(freqs, c, voice, sr) for c in _CONS_NAMES])
    Y = X[0] * (fenv * gain_v) + X[1] * fenv_n + X[2] * shapes[ctl["ctype"][centres]]
    if take is not None:
        Y = Y * _colour(freqs, take)[None, :].astype(np.float32)
    y = _istft(Y, n_fft, hop, n)

    sos = signal.butter(2, [350.0, min(2800.0, 0.45 * sr)], "bandpass", fs=sr, output="sos")
    breath = signal.sosfilt(sos, rng.standard_normal(n))
    breath *= ctl["amp_b"] / (np.sqrt(np.mean(breath ** 2)) + 1e-12)

    y = y + breath
    y *= 10 ** (-6.0 / 20) / (np.abs(y).max() + 1e-12)
    floor = signal.sosfilt(signal.butter(1, min(4000.0, 0.4 * sr), fs=sr, output="sos"), rng.standard_normal(n))
    y += floor * (10 ** (-75.0 / 20) / (np.sqrt(np.mean(floor ** 2)) + 1e-12))
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# score: phrases of syllables (onset consonant, vowel, note) separated by breaths and silences

def _plan(seconds: float, voice: Voice, rng: np.random.Generator, take: Take | None = None) -> dict:
    # Without a take: the original constants (and the same random draws, in the same order).
    if take is None:
        spread, syl_std, accent, swell, gaps, counts, arc = 9.0, 1.5, 2.5, 3.0, (0.25, 0.9), (3, 9), None
        pace, detached = (0.8, 1.25), 0.0
    else:
        # Dynamics and density show within a few seconds too: syllable levels and swells, and the
        # pace of the syllables, not only phrase levels and pause lengths.
        d, p = take.dynamics, take.density
        spread, syl_std, accent, swell = 2.0 + 8.0 * d, 0.3 + 5.2 * d, 9.0 * d, 0.5 + 5.5 * d
        gaps = (0.1 + 1.1 * (1 - p), 0.3 + 2.5 * (1 - p))
        counts = (2 + int(round(4 * p)), 6 + int(round(7 * p)))
        pace = (1.3 - 0.5 * p, 1.45 - 0.5 * p)  # sparse songs are slow too
        detached = 1.0 - p
        arc = (take.arc_db, take.arc_shape)
    lo, hi = 69 + 12 * np.log2(voice.f0_low_hz / 440), 69 + 12 * np.log2(voice.f0_high_hz / 440)
    scale = _SCALES[rng.integers(len(_SCALES))]
    span = min(14.0, hi - lo - 3)  # a song uses a comfortable part of the range
    bottom = rng.uniform(lo + 1, hi - 1 - span)
    tonic = np.floor(bottom)
    pitches = np.array([tonic + 12 * o + s for o in range(-1, 3) for s in scale], dtype=np.float64)
    pitches = pitches[(pitches >= bottom) & (pitches <= bottom + span)]
    tempo = rng.uniform(*pace)  # syllable-length scale

    phrases, breaths = [], []
    t = rng.uniform(0.2, 0.6)
    idx = int(rng.integers(0, max(1, len(pitches) // 2)))
    end_limit = seconds - 0.4
    while t < end_limit - 1.0:
        if phrases or rng.random() < 0.6:
            bd = rng.uniform(0.25, 0.5)
            breaths.append((t, t + bd, rng.uniform(-34.0, -26.0)))
            t += bd + rng.uniform(0.05, 0.15)
        level = rng.uniform(-spread, 0.0)  # phrase dynamics: the compressor has something to do
        if arc is not None:
            level += _arc_db(t / seconds, *arc)
        sylls = []
        count = int(rng.integers(*counts))
        for k in range(count):
            last = k == count - 1
            dur = tempo * (rng.uniform(0.6, 1.5) if last else
                           (rng.uniform(0.45, 1.0) if rng.random() < 0.35 else rng.uniform(0.18, 0.38)))
            if t + dur > end_limit:
                if k >= 2:
                    break
                dur = end_limit - t
                if dur < 0.15:
                    break
            step = rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3, 4, -4])
            if last and rng.random() < 0.5:  # phrase ends resolve to the tonic
                tonics = np.flatnonzero((pitches - tonic) % 12 == 0)
                if tonics.size:
                    step = int(tonics[np.argmin(np.abs(tonics - idx))]) - idx
            idx = int(np.clip(idx + step, 0, len(pitches) - 1))
            onset = _ONSETS[rng.choice(len(_ONSETS), p=_ONSET_P)]
            vowel = int(rng.choice(_VOWELS, p=_VOWEL_P))
            vowel2 = int(rng.choice(_VOWELS, p=_VOWEL_P)) if dur > 0.45 and rng.random() < 0.3 else vowel
            sylls.append(dict(start=t, end=t + dur, onset=onset, vowel=vowel, vowel2=vowel2,
                              midi=pitches[idx],
                              db=level + rng.normal(0, syl_std) + (accent if rng.random() < 0.2 else 0),
                              swell=rng.uniform(-swell, swell), glide=rng.uniform(0.04, 0.12)))
            t += dur
            if detached and not last:  # sparse singers leave short silences between syllables too
                t += detached * rng.uniform(0.0, 0.35)
        if not sylls:
            break
        coda = rng.choice(["", "", "", "s", "t"])
        if coda and t + 0.15 < seconds:
            sylls[-1]["coda"] = coda
            t += 0.12
        phrases.append(dict(sylls=sylls, level=level, scoop=rng.uniform(0.5, 2.0),
                            fall=rng.uniform(0.5, 3.0) if rng.random() < 0.4 else 0.0))
        t += rng.uniform(*gaps)
    return dict(phrases=phrases, breaths=breaths)


def _arc_db(x: float, depth_db: float, shape: int) -> float:
    """Song-long level offset (dB, <= 0) at position x in [0, 1] of the song."""
    if shape == 0:
        u = x  # crescendo
    elif shape == 1:
        u = 1.0 / (1.0 + np.exp(-(x - 0.5) * 20.0))  # quiet verse, loud chorus
    elif shape == 2:
        u = np.sin(np.pi * x)  # arch
    else:
        u = 1.0 - x  # decrescendo
    return float(depth_db * (u - 1.0))


def _colour(freqs: np.ndarray, take: Take) -> np.ndarray:
    """Linear gain (bins,) of a take's microphone/room colour: tilt around 1 kHz + chest resonance."""
    f = np.maximum(freqs, 20.0)
    tilt_db = np.clip(take.tilt_db_per_octave * np.log2(f / 1000.0), -15.0, 15.0)
    # a peaking resonance on a log-frequency axis: Gaussian in octaves, width from Q
    width_oct = 1.0 / (take.chest_q * 2.0)
    chest_db = take.chest_db * np.exp(-0.5 * (np.log2(f / take.chest_hz) / width_oct) ** 2)
    return 10 ** ((tilt_db + chest_db) / 20.0)


def _controls(plan: dict, n: int, sr: int, voice: Voice, rng: np.random.Generator,
              consonant_db: float = 0.0) -> dict:
    """Sample-rate control signals: f0 (Hz), voiced amplitude, consonant/aspiration/breath amplitudes,
    articulation (formant table row) and consonant type per sample. consonant_db shifts the noise
    consonants' level (dB)."""
    midi = np.full(n, np.nan)
    gate = np.zeros(n)
    level = np.full(n, -40.0)
    vib_depth = np.zeros(n)
    amp_c, amp_h, amp_b = np.zeros(n), np.zeros(n), np.zeros(n)
    artic = np.zeros(n, np.int8)
    ctype = np.zeros(n, np.int8)
    bend = np.zeros(n)  # scoops and falls, semitones
    s = lambda sec: int(np.clip(round(sec * sr), 0, n))  # noqa: E731
    ext = int(0.03 * sr)  # > half an STFT window: every frame touching a consonant gets its noise shape
    prev_midi = None
    for ph in plan["phrases"]:
        sylls = ph["sylls"]
        for k, sy in enumerate(sylls):
            a, b = s(sy["start"]), s(sy["end"])
            v0 = a  # where voicing (the vowel) starts
            onset = sy["onset"]
            artic[a:b] = sy["vowel"]
            if sy["vowel2"] != sy["vowel"]:
                artic[a + (b - a) * 3 // 5:b] = sy["vowel2"]
            if onset in ("s", "sh", "f"):
                d = s(rng.uniform(0.07, 0.13))
                _bump(amp_c, a, a + d, _CONS[onset][2] + sy["db"] + consonant_db, s(0.02))
                ctype[max(0, a - ext):a + d + ext] = _CONS_NAMES.index(onset) + 1
                v0 = a + d
            elif onset in ("p", "t", "k"):
                clo, burst, asp = s(rng.uniform(0.03, 0.05)), s(rng.uniform(0.008, 0.015)), s(rng.uniform(0.02, 0.04))
                env = np.exp(-np.arange(len(amp_c[a + clo:a + clo + burst])) / max(1.0, burst / 3))
                amp_c[a + clo:a + clo + burst] = env * 10 ** ((_CONS[onset][2] + sy["db"] + consonant_db) / 20)
                ctype[max(0, a + clo - ext):a + clo + burst + ext] = _CONS_NAMES.index(onset) + 1
                _bump(amp_h, a + clo + burst, a + clo + burst + asp, -20 + sy["db"], s(0.008))
                v0 = a + clo + burst + asp
            elif onset == "h":
                d = s(rng.uniform(0.05, 0.09))
                _bump(amp_h, a, a + d, -17 + sy["db"], s(0.015))
                v0 = a + d
            elif onset in ("m", "n", "l"):
                d = s(rng.uniform(0.05, 0.09))
                artic[a:a + d] = _ARTIC.index(onset) if onset != "l" else 1  # 'l' ~ a dark 'e'-like murmur
                level[a:a + d] = sy["db"] - 9
            v0 = min(v0, b - 1)
            gate[v0:b] = 1.0
            level[v0:b] = np.linspace(sy["db"], sy["db"] + sy["swell"], b - v0)
            if onset in ("m", "n", "l"):
                gate[a:v0] = 1.0
            # pitch: the note from the syllable start; portamento around the vowel onset
            midi[a:b] = sy["midi"]
            if prev_midi is not None and k > 0:
                g = s(sy["glide"])
                c0 = max(a, v0 - g // 2)
                m = min(b - c0, g)
                x = np.linspace(0.0, 1.0, m)
                midi[c0:c0 + m] = prev_midi + (sy["midi"] - prev_midi) * (x * x * (3 - 2 * x))
            prev_midi = sy["midi"]
            # vibrato: only on held notes, delayed, fading in
            hold = (b - v0) / sr
            if hold > 0.35:
                d0 = v0 + s(rng.uniform(0.15, 0.3))
                ramp = min(s(0.25), b - d0)
                depth = voice.vibrato_depth_semitones * rng.uniform(0.7, 1.2)
                vib_depth[d0:d0 + ramp] = np.linspace(0, depth, ramp)
                vib_depth[d0 + ramp:b] = depth
            if k == 0:  # phrase onset: scoop up into the first note, soft attack
                g = s(rng.uniform(0.08, 0.15))
                bend[v0:v0 + g] -= ph["scoop"] * 0.5 * (1 + np.cos(np.linspace(0, np.pi, len(bend[v0:v0 + g]))))
                att = s(rng.uniform(0.06, 0.12))
                seg = level[v0:v0 + att]
                seg += np.linspace(-14.0, 0.0, len(seg))
            if k == len(sylls) - 1:  # phrase release: fade and maybe fall off the note
                rel = min(s(rng.uniform(0.1, 0.2)), b - v0)
                level[b - rel:b] += np.linspace(0.0, -18.0, rel)
                if ph["fall"]:
                    f = min(s(rng.uniform(0.15, 0.25)), b - v0)
                    bend[b - f:b] -= ph["fall"] * np.linspace(0, 1, f) ** 2
                if sy.get("coda"):
                    c = sy["coda"]
                    d = s(0.1 if c == "s" else 0.012)
                    c0 = b + s(0.01)
                    if c == "s":
                        _bump(amp_c, c0, c0 + d, _CONS["s"][2] + sy["db"] - 3 + consonant_db, s(0.02))
                    else:
                        burst = np.exp(-np.arange(len(amp_c[c0:c0 + d])) / 4.0)
                        amp_c[c0:c0 + d] = burst * 10 ** ((_CONS["t"][2] + sy["db"] + consonant_db) / 20)
                    ctype[max(0, c0 - ext):c0 + d + ext] = _CONS_NAMES.index(c) + 1
                    artic[b:c0 + d] = sy["vowel2"]
        prev_midi = None
    for t0, t1, db in plan["breaths"]:
        a, b = s(t0), s(t1)
        x = np.linspace(0, 1, b - a)
        amp_b[a:b] = 10 ** (db / 20) * np.sin(np.pi * x) ** 1.5 * (1 + 0.3 * np.sin(2 * np.pi * 3 * x))
        artic[a:b] = 3

    # hold the pitch through silences (no jumps in phase), then add expressive deviations
    valid = ~np.isnan(midi)
    if valid.any():
        held = np.maximum.accumulate(np.where(valid, np.arange(n), 0))
        held[:np.argmax(valid)] = np.argmax(valid)
        midi = midi[held]
    else:
        midi = np.full(n, 60.0)
    rate = voice.vibrato_rate_hz * (1 + 0.04 * _smooth_noise(n, sr, 0.3, rng))
    vib = _smooth(vib_depth, sr, 0.05) * np.sin(2 * np.pi * np.cumsum(rate) / sr + rng.uniform(0, 2 * np.pi))
    drift = 0.12 * _smooth_noise(n, sr, 0.4, rng)
    pitch = midi + _smooth(bend, sr, 0.02) + vib + drift
    f0 = 440.0 * 2 ** ((pitch - 69) / 12) * (1 + voice.jitter * _smooth_noise(n, sr, 0.005, rng))
    gate = _smooth(gate, sr, 0.025)
    amp_v = np.clip(gate, 0, 1) * 10 ** (_smooth(level, sr, 0.03) / 20)
    return dict(f0=f0, amp_v=amp_v, amp_c=amp_c, amp_h=amp_h, amp_b=amp_b, artic=artic, ctype=ctype)


def _bump(arr, a, b, db, ramp):
    """Write a plateau of level ``db`` over [a, b) with raised-cosine ramps of ``ramp`` samples."""
    m = len(arr[a:b])
    if m <= 0:
        return
    env = np.ones(m)
    r = max(1, min(ramp, m // 2))
    up = 0.5 * (1 - np.cos(np.linspace(0, np.pi, r)))
    env[:r], env[m - r:] = up, up[::-1]
    arr[a:b] = np.maximum(arr[a:b], env * 10 ** (db / 20))


def _smooth(x, sr, seconds):
    """Zero-phase smoothing over about ``seconds`` (two box filters = triangle), O(samples)."""
    m = max(1, int(seconds * sr / 2))
    for _ in range(2):
        c = np.cumsum(np.pad(x, (m, m), mode="edge"))
        x = (c[2 * m:] - c[:-2 * m]) / (2 * m)
    return x


def _smooth_noise(n, sr, step_s, rng):
    """Unit-ish std noise that changes every ``step_s`` seconds (linear interpolation)."""
    k = int(n / (step_s * sr)) + 2
    return np.interp(np.arange(n), np.linspace(0, n, k), rng.standard_normal(k))


def _hp(x, sr):
    return signal.sosfilt(signal.butter(2, min(1500.0, 0.3 * sr), "highpass", fs=sr, output="sos"), x)


# ---------------------------------------------------------------------------------------------
# source and filters

def _glottal(f0, amp, brightness, sr):
    """Rosenberg glottal-flow derivative (the radiated excitation) and the flow itself, (samples,).

    The only discontinuity is the step at glottal closure; a polyBLEP residual there keeps aliasing
    low. Louder notes close faster (shorter closing phase), which brightens them as in real voices.
    """
    dphi = f0 / sr
    phi = np.cumsum(dphi) % 1.0
    loud = np.clip(amp / (amp.max() + 1e-12), 0, 1)
    tp = 0.42
    tn = 0.2 - 0.11 * brightness * loud
    out = np.zeros_like(phi)
    flow = np.zeros_like(phi)
    o = phi < tp
    out[o] = np.pi / (2 * tp) * np.sin(np.pi * phi[o] / tp)
    flow[o] = 0.5 * (1 - np.cos(np.pi * phi[o] / tp))
    c = (phi >= tp) & (phi < tp + tn)
    arg = np.pi * (phi[c] - tp) / (2 * tn[c])
    out[c] = -np.pi / (2 * tn[c]) * np.sin(arg)
    flow[c] = np.cos(arg)
    h = np.pi / (2 * tn)  # step up at closure
    d = (phi - (tp + tn)) / dphi
    after = (d >= 0) & (d < 1)
    before = (d > -1) & (d < 0)
    out[after] -= 0.5 * h[after] * (1 - d[after]) ** 2
    out[before] += 0.5 * h[before] * (1 + d[before]) ** 2
    return out, flow


def _formant_envelope(ctl, centres, freqs, sr, hop, voice):
    """Spectral envelope (frames, bins): sum of five resonances of the current (smoothed) vowel."""
    art = ctl["artic"][centres]
    k = max(1, int(round(0.05 * sr / hop))) | 1  # ~50 ms transitions between vowels
    w = signal.windows.hann(k + 2)[1:-1]
    w /= w.sum()

    def sm(x):  # (frames, 5) smoothed along time
        return np.stack([np.convolve(np.pad(c, (k // 2, k // 2), mode="edge"), w, "valid") for c in x.T], 1)

    F = np.exp(sm(np.log(_F[art]))) * voice.formant_scale
    B = sm(_B[art]) * voice.formant_scale
    A = sm(_A[art])
    # high voices raise F1 to stay above the fundamental (sopranos' resonance tuning)
    F[:, 0] = np.maximum(F[:, 0], 1.1 * ctl["f0"][centres])
    F = np.minimum(F, 0.45 * sr)
    f = freqs[None, :].astype(np.float32)
    F, B, A = F.astype(np.float32), B.astype(np.float32), A.astype(np.float32)
    env = np.full((len(centres), len(freqs)), 10 ** (-50 / 20), np.float32)
    for i in range(F.shape[1]):
        Fi, Bi = F[:, i:i + 1], B[:, i:i + 1]
        env += 10 ** (A[:, i:i + 1] / 20) * Fi * Bi / np.sqrt((Fi ** 2 - f ** 2) ** 2 + (Bi * f) ** 2)
    # gentle "air" above the formants, as microphones pick up on real voices
    env += 10 ** (-40 / 20) * (f / 8000.0) / (1 + (f / 8000.0) ** 2)
    return env


def _cons_shape(freqs, name, voice, sr):
    """Unit-energy noise spectrum (bins,) of an unvoiced consonant: log-Gaussian band."""
    fc, width, _ = _CONS[name]
    fc = min(fc * np.sqrt(voice.formant_scale), 0.42 * sr)
    lf = np.log2(np.maximum(freqs, 20.0) / fc)
    shape = np.exp(-0.5 * (lf / width) ** 2) + 1e-3
    return shape / np.sqrt(np.mean(shape ** 2))


def _frames(n, n_fft, hop):
    return (n + 2 * n_fft - n_fft) // hop + 1


def _stft(x, n_fft, hop):
    """(..., samples) -> (..., frames, bins) complex64, periodic Hann, padded by n_fft on both sides."""
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft, n_fft)]
    fr = sliding_window_view(np.pad(x.astype(np.float32), pad), n_fft, axis=-1)[..., ::hop, :]
    return sp_fft.rfft(fr * _win(n_fft), axis=-1)


def _istft(X, n_fft, hop, n):
    """Weighted overlap-add inverse of :func:`_stft` (Hann^2 at 75 % overlap sums to 1.5)."""
    fr = sp_fft.irfft(X.astype(np.complex64), n=n_fft, axis=-1) * _win(n_fft)
    out = np.zeros(fr.shape[0] * hop + n_fft)
    r = n_fft // hop
    for i in range(r):  # frames i, i+r, ... tile the signal without overlap
        flat = fr[i::r].reshape(-1)
        out[i * hop:i * hop + flat.size] += flat
    return out[n_fft:n_fft + n] / 1.5


def _win(n_fft):
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
