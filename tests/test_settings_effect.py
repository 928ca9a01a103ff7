"""Every config field that ``--set`` reaches changes the behaviour it names.

`test_every_field_has_exactly_one_behaviour_case` lists every field of every section of
`rtmoe.config.Config` and requires exactly one case for it in `CASES`: a field added
later without one fails there. Each case resolves its settings exactly as ``--set``
does (`rtmoe.config.apply_overrides` with ``"section.field=value"`` strings), builds the
real consumer of the field with its default and with a changed value, and checks that
what the field names moves the way its name says: the signal chain's output, the masks,
the built models, a corpus built from real recording files, real pretraining and
fine-tuning runs on tiny data, and the live runtime reading a real LSL outlet and
publishing on a real ZeroMQ socket. A field found to have no effect anywhere is listed
in `NO_EFFECT_YET` and its case is a strict xfail, so the gap stays visible.

The live cases drive `Runtime.step` by hand on samples pushed with known timestamps
(stamped in the past, so nothing depends on real-time pacing), bind only
``tcp://127.0.0.1:0`` or ``ipc://`` in a temporary folder, and bound every wait.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pylsl
import pytest
import torch
import torch.nn.functional as F
from test_corpus import FILE_NAMES, SFREQ, _synthetic_uv, _write
from test_pretrain import _write_corpus
from test_runtime import MODEL_CHANS, N_TIMES, _drain, _save_model, _subscriber

from rtmoe.checkpoint import load_checkpoint
from rtmoe.cli import main
from rtmoe.config import TEN_TWENTY_19, Config, ConfigError, apply_overrides
from rtmoe.dsp.masking import FREQ, TF, TIME, draw_masks, spectral_mask
from rtmoe.errors import BadValueError
from rtmoe.models.registry import build_model
from rtmoe.models.specmoe import (
    MoEFeatures,
    SpecMoE,
    SpecMoEEnsemble,
    TaskConfig,
    build_specmoe,
    segment_means,
)
from rtmoe.offline.augment import Augmentation
from rtmoe.offline.corpus.build import build_corpus
from rtmoe.offline.corpus.shards import ShardCorpus
from rtmoe.offline.finetune import finetune
from rtmoe.offline.pretrain import HISTORY_FILE, pretrain_expert, reconstruction_loss
from rtmoe.offline.pretrain.data import batch_plan, make_loader
from rtmoe.offline.pretrain.distributed import setup_distributed
from rtmoe.offline.pretrain.loop import train_step
from rtmoe.offline.pretrain.loss import identity_output
from rtmoe.runtime.loop import Runtime
from rtmoe.signal import ChannelError, preprocess_trials
from rtmoe.stream.lsl import LslError, LslSource
from rtmoe.transport import (
    DecodeMessage,
    PreviewMessage,
    RuntimeState,
    StatusError,
    ZmqPublisher,
    decode,
)

#: Behaviour case of every field, ``"section.field"`` → the function that checks it. A
#: case's parameters are fixtures of this module.
CASES: dict[str, Callable[..., None]] = {}

#: Fields whose case found no effect anywhere, with where the code was searched: their
#: cases are strict xfails (the suite stays green, the gap stays recorded). None so far.
NO_EFFECT_YET: dict[str, str] = {}


def case(key: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the behaviour case of field ``key`` (one per field)."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        if key in CASES:
            raise ValueError(f"two behaviour cases for {key}: {CASES[key].__name__}, {fn.__name__}")
        CASES[key] = fn
        return fn

    return register


def _cfg(*overrides: str) -> Config:
    """The tree of ``--set OVERRIDE ...`` over the defaults."""
    return apply_overrides(Config(), list(overrides))


def _all_fields() -> list[str]:
    tree = Config()
    return [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(tree)
        for f in dataclasses.fields(getattr(tree, section.name))
    ]


@pytest.fixture(autouse=True, scope="module")
def _engine_cache(tmp_path_factory):
    """Engines built here (runtime.engine=auto) go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTMOE_CACHE_DIR", str(tmp_path_factory.mktemp("engines")))
        yield


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models and small maps: intra-op threads only add overhead on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- signal: the one preprocessing chain (fine-tuning, evaluation, corpus, live) -------------

SF = 200.0


def _chain(x_uv: np.ndarray, sfreq_in: float, *overrides: str) -> tuple[np.ndarray, Any]:
    signal = _cfg(*overrides).signal
    return preprocess_trials(x_uv[None, None], sfreq_in, signal)[0, 0], signal


