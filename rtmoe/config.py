"""The one config tree: frozen dataclasses, TOML load/save, validation, content hash.

Every artifact (checkpoint, shard index, engine, subject profile) stores the resolved
tree beside it, so the same preprocessing runs offline, in calibration and live.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from rtmoe.errors import UserError

#: The 19 electrodes of the 10-20 system used for pretraining (SPEC §1), old T3-T6 names.
TEN_TWENTY_19: tuple[str, ...] = (
    "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2",
    "F7", "F8", "T3", "T4", "T5", "T6", "FZ", "CZ", "PZ",
)  # fmt: skip


class ConfigError(UserError, ValueError):
    """A config value is invalid; the message names the field, the value and the fix."""


class Section:
    """A section of the tree, checked when it is made: no invalid section ever exists.

    Each field's value is converted to its declared type (ints to floats, lists to
    tuples) or is a :class:`ConfigError` naming ``section.field``, the value and the type;
    then ``validate`` checks the ranges. Subclasses are frozen dataclasses.
    """

    def __post_init__(self) -> None:
        section = type(self).__name__.removesuffix("Config").lower()
        for name, hint in _field_hints(type(self)).items():
            value = _coerce(hint, getattr(self, name), f"{section}.{name}")
            object.__setattr__(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Range checks of the converted values; a ConfigError names the fix."""


@dataclass(frozen=True)
class SignalConfig(Section):
    """Preprocessing shared by pretraining, fine-tuning, calibration and the live path.

    ``l_freq``/``h_freq``/``notch_freq`` set to ``None`` disable that filter: slow-potential
    tasks (SelfRegulationSCP1) need the content below 0.3 Hz (DATA.md).
    """

    sfreq: float = 200.0
    l_freq: float | None = 0.3
    h_freq: float | None = 75.0
    notch_freq: float | None = 50.0
    unit_uv: float = 100.0  # model unit: signals are divided by this many µV

    def validate(self) -> None:
        _positive(self, "sfreq", "unit_uv")
        nyquist = self.sfreq / 2
        for name in ("l_freq", "h_freq", "notch_freq"):
            value = getattr(self, name)
            if value is not None and not 0 < value < nyquist:
                raise ConfigError(
                    f"signal.{name}={value} must lie in (0, {nyquist}) Hz for sfreq="
                    f"{self.sfreq}; set it inside that range or to none to disable it"
                )
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ConfigError(
                f"signal.l_freq={self.l_freq} must be below signal.h_freq={self.h_freq}"
            )


@dataclass(frozen=True)
class CorpusConfig(Section):
    """How recordings become pretraining segments (SPEC §1)."""

    channels: tuple[str, ...] = TEN_TWENTY_19
    segment_s: float = 30.0
    trim_s: float = 60.0  # dropped at both ends of every recording
    min_recording_s: float = 300.0
    reject_uv: float | None = 100.0  # segments whose max |x| reaches this are rejected
    n_partitions: int = 3  # one per expert
    seed: int = 0

    def validate(self) -> None:
        _positive(self, "segment_s", "min_recording_s", "n_partitions")
        if self.trim_s < 0:
            raise ConfigError(f"corpus.trim_s={self.trim_s} must be >= 0")
        if not self.channels:
            raise ConfigError("corpus.channels is empty; list the electrode names to keep")


@dataclass(frozen=True)
class SpectralConfig(Section):
    """STFT of the masking pipeline and Welch PSD of the gate, in seconds (SPEC §2, §5)."""

    stft_window_s: float = 2.0  # n_fft = 2·fs = 400 at 200 Hz
    stft_hop_s: float = 1.0  # hop = fs = 200 at 200 Hz
    welch_window_s: float = 2.0  # nperseg = 2·fs, 50 % overlap; fs for 1 s windows

    def validate(self) -> None:
        _positive(self, "stft_window_s", "stft_hop_s", "welch_window_s")
        if self.stft_hop_s >= self.stft_window_s:
            raise ConfigError(
                f"spectral.stft_hop_s={self.stft_hop_s} is not shorter than spectral."
                f"stft_window_s={self.stft_window_s}; the masking's inverse STFT needs "
                "overlapping frames (e.g. a hop of half the window)"
            )


