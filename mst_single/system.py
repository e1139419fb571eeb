"""The training system: controller network + differentiable vocal console + MR-STFT/L1 loss.

`VocalMST` is the LightningModule behind `mst-single fit|validate|test` (its `__init__` arguments are
the YAML `model:` section). One step:

    raw (batch, 1, samples) --loudness-normalise to target_lufs--> x
    p = controller(x, reference)            (batch, num_params) in [0, 1]
    output = console(x, p)                  (batch, 2, samples)  [or a crop: loss_crop_seconds]
    loss = MRSTFTL1Loss(output, mixed)      {"loss", "mrstft", "l1"}
         (+ param_loss_weight * |p - oracle setting of the song|, when the data carries one)

Why normalise the raw input: raw vocals arrive at arbitrary recording levels. Bringing every input
to `target_lufs` (integrated loudness, BS.1770) before the network *and* the console gives the
gain, threshold and makeup parameters a fixed meaning ("-18 dB threshold" is relative to a -23 LUFS
vocal, whatever the recording level was), and makes the network's job level-independent. The
gain is that of the *whole song* (`raw_lufs`, measured once by the data layer; `mix` and the
evaluation measure the whole file the same way, `loudness.song_gain_db`): a quiet verse stays
quieter than the chorus, exactly as the console will see it when the song is mixed. The mixed
target is not normalised: its level is part of the style to learn (output gain).
"""
from __future__ import annotations

import math
import os
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from mst_single.console import VocalConsole
from mst_single.descriptors import DESCRIPTOR_CLIP, NUM_DESCRIPTORS, descriptor_stats
from mst_single.errors import MstError
from mst_single.losses import MRSTFTL1Loss
from mst_single.loudness import match_level_torch, normalize_loudness
from mst_single.models import APPROACHES, build_controller, count_parameters
from mst_single.style import RIDGE_FEATURES

# model.house_preset's fit: the `cpu` budget's mean-preset settings (experiments/base.yaml), whose
# patience was raised after a shorter one stopped a fold far from converged; segment: data.segment_seconds.
# Seed 0, as the baselines': one preset per training set whatever the run's seed, so that the runs of a
# fold and the `mean-preset` baseline share one fit (cached in data.cache_dir)
HOUSE_PRESET_FIT = dict(max_steps=500, patience=60, min_delta=0.001, lr=0.05, batch_size=8)
HOUSE_PRESET_SEED = 0

# Parameter targets come from two commands; naming only ablate strands the user who made them with `targets`.
TARGETS_FROM = "`mst-single targets DATA -o TARGETS.json` makes them for a folder; `mst-single ablate` fits its own per fold"
REFIT_FOR_CONSOLE = ("refit them for this model's console: `mst-single targets DATA -o TARGETS.json --sample-rate RATE` "
                     "fits the console with every stage on; for a model with stages off (model.stages), rerun "
                     "`mst-single ablate`, which fits the stages each variant trains")


def house_preset_fit(console, songs, target_lufs: float, segment_seconds: float, silence_threshold_db: float,
                     cache_dir=None, refit: bool = False):
    """``model.house_preset``'s fit over the training ``songs`` (``baselines.fit_mean_preset`` at
    :data:`HOUSE_PRESET_FIT`, seed :data:`HOUSE_PRESET_SEED`; cached in ``cache_dir`` when given) -> (p (1, P), FitInfo).
    `ablate` calls it for every fold before the runs start (``runner.prepare_house_presets``)."""
    from mst_single.experiments.baselines import fit_mean_preset

    return fit_mean_preset(console, songs, target_lufs=float(target_lufs), seed=HOUSE_PRESET_SEED,
                           budget=dict(HOUSE_PRESET_FIT, segment_seconds=float(segment_seconds)),
                           silence_threshold_db=silence_threshold_db, desc="house preset", cache_dir=cache_dir,
                           refit=refit)


