"""The one config tree: frozen dataclasses, TOML load/save, validation, content hash.

Every artifact (checkpoint, shard index, engine, subject profile) stores the resolved
tree beside it, so the same preprocessing runs offline, in calibration and live.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

#: The 19 electrodes of the 10-20 system used for pretraining (SPEC §1), old T3-T6 names.
TEN_TWENTY_19: tuple[str, ...] = (
    "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2",
    "F7", "F8", "T3", "T4", "T5", "T6", "FZ", "CZ", "PZ",
)  # fmt: skip


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class SignalConfig:
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
class CorpusConfig:
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
class SpectralConfig:
    """STFT of the masking pipeline and Welch PSD of the gate, in seconds (SPEC §2, §5)."""

    stft_window_s: float = 2.0  # n_fft = 2·fs = 400 at 200 Hz
    stft_hop_s: float = 1.0  # hop = fs = 200 at 200 Hz
    welch_window_s: float = 2.0  # nperseg = 2·fs, 50 % overlap; fs for 1 s windows

    def validate(self) -> None:
        _positive(self, "stft_window_s", "stft_hop_s", "welch_window_s")
        if self.stft_hop_s > self.stft_window_s:
            raise ConfigError(
                f"spectral.stft_hop_s={self.stft_hop_s} exceeds spectral.stft_window_s="
                f"{self.stft_window_s}; frames would leave gaps"
            )


@dataclass(frozen=True)
class MaskConfig:
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
class ModelConfig:
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
class PretrainConfig:
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
CHANNEL_POOLS: tuple[str, ...] = ("mean", "max")


@dataclass(frozen=True)
class MoEConfig:
    """SpecMoE architecture around the experts (SPEC §5); the experts use ModelConfig."""

    n_experts: int = 3
    use_psd_gate: bool = True
    channel_pool: str = "mean"
    dropout: float = 0.2

    def validate(self) -> None:
        if self.n_experts < 1:
            raise ConfigError(f"moe.n_experts={self.n_experts} must be >= 1")
        if self.channel_pool not in CHANNEL_POOLS:
            raise ConfigError(
                f"moe.channel_pool={self.channel_pool!r} must be one of {CHANNEL_POOLS}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"moe.dropout={self.dropout} must lie in [0, 1)")


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation of SpecMoE on a labelled task (SPEC §5).

    ``freeze_epochs``: experts are frozen (weights, BatchNorm statistics and dropout)
    for that many epochs, then trained with the head. The learning rate is halved when
    the validation loss has not improved for ``plateau_patience`` epochs.
    ``early_stop_patience`` stops after that many epochs without a better validation
    score; ``max_minutes`` stops after the epoch that exceeds the time budget.
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

    def validate(self) -> None:
        for name in ("lr", "epochs", "batch_size", "plateau_patience"):
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
class RuntimeConfig:
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

    def validate(self) -> None:
        _positive(self, "hop_ms", "stall_timeout_ms", "max_gap_ms", "status_period_s")
        _positive(self, "poll_ms", "max_buflen_s", "resolve_timeout_s", "timing_records")
        _positive(self, "max_age_s", "rate_tolerance")
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
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(
                f"runtime.device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )
        engines = ("auto", "torch", "compile", "onnx", "tensorrt")
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

    def validate(self) -> Config:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        return self

    def replace(self, **sections: Any) -> Config:
        """Copy with whole sections or ``section={field: value}`` overrides replaced."""
        updates = {}
        for name, value in sections.items():
            current = getattr(self, name)
            updates[name] = (
                dataclasses.replace(current, **value) if isinstance(value, dict) else value
            )
        return dataclasses.replace(self, **updates).validate()


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build ``cls`` from a nested dict; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value)
        elif _is_tuple(hint) and value is not None:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_hash(obj: Any) -> str:
    """Content hash (sha256, 16 hex digits) of a config dataclass or plain dict."""
    data = obj if isinstance(obj, dict) else to_dict(obj)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path) -> Config:
    """Read a TOML file holding any subset of the sections; the rest are defaults."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    return from_dict(Config, _none_from_toml(data)).validate()


def save_config(config: Config, path: str | Path) -> None:
    """Write the whole resolved tree as TOML (``None`` is written as the string "none")."""
    Path(path).write_text(tomli_w.dumps(_none_to_toml(to_dict(config))))


def _none_to_toml(data: dict) -> dict:
    return {
        k: _none_to_toml(v) if isinstance(v, dict) else ("none" if v is None else v)
        for k, v in data.items()
    }


def _none_from_toml(data: dict) -> dict:
    return {
        k: _none_from_toml(v) if isinstance(v, dict) else (None if v == "none" else v)
        for k, v in data.items()
    }


def _is_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return True
    if isinstance(hint, types.UnionType):
        return any(typing.get_origin(arg) is tuple for arg in typing.get_args(hint))
    return False


def _positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name}={value} must be > 0")