@dataclass(frozen=True)
class MaskConfig(Section):
    """Gaussian-smoothed spectral masking (SPEC §2)."""

    mask_ratio: float = 0.5
    p_freq: float = 0.6
    p_time: float = 0.3
    p_tf: float = 0.1
    band_bias: float = 0.5  # probability of moving f0 into an EEG band
    band_probs: tuple[float, float, float, float] = (0.3, 0.4, 0.2, 0.1)  # δ θ α β
    sigma_f_frac: float = 0.05
    sigma_t_frac: float = 0.05
    level: float = 1.0
    max_components: int = 64  # safety bound on the drawing loop

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"mask.mask_ratio={self.mask_ratio} must lie in (0, 1)")
        for name, probs in (
            ("p_freq/p_time/p_tf", (self.p_freq, self.p_time, self.p_tf)),
            ("band_probs", self.band_probs),
        ):
            if min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
                raise ConfigError(f"mask.{name}={probs} must be non-negative and sum to 1")
        _positive(self, "sigma_f_frac", "sigma_t_frac", "level", "max_components")


@dataclass(frozen=True)
class ModelConfig(Section):
    """SpecHi-Net hyper-parameters (SPEC §3); named sizes live in rtmoe.models.registry.

    The defaults are the ``small`` size (the CPU default). All widths derive from
    ``base_width`` (w): Down1 1→w→2w, Down2 2w→2w, Down3 2w→4w, bottleneck 4w; the paper
    has w = 32. Transformer layers have width 2w (after Down2 and Up1) or 4w (bottleneck)
    and a feed-forward ``ff_mult`` times wider. Rotary frequencies are fixed in hertz: the
    periods run geometrically from ``rotary_min_period_s`` to ``rotary_max_period_s`` and
    the angle uses the token's time in seconds, so one scale serves every window length.
    """

    name: str = "small"
    base_width: int = 16
    short_kernel: int = 4
    long_kernel: int = 65
    long_dilation: int = 4
    bottleneck_kernel: int = 8
    n_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.2
    rotary_min_period_s: float = 2.0
    rotary_max_period_s: float = 200.0

    def validate(self) -> None:
        _positive(self, "base_width", "short_kernel", "long_kernel", "long_dilation")
        _positive(self, "bottleneck_kernel", "n_heads", "ff_mult", "rotary_min_period_s")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout} must lie in [0, 1)")
        d_model = 2 * self.base_width
        if d_model % self.n_heads or (d_model // self.n_heads) % 2:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must divide 2·base_width={d_model} into an "
                "even head width (rotary encoding rotates pairs); pick n_heads so that "
                "2·base_width/n_heads is even"
            )
        if self.rotary_max_period_s <= self.rotary_min_period_s:
            raise ConfigError(
                f"model.rotary_max_period_s={self.rotary_max_period_s} must exceed "
                f"model.rotary_min_period_s={self.rotary_min_period_s}"
            )


@dataclass(frozen=True)
class PretrainConfig(Section):
    """Optimisation of one expert (SPEC §3)."""

    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    grad_clip: float = 5.0
    batch_size: int = 64
    accum_steps: int = 4
    epochs: int = 50
    spectral_loss_weight: float = 0.02
    loss_n_fft: int = 512
    loss_hop: int = 256
    aux_weights: tuple[float, float] = (0.3, 0.2)
    init_std: float = 0.02
    amp: bool = True  # bfloat16 autocast, CUDA only
    seed: int = 0
    num_workers: int = 0
    holdout_fraction: float = 0.1  # recordings held out to measure reconstruction

    def validate(self) -> None:
        _positive(self, "lr", "batch_size", "accum_steps", "epochs", "loss_n_fft", "loss_hop")
        if self.min_lr > self.lr:
            raise ConfigError(f"pretrain.min_lr={self.min_lr} exceeds pretrain.lr={self.lr}")
        if not 0 <= self.holdout_fraction < 1:
            raise ConfigError(
                f"pretrain.holdout_fraction={self.holdout_fraction} must lie in [0, 1)"
            )


#: How SpecMoE pools electrodes before its head.
CHANNEL_POOLS: tuple[str, ...] = ("mean", "max", "concat")