class VocalMST(pl.LightningModule):
    """Controller + console + loss, for Approach 1 (reference-based) or Approach 2 (house style).

    Args:
        approach: "approach1" (raw + reference mix -> parameters) or "approach2" (raw -> parameters;
            any reference in the batch is ignored).
        sample_rate: rate of the audio the model sees (Hz); linked to `data.sample_rate` by the CLI.
        stages: console stages to switch on/off, e.g. {"reverb": false}; None = all on.
        encoder: keyword arguments of the audio encoder (see `mst_single.models.AudioEncoder`).
        hidden: width of the controller's hidden layers.
        dropout: dropout of the controller's MLP head.
        loss: keyword arguments of `MRSTFTL1Loss` (fft_sizes, hop_sizes, win_lengths, l1_weight, ...).
        target_lufs: integrated loudness (LUFS) the raw input is normalised to before the network and
            the console, so that gain parameters have a fixed meaning (see the module docstring).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: "cosine" (decay to `lr * min_lr_ratio` over the run, after `warmup_steps` linear
            warm-up) or "none" (constant after warm-up).
        warmup_steps: optimizer steps of linear warm-up.
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of `lr`.
        log_audio_every_n_epochs: write audio/spectrogram/parameter examples of a few validation
            segments every N epochs (0 = never); see `mst_single.callbacks.ExamplesCallback`.
        num_log_examples: how many validation segments to write each time.
        head_init_scale: factor on the controller's output-layer weights at initialisation (1 =
            PyTorch's default; 0.01 was the recipe before experiments/e05, which collapsed).
        param_loss_weight: weight of an auxiliary L1 loss between the predicted parameters and each
            song's oracle setting (fitted once per training song, `data.param_targets`; `ablate`
            fits and caches them); 0 = the audio loss alone. The audio loss alone has a strong
            minimum at one preset for every song (issue 10, e05); the oracle targets say which way
            each song differs from it.
        synthetic_reference_prob: approach1 only: the share of training items whose target and
            reference are made by the console itself from a random setting p (target = the item's
            raw through p, reference = another item's raw through p, parameter target = p). A few
            hundred songs are only a few hundred styles to learn to read; synthetic pairs give a new
            style every item, with its exact setting. 0 = real pairs only.
        loss_crop_seconds: None = the console and the audio loss run on the whole segment. A number:
            they run on a crop of that many seconds of it (random per item in training, centred in
            validation), while the network still sees the whole segment. Decisions such as the
            compressor's and the reverb's depend on the take's level distribution and phrasing,
            which a 1.5 s segment barely shows; this buys the network a long view (e.g. 6 s
            segments) at the audio cost of a short one (experiments/e07).
        param_warmup_steps: the first N optimizer steps train on the parameter loss alone (console
            and audio loss skipped, ~15x cheaper per step); needs `param_loss_weight` > 0. 0 = off.
        match_loudness: the output level is not the network's to learn. In training and validation
            the console's output is scaled to the mixed target's K-weighted energy before the loss
            (so the loss ignores level, and no level parameter trades off against the others); when
            a song is mixed (`mix`, evaluation) the whole output is normalised to `house_lufs`, the
            median integrated loudness of the training songs' mixed files (measured when `fit`
            starts, saved in the checkpoint). For a producer who delivers every vocal at about the
            same loudness (experiments/e08). The `output_gain_db` parameter then carries the gain
            that lands the song there.
        take_descriptors: the controller also reads the song's 13 take descriptors
            (`mst_single.descriptors`: octave-band balance, spectral centroid, level spread, pause
            share, crest factor of the whole raw song), standardised by the training songs' mean
            and standard deviation (measured when `fit` starts, saved in the checkpoint), through a
            linear map (see `descriptor_init`) added to the head's logits. The data layer measures them
            once per song, `mix` on the whole input file (experiments/e10).
        descriptor_lr: learning rate of that linear map (None: `lr`); it has 13 x 30 weights, so it
            can take larger steps than the network.
        descriptor_init: where that map starts. "zero": nothing (the network begins as it would
            without descriptors). "ridge": at the ridge regression of the training songs' parameter
            targets (`data.param_targets`, logits) on their standardised descriptors, strength by
            leave-one-out (`descriptors.ridge_logits`), fitted when `fit` starts (not again when a
            run resumes); the network then learns what the descriptors leave (experiments/e12).
        style_ridge: approach1 only: when `fit` starts, also fit a ridge map from the style statistics of
            a reference relative to the raw (`style.fit_style_ridge`) on the console's own renders of the
            training and validation raws at `style_ridge_renders` random settings each (no mixes used),
            and keep it in the checkpoint; test-time refinement can then start from it instead of the
            network's prediction (`refine: {start: ridge}`, `mix --refine-start ridge`; e09 ridge-start).
            The network itself is trained as without it.
        house_preset: when `fit` starts, also fit one console setting over the training songs by the audio
            loss (the `mean-preset` baseline's fit, :func:`house_preset_fit`: `data.segment_seconds`, seed 0, cached
            in `data.cache_dir`) and keep it in
            the checkpoint (not refitted on resume). Test-time refinement mixes with it instead when the
            reference is not a mix of this vocal (`refine: {other_vocal: house}`, `mix --other-vocal house`):
            on data where each song is mixed on its own, another song's mix says nothing about this one's
            setting, and copying its sound was far worse than one preset (e09, e13; e17).
    """

    def __init__(
        self,
        approach: Literal["approach1", "approach2"] = "approach2",
        sample_rate: int = 48000,
        stages: dict[str, bool] | None = None,
        encoder: dict[str, Any] | None = None,  # Any: CLI values parsed as YAML ('false' -> False)
        hidden: int = 256,
        dropout: float = 0.1,
        loss: dict[str, Any] | None = None,
        target_lufs: float = -23.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_schedule: Literal["cosine", "none"] = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.05,
        log_audio_every_n_epochs: int = 5,
        num_log_examples: int = 3,
        head_init_scale: float = 1.0,
        param_loss_weight: float = 0.0,
        synthetic_reference_prob: float = 0.0,
        loss_crop_seconds: float | None = None,
        param_warmup_steps: int = 0,
        match_loudness: bool = False,
        take_descriptors: bool = False,
        descriptor_lr: float | None = None,
        descriptor_init: Literal["zero", "ridge"] = "zero",
        style_ridge: bool = False,
        style_ridge_renders: int = 30,
        house_preset: bool = False,
    ):
        super().__init__()
        if approach not in APPROACHES:
            raise MstError(f"unknown approach {approach!r}", fix=f"use one of {', '.join(APPROACHES)}")
        self.save_hyperparameters()
        self.approach = approach
        self.sample_rate = int(sample_rate)
        self.target_lufs = float(target_lufs)
        self.console = VocalConsole(self.sample_rate, stages)
        self.take_descriptors = bool(take_descriptors)
        self.controller = build_controller(approach, self.console.num_params, self.sample_rate,
                                           encoder=dict(encoder or {}), hidden=hidden, dropout=dropout,
                                           head_init_scale=head_init_scale,
                                           num_descriptors=NUM_DESCRIPTORS if self.take_descriptors else 0)
        if self.take_descriptors:  # the training songs' statistics, measured by on_fit_start
            self.register_buffer("descriptor_mean", torch.full((NUM_DESCRIPTORS,), float("nan")))
            self.register_buffer("descriptor_std", torch.full((NUM_DESCRIPTORS,), float("nan")))
        if descriptor_init not in ("zero", "ridge"):
            raise MstError(f"model.descriptor_init must be 'zero' or 'ridge', got {descriptor_init!r}",
                           fix="'ridge' starts the descriptor map at the fit of the parameter targets, 'zero' at nothing")
        self.descriptor_init = descriptor_init
        if descriptor_init == "ridge":
            if not self.take_descriptors:
                raise MstError("model.descriptor_init is 'ridge' but model.take_descriptors is off: there is no "
                               "descriptor map to start", fix="set model.take_descriptors: true, or descriptor_init: zero")
            # saved with the weights, so that a resumed run keeps its trained map instead of refitting it
            self.register_buffer("descriptor_ridge_strength", torch.tensor(float("nan")))
        if descriptor_lr is not None and not descriptor_lr > 0:
            raise MstError(f"model.descriptor_lr must be > 0 or null, got {descriptor_lr}", fix="e.g. 0.02, or null for model.lr")
        self.param_loss_weight = float(param_loss_weight)
        if loss_crop_seconds is not None and not loss_crop_seconds > 0:
            raise MstError(f"model.loss_crop_seconds must be > 0 or null, got {loss_crop_seconds}",
                           fix="set it to the seconds the audio loss should see (e.g. 1.5), or null for the whole segment")
        self.loss_crop = None if loss_crop_seconds is None else max(1, int(round(loss_crop_seconds * self.sample_rate)))
        self.param_warmup_steps = int(param_warmup_steps)
        self.match_loudness = bool(match_loudness)
        if self.match_loudness:
            self.register_buffer("house_lufs", torch.tensor(float("nan")))
        if self.param_warmup_steps > 0 and self.param_loss_weight <= 0:
            raise MstError(f"model.param_warmup_steps is {self.param_warmup_steps} but model.param_loss_weight is 0: "
                           "the warm-up would have no loss", fix="set model.param_loss_weight > 0, or param_warmup_steps: 0")
        self.synthetic_reference_prob = float(synthetic_reference_prob) if approach == "approach1" else 0.0
        self.style_ridge = bool(style_ridge)
        if self.style_ridge:
            if approach != "approach1":
                raise MstError("model.style_ridge reads a reference, and this model is approach2",
                               fix="set model.style_ridge: false, or train configs/approach1.yaml")
            if int(style_ridge_renders) < 1:
                raise MstError(f"model.style_ridge_renders must be >= 1, got {style_ridge_renders}", fix="e.g. 30")
            d, n = RIDGE_FEATURES, self.console.num_params  # NaN until on_fit_start fits them
            for name, shape in (("mean", (d,)), ("std", (d,)), ("weight", (d, n)), ("bias", (n,)),
                                ("strength", ()), ("samples", ())):
                self.register_buffer(f"style_ridge_{name}", torch.full(shape, float("nan")))
        self.house_preset = bool(house_preset)
        if self.house_preset:  # NaN until on_fit_start fits it
            self.register_buffer("house_setting", torch.full((1, self.console.num_params), float("nan")))
        self.loss_fn = MRSTFTL1Loss(**(loss or {}))
        self.num_parameters = count_parameters(self.controller)
        self._songs: list[str] = []  # songs of the batch in flight (named by the NaN guard)
        self._params: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
        self._examples: list[dict] | None = None  # filled during validation when the callback asks

    @property
    def needs_reference(self) -> bool:
        return self.approach == "approach1"

    @property
    def param_names(self) -> list[str]:
        return list(self.console.param_names)

    # -- inference ---------------------------------------------------------------------------
    def normalize_input(self, raw: torch.Tensor, raw_lufs: torch.Tensor | None = None) -> torch.Tensor:
        """raw `(batch, 1, samples)` -> the same scaled by `target_lufs - raw_lufs` (dB).

        `raw_lufs` `(batch,)`: the whole song's loudness (LUFS) of each item, as training, `mix` and
        the evaluation use; None measures each segment itself (only for ad-hoc audio without a song).
        """
        x, _ = normalize_loudness(raw, self.sample_rate, self.target_lufs, lufs=raw_lufs)
        return x

    def _reference(self, reference: torch.Tensor | None) -> torch.Tensor | None:
        if not self.needs_reference:
            return None
        if reference is None:
            raise MstError("an approach1 model needs a reference mix to predict parameters",
                           fix="pass a reference (a mixed vocal in the wanted style)")
        return reference

    def _descriptors(self, descriptors: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Take descriptors `(batch, 13)` or `(13,)` as measured -> standardised `(batch, 13)`, or None."""
        if not self.take_descriptors:
            return None
        if descriptors is None:
            raise MstError("this model reads the take descriptors of each song (model.take_descriptors) but none "
                           "were given", fix="pass descriptors=mst_single.descriptors.take_descriptors(whole raw, "
                           "rate) (`mix` and the evaluation do), or train with take_descriptors: false")
        if not bool(torch.isfinite(self.descriptor_std).all()):
            raise MstError("model.take_descriptors is on but the training songs' descriptor statistics were never "
                           "measured", fix="train the model with `fit` (it measures them when it starts)")
        d = descriptors.to(self.descriptor_mean).reshape(-1, NUM_DESCRIPTORS).expand(batch, -1)
        # a take far outside the training songs would be extrapolated linearly: held at 5 std instead
        return ((d - self.descriptor_mean) / self.descriptor_std).clamp(-DESCRIPTOR_CLIP, DESCRIPTOR_CLIP)

    def _predict(self, x: torch.Tensor, reference: torch.Tensor | None,
                 descriptors: torch.Tensor | None = None) -> torch.Tensor:
        return self.controller(x, self._reference(reference), self._descriptors(descriptors, x.shape[0]))

    def predict_params(self, raw: torch.Tensor, reference: torch.Tensor | None = None,
                       raw_lufs: torch.Tensor | None = None, descriptors: torch.Tensor | None = None) -> torch.Tensor:
        """raw `(batch, 1, samples)` (any level; normalised here, see `normalize_input`), reference
        `(batch, 2, samples)` or None (approach2 ignores it), descriptors `(batch, 13)` or `(13,)`: the
        whole song's take descriptors (needed when `take_descriptors`) -> parameters `(batch, num_params)` in [0, 1]."""
        return self._predict(self.normalize_input(raw, raw_lufs), reference, descriptors)

    def forward(self, raw: torch.Tensor, reference: torch.Tensor | None = None, raw_lufs: torch.Tensor | None = None,
                descriptors: torch.Tensor | None = None):
        """raw `(batch, 1, samples)` -> (output `(batch, 2, samples)`, params `(batch, num_params)`)."""
        x = self.normalize_input(raw, raw_lufs)
        p = self._predict(x, reference, descriptors)
        return self.console(x, p), p

    def mix_segment(self, raw: torch.Tensor, reference: torch.Tensor | None = None,
                    params: torch.Tensor | None = None, raw_lufs: torch.Tensor | None = None,
                    descriptors: torch.Tensor | None = None) -> torch.Tensor:
        """Mix a short segment `(batch, 1, samples)` -> `(batch, 2, samples)`; with `params`
        `(batch, num_params)` in [0, 1] the network is skipped (e.g. a preset or fitted setting)."""
        x = self.normalize_input(raw, raw_lufs)
        p = self._predict(x, reference, descriptors) if params is None else params.to(x)
        return self.console(x, p)

    @property
    def output_lufs(self) -> float | None:
        """The loudness (LUFS) a whole mixed song is normalised to, or None (the output gain decides)."""
        if not self.match_loudness:
            return None
        v = float(self.house_lufs)
        if not math.isfinite(v):
            raise MstError("model.match_loudness is on but the house loudness was never measured",
                           fix="train the model with `fit` (it measures the training mixes when it starts)")
        return v

    def params_in_units(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(batch, num_params)` in [0, 1] -> {name: `(batch,)` in units}."""
        return self.console.denormalize(p)

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        rank_zero_info(f"VocalMST {self.approach}: {self.num_parameters:,} trainable parameters "
                       f"(encoder + controller), {self.console.num_params} console parameters, "
                       f"{self.sample_rate} Hz, input normalised to {self.target_lufs:g} LUFS")
        if self.match_loudness:
            self.house_lufs.fill_(self._measure_house_lufs())
            rank_zero_info(f"house loudness {float(self.house_lufs):.2f} LUFS (median of the training songs' mixes): "
                           "every mixed song is normalised to it")
        if self.take_descriptors:
            mean, std = self._measure_descriptor_stats()
            self.descriptor_mean.copy_(mean)
            self.descriptor_std.copy_(std)
            rank_zero_info(f"take descriptors: standardised by the mean and std of the {self._n_desc_songs} training songs")
        if self.param_loss_weight > 0:
            dm = getattr(self.trainer, "datamodule", None)
            names = getattr(dm, "param_target_names", None)
            where = getattr(getattr(dm, "hparams", None), "param_targets", None)
            if names is None:
                raise MstError(f"model.param_loss_weight is {self.param_loss_weight:g} but the data has no "
                               "parameter targets", fix="set data.param_targets to a JSON of oracle settings "
                               f"({TARGETS_FROM}), or model.param_loss_weight: 0")
            if list(names) != self.param_names:
                raise MstError("the parameter targets were fitted for another console (parameter names differ: "
                               f"{len(names)} vs {len(self.param_names)})", where,
                               REFIT_FOR_CONSOLE)
            from mst_single.data import param_targets_fitted_at

            at = param_targets_fitted_at(where) if where else {}
            ours = {"sample_rate": self.sample_rate, "target_lufs": self.target_lufs}
            off = {k: v for k, v in at.items() if k in ours and float(v) != float(ours[k])}
            if off:
                prior = f" --prior-weight {at['prior_weight']:g}" if "prior_weight" in at else ""
                raise MstError("the parameter targets were fitted at " + ", ".join(
                    f"{k} {v:g} (this fit: {ours[k]:g})" for k, v in off.items()), where,
                    f"refit them: mst-single targets DATA -o {where} --sample-rate {self.sample_rate} "
                    f"--target-lufs {self.target_lufs:g}{prior}")
        if self.descriptor_init == "ridge" and not math.isfinite(float(self.descriptor_ridge_strength)):
            self._init_descriptor_map()
        if self.style_ridge and not math.isfinite(float(self.style_ridge_strength)):  # not again on resume
            self._fit_style_ridge()
        if self.house_preset and not torch.isfinite(self.house_setting).all():  # not again on resume
            self._fit_house_preset()

    def _measure_house_lufs(self) -> float:
        from mst_single.audio import house_loudness

        dm = getattr(self.trainer, "datamodule", None)
        songs = (getattr(dm, "splits", None) or {}).get("train")
        if not songs:
            raise MstError("model.match_loudness needs the training songs to measure the house loudness",
                           fix="train with the VocalDataModule (`mst-single fit`), or set model.match_loudness: false")
        return house_loudness(songs)

    def _measure_descriptor_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        from mst_single.audio import song_descriptors

        dm = getattr(self.trainer, "datamodule", None)
        songs = (getattr(dm, "splits", None) or {}).get("train")
        if not songs:
            raise MstError("model.take_descriptors needs the training songs to standardise the descriptors",
                           fix="train with the VocalDataModule (`mst-single fit`), or set model.take_descriptors: false")
        mean, std = descriptor_stats(np.stack([song_descriptors(s) for s in songs]))
        self._n_desc_songs = len(songs)
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()

    def _init_descriptor_map(self) -> None:
        """Set the descriptor map to the ridge fit of the training songs' parameter targets."""
        import numpy as np

        from mst_single.audio import song_descriptors
        from mst_single.descriptors import ridge_logits

        dm = getattr(self.trainer, "datamodule", None)
        songs = (getattr(dm, "splits", None) or {}).get("train") or []
        targets = dm.param_targets(songs) if hasattr(dm, "param_targets") else None
        if targets is None or len(songs) < 3:
            raise MstError("model.descriptor_init is 'ridge' but there are no parameter targets for >= 3 training songs "
                           "to fit the map to", getattr(getattr(dm, "hparams", None), "param_targets", None),
                           f"set data.param_targets ({TARGETS_FROM}), or model.descriptor_init: zero")
        if list(dm.param_target_names) != self.param_names:
            raise MstError("the parameter targets were fitted for another console (parameter names differ)",
                           dm.hparams.param_targets, REFIT_FOR_CONSOLE)
        d = torch.from_numpy(np.stack([song_descriptors(s) for s in songs]))
        z = self._descriptors(d, len(songs)).double().numpy()
        W, b, lam = ridge_logits(z, targets)
        head = self.controller.descriptor_head
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(W.T))
            head.bias.copy_(torch.from_numpy(b))
            self.descriptor_ridge_strength.fill_(lam)
        rank_zero_info(f"descriptor map: started at the ridge fit of {len(songs)} training songs' parameter targets "
                       f"(strength {lam:g}, chosen by leave-one-out)")

    def _fit_style_ridge(self) -> None:
        from mst_single.style import fit_style_ridge, style_ridge_raws

        dm = getattr(self.trainer, "datamodule", None)
        splits = getattr(dm, "splits", None) or {}
        songs = list(splits.get("train") or []) + list(splits.get("val") or [])
        if not songs:
            raise MstError("model.style_ridge needs the training songs' raw vocals to render",
                           fix="train with the VocalDataModule (`mst-single fit`), or set model.style_ridge: false")
        h = dm.hparams
        raws, count = style_ridge_raws(songs, self.sample_rate, self.target_lufs, h.segment_seconds, h.split_seed,
                                       h.silence_threshold_db, self.device)
        # its own generator from the run's seed: the network's training draws exactly what it would without
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        fit = fit_style_ridge(self.console, raws, int(self.hparams.style_ridge_renders), seed=seed)
        with torch.no_grad():
            for k, v in fit.items():
                getattr(self, f"style_ridge_{k}").copy_(v)
        rank_zero_info(f"style ridge: fitted on {int(fit['samples'])} console renders of {count} training and "
                       f"validation songs (strength {float(fit['strength']):g}, chosen by leave-one-out)")

    def _fit_house_preset(self) -> None:
        import copy

        dm = getattr(self.trainer, "datamodule", None)
        songs = list((getattr(dm, "splits", None) or {}).get("train") or [])
        if not songs:
            raise MstError("model.house_preset needs the training songs to fit the preset on",
                           fix="train with the VocalDataModule (`mst-single fit`), or set model.house_preset: false")
        h = dm.hparams
        # a CPU copy of the console: the fit reads its batches on the CPU, and the network's device
        # and RNG stay untouched (the network trains bit for bit as without it)
        p, info = house_preset_fit(copy.deepcopy(self.console).cpu(), songs, self.target_lufs, h.segment_seconds,
                                   h.silence_threshold_db, h.cache_dir)
        with torch.no_grad():
            self.house_setting.copy_(p.reshape(1, -1))
        rank_zero_info(f"house preset: one setting fitted over the {len(songs)} training songs ({info.steps} steps, "
                       f"{info.stopped_by}, loss {min(info.losses):.4f}); refinement mixes with it when the "
                       "reference is not a mix of the raw")

    def house_start(self) -> torch.Tensor:
        """The house preset (1, P) in [0, 1] (``model.house_preset``), for a reference that is not a mix of
        the raw (``refine: {other_vocal: house}``, ``mix --other-vocal house``)."""
        if not self.house_preset or not torch.isfinite(self.house_setting).all():
            raise MstError("this checkpoint has no house preset to mix with (it was trained without "
                           "model.house_preset, or before `fit` started)",
                           fix="refine on the reference anyway (`--other-vocal refine`, `refine: {other_vocal: "
                               "refine}`), or train with model.house_preset: true (e17)")
        return self.house_setting.detach().clone()

    def style_ridge_start(self, raw: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The style ridge's setting (1, P) for a song's normalised raw segments (n, 1, samples) and its
        reference segments (m, 2, samples) (``style.style_ridge_setting``)."""
        from mst_single.style import style_ridge_setting

        if not self.style_ridge or not math.isfinite(float(self.style_ridge_strength)):
            raise MstError("this checkpoint has no style ridge to start the refinement from (it was trained "
                           "without model.style_ridge, or before `fit` started)",
                           fix="refine from the network's setting (`--refine-start network`, `refine: {start: "
                               "network}`), or train with model.style_ridge: true (e09 ridge-start)")
        ridge = {k: getattr(self, f"style_ridge_{k}") for k in ("mean", "std", "weight", "bias")}
        return style_ridge_setting(ridge, raw, reference, self.sample_rate).to(raw.device)

    def _step(self, batch: dict, stage: str) -> dict:
        self._songs = list(batch.get("song", []))
        raw, target = batch["raw"], batch["mixed"]
        reference = batch.get("reference") if self.needs_reference else None
        x = self.normalize_input(raw, batch.get("raw_lufs"))
        tp = batch.get("target_params")
        has_tp = None if tp is None else torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if stage == "train" and self.synthetic_reference_prob > 0 and x.shape[0] > 1:
            target, reference, tp, has_tp = self._synthetic(x, target, reference, tp, has_tp)
        p = self._predict(x, reference, batch.get("descriptors"))
        x, target = self._crop(x, target, stage)
        if stage == "train" and self.global_step < self.param_warmup_steps:
            if has_tp is None:
                raise MstError("model.param_warmup_steps needs parameter targets, but the batch has none",
                               fix=f"set data.param_targets ({TARGETS_FROM}), or param_warmup_steps: 0")
            output, losses = None, {}
        else:
            output = self.console(x, p)
            if self.match_loudness:
                output = match_level_torch(output, target, self.sample_rate)
            losses = self.loss_fn(output, target)
        if self.param_loss_weight > 0 and has_tp is not None:
            # a masked mean, not boolean indexing: no host sync beyond the loss check below
            w = has_tp.to(p.dtype)
            losses["param"] = ((p - tp.to(p)).abs().mean(1) * w).sum() / w.sum().clamp(min=1.0)
            losses["loss"] = losses.get("loss", 0.0) + self.param_loss_weight * losses["param"]
        # NaN/Inf anywhere above reaches the loss (every stage propagates it without raising), so
        # one read of it is the step's only host sync; the culprit is looked up only then
        if not torch.isfinite(losses["loss"]):
            for name, t in (("raw", raw), ("mixed", target), ("reference", reference)):
                if t is not None and not torch.isfinite(t).all():
                    self._non_finite(f"{stage} batch: the {name} audio holds NaN/Inf samples")
            if not torch.isfinite(p).all():
                self._non_finite(f"{stage}: the network predicted NaN/Inf parameters")
            self._non_finite(f"{stage} loss is {losses['loss'].item()}")
        bs = raw.shape[0]
        on_step = stage == "train"
        for k, v in losses.items():
            self.log(f"{stage}/{k}", v, on_step=on_step, on_epoch=not on_step, batch_size=bs,
                     prog_bar=(k == "loss"), sync_dist=not on_step)
        pd = p.detach()
        self._params[stage].append(pd.float())  # stays on the device until the epoch's histograms
        units = self.console.denormalize(pd)
        self.log_dict({f"{stage}/params/{k}": v.mean() for k, v in units.items()}, on_step=False, on_epoch=True,
                      batch_size=bs, sync_dist=True)
        return dict(losses, x=x, target=target, output=output, params=pd)

    def _crop(self, x: torch.Tensor, target: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, target) cut to `loss_crop_seconds` (same span of both): random start per item in
        training (torch's global RNG, reseeded every step, so a resumed run draws the same), centred
        otherwise. Unchanged when off or when the segment is no longer than the crop."""
        n = x.shape[-1]
        if self.loss_crop is None or n <= self.loss_crop:
            return x, target
        c = self.loss_crop
        if stage == "train":
            starts = torch.randint(0, n - c + 1, (x.shape[0],)).to(x.device)
        else:
            starts = torch.full((x.shape[0],), (n - c) // 2, device=x.device)
        idx = starts[:, None, None] + torch.arange(c, device=x.device)
        return (x.gather(-1, idx.expand(-1, x.shape[1], -1)),
                target.gather(-1, idx.expand(-1, target.shape[1], -1)))

    @torch.no_grad()
    def _synthetic(self, x, target, reference, tp, has_tp):
        """Replace a random share of the batch by console-made (target, reference, setting) triples."""
        b = x.shape[0]
        pick = torch.rand(b, device=x.device) < self.synthetic_reference_prob
        # a random setting, away from the box edges, where real settings rarely go
        p = 0.1 + 0.8 * torch.rand(b, self.console.num_params, device=x.device)
        syn_target = self.console(x, p)
        syn_reference = self.console(x.roll(1, 0), p)  # the same style on another item's vocal
        m = pick.view(b, 1, 1)
        target = torch.where(m, syn_target.to(target), target)
        reference = torch.where(m, syn_reference.to(reference), reference)
        tp = torch.where(pick.view(b, 1), p, tp.to(p) if tp is not None else p)
        has_tp = pick | (has_tp if has_tp is not None else torch.zeros_like(pick))
        return target, reference, tp, has_tp

    def _non_finite(self, what: str) -> None:
        songs = ", ".join(sorted(set(self._songs))) or "(unknown)"
        raise MstError(f"{what} at step {self.global_step} on a batch of the songs: {songs}; stopped before "
                       "a poisoned checkpoint could be saved",
                       fix="check those files (`mst-single check-data DATA`), or lower model.lr; the last "
                           "good checkpoint is kept and `fit --ckpt_path last` resumes from it")

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout draws from torch's global RNG, which Lightning does not checkpoint (and on resume
        # the first epoch's start hooks run in another order). Restarting it from (seed, step) at
        # every step makes `fit --ckpt_path last` draw exactly what an uninterrupted run draws.
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        torch.manual_seed((seed * 1_000_003 + int(self.global_step)) % (2 ** 63))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self._step(batch, "train")
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else self.hparams.lr,
                 on_step=True, on_epoch=False, batch_size=batch["raw"].shape[0])
        return out["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        # a finite loss can still give NaN/Inf gradients; one bad step would poison every weight
        grads = [q.grad for q in self.parameters() if q.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().float().abs().sum() for g in grads]).sum()):
            self._non_finite("a gradient is NaN/Inf")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._step(batch, "val")
        if self._examples is not None and len(self._examples) < self.hparams.num_log_examples:
            units = self.console.denormalize(out["params"])
            for i in range(batch["raw"].shape[0]):
                if len(self._examples) >= self.hparams.num_log_examples:
                    break
                self._examples.append(dict(
                    song=batch["song"][i], start=int(batch["start"][i]),
                    raw=out["x"][i].detach().cpu().float().numpy(),
                    output=out["output"][i].detach().cpu().float().numpy(),
                    target=out["target"][i].detach().cpu().float().numpy(),
                    params={k: float(v[i]) for k, v in units.items()}))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    # parameter histograms (W&B only; the per-parameter means go to every logger above)
    def on_train_epoch_start(self) -> None:
        self._params["train"] = []

    def on_validation_epoch_start(self) -> None:
        self._params["val"] = []

    def on_test_epoch_start(self) -> None:
        self._params["test"] = []

    def on_train_epoch_end(self) -> None:
        self._log_histograms("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_histograms("val")

    def on_test_epoch_end(self) -> None:
        self._log_histograms("test")

    def _log_histograms(self, stage: str) -> None:
        chunks, self._params[stage] = self._params[stage], []
        wandb_logger = find_wandb_logger(self.trainer)
        if not chunks or wandb_logger is None:
            return
        units = self.console.denormalize(torch.cat(chunks).cpu())
        log = {f"{stage}/params_hist/{k}": histogram(v.double().numpy()) for k, v in units.items()}
        safe_wandb_log(wandb_logger, {**log, "trainer/global_step": self.global_step})

    def configure_optimizers(self):
        h = self.hparams
        head = self.controller.descriptor_head
        if head is not None and h.get("descriptor_lr") is not None:
            own = {id(q) for q in head.parameters()}
            groups = [{"params": [q for q in self.parameters() if id(q) not in own]},
                      {"params": list(head.parameters()), "lr": float(h.descriptor_lr)}]
        else:
            groups = self.parameters()
        opt = torch.optim.AdamW(groups, lr=h.lr, weight_decay=h.weight_decay)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        warm = max(int(h.warmup_steps), 0)
        cosine = h.lr_schedule == "cosine" and math.isfinite(total) and total > warm

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            if not cosine:
                return 1.0
            t = min((step - warm) / max(total - warm, 1), 1.0)
            return h.min_lr_ratio + (1 - h.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def histogram(values, bins: int = 32):
    """A wandb.Histogram that never fails: float64 edges, and a minimum width for (near-)constant
    values (a saturated parameter gives identical values, on which numpy's 64 float32 bins fail)."""
    import numpy as np
    import wandb

    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        v = np.zeros(1)
    lo, hi = float(v.min()), float(v.max())
    pad = max(hi - lo, 1e-6 * max(1.0, abs(lo), abs(hi))) * 0.5 if hi - lo < 1e-9 * max(1.0, abs(hi)) else 0.0
    counts, edges = np.histogram(v, bins=bins, range=(lo - pad, hi + pad))
    return wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))


def safe_wandb_log(wandb_logger, data: dict) -> None:
    """Log to W&B; a failure there is reported once as a warning and never stops training."""
    try:
        wandb_logger.experiment.log(data)
    except Exception as e:  # noqa: BLE001 - W&B is a view on the run, not part of it
        from pytorch_lightning.utilities import rank_zero_warn

        rank_zero_warn(f"W&B logging failed ({type(e).__name__}: {e}); the CSV log and run folder are unaffected")


def find_wandb_logger(trainer):
    """The trainer's WandbLogger, or None (W&B is optional; CSV is always there)."""
    if trainer is None:
        return None
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:
        return None
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            return lg
    return None