def _gain(freq_hz: float, *overrides: str) -> float:
    """Steady-state amplitude gain of the chain for a sine at ``freq_hz`` (µV in, µV out)."""
    t = np.arange(int(20 * SF)) / SF
    x = 50.0 * np.sin(2 * np.pi * freq_hz * t)
    y, signal = _chain(x, SF, *overrides)
    half = slice(len(t) // 2, None)
    return float(np.std(y[half]) * signal.unit_uv / np.std(x[half]))


@case("signal.sfreq")
def _signal_sfreq():
    t = np.arange(1000) / 500.0  # 2 s at 500 Hz
    x = 50.0 * np.sin(2 * np.pi * 10.0 * t)
    for overrides, n_out in (((), 400), (("signal.sfreq=250",), 500)):
        y, signal = _chain(x, 500.0, *overrides)
        assert y.shape == (n_out,)  # 2 s at the model rate
        peak = np.fft.rfftfreq(len(y), 1 / signal.sfreq)[np.argmax(np.abs(np.fft.rfft(y)))]
        assert peak == pytest.approx(10.0, abs=0.5)  # still 10 Hz: really sampled at sfreq


@case("signal.l_freq")
def _signal_l_freq():
    assert _gain(1.0) > 0.8  # 1 Hz passes the 0.3 Hz high-pass
    assert _gain(1.0, "signal.l_freq=5.0") < 0.05
    assert _gain(20.0, "signal.l_freq=5.0") > 0.9


@case("signal.h_freq")
def _signal_h_freq():
    assert _gain(60.0) > 0.8  # 60 Hz passes the 75 Hz low-pass
    assert _gain(60.0, "signal.h_freq=30.0") < 0.1
    assert _gain(10.0, "signal.h_freq=30.0") > 0.9


@case("signal.notch_freq")
def _signal_notch_freq():
    assert _gain(50.0) < 0.05  # mains removed
    assert _gain(50.0, "signal.notch_freq=none") > 0.9
    assert _gain(45.0) > 0.9  # a narrow notch


@case("signal.unit_uv")
def _signal_unit_uv():
    rng = np.random.default_rng(0)
    x = 30.0 * rng.normal(size=2000)
    y100, _ = _chain(x, SF)
    y50, _ = _chain(x, SF, "signal.unit_uv=50")
    np.testing.assert_allclose(y50, 2 * y100, rtol=1e-5, atol=1e-7)  # half the unit: twice
    assert np.std(y100) == pytest.approx(np.std(x) / 100, rel=0.2)  # in units of 100 µV


# -- spectral: STFT of the masking, Welch segment of the gate -------------------------------


def _masked(*overrides: str):
    cfg = _cfg(*overrides)
    x = torch.randn(2, 3, 1000, generator=torch.Generator().manual_seed(0))  # 5 s at 200 Hz
    _, draw = spectral_mask(x, SF, cfg.spectral, cfg.mask, torch.Generator().manual_seed(0))
    return draw


@case("spectral.stft_window_s")
def _spectral_stft_window_s():
    # (A window of 1 s with the default 1 s hop is refused: see the test at the end.)
    default, long = _masked(), _masked("spectral.stft_window_s=4.0")
    assert default.masks.shape[1:] == (201, 6)  # n_fft 400: 201 bins of 0.5 Hz
    assert long.masks.shape[1:] == (401, 6)  # n_fft 800: 401 bins of 0.25 Hz
    # Band centres are placed in hertz: the same bands, twice as many bins per hertz.
    for draw, bin_hz in ((default, 0.5), (long, 0.25)):
        biased = draw.band >= 0
        hz = draw.f0_bins[biased] * bin_hz
        assert biased.any() and (hz >= 1.0).all() and (hz < 30.0).all()


@case("spectral.stft_hop_s")
def _spectral_stft_hop_s():
    assert _masked().masks.shape[1:] == (201, 6)  # a frame every 200 samples
    assert _masked("spectral.stft_hop_s=0.5").masks.shape[1:] == (201, 11)


# spectral.welch_window_s: see the pretraining section (it reaches the gate through the
# experts' checkpoints).


# -- mask: Gaussian spectral masking --------------------------------------------------------


def _draw(*overrides: str, n: int = 128):
    mask = _cfg(*overrides).mask
    return draw_masks(n, 101, 16, 1.0, mask, torch.Generator().manual_seed(0))


def _share(draw) -> torch.Tensor:
    return 1 - draw.masks.mean(dim=(1, 2))


def _kind_share(draw, kind: int) -> float:
    return float((draw.kind == kind).float().mean())


def _roughness(draw, axis: int) -> float:
    return float(draw.masks.diff(dim=axis).abs().mean())


@case("mask.mask_ratio")
def _mask_mask_ratio():
    half, fifth = _share(_draw()), _share(_draw("mask.mask_ratio=0.2"))
    assert (half >= 0.5).all() and half.mean() < 0.65
    assert (fifth >= 0.2).all() and fifth.mean() < 0.35


@case("mask.p_freq")
def _mask_p_freq():
    # The three shares must sum to 1: raising one takes it from another.
    assert 0.5 < _kind_share(_draw(), FREQ) < 0.7
    draw = _draw("mask.p_freq=0.9", "mask.p_time=0.0")
    assert 0.85 < _kind_share(draw, FREQ) < 0.95 and _kind_share(draw, TIME) == 0
    assert _roughness(draw, 2) < 0.1 * _roughness(_draw(), 2)  # frequency bands: flat in time


@case("mask.p_time")
def _mask_p_time():
    assert 0.2 < _kind_share(_draw(), TIME) < 0.4
    draw = _draw("mask.p_time=0.9", "mask.p_freq=0.0")
    assert 0.85 < _kind_share(draw, TIME) < 0.95 and _kind_share(draw, FREQ) == 0
    assert _roughness(draw, 1) < 0.1 * _roughness(_draw(), 1)  # time blocks: flat in frequency


@case("mask.p_tf")
def _mask_p_tf():
    assert 0.05 < _kind_share(_draw(), TF) < 0.15
    draw = _draw("mask.p_tf=0.7", "mask.p_freq=0.0")
    assert 0.65 < _kind_share(draw, TF) < 0.75 and _kind_share(draw, FREQ) == 0


@case("mask.band_bias")
def _mask_band_bias():
    for overrides, low, high in (((), 0.4, 0.6), (("mask.band_bias=1.0",), 1.0, 1.0)):
        draw = _draw(*overrides)
        spectral = draw.kind != TIME  # time components have no frequency centre
        assert low <= float(draw.band_biased[spectral].float().mean()) <= high


@case("mask.band_probs")
def _mask_band_probs():
    default = _draw("mask.band_bias=1.0")
    assert set(default.band[default.kind != TIME].tolist()) == {0, 1, 2, 3}  # δ θ α β
    beta = _draw("mask.band_bias=1.0", "mask.band_probs=[0.0, 0.0, 0.0, 1.0]")
    biased = beta.kind != TIME
    assert set(beta.band[biased].tolist()) == {3}
    hz = beta.f0_bins[biased]  # 1 Hz bins
    assert (hz >= 12.0).all() and (hz < 30.0).all()


@case("mask.sigma_f_frac")
def _mask_sigma_f_frac():
    default, wide = _draw(), _draw("mask.sigma_f_frac=0.2")
    assert wide.sigma_f_bins == pytest.approx(4 * default.sigma_f_bins)
    # Wider components: fewer reach the ratio, and the mask varies slowly along frequency.
    assert wide.n_components().float().mean() < 0.7 * default.n_components().float().mean()
    assert _roughness(wide, 1) < 0.7 * _roughness(default, 1)


@case("mask.sigma_t_frac")
def _mask_sigma_t_frac():
    default, wide = _draw(), _draw("mask.sigma_t_frac=0.2")
    assert wide.sigma_t_frames == pytest.approx(4 * default.sigma_t_frames)
    assert wide.n_components().float().mean() < 0.7 * default.n_components().float().mean()
    assert _roughness(wide, 2) < 0.8 * _roughness(default, 2)


@case("mask.level")
def _mask_level():
    full, shallow = _draw(), _draw("mask.level=0.3")
    # A full-depth component empties the cells at its centre; a shallow one keeps 70 %.
    assert float(full.masks.amin(dim=(1, 2)).max()) < 0.05
    assert float(shallow.masks.amin(dim=(1, 2)).median()) > 0.02
    assert shallow.n_components().float().mean() > 2 * full.n_components().float().mean()


@case("mask.max_components")
def _mask_max_components():
    default, one = _draw(), _draw("mask.max_components=1")
    assert (default.n_components() > 1).all() and (_share(default) >= 0.5).all()
    assert (one.n_components() == 1).all() and (_share(one) < 0.5).all()  # stopped short


# -- model: SpecHi-Net, as pretraining builds it -------------------------------------------


def _model(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = _cfg(*overrides)
    return build_model(cfg.model, sfreq=cfg.signal.sfreq, init_std=cfg.pretrain.init_std)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _support(block) -> np.ndarray:
    """Input offsets a ConvBlock's convolution reads (its impulse response's taps)."""
    n = 1024
    x = torch.zeros(1, block.conv.in_channels, n)
    x[0, :, n // 2] = 1.0
    with torch.no_grad():
        y = block.conv(F.pad(x, block.padding))[0].abs().sum(0)
    return np.flatnonzero(y.numpy() > 0)


def _features_train_mode(model, x: torch.Tensor) -> torch.Tensor:
    """Encoder features in train mode (BatchNorm on batch statistics: O(1) activations)."""
    model.train()
    with torch.no_grad():
        return model.forward_features(x)


def _same_weights(*overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the default model and of one with ``overrides`` but the same weights."""
    reference, other = _model("model.dropout=0.0"), _model("model.dropout=0.0", *overrides)
    other.load_state_dict(reference.state_dict())  # same parameter shapes
    x = torch.randn(2, 2, 1200, generator=torch.Generator().manual_seed(1))
    return _features_train_mode(reference, x), _features_train_mode(other, x)


@case("model.base_width")
def _model_base_width():
    default, narrow = _model(), _model("model.base_width=8")
    assert default.feature_dim == 64 and narrow.feature_dim == 32
    assert _n_params(narrow) < 0.35 * _n_params(default)  # widths squared
    x = torch.randn(2, 2, 600)
    assert _features_train_mode(narrow, x).shape == (2, 2, 32, 5)


@case("model.short_kernel")
def _model_short_kernel():
    assert len(_support(_model().encoder.down1_short.conv1)) == 4
    assert len(_support(_model("model.short_kernel=7").encoder.down1_short.conv1)) == 7


@case("model.long_kernel")
def _model_long_kernel():
    taps = _support(_model().encoder.down1_long.conv1)
    assert len(taps) == 65 and taps[-1] - taps[0] == 64 * 4  # k65, dilation 4: 257 samples
    taps = _support(_model("model.long_kernel=33").encoder.down1_long.conv1)
    assert len(taps) == 33 and taps[-1] - taps[0] == 32 * 4


@case("model.long_dilation")
def _model_long_dilation():
    assert set(np.diff(_support(_model().encoder.down1_long.conv1))) == {4}
    taps = _support(_model("model.long_dilation=2").encoder.down1_long.conv1)
    assert set(np.diff(taps)) == {2} and taps[-1] - taps[0] == 64 * 2
    # The short path is not dilated either way.
    assert set(np.diff(_support(_model("model.long_dilation=2").encoder.down1_short.conv1))) == {1}


@case("model.bottleneck_kernel")
def _model_bottleneck_kernel():
    assert len(_support(_model().encoder.bottleneck_conv)) == 8
    assert len(_support(_model("model.bottleneck_kernel=3").encoder.bottleneck_conv)) == 3


@case("model.n_heads")
def _model_n_heads():
    default, two = _same_weights("model.n_heads=2")
    assert default.shape == two.shape
    assert not torch.allclose(default, two, atol=1e-4)  # same weights, other head split
    again, _ = _same_weights("model.n_heads=4")  # the default, given explicitly
    assert torch.equal(default, again)


@case("model.ff_mult")
def _model_ff_mult():
    default, wide = _model(), _model("model.ff_mult=4")
    assert default.encoder.attn2.ff[0].out_features == 2 * 32
    assert wide.encoder.attn2.ff[0].out_features == 4 * 32
    assert _n_params(wide) > _n_params(default)


@case("model.dropout")
def _model_dropout():
    x = torch.randn(2, 2, 600, generator=torch.Generator().manual_seed(1))
    default, none = _model(), _model("model.dropout=0.0")
    assert not torch.equal(_features_train_mode(default, x), _features_train_mode(default, x))
    assert torch.equal(_features_train_mode(none, x), _features_train_mode(none, x))


@case("model.rotary_min_period_s")
def _model_rotary_min_period_s():
    default, other = _same_weights("model.rotary_min_period_s=0.5")
    assert not torch.allclose(default, other, atol=1e-4)


@case("model.rotary_max_period_s")
def _model_rotary_max_period_s():
    default, other = _same_weights("model.rotary_max_period_s=20.0")
    assert not torch.allclose(default, other, atol=1e-4)


# -- moe: SpecMoE around the experts, as fine-tuning builds it ------------------------------

TINY = ("model.name=tiny", "model.base_width=4", "model.n_heads=2")
TASK = TaskConfig(name="t", ch_names=("C3", "C4"), n_times=400, labels=("a", "b"))


def _moe(*overrides: str) -> SpecMoE:
    torch.manual_seed(0)
    cfg = _cfg(*TINY, *overrides)
    return build_specmoe(cfg, TASK, cfg.moe)


def _window(seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(2, 2, 400, generator=torch.Generator().manual_seed(seed))


@case("moe.n_experts")
def _moe_n_experts():
    x = _window()
    for overrides, n in (((), 3), (("moe.n_experts=1",), 1)):
        model = _moe(*overrides).eval()
        _, gates = model.forward_with_gates(x)
        assert len(model.experts) == n and gates.shape == (2, n, 2, model.feature_dim)
    assert _n_params(_moe()) > 2.5 * _n_params(_moe("moe.n_experts=1"))


@case("moe.use_psd_gate")
def _moe_use_psd_gate():
    x = _window()
    for overrides, gated in (((), True), (("moe.use_psd_gate=false",), False)):
        model = _moe(*overrides).eval()
        with torch.no_grad():
            psd = model.psd(x)
            logits, gates = model.forward_with_gates(x, psd)
            louder, _ = model.forward_with_gates(x, psd * 100.0)  # another spectrum
        assert torch.equal(gates, torch.ones_like(gates)) is not gated
        assert torch.allclose(logits, louder) is not gated  # only gates read the spectrum


@case("moe.channel_pool")
def _moe_channel_pool():
    # Electrode 1's features lie below electrode 0's everywhere, and both have the same
    # spectrum (equal gates): lowering them further changes a mean, never a max.
    d = _moe().feature_dim
    a = 1.0 + torch.rand(1, 3, 1, 1, d, generator=torch.Generator().manual_seed(0))
    log_psd = torch.randn(1, 1, _moe().psd_bins).expand(1, 2, -1).contiguous()
    lower, lowest = torch.cat([a, a - 1.0], dim=2), torch.cat([a, a - 3.0], dim=2)
    for overrides, invariant in (((), False), (("moe.channel_pool=max",), True)):
        model = _moe(*overrides).eval()
        with torch.no_grad():
            y1 = model.forward_head(MoEFeatures(lower, log_psd))
            y2 = model.forward_head(MoEFeatures(lowest, log_psd))
        assert torch.allclose(y1, y2) is invariant


@case("moe.time_segments")
def _moe_time_segments():
    # A 400-sample window has 4 encoder steps: reversing their order keeps the whole
    # window's mean (the paper's head) but not the means of its two halves.
    log_psd = torch.randn(1, 2, _moe().psd_bins, generator=torch.Generator().manual_seed(1))
    for overrides, invariant in (((), True), (("moe.time_segments=2",), False)):
        model = _moe(*overrides).eval()
        shape = (model.n_experts, 1, 2, 4, model.feature_dim)  # expert, batch, C, step, D
        steps = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            features = [
                torch.stack(
                    [
                        segment_means(s.transpose(-1, -2), model.time_segments).transpose(2, 3)
                        for s in order
                    ],
                    dim=1,
                )
                for order in (steps, steps.flip(3))
            ]
            y1, y2 = (model.forward_head(MoEFeatures(f, log_psd)) for f in features)
        assert features[0].shape == (1, model.n_experts, 2, model.time_segments, model.feature_dim)
        assert torch.allclose(y1, y2, atol=1e-6) is invariant


@case("moe.erp_segments")
def _moe_erp_segments():
    # The head reads the window's segment means only with erp_segments > 0: the same
    # expert features beside another waveform change the decision then, never before.
    x = _window()
    for overrides, reads in (((), False), (("moe.erp_segments=4",), True)):
        model = _moe(*overrides).eval()
        with torch.no_grad():
            features = model.forward_features(x)
            other = features._replace(erp=None if features.erp is None else features.erp + 1.0)
            y1, y2 = model.forward_head(features), model.forward_head(other)
        assert (features.erp is not None) is reads
        assert (not torch.allclose(y1, y2)) is reads
    torch.testing.assert_close(features.erp, x.reshape(2, 2, 4, 100).mean(dim=-1))


@case("moe.waveform_filters")
def _moe_waveform_filters():
    # A learned branch over the window joins the head only with waveform_filters > 0:
    # the same expert features beside another window change the decision then, never before.
    x = _window()
    for overrides, reads in (((), False), (("moe.waveform_filters=3",), True)):
        model = _moe(*overrides).eval()
        with torch.no_grad():
            features = model.forward_features(x)
            other = features._replace(waveform=None if features.waveform is None else x.flip(-1))
            y1, y2 = model.forward_head(features), model.forward_head(other)
        assert (model.waveform_branch is not None) is reads
        assert (not torch.allclose(y1, y2)) is reads
    assert model.waveform_branch.layers[1].out_channels == 3


@case("moe.dropout")
def _moe_dropout():
    features = _moe().eval().forward_features(_window())
    for overrides, random in (((), True), (("moe.dropout=0.0",), False)):
        model = _moe(*overrides).train()
        with torch.no_grad():
            once, twice = model.forward_head(features), model.forward_head(features)
        assert (not torch.equal(once, twice)) is random


# -- corpus: `rtmoe prepare` on real recording files, partitions of `rtmoe pretrain` -----------

REC_S = 140.0  # 28000 samples at 200 Hz


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A clean 140 s 10-20 recording and the same with a 400 µV artefact at 50 s on C3."""
    root = tmp_path_factory.mktemp("recordings")
    clean = _synthetic_uv(duration_s=REC_S)
    spiky = clean.copy()
    c3 = FILE_NAMES.index("EEG C3-REF")
    spiky[c3, int(50 * SFREQ) : int(50.1 * SFREQ)] += 400.0
    return {
        "clean": _write(root / "clean_raw.fif", clean),
        "spiky": _write(root / "spiky_raw.fif", spiky),
    }


def _prepare(recording: Path, tmp_path: Path, *overrides: str) -> ShardCorpus:
    out = tmp_path / uuid.uuid4().hex[:8]
    return build_corpus([recording], out, _cfg(*overrides), progress=False)


@case("corpus.channels")
def _corpus_channels(recordings, tmp_path):
    settings = ("corpus.min_recording_s=100", "corpus.trim_s=10")
    all19 = _prepare(recordings["clean"], tmp_path, *settings)
    two = _prepare(recordings["clean"], tmp_path, *settings, 'corpus.channels=["C3", "CZ"]')
    assert [(g.n_chans, g.n_times) for g in all19.groups] == [(19, 6000)]
    assert [(g.n_chans, g.n_times) for g in two.groups] == [(2, 6000)]
    rows = [TEN_TWENTY_19.index("C3"), TEN_TWENTY_19.index("CZ")]
    np.testing.assert_array_equal(two.segment(0), all19.segment(0)[rows])  # picked by name


ONE_CHANNEL = 'corpus.channels=["C3"]'


@case("corpus.segment_s")
def _corpus_segment_s(recordings, tmp_path):
    settings = (ONE_CHANNEL, "corpus.min_recording_s=100", "corpus.trim_s=10")
    long, short = (
        _prepare(recordings["clean"], tmp_path, *settings, *extra)
        for extra in ((), ("corpus.segment_s=10",))
    )
    assert (len(long), long.groups[0].n_times) == (4, 6000)  # 120 s kept: 4 x 30 s
    assert (len(short), short.groups[0].n_times) == (12, 2000)
    np.testing.assert_array_equal(long.segment(0)[:, :2000], short.segment(0))


@case("corpus.trim_s")
def _corpus_trim_s(recordings, tmp_path):
    settings = (ONE_CHANNEL, "corpus.min_recording_s=100", "corpus.segment_s=10")
    sixty = _prepare(recordings["clean"], tmp_path, *settings)
    ten = _prepare(recordings["clean"], tmp_path, *settings, "corpus.trim_s=10")
    assert (len(sixty), len(ten)) == (2, 12)  # 20 s or 120 s left between the trims
    np.testing.assert_array_equal(sixty.segment(0), ten.segment(5))  # both start at 60 s


@case("corpus.min_recording_s")
def _corpus_min_recording_s(recordings, tmp_path):
    settings = (ONE_CHANNEL, "corpus.trim_s=10", "corpus.segment_s=10")
    strict = _prepare(recordings["clean"], tmp_path, *settings)
    assert len(strict) == 0
    assert "shorter than corpus.min_recording_s=300" in str(strict.index["skipped"])
    lenient = _prepare(recordings["clean"], tmp_path, *settings, "corpus.min_recording_s=100")
    assert len(lenient) == 12 and not lenient.index["skipped"]


@case("corpus.reject_uv")
def _corpus_reject_uv(recordings, tmp_path):
    settings = (ONE_CHANNEL, "corpus.min_recording_s=100", "corpus.trim_s=10")
    settings += ("corpus.segment_s=10",)
    default = _prepare(recordings["spiky"], tmp_path, *settings)
    keep_all = _prepare(recordings["spiky"], tmp_path, *settings, "corpus.reject_uv=none")
    assert (len(default), default.n_rejected) == (11, 1)  # the 50-60 s window
    assert (len(keep_all), keep_all.n_rejected) == (12, 0)
    assert np.abs(keep_all.segment(4)).max() * 100 > 100.0  # the artefact, in µV


@case("corpus.n_partitions")
def _corpus_n_partitions(pretrained):
    three, two = pretrained.get(), pretrained.get("corpus.n_partitions=2")
    # 16 one-segment recordings: expert 0 of 3 gets 5 or 6 of them, expert 0 of 2 gets 8.
    assert len(three.recordings) in (5, 6) and len(two.recordings) == 8
    assert three.meta["n_experts"] == 3 and two.meta["n_experts"] == 2


@case("corpus.seed")
def _corpus_seed(pretrained):
    zero, one = pretrained.get(), pretrained.get("corpus.seed=1")
    assert len(zero.recordings) == len(one.recordings)
    assert zero.recordings != one.recordings  # another draw of which recordings


# -- pretrain: real runs of the pretraining loop on the dev trials ---------------------------

#: Every pretraining run: the tiny size, one epoch, batches of two segments.
PT_BASE = (*TINY, "pretrain.epochs=1", "pretrain.batch_size=2")


class PretrainRun(NamedTuple):
    result: Any
    meta: dict
    weights: dict[str, torch.Tensor]
    lrs: list[float]
    path: Path

    @property
    def recordings(self) -> list[str]:
        part = self.meta["partition"]
        return sorted(part["train_recordings"] + part["val_recordings"])


class PretrainRuns:
    """Pretraining runs of expert 0, one per distinct settings, kept for the module."""

    def __init__(self, corpus: Path, root: Path) -> None:
        self.corpus, self.root, self._runs = corpus, root, {}

    def get(self, *overrides: str, base=PT_BASE, max_steps=None, device="cpu", again=False):
        key = (base, overrides, max_steps, device, again)
        if key not in self._runs:
            out = self.root / uuid.uuid4().hex[:8]
            result = pretrain_expert(
                self.corpus, out, _cfg(*base, *overrides), 0, max_steps=max_steps,
                device=device, progress=False,
            )  # fmt: skip
            ckpt = load_checkpoint(out)
            history = json.loads((out / HISTORY_FILE).read_text())
            self._runs[key] = PretrainRun(
                result, ckpt.meta, ckpt.weights, [h["lr"] for h in history["train"]], out
            )
        return self._runs[key]


@pytest.fixture(scope="module")
def pt_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pt") / "corpus"
    _write_corpus(root, Config())  # 8 trials of each dev set, one recording each
    return root


@pytest.fixture(scope="module")
def pretrained(pt_corpus, tmp_path_factory) -> PretrainRuns:
    return PretrainRuns(pt_corpus, tmp_path_factory.mktemp("pt_runs"))


def _parameters(run: PretrainRun) -> dict[str, torch.Tensor]:
    """The trained parameters of a run's checkpoint (not the BatchNorm statistics)."""
    return {
        k: v.double()
        for k, v in run.weights.items()
        if v.is_floating_point() and ".running_" not in k
    }


def _moves(a: PretrainRun, b: PretrainRun) -> dict[str, torch.Tensor]:
    """How far each parameter of run b lies from run a's."""
    pa, pb = _parameters(a), _parameters(b)
    return {k: pb[k] - pa[k] for k in pa}


def _weight_diff(a: PretrainRun, b: PretrainRun) -> torch.Tensor:
    return torch.cat([d.flatten() for d in _moves(a, b).values()])


@case("pretrain.lr")
def _pretrain_lr(pretrained):
    default, ten = pretrained.get(), pretrained.get("pretrain.lr=1e-2")
    assert default.result.step == ten.result.step == 1
    # Same start, same batch: Adam's first step moves every weight with a gradient by
    # lr·sign(grad), so the two runs part by the difference of their learning rates (the
    # long kernels at the coarse scales mostly read padding: no gradient, no move).
    per_tensor = torch.stack([d.abs().median() for d in _moves(default, ten).values()])
    assert float(per_tensor.median()) == pytest.approx(1e-2 - 1e-3, rel=0.05)
    assert float(_weight_diff(default, ten).abs().max()) < 1.1 * (1e-2 - 1e-3)


@case("pretrain.min_lr")
def _pretrain_min_lr(pretrained):
    # Three steps (no accumulation): the cosine runs from lr down to min_lr.
    default = pretrained.get("pretrain.accum_steps=1")
    floor = pretrained.get("pretrain.accum_steps=1", "pretrain.min_lr=5e-4")
    assert default.lrs[0] == floor.lrs[0] == pytest.approx(1e-3)
    assert default.lrs[-1] == pytest.approx(1e-6) and floor.lrs[-1] == pytest.approx(5e-4)


@case("pretrain.weight_decay")
def _pretrain_weight_decay(pretrained):
    default, strong = pretrained.get(), pretrained.get("pretrain.weight_decay=10.05")
    # AdamW shrinks every weight by lr·weight_decay: the extra 10 shrinks by 1 % more.
    a = torch.cat([w.flatten() for w in _parameters(default).values()])
    diff = _weight_diff(default, strong)
    slope = float((diff * a).sum() / (a * a).sum())
    assert slope == pytest.approx(-1e-3 * 10.0, rel=0.15)


@case("pretrain.grad_clip")
def _pretrain_grad_clip(pt_corpus):
    corpus = ShardCorpus(pt_corpus)
    batch = [batch_plan([g.indices for g in corpus.groups], 2, None)[0]]
    info, dev = setup_distributed("cpu")
    norms = {}
    for overrides in ((), ("pretrain.grad_clip=1e-3",)):
        cfg = _cfg(*TINY, *overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model, sfreq=cfg.signal.sfreq)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain.lr)
        loader = iter(make_loader(corpus, batch, cfg.pretrain, dev))
        _, raw, _ = train_step(
            model, model, optimizer, loader, 1, 0, cfg, 0, info, dev, False, cfg.pretrain.lr
        )
        applied = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
        norms[overrides] = (raw, applied, cfg.pretrain.grad_clip)
    for raw, applied, clip in norms.values():
        assert applied == pytest.approx(min(raw, clip), rel=1e-4)  # what the step used
    (raw0, applied0, _), (raw1, applied1, _) = norms.values()
    assert raw0 == pytest.approx(raw1) and applied1 < applied0  # same gradient, clipped


@case("pretrain.batch_size")
def _pretrain_batch_size(pretrained):
    two = pretrained.get()
    default = pretrained.get(base=(*TINY, "pretrain.epochs=1"))  # batch_size 64
    # One segment per recording, one shape per dev set; shapes are never mixed in a batch.
    per_set = Counter(r.split("/")[0] for r in two.meta["partition"]["train_recordings"])
    for run, size in ((default, 64), (two, 2)):
        expected = sum(math.ceil(n / size) for n in per_set.values())
        assert run.meta["schedule"]["batches_per_rank"] == expected
    assert two.meta["schedule"]["batches_per_rank"] > default.meta["schedule"]["batches_per_rank"]


@case("pretrain.accum_steps")
def _pretrain_accum_steps(pretrained):
    default, one = pretrained.get(), pretrained.get("pretrain.accum_steps=1")
    batches = default.meta["schedule"]["batches_per_rank"]
    assert batches >= 3 and default.result.step == 1  # all batches into one step (<= 4)
    assert one.result.step == batches and len(one.result.train_losses) == batches


@case("pretrain.epochs")
def _pretrain_epochs(pretrained):
    one = pretrained.get()
    fifty = pretrained.get(base=(*TINY, "pretrain.batch_size=2"), max_steps=2)
    assert (one.result.epoch, one.result.stop_reason) == (1, "completed")
    assert fifty.result.stop_reason == "max_steps" and fifty.result.epoch == 2  # not done
    per_epoch = one.meta["schedule"]["steps_per_epoch"]
    assert fifty.meta["schedule"]["total_steps"] == 50 * per_epoch
    assert fifty.lrs[1] > 0.99 * fifty.lrs[0]  # the cosine over 50 epochs has barely begun


@case("pretrain.spectral_loss_weight")
def _pretrain_spectral_loss_weight():
    target = torch.randn(2, 3, 1024, generator=torch.Generator().manual_seed(0))
    zeros = identity_output(torch.zeros_like(target))
    mse, _ = reconstruction_loss(zeros, target, _cfg("pretrain.spectral_loss_weight=0").pretrain)
    default, _ = reconstruction_loss(zeros, target, _cfg().pretrain)
    double, _ = reconstruction_loss(
        zeros, target, _cfg("pretrain.spectral_loss_weight=0.04").pretrain
    )
    assert float(default) > float(mse) > 0
    assert float(double - mse) == pytest.approx(2 * float(default - mse), rel=1e-4)


def _spectral_term(target: torch.Tensor, *overrides: str) -> float:
    """The recon_short loss of a zero prediction minus its MSE: the spectral term."""
    zeros = identity_output(torch.zeros_like(target))
    _, parts = reconstruction_loss(zeros, target, _cfg(*overrides).pretrain)
    return parts["recon_short"] - float(target.square().mean())


@case("pretrain.loss_n_fft")
def _pretrain_loss_n_fft():
    target = torch.randn(2, 3, 2048, generator=torch.Generator().manual_seed(0))
    # White noise: each bin's power grows with the frame length.
    ratio = _spectral_term(target, "pretrain.loss_n_fft=256", "pretrain.loss_hop=128") / (
        _spectral_term(target)
    )
    assert ratio == pytest.approx(0.5, rel=0.1)


@case("pretrain.loss_hop")
def _pretrain_loss_hop():
    # A 32-sample burst centred on sample 256: a frame is centred there with the default
    # hop (256); with hop 512 it falls where the Hann windows of the frames vanish.
    target = torch.zeros(1, 1, 1024)
    target[..., 240:272] = torch.randn(32, generator=torch.Generator().manual_seed(0))
    assert _spectral_term(target, "pretrain.loss_hop=512") < 0.1 * _spectral_term(target)


@case("pretrain.aux_weights")
def _pretrain_aux_weights():
    target = torch.randn(2, 3, 1024, generator=torch.Generator().manual_seed(0))
    zeros = identity_output(torch.zeros_like(target))
    totals = {}
    for weights in ("[0.3, 0.2]", "[0.0, 0.0]", "[1.0, 1.0]"):
        total, parts = reconstruction_loss(
            zeros, target, _cfg(f"pretrain.aux_weights={weights}").pretrain
        )
        totals[weights] = float(total)
    main_only = parts["recon_short"] + parts["recon_long"]
    assert totals["[0.0, 0.0]"] == pytest.approx(main_only, rel=1e-5)
    assert totals["[0.0, 0.0]"] < totals["[0.3, 0.2]"] < totals["[1.0, 1.0]"]
    assert totals["[1.0, 1.0]"] == pytest.approx(sum(parts.values()), rel=1e-5)


@case("pretrain.init_std")
def _pretrain_init_std(pretrained):
    for run, std in ((pretrained.get(), 0.02), (pretrained.get("pretrain.init_std=0.1"), 0.1)):
        convs = torch.cat(
            [w.flatten() for k, w in run.weights.items() if k.endswith("conv.weight")]
        )
        assert float(convs.std()) == pytest.approx(std, rel=0.15)


@case("pretrain.amp")
def _pretrain_amp(pretrained):
    # bfloat16 autocast is CUDA only (`amp = dev.type == "cuda" and pretrain.amp`): on the
    # CPU the setting is a no-op, bit for bit.
    on, off = pretrained.get(), pretrained.get("pretrain.amp=false")
    assert on.result.train_losses == off.result.train_losses
    assert all(torch.equal(on.weights[k], off.weights[k]) for k in on.weights)
    if torch.cuda.is_available():
        on, off = (pretrained.get(*o, device="cuda") for o in ((), ("pretrain.amp=false",)))
        assert on.result.train_losses != off.result.train_losses  # bf16 vs float32


@case("pretrain.seed")
def _pretrain_seed(pretrained):
    zero, again, one = (
        pretrained.get(),
        pretrained.get(again=True),
        pretrained.get("pretrain.seed=1"),
    )
    assert zero.result.train_losses == again.result.train_losses  # the seed fixes the run
    assert zero.result.train_losses != one.result.train_losses
    # Another initialisation: the weights part by far more than one step of lr.
    assert float(_weight_diff(zero, one).abs().median()) > 5e-3


@case("pretrain.num_workers")
def _pretrain_num_workers(pt_corpus):
    corpus = ShardCorpus(pt_corpus)
    batches = batch_plan([g.indices for g in corpus.groups], 4, None)
    seen = {}
    for overrides in ((), ("pretrain.num_workers=2",)):
        before = set(multiprocessing.active_children())
        loaded, workers = [], 0
        for x in make_loader(corpus, batches, _cfg(*overrides).pretrain, torch.device("cpu")):
            loaded.append(x)
            workers = max(workers, len(set(multiprocessing.active_children()) - before))
        seen[overrides] = (workers, loaded)
    (w0, data0), (w2, data2) = seen.values()
    assert (w0, w2) == (0, 2)  # batches read in the loop's process, or in two workers
    assert all(torch.equal(a, b) for a, b in zip(data0, data2, strict=True))


@case("pretrain.holdout_fraction")
def _pretrain_holdout_fraction(pretrained):
    default, half = pretrained.get(), pretrained.get("pretrain.holdout_fraction=0.5")
    n = len(default.recordings)
    assert len(default.meta["partition"]["val_recordings"]) == 1  # round(0.1 n), at least 1
    assert len(half.meta["partition"]["val_recordings"]) == round(0.5 * n)
    assert (
        half.meta["partition"]["n_train_segments"] < default.meta["partition"]["n_train_segments"]
    )


# -- finetune: real fine-tuning runs on synthetic trials -------------------------------------

CH_NAMES = ("C3", "CZ", "C4")
#: Every fine-tuning run: one fresh tiny expert, two epochs.
FT_BASE = ("model.name=tiny", "moe.n_experts=1", "finetune.epochs=2")


def _trials(counts=(8, 8), n_times: int = 200, seed: int = 0):
    """Class "alpha" carries 10 Hz, class "beta" 22 Hz, on 3 channels at 200 Hz, µV."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SF
    X, y = [], []
    for (label, f), n in zip((("alpha", 10.0), ("beta", 22.0)), counts, strict=True):
        for _ in range(n):
            phase = rng.uniform(0, 2 * np.pi, size=(3, 1))
            X.append(20 * np.sin(2 * np.pi * f * t + phase) + 5 * rng.normal(size=(3, n_times)))
            y.append(label)
    return np.stack(X).astype(np.float32), np.array(y)


DATA = {"balanced": _trials(), "imbalanced": _trials((12, 4)), "long": _trials(n_times=400)}
DATA["balanced, in mV"] = (DATA["balanced"][0] / 1000, DATA["balanced"][1])


class FinetuneRuns:
    """`finetune` runs, one per distinct settings and data, kept for the module."""

    def __init__(self) -> None:
        self._runs: dict = {}

    def get(self, *overrides: str, base=FT_BASE, data="balanced", experts=()):
        key = (base, overrides, data, tuple(map(str, experts)))
        if key not in self._runs:
            cfg = _cfg(*base, *overrides)
            X, y = DATA[data]
            self._runs[key] = finetune(
                X, y, SF, CH_NAMES, signal=cfg.signal, experts=experts,
                model_name=cfg.model.name, cfg=cfg.finetune, moe=cfg.moe, progress=False,
            )  # fmt: skip
        return self._runs[key]


@pytest.fixture(scope="module")
def finetuned() -> FinetuneRuns:
    return FinetuneRuns()


def _state(result, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in result.model.state_dict().items() if k.startswith(prefix)}


def _head_diff(a, b) -> torch.Tensor:
    sa, sb = (
        {k: v for k, v in r.model.state_dict().items() if not k.startswith("experts.")}
        for r in (a, b)
    )
    return torch.cat(
        [(sb[k] - sa[k]).flatten() for k in sa if sa[k].is_floating_point() and "running" not in k]
    )


@case("spectral.welch_window_s")
def _spectral_welch_window_s(pretrained, finetuned):
    # No command that builds a SpecMoE reads [spectral]: `rtmoe pretrain --set
    # spectral.welch_window_s` stores it in the experts' checkpoints, and fine-tuning
    # (then evaluation and the live loop) takes it from there.
    ft = ("finetune.epochs=1",)
    default = finetuned.get(*ft, data="long", experts=[pretrained.get().path])
    one_s = pretrained.get("spectral.welch_window_s=1.0")
    short = finetuned.get(*ft, data="long", experts=[one_s.path])
    x = torch.zeros(1, 3, 400)
    assert default.model.nperseg == 400 and default.model.psd(x).shape[-1] == 201
    assert short.model.nperseg == 200 and short.model.psd(x).shape[-1] == 101
    assert short.config.spectral.welch_window_s == 1.0  # saved with the fine-tuned model


@case("model.name")
def _model_name(finetuned):
    # `rtmoe finetune` builds fresh experts of the size model.name names (`rtmoe pretrain`
    # only labels its checkpoints with it: there --size sets the architecture).
    base = ("moe.n_experts=1", "finetune.epochs=1")
    small, tiny = finetuned.get(base=base), finetuned.get("model.name=tiny", base=base)
    assert small.model.feature_dim == 64 and tiny.model.feature_dim == 16
    assert _n_params(tiny.model.experts) < 0.1 * _n_params(small.model.experts)


@case("finetune.lr")
def _finetune_lr(finetuned):
    one = ("finetune.epochs=1",)  # one epoch, one batch: one Adam step
    default, ten = finetuned.get(*one), finetuned.get(*one, "finetune.lr=1e-2")
    moved = _head_diff(default, ten).abs()
    assert float(moved.median()) == pytest.approx(1e-2 - 1e-3, rel=0.1)


@case("finetune.epochs")
def _finetune_epochs(finetuned):
    two, three = finetuned.get(), finetuned.get("finetune.epochs=3")
    assert [h["epoch"] for h in two.history] == [1, 2] and two.stopped == "completed"
    assert [h["epoch"] for h in three.history] == [1, 2, 3] and three.stopped == "completed"
    # The default (100): a budget of an instant ends it first, with epochs left to run.
    hundred = finetuned.get(
        base=("model.name=tiny", "moe.n_experts=1", "finetune.max_minutes=1e-6")
    )
    assert len(hundred.history) == 1 and hundred.stopped == "time budget"


@case("finetune.batch_size")
def _finetune_batch_size(finetuned):
    # Every training batch passes once through the gate's BatchNorm in train mode: its
    # counter is the number of batches (the BatchNorm start pass, then each epoch).
    for result, size in ((finetuned.get(), 64), (finetuned.get("finetune.batch_size=4"), 4)):
        n_train = len(result.folds[0].train_idx)
        tracked = int(result.model.state_dict()["gate_norm.num_batches_tracked"])
        assert tracked == (1 + result.best_epoch) * math.ceil(n_train / size)
        assert (size == 4) is (tracked > 1 + result.best_epoch)  # several batches an epoch


#: Plateau runs: four epochs at a learning rate too small to improve the validation loss
#: by ReduceLROnPlateau's threshold, so every epoch after the first is a plateau.
PLATEAU = ("finetune.epochs=4", "finetune.lr=1e-7")


@case("finetune.plateau_factor")
def _finetune_plateau_factor(finetuned):
    half = finetuned.get(*PLATEAU, "finetune.plateau_patience=1")
    tenth = finetuned.get(*PLATEAU, "finetune.plateau_patience=1", "finetune.plateau_factor=0.1")
    assert [h["lr"] for h in half.history] == pytest.approx([1e-7, 1e-7, 1e-7, 5e-8])
    assert [h["lr"] for h in tenth.history] == pytest.approx([1e-7, 1e-7, 1e-7, 1e-8])


@case("finetune.plateau_patience")
def _finetune_plateau_patience(finetuned):
    ten, one = finetuned.get(*PLATEAU), finetuned.get(*PLATEAU, "finetune.plateau_patience=1")
    assert [h["lr"] for h in ten.history] == pytest.approx([1e-7] * 4)
    assert [h["lr"] for h in one.history] == pytest.approx([1e-7, 1e-7, 1e-7, 5e-8])


@case("finetune.freeze_epochs")
def _finetune_freeze_epochs(finetuned):
    frozen = finetuned.get()  # default 10 >= 2 epochs
    frozen_too = finetuned.get("finetune.lr=1e-2")
    thawed = finetuned.get("finetune.freeze_epochs=1")
    assert [h["experts_frozen"] for h in frozen.history] == [True, True]
    assert [h["experts_frozen"] for h in thawed.history] == [True, False]
    # Frozen: the experts are exactly as initialised whatever the head learnt.
    experts, other = _state(frozen, "experts."), _state(frozen_too, "experts.")
    assert all(torch.equal(experts[k], other[k]) for k in experts)
    assert float(_head_diff(frozen, frozen_too).abs().max()) > 0  # while the heads differ
    thawed_experts = _state(thawed, "experts.")
    assert any(not torch.equal(experts[k], thawed_experts[k]) for k in experts)


@case("finetune.val_fraction")
def _finetune_val_fraction(finetuned):
    assert len(finetuned.get().folds[0].val_idx) == 4  # round(0.2 · 8) per class
    assert len(finetuned.get("finetune.val_fraction=0.5").folds[0].val_idx) == 8


@case("finetune.class_weighted")
def _finetune_class_weighted(finetuned):
    def first_loss(*overrides, data):
        return finetuned.get(*overrides, data=data).history[0]["train_loss"]

    # Balanced classes weigh 1 each: the same loss either way; 12 against 4 trials: the
    # minority class weighs more, and the loss of the same predictions changes.
    off = "finetune.class_weighted=false"
    assert first_loss(data="balanced") == first_loss(off, data="balanced")
    assert first_loss(data="imbalanced") != pytest.approx(
        first_loss(off, data="imbalanced"), rel=1e-6
    )


#: Early-stopping runs: a learning rate so small that no weight changes in float32 and no
#: spectrum gate (no BatchNorm statistics move): the validation score never improves.
STILL = ("finetune.epochs=4", "finetune.lr=1e-30", "moe.use_psd_gate=false")


@case("finetune.early_stop_patience")
def _finetune_early_stop_patience(finetuned):
    never, one = finetuned.get(*STILL), finetuned.get(*STILL, "finetune.early_stop_patience=1")
    assert len({h["val_loss"] for h in never.history}) == 1  # the premise: no progress
    assert (len(never.history), never.stopped) == (4, "completed")
    assert (len(one.history), one.stopped) == (2, "early stop")


@case("finetune.max_minutes")
def _finetune_max_minutes(finetuned):
    unlimited, instant = finetuned.get(), finetuned.get("finetune.max_minutes=1e-6")
    assert (len(unlimited.history), unlimited.stopped) == (2, "completed")
    assert (len(instant.history), instant.stopped) == (1, "time budget")


@case("finetune.seed")
def _finetune_seed(finetuned):
    zero, one = finetuned.get(), finetuned.get("finetune.seed=1")
    assert not np.array_equal(zero.folds[0].val_idx, one.folds[0].val_idx)  # another split
    assert zero.history[0]["train_loss"] != one.history[0]["train_loss"]


@case("finetune.folds")
def _finetune_folds(finetuned):
    single, two = finetuned.get(), finetuned.get("finetune.folds=2")
    assert isinstance(single.model, SpecMoE) and single.cv is None
    assert isinstance(two.model, SpecMoEEnsemble) and two.model.n_members == 2
    held_out = np.sort(np.concatenate([f.val_idx for f in two.folds]))
    np.testing.assert_array_equal(held_out, np.arange(16))  # each trial held out once
    assert two.cv is not None and two.oof_outputs.shape == (16, 2)


@case("finetune.unit_from_data")
def _finetune_unit_from_data(finetuned):
    # The same trials in µV and in mV: a fixed unit gives the model inputs 1000x apart;
    # the unit from the data gives the same inputs, so the same training.
    fixed = [finetuned.get(data=d) for d in ("balanced", "balanced, in mV")]
    auto = [
        finetuned.get("finetune.unit_from_data=true", data=d)
        for d in ("balanced", "balanced, in mV")
    ]
    assert fixed[0].config.signal.unit_uv == fixed[1].config.signal.unit_uv == 100.0
    assert fixed[0].history[0]["train_loss"] != pytest.approx(
        fixed[1].history[0]["train_loss"], rel=1e-3
    )
    unit_uv, unit_mv = (r.config.signal.unit_uv for r in auto)
    assert unit_uv == pytest.approx(1000 * unit_mv, rel=1e-2) and 5 < unit_uv < 50
    assert auto[0].history[0]["train_loss"] == pytest.approx(
        auto[1].history[0]["train_loss"], rel=1e-2
    )


def _augmented(
    field: str, value: float, x: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of trials (default: seeded noise) and its copy augmented by ``field=value``
    alone."""
    cfg = _cfg(f"finetune.{field}={value}")
    if x is None:
        x = torch.randn(6, 3, 200, generator=torch.Generator().manual_seed(0))
    augment = Augmentation(cfg.finetune, SF, cfg.spectral, cfg.mask)
    return x, augment(x, torch.Generator().manual_seed(1))


def _augment_changes_training(finetuned, setting: str) -> None:
    plain, augmented = finetuned.get(), finetuned.get(setting)
    assert plain.history[0]["train_loss"] != augmented.history[0]["train_loss"]
    # The premise: the same split, so the losses differ by the augmentation alone.
    np.testing.assert_array_equal(plain.folds[0].val_idx, augmented.folds[0].val_idx)


@case("finetune.waveform_loss")
def _finetune_waveform_loss(finetuned):
    # One batch per epoch, the same initial model and batch: the first epoch's loss is the
    # model's plus, when weighted, the branch's own cross-entropy (> 0).
    branch = "moe.waveform_filters=2"
    plain, weighted = finetuned.get(branch), finetuned.get(branch, "finetune.waveform_loss=1")
    assert weighted.history[0]["train_loss"] > plain.history[0]["train_loss"]
    with pytest.raises(ConfigError, match=r"moe\.waveform_filters = 0 builds none"):
        finetuned.get("finetune.waveform_loss=1")


@case("finetune.augment_scale")
def _finetune_augment_scale(finetuned):
    x, out = _augmented("augment_scale", 0.3)
    gain = out / x  # one gain per trial, the same at every electrode and sample
    torch.testing.assert_close(gain, gain[:, :1, :1].expand_as(gain))
    assert len(set(gain[:, 0, 0].tolist())) == 6 and torch.equal(
        _augmented("augment_scale", 0)[1], x
    )
    _augment_changes_training(finetuned, "finetune.augment_scale=0.3")


@case("finetune.augment_shift_s")
def _finetune_augment_shift_s(finetuned):
    x, out = _augmented("augment_shift_s", 0.05)  # up to 10 samples either way
    for trial in range(6):
        # out[j] = x[j - k]: a copy of its own trial moved by one k, edges repeated
        moved = [
            k
            for k in range(-10, 11)
            if torch.equal(
                out[trial, :, max(k, 0) : 200 + min(k, 0)],
                x[trial, :, max(-k, 0) : 200 - max(k, 0)],
            )
        ]
        assert len(moved) == 1
    assert torch.equal(_augmented("augment_shift_s", 0)[1], x)
    _augment_changes_training(finetuned, "finetune.augment_shift_s=0.05")


@case("finetune.augment_channel_drop")
def _finetune_augment_channel_drop(finetuned):
    x, out = _augmented("augment_channel_drop", 0.5)
    dropped = (out == 0).all(dim=-1)
    assert 0 < int(dropped.sum()) < 18  # some electrodes of some trials
    assert torch.equal(out[~dropped], x[~dropped])  # the others untouched
    _augment_changes_training(finetuned, "finetune.augment_channel_drop=0.5")


@case("finetune.augment_spectral_mask")
def _finetune_augment_spectral_mask(finetuned):
    x, out = _augmented("augment_spectral_mask", 0.3)
    energy = (out**2).sum(dim=(1, 2)) / (x**2).sum(dim=(1, 2))
    assert (energy < 0.95).all()  # every trial loses part of its spectrum
    same = x[:, :1].expand(-1, 3, -1)  # one mask per trial, shared by its electrodes
    _, masked = _augmented("augment_spectral_mask", 0.3, same)
    torch.testing.assert_close(masked, masked[:, :1].expand_as(masked))
    assert torch.equal(_augmented("augment_spectral_mask", 0)[1], x)
    _augment_changes_training(finetuned, "finetune.augment_spectral_mask=0.3")


# -- runtime: the live loop on real LSL outlets and ZeroMQ sockets ---------------------------

LIVE_SF = 200.0
#: Every live case but where the field itself is under test: eager engine on the CPU,
#: samples stamped 10 s in the past still published, no stall between hand-driven steps.
LIVE_BASE = (
    "runtime.engine=torch",
    "runtime.device=cpu",
    "runtime.max_age_s=600",
    "runtime.stall_timeout_ms=60000",
)
HOP = 20  # samples: the default hop_ms (100 ms) at 200 Hz


def _unique(prefix: str) -> str:
    return f"rtmoe-settings-{prefix}-{uuid.uuid4().hex[:10]}"


class Outlet:
    """A real LSL outlet of µV samples; `push` sends a chunk with the stamps given."""

    def __init__(self, labels=MODEL_CHANS, name: str | None = None) -> None:
        self.name = name or _unique("eeg")
        info = pylsl.StreamInfo(self.name, "EEG", len(labels), LIVE_SF, "float32", self.name)
        info.set_channel_labels(list(labels))
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)

    def info(self) -> pylsl.StreamInfo:
        found = pylsl.resolve_bypred(f"source_id='{self.name}'", 1, 5.0)
        assert len(found) == 1, f"LSL did not find the outlet {self.name}"
        return found[0]

    def push(self, data: np.ndarray, stamps: np.ndarray) -> None:
        chunk = np.ascontiguousarray(data.T, dtype=np.float32)
        self.outlet.push_chunk(chunk, [float(s) for s in stamps])


def _live_data(n: int, n_chans: int = 3, seed: int = 0) -> np.ndarray:
    """µV: an offset, a 10 Hz rhythm differing per channel, and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / LIVE_SF
    rhythm = 30 * np.sin(2 * np.pi * 10 * t + np.arange(n_chans)[:, None])
    return 80.0 + rhythm + 10 * rng.normal(size=(n_chans, n))


def _stamps(n: int, rate: float = LIVE_SF, age_s: float = 10.0) -> np.ndarray:
    """Regular stamps of ``n`` samples, the first ``age_s`` seconds ago."""
    return pylsl.local_clock() - age_s + np.arange(n) / rate


def _ingest(rt: Runtime, outlet: Outlet, data, stamps, decodes=None, timeout_s=10.0) -> None:
    """Push a chunk and step the runtime until it has read all of it (decodes recorded)."""
    target = rt.source.n_samples + data.shape[1]
    outlet.push(data, stamps)
    deadline = time.monotonic() + timeout_s
    while rt.source.n_samples < target:
        assert time.monotonic() < deadline, "the pushed samples never reached the runtime"
        before = rt.decodes
        rt.step(0.02)
        if decodes is not None and rt.decodes > before:
            decodes.append(rt.last_decode)


def _subscribe(rt: Runtime, address: str, timeout_s: float = 5.0):
    """A SUB socket on ``address`` that receives the runtime's messages; the first frames."""
    sub = _subscriber(address)
    t = pylsl.local_clock() + 1e4  # statuses at invented times: the heartbeat is the clock's
    deadline = time.monotonic() + timeout_s
    while not sub.poll(50):
        if time.monotonic() > deadline:
            sub.close()
            raise AssertionError(f"no status arrived on {address}")
        rt.beat(t)
        t += 1e4
    return sub, sub.recv_multipart()


class Built(NamedTuple):
    runtime: Runtime
    outlet: Outlet
    publisher: ZmqPublisher


class RuntimePool:
    """Runtimes on fresh outlets of the model's channels, each taken once.

    Opening an LSL inlet waits some 0.6 s for the first clock offset, so the runtimes
    the cases are known to take (`PREFETCH`) are built together in threads; any other
    is built when taken. Runtimes left over are closed at the end.
    """

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._ready: dict[tuple[str, ...], list[Built]] = {}

    def _build(self, settings: tuple[str, ...]) -> Built:
        outlet = Outlet()
        publisher = ZmqPublisher("tcp://127.0.0.1:0")
        try:
            cfg = _cfg(*settings).runtime
            rt = Runtime(self.model_dir, outlet.info(), cfg, publisher=publisher)
        except BaseException:
            publisher.close()
            raise
        return Built(rt, outlet, publisher)

    def prefetch(self, all_settings: list[tuple[str, ...]]) -> None:
        with ThreadPoolExecutor(max_workers=len(all_settings)) as threads:
            built = list(threads.map(self._build, all_settings))
        for settings, item in zip(all_settings, built, strict=True):
            self._ready.setdefault(settings, []).append(item)

    def take(self, settings: tuple[str, ...]) -> Built:
        ready = self._ready.get(settings)
        return ready.pop() if ready else self._build(settings)

    def close(self) -> None:
        for items in self._ready.values():
            for item in items:
                item.runtime.close()
                item.publisher.close()


class LiveSessions:
    """One scripted session per distinct settings: a Runtime reading a fresh outlet.

    The script: one window of samples (100), then five hops of 20 samples, each read
    before the next is pushed (so each makes exactly one window due with the default
    hop); a status, then 20 more samples as old; then a hole of 30 samples (155 ms) in
    the stamps and 20 samples; last `Runtime.run` for 50 ms with nothing to read. One
    sample value is NaN (in the last window of the first part: 1 of 300 values).
    """

    def __init__(self, pool: RuntimePool) -> None:
        self.pool, self._runs = pool, {}

    def get(self, *overrides: str, base=LIVE_BASE) -> dict[str, Any]:
        key = (*base, *overrides)
        if key not in self._runs:
            self._runs[key] = self._run(self.pool.take(key))
        return self._runs[key]

    @staticmethod
    def _run(built: Built) -> dict[str, Any]:
        rt, outlet, publisher = built
        sub = None
        try:
            sub, _ = _subscribe(rt, publisher.address)
            data, stamps = _live_data(300), _stamps(300)
            data[0, 150] = np.nan
            decodes: list[DecodeMessage] = []
            _ingest(rt, outlet, data[:, :N_TIMES], stamps[:N_TIMES], decodes)
            for lo in range(N_TIMES, 200, HOP):
                _ingest(rt, outlet, data[:, lo : lo + HOP], stamps[lo : lo + HOP], decodes)
            rec = {
                "hop": rt.hop,
                "due": rt.decodes + rt.skipped_windows + rt.stale_windows,
                "stale": rt.stale_windows,
                "decodes": decodes,
                "timings": rt.timings,
                "latencies": rt.latencies_ms,
            }
            rt.beat(pylsl.local_clock() + 1e7)  # a status closes the lag period
            _ingest(rt, outlet, data[:, 200:220], stamps[200:220])
            rec["state"] = rt.state
            n_decodes = rt.decodes
            _ingest(rt, outlet, data[:, 250:270], stamps[250:270])  # 220-249 never sent
            rec["hole"] = (float(stamps[219]), float(stamps[250]))
            rec["resets"] = rt.preprocessor.n_resets
            rec["gaps"] = rt.source.n_gaps
            rec["after_gap"] = rt.last_decode if rt.decodes > n_decodes else None
            rec["n_decodes"] = rt.decodes
            rec["messages"] = _drain(sub, 300)
            started = time.perf_counter()
            rt.run(0.05)
            rec["run_s"] = time.perf_counter() - started
            return rec
        finally:
            rt.close()
            if sub is not None:
                sub.close()
            publisher.close()


#: Settings of the source probes: the live base but the stall timeout's default.
PROBE_BASE = ("runtime.engine=torch", "runtime.device=cpu", "runtime.max_age_s=600")
#: What the live cases take from the pool (only a speed-up: others are built on demand).
PREFETCH = [
    (*LIVE_BASE, *overrides)
    for overrides in [
        (),
        ("runtime.hop_ms=50",),
        ("runtime.timing_records=3",),
        ("runtime.max_repaired_share=0.001",),
        ("runtime.out_of_range_uv=20",),
        ("runtime.flat_uv=1000",),
        ("runtime.max_lag_ms=1e6",),
        ("runtime.max_gap_ms=200",),
        ("runtime.preview_hz=50",),
        ("runtime.adapt_s=1.0",),
        ("runtime.poll_ms=400",),
        (),  # the rate case's default
        ("runtime.rate_tolerance=0.05",),
    ]
]
PREFETCH += [tuple(s for s in LIVE_BASE if "max_age_s" not in s)]
PREFETCH += [(*PROBE_BASE, *o) for o in [(), ("runtime.stall_timeout_ms=50",)]]
PREFETCH += [(*PROBE_BASE, "runtime.max_buflen_s=2")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny two-expert SpecMoE on C3, C4, CZ, 0.5 s windows at 200 Hz."""
    return _save_model(tmp_path_factory.mktemp("live") / "ckpt", MODEL_CHANS)


@pytest.fixture(scope="module")
def pool(model_dir):
    runtimes = RuntimePool(model_dir)
    runtimes.prefetch(PREFETCH)
    yield runtimes
    runtimes.close()


@pytest.fixture(scope="module")
def live(pool) -> LiveSessions:
    return LiveSessions(pool)


@case("runtime.hop_ms")
def _runtime_hop_ms(live):
    default, half = live.get(), live.get("runtime.hop_ms=50")
    assert (default["hop"], half["hop"]) == (HOP, HOP // 2)
    # Windows due over one window and 100 more samples: one per hop.
    assert default["due"] == 1 + 100 // HOP and half["due"] == 1 + 100 // (HOP // 2)
    ends = [m.window_last_lsl_s for m in default["decodes"]]
    np.testing.assert_allclose(np.diff(ends), 0.1, atol=1e-3)


@case("runtime.timing_records")
def _runtime_timing_records(live):
    default, three = live.get(), live.get("runtime.timing_records=3")
    assert len(default["decodes"]) == 6 and default["timings"].shape == (6, 6)
    assert three["timings"].shape == (3, 6)  # only the newest three are kept
    newest = [m.latency_ms for m in three["decodes"][-3:]]
    np.testing.assert_allclose(three["latencies"], newest)


@case("runtime.max_repaired_share")
def _runtime_max_repaired_share(live):
    last = live.get()["decodes"][-1]
    assert last.valid and last.repaired_share == pytest.approx(1 / 300)
    strict = live.get("runtime.max_repaired_share=0.001")["decodes"][-1]
    assert not strict.valid and "repaired" in strict.invalid_reason


@case("runtime.out_of_range_uv")
def _runtime_out_of_range_uv(live):
    last = live.get()["decodes"][-1]  # peaks of some 60 µV
    assert last.valid and last.out_of_range_channels == 0
    low = live.get("runtime.out_of_range_uv=20")["decodes"][-1]
    assert not low.valid and low.out_of_range_channels == 3 and "beyond 20" in low.invalid_reason


@case("runtime.flat_uv")
def _runtime_flat_uv(live):
    last = live.get()["decodes"][-1]  # a std of some 25 µV
    assert last.valid and last.flat_channels == 0
    high = live.get("runtime.flat_uv=1000")["decodes"][-1]
    assert not high.valid and high.flat_channels == 3 and "flat" in high.invalid_reason


@case("runtime.max_lag_ms")
def _runtime_max_lag_ms(live):
    # Samples 10 s old over a whole status period: beyond one hop, within 1000 s.
    assert live.get()["state"] is RuntimeState.LAGGING
    assert live.get("runtime.max_lag_ms=1e6")["state"] is RuntimeState.RUNNING


@case("runtime.max_gap_ms")
def _runtime_max_gap_ms(live):
    default, lenient = live.get(), live.get("runtime.max_gap_ms=200")
    assert default["gaps"] == lenient["gaps"] == 1  # the source sees the hole either way
    # 155 ms > 100 ms: the chain restarts and no window spans the hole (none is due yet).
    assert default["resets"] == 1 and default["after_gap"] is None
    # < 200 ms: bridged, and the next window, spanning the hole, decoded.
    assert lenient["resets"] == 0 and lenient["after_gap"] is not None
    before, after = lenient["hole"]
    window = lenient["after_gap"]
    assert window.window_first_lsl_s < before and window.window_last_lsl_s >= after - 1e-3


@case("runtime.preview_hz")
def _runtime_preview_hz(live):
    for overrides, with_preview in (((), False), (("runtime.preview_hz=50",), True)):
        run = live.get(*overrides)
        messages = run["messages"]
        assert sum(isinstance(m, DecodeMessage) for m in messages) == run["n_decodes"]
        previews = [m for m in messages if isinstance(m, PreviewMessage)]
        assert len(previews) == (run["n_decodes"] if with_preview else 0)
    # 50 Hz from 200 Hz: the 20 new samples of each hop in 5 blocks of 4.
    assert all(len(row) == 5 for m in previews for row in m.data_uv)


@case("runtime.adapt_s")
def _runtime_adapt_s(live):
    raw = [np.array(m.probabilities) for m in live.get()["decodes"]]
    adapted = [np.array(m.probabilities) for m in live.get("runtime.adapt_s=1.0")["decodes"]]
    np.testing.assert_allclose(adapted[0], raw[0], atol=1e-7)  # nothing to re-centre yet
    assert all(not np.allclose(a, r, atol=1e-9) for a, r in zip(adapted[1:], raw[1:], strict=True))
    # The decodes lean to one class; re-centring pulls them back toward even odds.
    lean = [abs(r[0] - 0.5) for r in raw[1:]]
    assert len({np.sign(r[0] - 0.5) for r in raw}) == 1
    assert all(abs(a[0] - 0.5) < r for a, r in zip(adapted[1:], lean, strict=True))


@case("runtime.max_age_s")
def _runtime_max_age_s(live):
    young = live.get()  # max_age_s 600 s
    default = live.get(base=tuple(s for s in LIVE_BASE if "max_age_s" not in s))
    assert young["stale"] == 0 and len(young["decodes"]) == 6
    assert default["decodes"] == [] and default["stale"] == 6  # 10 s old > 1 s: none out


@case("runtime.poll_ms")
def _runtime_poll_ms(live):
    # `run` with nothing to read: every cycle waits up to poll_ms for a sample.
    assert live.get()["run_s"] < 0.35
    assert live.get("runtime.poll_ms=400")["run_s"] >= 0.4


class SourceProbe(NamedTuple):
    running: RuntimeState
    after_silence: RuntimeState
    burst_read: int


def _probe_source(built: Built) -> SourceProbe:
    """A state after 20 samples and after 0.15 s of silence; then how much of a burst of
    300 samples (1.5 s), all arrived before the first read, the inlet still holds."""
    rt, outlet, publisher = built
    try:
        data, stamps = _live_data(320), _stamps(320)
        _ingest(rt, outlet, data[:, :20], stamps[:20])
        running = rt.state
        time.sleep(0.15)
        rt.step()
        after = rt.state
        outlet.push(data[:, 20:], stamps[20:])
        time.sleep(0.5)
        n = 0
        while True:
            _, got = rt.source.pull()
            if not got.size:
                break
            n += got.size
        return SourceProbe(running, after, n)
    finally:
        rt.close()
        publisher.close()


@pytest.fixture(scope="module")
def source_probes(pool):
    cache: dict = {}

    def get(*overrides):
        if overrides not in cache:
            cache[overrides] = _probe_source(pool.take((*PROBE_BASE, *overrides)))
        return cache[overrides]

    return get


@case("runtime.stall_timeout_ms")
def _runtime_stall_timeout_ms(source_probes):
    default, quick = source_probes(), source_probes("runtime.stall_timeout_ms=50")
    assert default.running is RuntimeState.RUNNING and quick.running is RuntimeState.RUNNING
    assert default.after_silence is RuntimeState.RUNNING  # 150 ms < 500 ms
    assert quick.after_silence is RuntimeState.STALLED  # 150 ms > 50 ms


@case("runtime.max_buflen_s")
def _runtime_max_buflen_s(source_probes):
    # The inlet keeps the newest max_buflen_s of samples; older ones are dropped.
    assert source_probes().burst_read == 200
    assert source_probes("runtime.max_buflen_s=2").burst_read == 300


@case("runtime.rate_tolerance")
def _runtime_rate_tolerance(pool):
    # A sender declaring 200 Hz whose clock runs at 204 Hz (2 % fast), for 3 s.
    states = {}
    for overrides in ((), ("runtime.rate_tolerance=0.05",)):
        rt, outlet, publisher = pool.take((*LIVE_BASE, *overrides))
        try:
            data, stamps = _live_data(600), _stamps(600, rate=204.0)
            for lo in range(0, 600, 100):
                _ingest(rt, outlet, data[:, lo : lo + 100], stamps[lo : lo + 100])
            states[overrides] = (rt.state, rt.error, rt.refused_windows, rt.source.clock_sfreq)
        finally:
            rt.close()
            publisher.close()
    (state, error, refused, rate), (state5, error5, refused5, _) = states.values()
    assert rate == pytest.approx(204.0, rel=2e-3)
    assert (state, error) == (RuntimeState.ERROR, StatusError.RATE_MISMATCH) and refused > 0
    assert (state5, error5, refused5) == (RuntimeState.RUNNING, None, 0)


@case("runtime.fill")
def _runtime_fill(model_dir):
    outlet = Outlet(labels=("C3", "CZ", "PZ"))  # no C4
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    try:
        with pytest.raises(ChannelError, match=r"\['C4'\]"):
            Runtime(model_dir, outlet.info(), _cfg(*LIVE_BASE).runtime, publisher=publisher)
        cfg = _cfg(*LIVE_BASE, "runtime.fill=zeros").runtime
        rt = Runtime(model_dir, outlet.info(), cfg, publisher=publisher)
        try:
            decodes: list = []
            _ingest(rt, outlet, _live_data(N_TIMES), _stamps(N_TIMES), decodes)
            assert rt.filled_channels == ["C4"]
            assert len(decodes) == 1 and decodes[0].flat_channels == 1  # C4: flat zeros
        finally:
            rt.close()
    finally:
        publisher.close()


@case("runtime.rename")
def _runtime_rename(model_dir):
    # An amplifier app that labels channels by number: refused as missing electrodes,
    # decoded once renamed; a rename of a label the stream lacks is a typo, refused.
    outlet = Outlet(labels=("1", "2", "3", "4"))
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    try:
        with pytest.raises(ChannelError, match="missing channel"):
            Runtime(model_dir, outlet.info(), _cfg(*LIVE_BASE).runtime, publisher=publisher)
        typo = _cfg(*LIVE_BASE, "runtime.rename=['5=C3']").runtime
        with pytest.raises(ChannelError, match=r"rename of \['5'\]"):
            Runtime(model_dir, outlet.info(), typo, publisher=publisher)
        renames = "runtime.rename=['1=C3', '2=CZ', '3=C4']"  # channel 4 stays unused
        rt = Runtime(
            model_dir, outlet.info(), _cfg(*LIVE_BASE, renames).runtime, publisher=publisher
        )
        try:
            decodes: list = []
            _ingest(rt, outlet, _live_data(N_TIMES, n_chans=4), _stamps(N_TIMES), decodes)
            assert len(decodes) == 1 and decodes[0].flat_channels == 0
        finally:
            rt.close()
    finally:
        publisher.close()


@pytest.fixture(scope="module")
def idle_source():
    """An open source on an outlet that never sends: for runtimes that decode nothing."""
    outlet = Outlet()
    source = LslSource(outlet.info())
    yield source
    source.close()
    del outlet


LOCAL = "runtime.zmq_address=tcp://127.0.0.1:0"
#: Runtimes on the idle source: eager on the CPU, publishing on a free local port.
IDLE_BASE = ("runtime.engine=torch", "runtime.device=cpu", LOCAL)


def _idle_runtime(model_dir, source, *overrides: str, base=IDLE_BASE) -> Runtime:
    """A Runtime on the shared idle source; it owns its publisher (from the settings)."""
    return Runtime(model_dir, source, _cfg(*base, *overrides).runtime)


def _without(*fields: str) -> tuple[str, ...]:
    """`IDLE_BASE` less the settings of ``fields`` (so they keep their defaults)."""
    return tuple(s for s in IDLE_BASE if s.partition("=")[0] not in fields)


@case("runtime.device")
def _runtime_device(model_dir, idle_source):
    auto = _idle_runtime(model_dir, idle_source, base=_without("runtime.device"))
    try:
        assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
        assert auto.ring.device.type == auto.device.type
    finally:
        auto.publisher.close()
    if torch.cuda.is_available():
        cpu = _idle_runtime(model_dir, idle_source)
        assert cpu.device.type == "cpu" and cpu.ring.device.type == "cpu"
        cpu.publisher.close()
    else:
        with pytest.raises(BadValueError, match="no CUDA GPU"):
            _idle_runtime(model_dir, idle_source, "runtime.device=cuda")


@case("runtime.engine")
def _runtime_engine(model_dir, idle_source):
    eager = _idle_runtime(model_dir, idle_source)  # engine torch
    eager.publisher.close()
    assert eager.engine.name == "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pytest.skip("without onnxruntime, auto on the CPU is the eager engine")
    auto = _idle_runtime(model_dir, idle_source, base=_without("runtime.engine"))
    auto.publisher.close()
    assert auto.engine.name == "onnx"  # auto: the fastest CPU backend installed
    assert auto.engine.parity is not None and auto.engine.parity.max_abs_diff < 1e-4


@case("runtime.zmq_address")
def _runtime_zmq_address(model_dir, idle_source):
    # The default (tcp://127.0.0.1:5556) is not bound here: a fixed port could be in use.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rtmoe-") as folder:
        for address in (f"ipc://{folder}/decodes.sock", "tcp://127.0.0.1:0"):
            rt = _idle_runtime(model_dir, idle_source, f"runtime.zmq_address={address}")
            try:
                bound = rt.publisher.address
                if address.endswith(":0"):
                    assert bound.startswith("tcp://127.0.0.1:") and not bound.endswith(":0")
                else:
                    assert bound == address
                sub, frames = _subscribe(rt, bound)  # the runtime publishes right there
                sub.close()
                assert decode(frames).__class__.__name__ == "StatusMessage"
            finally:
                rt.publisher.close()


@case("runtime.allow_remote")
def _runtime_allow_remote(model_dir, idle_source):
    everywhere = "runtime.zmq_address=tcp://0.0.0.0:0"
    with pytest.raises(BadValueError, match="reachable from other machines"):
        _idle_runtime(model_dir, idle_source, everywhere)
    rt = _idle_runtime(model_dir, idle_source, everywhere, "runtime.allow_remote=true")
    try:
        assert rt.publisher.address.startswith("tcp://0.0.0.0:")
        port = rt.publisher.address.rpartition(":")[2]
        sub, _ = _subscribe(rt, f"tcp://127.0.0.1:{port}")  # bound on every interface
        sub.close()
    finally:
        rt.publisher.close()


@case("runtime.single_frame")
def _runtime_single_frame(model_dir, idle_source):
    for overrides, n_frames in (((), 2), (("runtime.single_frame=true",), 1)):
        rt = _idle_runtime(model_dir, idle_source, LOCAL, *overrides)
        try:
            sub, frames = _subscribe(rt, rt.publisher.address)
            sub.close()
        finally:
            rt.publisher.close()
        assert len(frames) == n_frames and frames[0].startswith(b"rtmoe.status")
        assert decode(frames).__class__.__name__ == "StatusMessage"


@case("runtime.status_period_s")
def _runtime_status_period_s(model_dir, idle_source):
    for overrides, expected in (((), 3), (("runtime.status_period_s=0.25",), 9)):
        rt = _idle_runtime(model_dir, idle_source, LOCAL, *overrides)
        try:
            t0 = pylsl.local_clock()
            # Nine cycles over two seconds (just after each quarter second).
            beats = [rt.beat(t0 + 0.25 * k + (0.01 if k else 0.0)) for k in range(9)]
        finally:
            rt.publisher.close()
        assert sum(beats) == expected and rt.status_seq == expected


class WaitResult(NamedTuple):
    runtime: Runtime | None
    elapsed_s: float
    error: LslError | None
    outlets: list


def _wait_for_stream(model_dir, *overrides: str, appears_after_s=None) -> WaitResult:
    """Start a Runtime on a stream name, its outlet created ``appears_after_s`` later."""
    name, outlets = _unique("late"), []
    timer = None
    if appears_after_s is not None:
        timer = threading.Timer(appears_after_s, lambda: outlets.append(Outlet(name=name)))
        timer.start()
    cfg = _cfg("runtime.engine=torch", "runtime.device=cpu", *overrides).runtime
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    started = time.monotonic()
    try:
        rt = Runtime(model_dir, {"name": name}, cfg, publisher=publisher)
        return WaitResult(rt, time.monotonic() - started, None, outlets)
    except LslError as err:
        return WaitResult(None, time.monotonic() - started, err, outlets)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        publisher.close()


@pytest.fixture(scope="module")
def waits(model_dir):
    cache: dict = {}

    def get(*overrides, appears_after_s=None):
        key = (overrides, appears_after_s)
        if key not in cache:
            cache[key] = _wait_for_stream(model_dir, *overrides, appears_after_s=appears_after_s)
        return cache[key]

    yield get
    for result in cache.values():
        if result.runtime is not None:
            result.runtime.close()


QUICK_LOOKUP = "runtime.resolve_timeout_s=0.3"


@case("runtime.wait_s")
def _runtime_wait_s(waits):
    patient = waits(QUICK_LOOKUP, appears_after_s=1.5)  # default: wait until it appears
    assert patient.error is None and patient.elapsed_s >= 1.5
    assert patient.runtime.source.channel_names == list(MODEL_CHANS)
    impatient = waits(QUICK_LOOKUP, "runtime.wait_s=0", appears_after_s=1.5)
    assert impatient.runtime is None and "within wait_s=0 s" in str(impatient.error)
    assert impatient.elapsed_s < 1.5  # gave up before the stream appeared


@case("runtime.resolve_timeout_s")
def _runtime_resolve_timeout_s(waits):
    # wait_s 0: one look-up, which listens for answers resolve_timeout_s long.
    default = waits("runtime.wait_s=0")
    quick = waits(QUICK_LOOKUP, "runtime.wait_s=0", appears_after_s=1.5)
    for result in (default, quick):
        assert result.runtime is None and "(1 look-ups)" in str(result.error)
    assert default.elapsed_s >= 2.0 and quick.elapsed_s < 1.5


# -- completeness ---------------------------------------------------------------------------

#: The commands that take --set, and so the sections a --set can reach.
COMMANDS = ("prepare", "pretrain", "mask-preview", "finetune", "evaluate", "calibrate", "stream")
COMMANDS += ("demo",)


def test_every_field_has_exactly_one_behaviour_case():
    fields = _all_fields()
    missing = sorted(set(fields) - set(CASES))
    assert not missing, f"fields without a behaviour case in {__name__}: {missing}"
    unknown = sorted(set(CASES) - set(fields))
    assert not unknown, f"behaviour cases of fields the tree does not have: {unknown}"
    assert not set(NO_EFFECT_YET) - set(CASES)


def test_every_section_is_read_by_a_command(capsys):
    read: dict[str, set[str]] = {}
    for command in COMMANDS:
        assert main(["config", "show", "--for", command]) == 0
        out = capsys.readouterr().out
        read[command] = {line[1:-1] for line in out.splitlines() if line.startswith("[")}
    sections = {f.name for f in dataclasses.fields(Config)}
    readers = {s: [c for c in COMMANDS if s in read[c]] for s in sections}
    assert all(readers.values()), f"sections no command reads: {readers}"


def _case_params() -> list:
    return [
        pytest.param(key, marks=pytest.mark.xfail(strict=True, reason=NO_EFFECT_YET[key]))
        if key in NO_EFFECT_YET
        else key
        for key in _all_fields()
        if key in CASES
    ]


@pytest.mark.parametrize("key", _case_params())
def test_setting_changes_what_it_names(key, request):
    fn = CASES[key]
    fn(**{name: request.getfixturevalue(name) for name in inspect.signature(fn).parameters})


# -- defects found on the way (fixed) -----------------------------------------------------


def test_an_stft_hop_not_shorter_than_the_window_is_refused_when_set():
    """The masking's iSTFT needs overlapping Hann frames (torch.istft fails without)."""
    for text in ("spectral.stft_window_s=1.0", "spectral.stft_hop_s=2.0"):
        with pytest.raises(ValueError, match="inverse STFT needs overlapping frames"):
            _cfg(text)


def test_a_bridged_gap_marks_the_window_that_spans_it(live):
    window = live.get("runtime.max_gap_ms=200")["after_gap"]
    assert window.gap_in_window and not window.valid and "missing" in window.invalid_reason