@dataclass(frozen=True)
class MoEConfig(Section):
    """SpecMoE architecture around the experts (SPEC §5); the experts use ModelConfig.

    ``time_segments``: 1 is the paper's head (expert features averaged over the whole
    window); k > 1 averages them over k consecutive parts of the window instead and the
    head reads all k, so it sees the time course (one encoder step is 120 samples, so
    k is at most the window's steps). ``channel_pool``: "mean" (the paper) or "max" over
    electrodes; "concat" keeps every electrode's features apart, so the head can weigh
    electrodes by position (a fixed montage; the pooled heads ignore electrode order).
    ``erp_segments``: 0, or E > 0 for a linear readout of each electrode's window averaged
    over E consecutive parts (the decimated waveform; a fixed montage too), whose logits
    add to the head's. ``waveform_filters``: 0, or F > 0 for a learned branch over the
    window (EEGNet's temporal and spatial filters, F of them; a fixed montage), whose
    logits add too.
    """

    n_experts: int = 3
    use_psd_gate: bool = True
    channel_pool: str = "mean"
    dropout: float = 0.2
    time_segments: int = 1
    erp_segments: int = 0
    waveform_filters: int = 0

    def validate(self) -> None:
        if self.time_segments < 1:
            raise ConfigError(f"moe.time_segments={self.time_segments} must be >= 1")
        if self.erp_segments < 0:
            raise ConfigError(f"moe.erp_segments={self.erp_segments} must be >= 0 (0: off)")
        if self.waveform_filters < 0:
            raise ConfigError(f"moe.waveform_filters={self.waveform_filters} must be >= 0 (0: off)")
        if self.n_experts < 1:
            raise ConfigError(f"moe.n_experts={self.n_experts} must be >= 1")
        if self.channel_pool not in CHANNEL_POOLS:
            raise ConfigError(
                f"moe.channel_pool={self.channel_pool!r} must be one of {CHANNEL_POOLS}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"moe.dropout={self.dropout} must lie in [0, 1)")


@dataclass(frozen=True)
class FinetuneConfig(Section):
    """Optimisation of SpecMoE on a labelled task (SPEC §5).

    ``freeze_epochs``: experts are frozen (weights, BatchNorm statistics and dropout)
    for that many epochs, then trained with the head. The learning rate is halved when
    the validation loss has not improved for ``plateau_patience`` epochs.
    ``early_stop_patience`` stops after that many epochs without a better validation
    score; ``max_minutes`` stops after the epoch that exceeds the time budget.

    ``folds``: 1 picks the epoch on one stratified ``val_fraction`` split of the trials;
    k > 1 runs stratified k-fold cross-validation: k models, each trained on k-1 folds
    with its epoch picked on its own held-out fold, delivered together as one ensemble
    (mean probabilities); their out-of-fold predictions give the CV estimate, and
    ``val_fraction`` is unused. ``max_minutes`` is then the budget of all k together.

    ``augment_scale`` (sd of the log gain), ``augment_shift_s`` (largest shift, seconds),
    ``augment_channel_drop`` (probability per electrode) and ``augment_spectral_mask``
    (masked share of a ``[mask]`` spectral mask) augment training batches
    (``rtmoe.offline.augment``); 0 turns each off.

    ``waveform_loss``: weight of the waveform branch's own loss (``moe.waveform_filters``),
    added to the model's (0: off). Trained only through the sum, the branch stops
    learning once the expert head has fit the training trials, which on a few hundred
    trials takes a few epochs; its own loss keeps it learning as if alone (an auxiliary,
    per-path loss against one path dominating a fused model).

    ``unit_from_data``: fresh experts take ``signal.unit_uv`` from the training trials
    (the median over trials and electrodes of the within-trial sd, after filtering), so
    the model sees unit-scale inputs whatever the recording's units (µV, fT, counts);
    the value is saved with the model and the live chain divides by it. Pretrained
    experts keep their pretraining unit.
    """

    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 64
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    freeze_epochs: int = 10
    val_fraction: float = 0.2
    class_weighted: bool = True
    early_stop_patience: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    folds: int = 1
    augment_scale: float = 0.0
    augment_shift_s: float = 0.0
    augment_channel_drop: float = 0.0
    augment_spectral_mask: float = 0.0
    waveform_loss: float = 0.0
    unit_from_data: bool = False

    def validate(self) -> None:
        if self.augment_scale < 0 or self.augment_shift_s < 0:
            raise ConfigError(
                f"finetune.augment_scale={self.augment_scale} and finetune.augment_shift_s="
                f"{self.augment_shift_s} must be >= 0 (0: off)"
            )
        if self.waveform_loss < 0:
            raise ConfigError(f"finetune.waveform_loss={self.waveform_loss} must be >= 0 (0: off)")
        for name in ("augment_channel_drop", "augment_spectral_mask"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(
                    f"finetune.{name}={getattr(self, name)} must lie in [0, 1) (0: off)"
                )
        for name in ("lr", "epochs", "batch_size", "plateau_patience", "folds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"finetune.{name}={getattr(self, name)} must be > 0")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"finetune.plateau_factor={self.plateau_factor} must lie in (0, 1)")
        if self.freeze_epochs < 0:
            raise ConfigError(f"finetune.freeze_epochs={self.freeze_epochs} must be >= 0")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"finetune.val_fraction={self.val_fraction} must lie in (0, 1): the "
                "checkpoint is chosen on the validation split"
            )
        for name in ("early_stop_patience", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"finetune.{name}={value} must be > 0 or none")


@dataclass(frozen=True)
class RuntimeConfig(Section):
    """The live loop (``rtmoe stream``): hop, watchdog, continuity, publisher, engine.

    ``max_gap_ms``: a timestamp gap (or a stall) longer than this restarts the signal's
    continuity: filter and resampler states start afresh from the first new sample and
    decoding resumes once a whole window of new samples has arrived, so no window ever
    spans the hole. Shorter gaps are counted and bridged. ``fill``: ``"zeros"`` feeds
    model channels the stream lacks as flat zeros (in model units) instead of an error.

    Trust (``rtmoe stream`` never publishes a decode it cannot stand behind):
    ``max_age_s``: a window whose newest sample is older than this when it would be
    published (a backlog after a stall, a sender stamping at the wrong rate) is not
    published but counted as stale; so is one whose latency is negative beyond the clock
    model's jitter (a sender's clock that jumped ahead). ``max_lag_ms``: when even the
    freshest sample read during a whole heartbeat period was older than this (default:
    one hop), the state is ``LAGGING``. ``rate_tolerance``: a sender whose clock runs at
    a rate departing from its declared one by more than this fraction is a status error
    (``rate_mismatch``) and nothing is decoded until it is back within tolerance.
    ``wait_s``: at start-up, how long to wait for the stream (state ``WAITING``, status
    published every second) before giving up; ``None`` waits until it appears or Ctrl-C.
    """

    hop_ms: float = 100.0
    stall_timeout_ms: float = 500.0
    max_gap_ms: float = 100.0
    status_period_s: float = 1.0
    poll_ms: float = 2.0  # longest wait for the next sample (the loop wakes on arrival)
    fill: str = "error"
    device: str = "auto"  # "auto": CUDA when present, else CPU
    engine: str = "auto"
    zmq_address: str = "tcp://127.0.0.1:5556"
    allow_remote: bool = False
    single_frame: bool = False
    max_buflen_s: int = 1  # LSL inlet queue; older samples are dropped (seen as a gap)
    resolve_timeout_s: float = 2.0
    timing_records: int = 36000  # per-hop timings kept (1 h at 10 Hz), newest win
    max_age_s: float = 1.0  # older windows are not published (counted as stale)
    max_lag_ms: float | None = None  # LAGGING beyond this; None: one hop
    rate_tolerance: float = 0.01  # relative; beyond it: status error, no decodes
    wait_s: float | None = None  # start-up wait for the stream; None: until it appears
    # Quality verdict of every decode (DecodeMessage.valid): a window is invalid when
    # more than max_repaired_share of its values were repaired, any channel's
    # preprocessed signal exceeds out_of_range_uv, more than half its channels are flat
    # (std below flat_uv, zero-filled channels included), or samples are missing in it.
    max_repaired_share: float = 0.01
    out_of_range_uv: float = 1000.0
    flat_uv: float = 0.1
    # Signal preview topic (rtmoe.preview, protocol 1.3; `rtmoe view` draws it): after
    # each decode, the new samples of every channel averaged down to about this rate (Hz)
    # with per-channel flat/out-of-range flags; 0 publishes none (the default).
    preview_hz: float = 0.0
    # Unsupervised session adaptation (rtmoe.adaptation.PriorRecentring): the running
    # mean of the past decodes' centred log-probabilities, with this time constant (s),
    # is subtracted from each decode; assumes classes about equally frequent over it.
    # 0: off (the default).
    adapt_s: float = 0.0
    # Stream channel labels renamed before matching ("STREAM_LABEL=ELECTRODE", e.g.
    # "EXG1=C3"), for amplifier apps that label channels by number; per stream in a
    # --streams file.
    rename: tuple[str, ...] = ()

    def validate(self) -> None:
        from rtmoe.signal.channels import parse_renames

        parse_renames(self.rename)  # raises a ConfigError
        _positive(self, "hop_ms", "stall_timeout_ms", "max_gap_ms", "status_period_s")
        _positive(self, "poll_ms", "max_buflen_s", "resolve_timeout_s", "timing_records")
        _positive(self, "max_age_s", "rate_tolerance", "out_of_range_uv", "flat_uv")
        if not self.adapt_s >= 0:
            raise ConfigError(
                f"runtime.adapt_s={self.adapt_s} must be >= 0 seconds (0: no adaptation; e.g. "
                "60 to re-centre over the last minute of decodes)"
            )
        if not 0.0 <= self.preview_hz <= 1000.0:
            raise ConfigError(
                f"runtime.preview_hz={self.preview_hz} must be in [0, 1000] Hz (0: no preview "
                "topic; e.g. 50 for rtmoe view's traces)"
            )
        if not 0.0 <= self.max_repaired_share <= 1.0:
            raise ConfigError(
                f"runtime.max_repaired_share={self.max_repaired_share} must be in [0, 1]"
            )
        if self.max_lag_ms is not None and not self.max_lag_ms > 0:
            raise ConfigError(f"runtime.max_lag_ms={self.max_lag_ms} must be > 0 or none")
        if self.wait_s is not None and not self.wait_s >= 0:
            raise ConfigError(
                f"runtime.wait_s={self.wait_s} must be >= 0 seconds, or none to wait until "
                "the stream appears"
            )
        if self.fill not in ("error", "zeros"):
            raise ConfigError(
                f"runtime.fill={self.fill!r} must be 'error' or 'zeros' (flat channels for "
                "missing electrodes)"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"runtime.device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )
        engines = ("auto", "torch", "compile", "cudagraph", "onnx", "tensorrt")
        if self.engine not in engines:
            raise ConfigError(f"runtime.engine={self.engine!r} must be one of {engines}")


@dataclass(frozen=True)
class Config:
    """The root of the tree. Sections are added here, never as free-standing settings."""

    signal: SignalConfig = field(default_factory=SignalConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        for name, cls in _field_hints(Config).items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(
                    f"Config.{name} must be a {cls.__name__}, not {getattr(self, name)!r}"
                )

    def replace(self, **sections: Any) -> Config:
        """Copy with whole sections or ``section={field: value}`` overrides replaced."""
        updates = {}
        for name, value in sections.items():
            current = getattr(self, name)
            updates[name] = (
                dataclasses.replace(current, **value) if isinstance(value, dict) else value
            )
        return dataclasses.replace(self, **updates)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def from_dict(cls: type, data: dict[str, Any], _where: str = "") -> Any:
    """Build ``cls`` from a nested dict; unknown keys and values of the wrong type are a
    :class:`ConfigError` naming the key, the value and the valid keys (or the type)."""
    hints = _field_hints(cls)
    names = set(hints)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_where or cls.__name__} must be a table of {sorted(names)}, not {data!r}"
        )
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{_where}] " if _where else ""
        raise ConfigError(
            f"unknown {cls.__name__} keys {where}{unknown}; valid keys are {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{_where}.{key}" if _where else key)
        else:
            kwargs[key] = value  # converted and checked by Section.__post_init__
    return cls(**kwargs)


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """A dataclass's fields and their types, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_hash(obj: Any) -> str:
    """Content hash (sha256, 16 hex digits) of a config dataclass or plain dict."""
    data = obj if isinstance(obj, dict) else to_dict(obj)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path) -> Config:
    """Read a TOML file holding any subset of the sections; the rest are defaults."""
    data = read_toml(path)
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the whole resolved tree as TOML (``None`` is written as the string "none")."""
    Path(path).write_text(tomli_w.dumps(_none_to_toml(to_dict(config))))


def _none_to_toml(data: dict) -> dict:
    return {
        k: _none_to_toml(v) if isinstance(v, dict) else ("none" if v is None else v)
        for k, v in data.items()
    }


def _none_from_toml(data: dict) -> dict:
    """``"none"`` values as None, in tables and in arrays of tables (``[[stream]]``)."""

    def value(v: Any) -> Any:
        if isinstance(v, dict):
            return _none_from_toml(v)
        if isinstance(v, list) and v and all(isinstance(t, dict) for t in v):
            return [_none_from_toml(t) for t in v]
        return None if v == "none" else v

    return {k: value(v) for k, v in data.items()}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURAL_NAMES = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe_type(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "none"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        item = _PLURAL_NAMES.get(args[0], str(args[0]))
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {item}"
        return f"a list of {len(args)} {item}"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """``value`` as the field's type (ints become floats, lists tuples) or a ConfigError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
    else:
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce_one(option, value, key)
            except _WrongType:
                continue
    raise ConfigError(f"{key} takes {_describe_type(hint)}, not {_toml_literal(value)}")


class _WrongType(Exception):
    pass


def _coerce_one(hint: Any, value: Any, key: str) -> Any:
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item_hints = [args[0]] * len(value)
        elif len(args) != len(value):
            raise _WrongType
        else:
            item_hints = list(args)
        pairs = enumerate(zip(item_hints, value, strict=True))
        return tuple(_coerce(h, v, f"{key}[{i}]") for i, (h, v) in pairs)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # a type this module does not know: passed through as given
        return value
    raise _WrongType


def _toml_literal(value: Any) -> str:
    """``value`` as written in TOML (and on the command line after ``--set key=``)."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    try:
        return tomli_w.dumps({"v": value}).partition("=")[2].strip()
    except (TypeError, ValueError):
        return repr(value)


def _positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name}={value} must be > 0")


# --- Settings from the command line ----------------------------------------------------

#: How every command that takes ``--config``/``--set`` combines its settings, lowest first:
#: a later source wins for the fields it names. The *base* is the command's own starting
#: tree (the defaults; ``rtmoe finetune``: its recipe).
PRECEDENCE: tuple[str, ...] = ("base", "--config FILE", "command-line flags", "--set")

PRECEDENCE_HELP = (
    "settings combine as defaults < --config FILE < the command's own flags "
    "(e.g. --hop-ms) < --set; `rtmoe config show` or --print-config prints the result"
)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split one ``--set`` argument: ``"section.field=value"`` → (section, field, value).

    The value is a TOML literal (``5``, ``0.5``, ``true``, ``"cuda:0"``, ``["C3", "C4"]``);
    ``none`` means ``None`` (as in config files, where TOML has no null). A value that is
    not a TOML literal is kept as a string, so ``runtime.device=cuda:0`` needs no quotes.
    Types and names are checked by :func:`apply_overrides`.
    """
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name or "." in name:
        raise ConfigError(
            f"--set {text!r} is not SECTION.FIELD=VALUE; write e.g. --set runtime.hop_ms=50 "
            f"(sections: {', '.join(f.name for f in dataclasses.fields(Config))})"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, dict):
        raise ConfigError(f"--set {text!r}: give one field's value, not a table")
    return section, name, None if value == "none" else value


def _section_class(section: str, source: str) -> type:
    sections = [f.name for f in dataclasses.fields(Config)]
    if section not in sections:
        raise ConfigError(
            f"{source}: unknown section {section!r}; the sections are {', '.join(sections)}"
        )
    return _field_hints(Config)[section]


def _field_hint(section: str, name: str, source: str) -> Any:
    hints = _field_hints(_section_class(section, source))
    if name not in hints:
        raise ConfigError(
            f"{source}: [{section}] has no field {name!r}; its fields are {', '.join(hints)}"
        )
    return hints[name]


def apply_overrides(
    config: Config, overrides: Mapping[str, Any] | Sequence[str], *, source: str = "--set"
) -> Config:
    """``config`` with fields replaced, by ``"section.field=value"`` strings (``--set``) or
    a ``{"section.field": value}`` mapping; later entries win.

    An unknown section or field, or a value of the wrong type, is a :class:`ConfigError`
    naming the key, the value and the valid fields (or the type); so is a result out of
    range (each changed section is checked once, with all its new values).
    """
    return _replace_fields(config, _override_items(overrides, source))


def _override_items(
    overrides: Mapping[str, Any] | Sequence[str], source: str
) -> list[tuple[str, str, Any, str]]:
    """``(section, field, value, where)`` of each override, ``where`` naming its source."""
    if isinstance(overrides, Mapping):
        return [(*key.partition(".")[::2], value, source) for key, value in overrides.items()]
    return [(*parse_override(text), f"{source} {text}") for text in overrides]


def _replace_fields(config: Config, items: Sequence[tuple[str, str, Any, str]]) -> Config:
    updates: dict[str, dict[str, Any]] = {}
    for section, name, value, where in items:
        hint = _field_hint(section, name, where)
        try:
            updates.setdefault(section, {})[name] = _coerce(hint, value, f"{section}.{name}")
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return dataclasses.replace(
        config,
        **{s: dataclasses.replace(getattr(config, s), **f) for s, f in updates.items()},
    )


def resolve_config(
    *,
    base: Config | None = None,
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    flag_names: Mapping[str, str] | None = None,
    sections: Sequence[str] | None = None,
    command: str = "this command",
) -> Config:
    """The tree a command runs with: ``base`` < ``config_file`` < ``flags`` < ``overrides``.

    Parameters
    ----------
    base : Config, optional
        The command's starting tree (default: :class:`Config` defaults).
    config_file : path, optional
        TOML file with any subset of the sections (``--config``); its fields replace the
        base's, the others stay.
    flags : mapping, optional
        ``{"section.field": value}`` from the command's own flags, only those given (a
        ``None`` sets the field to None: ``--h-freq none``).
    overrides : sequence of str
        ``--set`` arguments, ``"section.field=value"``; the last of a key wins.
    flag_names : mapping, optional
        ``{"section.field": "--flag"}``, to name the flag in an error.
    sections : sequence of str, optional
        The sections the command reads; a ``--set`` elsewhere would do nothing and is
        refused (a config file may hold other sections: they are ignored).
    command : str
        The command's name, for that error.

    Raises
    ------
    ConfigError
        Naming the key, the bad value, where it came from and the valid fields or range.
    """
    cfg = base if base is not None else Config()
    items: list[tuple[str, str, Any, str]] = []
    if config_file is not None:
        where = f"--config {config_file}"
        for section, table in read_toml(config_file).items():
            _section_class(section, where)
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{where}: {section} must be a table ([{section}]), not {table!r}"
                )
            items += [(section, name, value, where) for name, value in table.items()]
    for key, value in (flags or {}).items():
        flag = (flag_names or {}).get(key, "a command-line flag")
        named = isinstance(value, bool) or " " in flag  # "--size paper" names its value
        items.append((*key.partition(".")[::2], value, flag if named else f"{flag} {value!r}"))
    for text in overrides:
        section, name, value = parse_override(text)
        if sections is not None and section not in sections:
            raise ConfigError(
                f"--set {text}: {command} does not read [{section}] (it reads "
                f"{', '.join(f'[{s}]' for s in sections)}); the setting would have no effect"
            )
        items.append((section, name, value, f"--set {text}"))
    try:
        return _replace_fields(cfg, items)
    except ConfigError as err:  # a range error, named by where the culprit came from
        origin = {f"{section}.{name}": where for section, name, _, where in items}
        keys = re.findall(r"\b([a-z]+\.[a-z_0-9]+)=", str(err))
        sources = list(dict.fromkeys(origin[k] for k in keys if k in origin))
        if not sources or str(err).startswith(tuple(sources)):
            raise
        raise ConfigError(f"{', '.join(sources)}: {err}") from None


def format_config(config: Config, sections: Sequence[str] | None = None) -> str:
    """The resolved tree (or some of its sections) as TOML, ``None`` written as "none"."""
    data = _none_to_toml(to_dict(config))
    if sections is not None:
        data = {s: data[s] for s in sections}
    return tomli_w.dumps(data)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML settings file, ``"none"`` read as None; a ConfigError names a missing or
    malformed file."""
    path = Path(path)
    try:
        return _none_from_toml(tomllib.loads(path.read_text()))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    sections: Sequence[str] | None = None,
    flags: Mapping[str, str] | None = None,
    config_help: str | None = None,
    show_defaults: bool = True,
    base_note: str | None = None,
) -> None:
    """Give a command ``--config FILE``, ``--set SECTION.FIELD=VALUE`` (repeatable) and
    ``--print-config``; call it after the command's own arguments.

    ``flags`` maps the ``dest`` of the command's own flags to the field they set
    (``{"hop_ms": "runtime.hop_ms"}``): their defaults become "not given" (``None``) so
    that a ``--config`` file can set the field, and :func:`config_from_args` writes the
    resolved value back into the namespace; their help gains the field's name (and, with
    ``show_defaults``, its default in :class:`Config`). ``sections``: those the command
    reads (default: all). ``base_note``: what the command starts from when that is not
    the defaults (``rtmoe config show --for`` says so). Precedence: :data:`PRECEDENCE`.
    """
    flags = dict(flags or {})
    actions = {a.dest: a for a in parser._actions}
    defaults = Config()
    suppressed = []
    for dest, key in flags.items():
        if dest not in actions:
            raise ValueError(f"add_config_arguments: the parser has no flag with dest {dest!r}")
        section, _, name = key.partition(".")
        _field_hint(section, name, f"add_config_arguments flag {dest!r}")
        action = actions[dest]
        if action.default is argparse.SUPPRESS:
            suppressed.append(dest)
        else:
            action.default = None
        literal = _toml_literal(getattr(getattr(defaults, section), name))
        where = f"[{key}, default {literal}]" if show_defaults else f"[{key}]"
        action.help = f"{action.help or ''} {where}".strip()
    names = "[" + "], [".join(sections) + "]" if sections else "any section"
    group = parser.add_argument_group(
        "settings (the config tree)", f"This command reads {names}; " + PRECEDENCE_HELP + "."
    )
    if "config" not in actions:
        group.add_argument(
            "--config",
            type=Path,
            metavar="FILE.toml",
            help=config_help or "TOML file with any subset of the config sections",
        )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="set one field (a TOML literal; none for None), e.g. --set runtime.hop_ms=50; "
        "repeatable",
    )
    group.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved settings as TOML and exit",
    )
    parser.set_defaults(
        _config_flags=flags,
        _config_suppressed=tuple(suppressed),
        _config_base_note=base_note,
        _config_sections=tuple(sections) if sections else None,
    )


