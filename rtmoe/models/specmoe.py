"""SpecMoE: SpecHi-Net experts fused by a spectral, feature-wise gate (SPEC §5).

For a window ``x (batch, n_chans, n_times)`` in model units::

    h_k = mean_t expert_k.encoder(x)            (batch, n_chans, S, D)  per electrode
    z   = norm(log10(max(PSD(x), floor)))       (batch, n_chans, bins)  per electrode
    g_k = sigmoid(W_k · z + b_k)                (batch, n_chans, D)     per electrode
    H   = concat_k(h_k ⊙ g_k)                   (batch, n_chans, S, K·D)
    logits = head(flatten(pool_c H))            (batch, n_outputs)

``S`` is ``time_segments``: 1 (the paper) averages over the whole window; S > 1 over S
consecutive parts of it, so the head sees the features' time course.

With ``erp_segments = E > 0`` the decision also reads the waveform itself: each
electrode's window averaged over E consecutive parts (the decimated evoked response of
classic ERP decoders), standardised with training statistics, through a linear readout
whose logits add to the head's.
The experts see spectra and the gates power; slow, phase-locked potentials are what
neither keeps, and on short trials they carry most of the class information.

With ``waveform_filters = F > 0`` a learned version of that readout joins them: a
:class:`WaveformBranch` (EEGNet's temporal, depthwise-spatial and separable filters,
Lawhern et al. 2018) over the window, whose logits also add to the head's. The segment
means fix the temporal filter (a box) and mix electrodes only linearly at the end; the
branch learns F band-pass filters, spatial patterns per filter and their time course.

``SpecMoE.forward_features`` computes ``h_k`` and ``log10(max(PSD, floor))`` (every
expert parameter, no other); ``SpecMoE.forward_head`` the rest (gates, fusion, pooling,
head), so ``forward = forward_head ∘ forward_features`` (timm's split).

Every expert always runs; the gates neither compete (no softmax) nor select (no top-k).
The electrode axis stays explicit until the channel pooling, so feature ``d`` of
electrode ``c`` is gated by the spectrum of electrode ``c`` alone.

Gate input
----------
The PSD is ``rtmoe.dsp.spectral.welch_psd`` of the model-unit window (units² / Hz),
the same function the runtime averages its stored periodograms with. EEG power spans
several decades across frequency (1/f) and between electrodes, so a linear gate over raw
power would see only the lowest bins; the gate reads ``log10(max(PSD, PSD_FLOOR))`` instead,
where ``PSD_FLOOR = 1e-10`` units²/Hz (1e-6 µV²/Hz at 100 µV per unit, far below any
amplifier's noise floor) only keeps flat or zeroed channels finite. The log is taken
inside the model, so callers pass the density exactly as ``welch_psd`` returns it.

``norm`` standardises each frequency bin of the log-PSD with its statistics over
training windows and electrodes (``BatchNorm1d`` without affine parameters, one shared
by the gates). In eval mode it is a fixed affine map, so ``W_k · z + b_k`` is still the
linear gate ``W'_k · log-PSD + b'_k`` of SPEC §5, only better conditioned: raw log
powers sit around -2 to -10 in every bin, which saturates a freshly initialised
sigmoid and makes the bins' inputs nearly collinear.

Ensembles
---------
``rtmoe finetune`` with ``finetune.folds = k > 1`` trains one SpecMoE per cross-validation
fold and delivers them together as a :class:`SpecMoEEnsemble`: it averages the members'
class probabilities (regression: their outputs) and reports their mean gates, behind the
same ``forward`` / ``forward_with_gates`` / ``psd`` interface, so evaluation, the engines
and the live loop take it as they take one model. Its checkpoint is an ordinary
``specmoe`` one whose weights are the members' under ``members.<i>.`` and whose
``meta.json`` has an ``ensemble`` entry (:data:`ENSEMBLE_FORMAT`); checkpoints without that
entry are single models, as before.

Ablations: ``use_psd_gate=False`` is plain concatenation (every gate is 1); one to three
experts give the "one expert" ablation; experts built fresh give "no pretraining".

The architecture settings are ``rtmoe.config.MoEConfig`` (saved in ``config.toml`` with
the signal, spectral and expert settings). ``TaskConfig`` is not a setting but the
description of what a fine-tuned model decodes (electrodes, window, labels); a
checkpoint stores it in ``meta.json`` under ``task``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import torch
from torch import nn

from rtmoe.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_weights
from rtmoe.config import (
    Config,
    ConfigError,
    MoEConfig,
    Section,
    SpectralConfig,
    from_dict,
    to_dict,
)
from rtmoe.dsp.spectral import welch_nperseg, welch_psd
from rtmoe.models.layers import same_padding
from rtmoe.models.spechinet import TIME_DIVISOR, SpecHiNet, SpecHiNetEncoder

#: Checkpoint kind written by ``rtmoe finetune``.
SPECMOE_KIND = "specmoe"
#: Lower clamp of the PSD (model units² / Hz) before the log, so zero power stays finite.
PSD_FLOOR = 1e-10
#: Version of the ``ensemble`` entry of a ``specmoe`` checkpoint's meta.json (absent: one
#: model). Version 1: ``{"version": 1, "n_members": k, "combine": "mean_probabilities" |
#: "mean_outputs"}``, weights under ``members.<i>.``.
ENSEMBLE_FORMAT = 1


@dataclass(frozen=True)
class TaskConfig(Section):
    """What a fine-tuned SpecMoE decodes: its input window and its outputs.

    Attributes
    ----------
    name : str
        The task or data set, for provenance.
    ch_names : tuple of str
        Electrodes in the order the model receives them.
    n_times : int
        Window length in samples at ``signal.sfreq`` (after resampling).
    labels : tuple of str
        Class names; output ``i`` is ``labels[i]``. Empty for regression.
    regression : bool
        Regression (MSE, ``n_targets`` outputs) instead of classification.
    n_targets : int
        Outputs of a regression task.
    """

    name: str = "task"
    ch_names: tuple[str, ...] = ()
    n_times: int = 0
    labels: tuple[str, ...] = ()
    regression: bool = False
    n_targets: int = 1

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    @property
    def n_outputs(self) -> int:
        return self.n_targets if self.regression else len(self.labels)

    def validate(self) -> None:
        if not self.ch_names or len(set(self.ch_names)) != len(self.ch_names):
            raise ConfigError(
                f"task.ch_names={self.ch_names} must list each electrode once, in input order"
            )
        if self.n_times < 2:
            raise ConfigError(f"task.n_times={self.n_times} must be >= 2 samples")
        if self.regression:
            if self.labels:
                raise ConfigError(
                    f"task.labels={self.labels} must be empty for a regression task; drop "
                    "the labels or set task.regression=false"
                )
            if self.n_targets < 1:
                raise ConfigError(f"task.n_targets={self.n_targets} must be >= 1")
        elif len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task.labels={self.labels} must name at least two distinct classes")


def segment_means(x: torch.Tensor, n_segments: int) -> torch.Tensor:
    """``x (..., t)`` averaged over ``n_segments`` consecutive parts of its last axis.

    Parts differ in length by at most one step (``torch.tensor_split``); returns
    ``(..., n_segments)``. Static slices, so it exports with the model.
    """
    parts = torch.tensor_split(x, n_segments, dim=-1)
    return torch.stack([p.mean(dim=-1) for p in parts], dim=-1)


def gate_input(psd: torch.Tensor) -> torch.Tensor:
    """Log-density the gates read: ``log10(max(psd, PSD_FLOOR))``, same shape as ``psd``.

    A clamp rather than ``psd + PSD_FLOOR``: graph optimisers (ONNX export) fold the tiny
    addend away, and an exactly-zero bin (a flat or zero-filled channel, DC after
    detrending) would then give -inf.
    """
    return torch.log10(psd.clamp_min(PSD_FLOOR))


class WaveformBranch(nn.Module):
    """EEGNet-F,2 over the model-rate window: logits from learned temporal-spatial filters.

    Temporal conv (F filters of half a second) → BN → depthwise spatial conv over all
    electrodes (2 per filter) → BN → ELU → mean-pool 4 → dropout → separable conv
    (depthwise, 16 steps, then pointwise) → BN → ELU → mean-pool 8 → dropout → linear.
    The architecture of Lawhern et al. (2018) without its max-norm weight constraints;
    convolutions are unbiased (a BatchNorm follows each). BatchNorm after the first
    convolution makes the branch indifferent to the input's unit.

    Parameters
    ----------
    n_chans, n_times : int
        The window (``n_times >= 32``, the two poolings' span).
    sfreq : float
        Its rate in Hz (sets the temporal kernel to ``round(sfreq / 2)`` samples).
    n_outputs : int
        Logits.
    n_filters : int
        F, the temporal filters.
    dropout : float
        The paper's within-subject value by default.
    """

    DEPTH = 2  # spatial filters per temporal filter (EEGNet's D)
    SEPARABLE_KERNEL = 16  # steps of the separable convolution (after pooling by 4)

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        sfreq: float,
        n_outputs: int,
        n_filters: int,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if n_times < 32:
            raise ConfigError(
                f"moe.waveform_filters needs windows of at least 32 samples; this one has "
                f"{n_times}: lengthen the window or set moe.waveform_filters = 0"
            )
        kernel = max(1, round(sfreq / 2))
        width = n_filters * self.DEPTH
        self.layers = nn.Sequential(
            nn.ZeroPad2d((*same_padding(kernel), 0, 0)),
            nn.Conv2d(1, n_filters, (1, kernel), bias=False),
            nn.BatchNorm2d(n_filters),
            nn.Conv2d(n_filters, width, (n_chans, 1), groups=n_filters, bias=False),
            nn.BatchNorm2d(width),
            nn.ELU(),
            nn.AvgPool2d((1, 4)),
            nn.Dropout(dropout),
            nn.ZeroPad2d((*same_padding(self.SEPARABLE_KERNEL), 0, 0)),
            nn.Conv2d(width, width, (1, self.SEPARABLE_KERNEL), groups=width, bias=False),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ELU(),
            nn.AvgPool2d((1, 8)),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(width * (n_times // 4 // 8), n_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n_chans, n_times)`` → logits ``(batch, n_outputs)``."""
        return self.layers(x.unsqueeze(1))


class MoEFeatures(NamedTuple):
    """:meth:`SpecMoE.forward_features` of a batch: the head's whole input.

    Attributes
    ----------
    experts : Tensor, shape (batch, n_experts, n_chans, time_segments, feature_dim)
        Each expert's encoder output averaged over each time segment, per electrode.
    log_psd : Tensor, shape (batch, n_chans, psd_bins), or None
        :func:`gate_input` of the window's Welch PSD; ``None`` without PSD gates.
    erp : Tensor, shape (batch, n_chans, erp_segments), or None
        The window averaged over each ERP segment, per electrode; ``None`` without.
    waveform : Tensor, shape (batch, n_chans, n_times), or None
        The window itself, for the :class:`WaveformBranch`; ``None`` without.
    """

    experts: torch.Tensor
    log_psd: torch.Tensor | None
    erp: torch.Tensor | None = None
    waveform: torch.Tensor | None = None

    def take(self, index: torch.Tensor | slice) -> MoEFeatures:
        """The features of the windows ``index`` selects along the batch axis."""
        return MoEFeatures(*(None if t is None else t[index] for t in self))

    @staticmethod
    def cat(parts: Sequence[MoEFeatures]) -> MoEFeatures:
        """Concatenate batches of features along the batch axis."""
        return MoEFeatures(
            *(None if ts[0] is None else torch.cat(ts) for ts in zip(*parts, strict=True))
        )


class SpecMoE(nn.Module):
    """Spectrally gated mixture of SpecHi-Net encoders with a classification head.

    Parameters
    ----------
    experts : sequence of SpecHiNet or SpecHiNetEncoder
        One to three experts with the same ``feature_dim``; of a full SpecHi-Net only the
        encoder is kept (the decoder is not needed for decoding).
    n_chans, n_times : int
        The static input window (electrodes, samples at ``sfreq``).
    sfreq : float
        Sampling rate of the input in Hz.
    n_outputs : int
        Classes (logits) or regression targets.
    spectral : SpectralConfig
        ``welch_window_s`` sets the Welch segment length (see ``welch_nperseg``).
    use_psd_gate : bool
        False: plain concatenation of the expert features (all gates 1).
    channel_pool : {"mean", "max", "concat"}
        Pooling of the gated features over electrodes; "concat" keeps them apart.
    dropout : float
        Dropout of the head.
    time_segments : int
        Consecutive parts of the window the features are averaged over (1: the whole
        window); at most ``ceil(n_times / 120)``, the encoder's steps.
    erp_segments : int
        0: no waveform readout; E > 0: each electrode's window averaged over E
        consecutive parts feeds a linear readout whose logits add to the head's (at most
        ``n_times``).
    waveform_filters : int
        0: no waveform branch; F > 0: a :class:`WaveformBranch` with F temporal filters
        whose logits add to the head's.

    Attributes
    ----------
    nperseg : int
        Welch segment length in samples; the runtime computes the PSD with it.
    psd_bins : int
        ``nperseg // 2 + 1``: the last axis of ``psd``.
    feature_dim : int
        D, the width of one expert's features.
    """

    def __init__(
        self,
        experts: Sequence[SpecHiNet | SpecHiNetEncoder],
        n_chans: int,
        n_times: int,
        sfreq: float,
        n_outputs: int,
        *,
        spectral: SpectralConfig | None = None,
        use_psd_gate: bool = True,
        channel_pool: str = "mean",
        dropout: float = 0.2,
        time_segments: int = 1,
        erp_segments: int = 0,
        waveform_filters: int = 0,
    ) -> None:
        super().__init__()
        encoders = [e.encoder if isinstance(e, SpecHiNet) else e for e in experts]
        if not encoders or not all(isinstance(e, SpecHiNetEncoder) for e in encoders):
            raise ValueError(
                f"experts={[type(e).__name__ for e in experts]} must be one or more SpecHiNet "
                "or SpecHiNetEncoder modules"
            )
        dims = sorted({e.feature_dim for e in encoders})
        if len(dims) != 1:
            raise ValueError(
                f"experts have feature_dim {dims}; every expert must have the same size "
                "(build them from one ModelConfig)"
            )
        MoEConfig(  # checks the values
            len(encoders),
            use_psd_gate,
            channel_pool,
            dropout,
            time_segments,
            erp_segments,
            waveform_filters,
        )
        for name, value in (("n_chans", n_chans), ("n_times", n_times), ("n_outputs", n_outputs)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        steps = math.ceil(n_times / TIME_DIVISOR)
        if time_segments > steps:
            raise ConfigError(
                f"moe.time_segments={time_segments} exceeds the {steps} encoder step(s) of a "
                f"{n_times}-sample window (one per {TIME_DIVISOR} samples); use at most {steps}"
            )
        if erp_segments > n_times:
            raise ConfigError(
                f"moe.erp_segments={erp_segments} exceeds the window's {n_times} samples"
            )
        self.n_chans, self.n_times, self.sfreq = int(n_chans), int(n_times), float(sfreq)
        self.n_outputs = int(n_outputs)
        self.nperseg = welch_nperseg(self.n_times, self.sfreq, spectral or SpectralConfig())
        self.psd_bins = self.nperseg // 2 + 1
        self.feature_dim = dims[0]
        self.use_psd_gate = use_psd_gate
        self.channel_pool = channel_pool
        self.time_segments, self.erp_segments = int(time_segments), int(erp_segments)
        self.waveform_filters = int(waveform_filters)
        self.experts = nn.ModuleList(encoders)
        width = len(encoders) * self.feature_dim
        rows = self.time_segments * (self.n_chans if channel_pool == "concat" else 1)
        if use_psd_gate:
            self.gate_norm = nn.BatchNorm1d(self.psd_bins, affine=False)
            self.gates = nn.ModuleList(nn.Linear(self.psd_bins, self.feature_dim) for _ in encoders)
        else:
            self.gate_norm, self.gates = None, None
        n_erp = self.n_chans * self.erp_segments
        # Standardised by training statistics (model units are not the ERP's scale), then
        # a linear readout of its own whose logits add to the head's: concatenated into
        # the head's input, a few dozen ERP values drown among hundreds of features.
        self.erp_norm = nn.BatchNorm1d(n_erp, affine=False) if n_erp else None
        self.erp_head = nn.Linear(n_erp, self.n_outputs) if n_erp else None
        self.waveform_branch = (
            WaveformBranch(
                self.n_chans, self.n_times, self.sfreq, self.n_outputs, self.waveform_filters
            )
            if self.waveform_filters
            else None
        )
        self.head = nn.Sequential(
            nn.LayerNorm(rows * width),
            nn.Linear(rows * width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, self.n_outputs),
        )

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def expert_parameters(self) -> Iterator[nn.Parameter]:
        """The experts' parameters (frozen during the first fine-tuning epochs)."""
        return self.experts.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Gates and head: every parameter that is not an expert's."""
        expert_ids = {id(p) for p in self.expert_parameters()}
        return (p for p in self.parameters() if id(p) not in expert_ids)

    def psd(self, x: torch.Tensor) -> torch.Tensor:
        """Welch PSD of ``x (batch, n_chans, n_times)``: ``(batch, n_chans, psd_bins)``."""
        return welch_psd(x, self.sfreq, self.nperseg)

    def forward(self, x: torch.Tensor, psd: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (or regression outputs) ``(batch, n_outputs)``.

        ``forward(x, psd) == forward_head(forward_features(x, psd))`` exactly.

        Parameters
        ----------
        x : Tensor, shape (batch, n_chans, n_times)
            Preprocessed window in model units.
        psd : Tensor, shape (batch, n_chans, psd_bins), optional
            ``welch_psd(x, sfreq, nperseg)`` (units² / Hz); computed from ``x`` when
            omitted. The runtime passes it so the FFT stays outside compiled engines.
        """
        return self.forward_head(self.forward_features(x, psd))

    def forward_with_gates(
        self, x: torch.Tensor, psd: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and gate activations.

        Returns
        -------
        logits : Tensor, shape (batch, n_outputs)
        gates : Tensor, shape (batch, n_experts, n_chans, feature_dim), in (0, 1)
            All ones when ``use_psd_gate`` is False. ``gates.mean((2, 3))`` is the
            per-expert summary that decodes report.
        """
        return self.forward_head(self.forward_features(x, psd), return_gates=True)

    def forward_features(self, x: torch.Tensor, psd: torch.Tensor | None = None) -> MoEFeatures:
        """What the experts compute, and the gates' input: everything before the head.

        The split is timm's (``forward_features`` / ``forward_head``): this half holds
        every expert parameter and nothing else, so with frozen experts its output can
        be computed once and cached while the gates and head train
        (``rtmoe.calibration.fit``). Parameters and shapes as :meth:`forward`.

        Returns
        -------
        MoEFeatures
            ``experts (batch, n_experts, n_chans, time_segments, feature_dim)``: each
            expert's features averaged over each time segment, per electrode;
            ``log_psd (batch, n_chans, psd_bins)``:
            :func:`gate_input` of the PSD (``None`` when ``use_psd_gate`` is False).
        """
        self._check_inputs(x, psd)
        log_psd = None
        if self.gates is not None:
            log_psd = gate_input(self.psd(x) if psd is None else psd)
        # (batch, n_chans, D, t) -> mean over each time segment -> (batch, n_chans, S, D)
        experts = torch.stack(
            [segment_means(e(x), self.time_segments).transpose(2, 3) for e in self.experts], dim=1
        )
        erp = segment_means(x, self.erp_segments) if self.erp_segments else None
        return MoEFeatures(experts, log_psd, erp, x if self.waveform_filters else None)

    @overload
    def forward_head(
        self, features: MoEFeatures, *, return_gates: Literal[False] = ...
    ) -> torch.Tensor: ...

    @overload
    def forward_head(
        self, features: MoEFeatures, *, return_gates: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward_head(
        self, features: MoEFeatures, *, return_gates: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Gates, gating, channel pooling and head over :meth:`forward_features`' output.

        Holds every parameter that :meth:`head_parameters` yields (gate normalisation,
        gates, head) and no expert's.

        Returns
        -------
        logits : Tensor, shape (batch, n_outputs)
        gates : Tensor, shape (batch, n_experts, n_chans, feature_dim)
            Only with ``return_gates=True``; as in :meth:`forward_with_gates`.
        """
        experts, log_psd, erp, waveform = features
        batch = experts.shape[0]
        if self.gates is None:
            gates = experts.new_ones(batch, self.n_experts, self.n_chans, self.feature_dim)
        else:
            if log_psd is None:
                raise ValueError(
                    "features.log_psd is None but this model gates by the spectrum; pass "
                    "the output of this model's forward_features"
                )
            z = self.gate_norm(log_psd.reshape(-1, self.psd_bins)).reshape(log_psd.shape)
            gates = torch.stack([torch.sigmoid(g(z)) for g in self.gates], dim=1)
        # (batch, K, C, S, D) gated per electrode, every segment alike -> (batch, C, S, K·D)
        gated = (experts * gates.unsqueeze(3)).permute(0, 2, 3, 1, 4)
        gated = gated.reshape(batch, self.n_chans, self.time_segments, -1)
        if self.channel_pool == "mean":
            gated = gated.mean(dim=1)
        elif self.channel_pool == "max":
            gated = gated.amax(dim=1)
        logits = self.head(gated.reshape(batch, -1))
        if self.erp_head is not None:
            if erp is None:
                raise ValueError(
                    "features.erp is None but this model reads the waveform "
                    "(erp_segments > 0); pass the output of this model's forward_features"
                )
            logits = logits + self.erp_head(self.erp_norm(erp.reshape(batch, -1)))
        if self.waveform_branch is not None:
            if waveform is None:
                raise ValueError(
                    "features.waveform is None but this model has a waveform branch "
                    "(waveform_filters > 0); pass the output of this model's forward_features"
                )
            logits = logits + self.waveform_branch(waveform)
        return (logits, gates) if return_gates else logits

    def _check_inputs(self, x: torch.Tensor, psd: torch.Tensor | None) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_chans, self.n_times):
            raise ValueError(
                f"x has shape {tuple(x.shape)}; this model takes (batch, n_chans="
                f"{self.n_chans}, n_times={self.n_times}) windows at {self.sfreq:g} Hz; "
                "select the checkpoint's electrodes and window length"
            )
        if psd is not None and tuple(psd.shape) != (x.shape[0], self.n_chans, self.psd_bins):
            raise ValueError(
                f"psd has shape {tuple(psd.shape)}, expected ({x.shape[0]}, {self.n_chans}, "
                f"{self.psd_bins}); compute it with welch_psd(x, sfreq, model.nperseg)"
            )


class SpecMoEEnsemble(nn.Module):
    """k SpecMoE models of one architecture decoding as one: the cross-validation ensemble.

    Classification averages the members' softmax probabilities; :meth:`forward` returns
    ``log(mean_i softmax(logits_i))``, logits whose softmax is exactly that average (so a
    caller or engine that applies a softmax gets the ensemble's probabilities).
    Regression averages the outputs. Gates are the members' gates averaged elementwise,
    so their per-expert means are the means over members.

    Parameters
    ----------
    members : sequence of SpecMoE
        Same window, outputs, Welch segment, experts and gating (checked).
    regression : bool
        Average raw outputs instead of probabilities.

    Attributes
    ----------
    n_chans, n_times, sfreq, n_outputs, nperseg, psd_bins, feature_dim, use_psd_gate,
    channel_pool, time_segments, erp_segments, waveform_filters :
        As the members' (:class:`SpecMoE`).
    """

    def __init__(self, members: Sequence[SpecMoE], *, regression: bool = False) -> None:
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, SpecMoE) for m in members):
            raise ValueError(
                f"members={[type(m).__name__ for m in members]} must be one or more SpecMoE models"
            )
        names = ("n_chans", "n_times", "sfreq", "n_outputs", "nperseg", "psd_bins")
        names += ("feature_dim", "n_experts", "use_psd_gate", "channel_pool", "time_segments")
        names += ("erp_segments", "waveform_filters")
        for name in names:
            values = [getattr(m, name) for m in members]
            if len(set(values)) != 1:
                raise ValueError(
                    f"ensemble members differ in {name} ({values}); build every member from "
                    "one config and task"
                )
            if name != "n_experts":
                setattr(self, name, values[0])
        self.regression = bool(regression)
        self.members = nn.ModuleList(members)

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def n_experts(self) -> int:
        return self.members[0].n_experts

    def psd(self, x: torch.Tensor) -> torch.Tensor:
        """Welch PSD of ``x (batch, n_chans, n_times)``: ``(batch, n_chans, psd_bins)``."""
        return self.members[0].psd(x)

    def forward(self, x: torch.Tensor, psd: torch.Tensor | None = None) -> torch.Tensor:
        """Ensemble logits (log mean probabilities) or mean outputs ``(batch, n_outputs)``.

        Parameters as :meth:`SpecMoE.forward`; the PSD is computed once for all members.
        """
        return self.forward_with_gates(x, psd)[0]

    def forward_with_gates(
        self, x: torch.Tensor, psd: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble outputs and the members' mean gates.

        Returns
        -------
        logits : Tensor, shape (batch, n_outputs)
            ``log(mean_i softmax(logits_i))``; regression: ``mean_i outputs_i``.
        gates : Tensor, shape (batch, n_experts, n_chans, feature_dim)
            The members' gate activations averaged elementwise.
        """
        if psd is None and self.use_psd_gate:
            psd = self.psd(x)
        outputs, gates = zip(*(m.forward_with_gates(x, psd) for m in self.members), strict=True)
        gate_mean = torch.stack(gates).mean(dim=0)
        if self.regression:
            return torch.stack(outputs).mean(dim=0), gate_mean
        log_p = torch.stack([o.log_softmax(dim=-1) for o in outputs])
        return torch.logsumexp(log_p, dim=0) - math.log(self.n_members), gate_mean


def ensemble_meta(ensemble: SpecMoEEnsemble) -> dict[str, Any]:
    """The ``meta.json`` entry that makes :func:`load_specmoe` build ``ensemble``."""
    combine = "mean_outputs" if ensemble.regression else "mean_probabilities"
    entry = {"version": ENSEMBLE_FORMAT, "n_members": ensemble.n_members, "combine": combine}
    return {"ensemble": entry}


def build_specmoe(
    config: Config,
    task: TaskConfig,
    moe: MoEConfig,
    experts: Sequence[SpecHiNet | SpecHiNetEncoder] | None = None,
) -> SpecMoE:
    """SpecMoE for ``task``; fresh experts from ``config.model`` unless ``experts`` given.

    Fresh experts are initialised as in pretraining (``rtmoe.models.registry``); with
    ``experts`` given, their number must equal ``moe.n_experts``.
    """
    from rtmoe.models.registry import init_weights

    if experts is None:
        experts = [
            init_weights(SpecHiNetEncoder(config.model, config.signal.sfreq))
            for _ in range(moe.n_experts)
        ]
    if len(experts) != moe.n_experts:
        raise ValueError(
            f"{len(experts)} experts given but moe.n_experts={moe.n_experts}; pass as many "
            "expert checkpoints as moe.n_experts"
        )
    return SpecMoE(
        experts,
        task.n_chans,
        task.n_times,
        config.signal.sfreq,
        task.n_outputs,
        spectral=config.spectral,
        use_psd_gate=moe.use_psd_gate,
        channel_pool=moe.channel_pool,
        dropout=moe.dropout,
        time_segments=moe.time_segments,
        erp_segments=moe.erp_segments,
        waveform_filters=moe.waveform_filters,
    )


@dataclass(frozen=True)
class LoadedSpecMoE:
    """A fine-tuned SpecMoE and everything needed to feed it live.

    Attributes
    ----------
    model : SpecMoE or SpecMoEEnsemble
        In eval mode; an ensemble for a checkpoint of ``finetune.folds > 1``.
    config : Config
        ``signal`` is the preprocessing to apply; ``model`` the experts' size.
    task : TaskConfig
        Electrodes, window length and labels.
    moe : MoEConfig
    checkpoint : Checkpoint
        The raw checkpoint (meta holds training provenance and validation metrics).
    """

    model: SpecMoE | SpecMoEEnsemble
    config: Config
    task: TaskConfig
    moe: MoEConfig
    checkpoint: Checkpoint


def specmoe_meta(task: TaskConfig) -> dict[str, Any]:
    """The ``meta.json`` entry :func:`load_specmoe` needs beside the saved config."""
    return {"task": to_dict(task)}


def load_specmoe(directory: str | Path, device: str | torch.device = "cpu") -> LoadedSpecMoE:
    """Rebuild a fine-tuned SpecMoE from its checkpoint and load the weights strictly.

    Raises
    ------
    CheckpointError
        The checkpoint is of another kind (e.g. a pretrained expert) or its weights do
        not fit the model its saved config describes.
    """
    ckpt = load_checkpoint(directory)
    if ckpt.kind != SPECMOE_KIND:
        raise CheckpointError(
            f"checkpoint {ckpt.path} is a {ckpt.kind!r} checkpoint, not a fine-tuned "
            f"{SPECMOE_KIND!r} one; pass the folder written by `rtmoe finetune --out`"
        )
    task = _section(ckpt.meta, "task", TaskConfig, ckpt.path)
    moe = ckpt.config.moe
    n_members = _ensemble_members(ckpt.meta, ckpt.path, task)
    if n_members is None:  # one model: every checkpoint before ensembles, and folds = 1
        model = build_specmoe(ckpt.config, task, moe)
    else:
        members = [build_specmoe(ckpt.config, task, moe) for _ in range(n_members)]
        model = SpecMoEEnsemble(members, regression=task.regression)
    load_weights(model, ckpt, model_name=ckpt.config.model.name)
    return LoadedSpecMoE(model.to(device).eval(), ckpt.config, task, moe, ckpt)


def _ensemble_members(meta: Mapping[str, Any], path: Path, task: TaskConfig) -> int | None:
    """Members of an ensemble checkpoint (its ``ensemble`` entry), None for one model."""
    entry = meta.get("ensemble")
    if entry is None:
        return None
    version = entry.get("version") if isinstance(entry, Mapping) else None
    if version != ENSEMBLE_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: meta.json's ensemble entry has version {version!r}; this "
            f"rtmoe reads version {ENSEMBLE_FORMAT}; upgrade rtmoe or refit the model"
        )
    n_members = entry.get("n_members")
    combine = "mean_outputs" if task.regression else "mean_probabilities"
    if not isinstance(n_members, int) or n_members < 1 or entry.get("combine") != combine:
        raise CheckpointError(
            f"checkpoint {path}: meta.json's ensemble entry {dict(entry)} needs n_members >= 1 "
            f"and combine {combine!r}; the file is damaged: refit the model"
        )
    return n_members


def _section(meta: Mapping[str, Any], key: str, cls: type, path: Path) -> Any:
    if key not in meta:
        raise CheckpointError(
            f"checkpoint {path}: meta.json has no {key!r} section; it was not written by "
            "`rtmoe finetune`"
        )
    return from_dict(cls, meta[key])