def config_from_args(
    args: argparse.Namespace,
    *,
    base: Config | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    command: str | None = None,
    finish: Callable[[Config], Config] | None = None,
) -> Config:
    """The resolved tree of a command set up by :func:`add_config_arguments`.

    Writes each mapped flag's resolved value back into ``args`` (so the command's own
    checks see the value it will run with). With ``--print-config``: prints the tree and
    exits (``SystemExit(0)``, as ``--help`` does).

    ``base``: the command's starting tree (default: the defaults). ``flags``: more
    ``{"section.field": value}`` at the flags' level, from flags that are not one field
    each (``rtmoe pretrain --size``: the whole [model]; ``--no-psd-gate``), named in errors
    by ``flag_names`` (``{"section.field": "--size paper"}``). ``finish``: the command's
    last step on the resolved tree (what it derives from it), before it is printed.

    A mapped flag counts as given when it is not ``None`` or, for a flag whose default is
    ``argparse.SUPPRESS`` (``--h-freq none`` means None), when it is present at all.
    """
    flag_map: dict[str, str] = getattr(args, "_config_flags", {})
    suppressed = getattr(args, "_config_suppressed", ())
    sections = getattr(args, "_config_sections", None)
    command = command or f"rtmoe {getattr(args, 'command', None) or 'this command'}"
    names = {key: "a command-line flag" for key in flags or {}} | dict(flag_names or {})
    flags = dict(flags or {})
    for dest, key in flag_map.items():
        given = hasattr(args, dest) if dest in suppressed else getattr(args, dest) is not None
        if given:
            flags[key] = getattr(args, dest)
            names[key] = "--" + dest.replace("_", "-")
    cfg = resolve_config(
        base=base,
        config_file=getattr(args, "config", None),
        flags=flags,
        overrides=getattr(args, "set", None) or (),
        flag_names=names,
        sections=sections,
        command=command,
    )
    if finish is not None:
        cfg = finish(cfg)
    for dest, key in flag_map.items():
        section, _, name = key.partition(".")
        setattr(args, dest, getattr(getattr(cfg, section), name))
    if getattr(args, "print_config", False):
        print(f"# {command}: resolved settings ({' < '.join(PRECEDENCE)})")
        print(format_config(cfg, sections), end="")
        raise SystemExit(0)
    return cfg
