"""SpecMoE: shapes, spectral gating, electrode alignment, ablations, torch.export."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from rtmoe.config import ConfigError, MoEConfig, SpectralConfig
from rtmoe.dsp.spectral import welch_nperseg, welch_psd
from rtmoe.models.registry import build_model, model_config
from rtmoe.models.specmoe import PSD_FLOOR, SpecMoE, TaskConfig, gate_input

SFREQ = 200.0
N_CHANS, N_TIMES = 3, 240


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: OpenMP threads only add overhead, and stall on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _moe(n_experts: int = 3, seed: int = 0, **kwargs) -> SpecMoE:
    torch.manual_seed(seed)
    experts = [build_model("tiny", SFREQ) for _ in range(n_experts)]
    model = SpecMoE(experts, N_CHANS, N_TIMES, SFREQ, 4, **kwargs)
    if model.gate_norm is not None:
        # Statistics of the log-PSD as fine-tuning would leave them (fresh ones are 0/1).
        log_psd = gate_input(model.psd(_sines([2, 5, 10, 20, 40, 60], batch=1)[0, :, None]))
        model.gate_norm.running_mean.copy_(log_psd.mean(dim=(0, 1)))
        model.gate_norm.running_var.copy_(log_psd.var(dim=(0, 1)) + 1e-3)
    return model.eval()


def _sines(freqs_hz, n_times: int = N_TIMES, batch: int = 2) -> torch.Tensor:
    t = torch.arange(n_times) / SFREQ
    x = torch.stack([torch.sin(2 * math.pi * f * t) for f in freqs_hz])
    return 0.2 * x.expand(batch, -1, -1).clone()


@pytest.mark.parametrize("n_experts", [1, 3])
def test_shapes_and_gates(n_experts):
    model = _moe(n_experts)
    x = _sines([5, 10, 20])
    logits, gates = model.forward_with_gates(x)
    d = model.feature_dim
    assert logits.shape == (2, 4) and gates.shape == (2, n_experts, N_CHANS, d)
    assert torch.isfinite(logits).all() and ((gates > 0) & (gates < 1)).all()
    assert model.nperseg == welch_nperseg(N_TIMES, SFREQ, SpectralConfig())
    assert model.psd_bins == model.nperseg // 2 + 1
    # Head input is K·D wide: the experts' features are concatenated, not summed.
    assert model.head[0].normalized_shape == (n_experts * d,)


def test_psd_default_is_welch_of_x():
    model = _moe()
    x = _sines([5, 10, 20]) + 0.01 * torch.randn(2, N_CHANS, N_TIMES)
    psd = welch_psd(x, SFREQ, model.nperseg)
    torch.testing.assert_close(model(x), model(x, psd), rtol=0, atol=0)


def test_gates_follow_the_spectrum_of_their_own_electrode():
    model = _moe()
    x = _sines([5, 10, 20])
    psd = model.psd(x)
    _, gates = model.forward_with_gates(x, psd)
    for k, linear in enumerate(model.gates):
        norm = model.gate_norm
        std = (norm.running_var + norm.eps).sqrt()
        z = (torch.log10(psd.clamp_min(PSD_FLOOR)) - norm.running_mean) / std
        expected = torch.sigmoid(linear(z))  # (B, C, D)
        torch.testing.assert_close(gates[:, k], expected)
    # Changing the spectrum of electrode 1 only changes electrode 1's gates.
    x2 = x.clone()
    x2[:, 1] = _sines([40, 40, 40])[:, 1]
    _, gates2 = model.forward_with_gates(x2)
    assert not torch.allclose(gates2[:, :, 1], gates[:, :, 1])
    torch.testing.assert_close(gates2[:, :, [0, 2]], gates[:, :, [0, 2]], rtol=0, atol=0)
    # Same waveform, another PSD: the gates (and so the logits) change.
    logits3, gates3 = model.forward_with_gates(x, psd * 100)
    assert not torch.allclose(gates3, gates) and not torch.allclose(logits3, model(x, psd))


def test_no_psd_gate_is_plain_concatenation():
    model = _moe(use_psd_gate=False)
    assert model.gates is None and model.gate_norm is None
    x = _sines([5, 10, 20])
    logits, gates = model.forward_with_gates(x)
    assert torch.equal(gates, torch.ones_like(gates))
    torch.testing.assert_close(model(x, model.psd(x) * 1e3), logits, rtol=0, atol=0)
    features = torch.cat([e(x).mean(-1) for e in model.experts], dim=-1).mean(dim=1)
    torch.testing.assert_close(logits, model.head(features))


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_electrode_permutation_invariance(pool):
    # Convolutions never mix electrodes and attention has no electrode position, so
    # permuting electrodes (with their own spectra) must not change the decision.
    model = _moe(channel_pool=pool)
    x = _sines([3, 11, 27]) + 0.05 * torch.randn(2, N_CHANS, N_TIMES)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(model(x[:, perm]), model(x), rtol=1e-4, atol=1e-5)


def test_concat_pool_keeps_electrodes_apart():
    # The head reads every electrode's features in montage order: permuting electrodes
    # changes the decision, and its input is n_chans times as wide as a pooled head's.
    model = _moe(channel_pool="concat")
    x = _sines([3, 11, 27]) + 0.05 * torch.randn(2, N_CHANS, N_TIMES)
    assert not torch.allclose(model(x[:, torch.tensor([2, 0, 1])]), model(x), atol=1e-4)
    assert model.head[0].normalized_shape == (N_CHANS * 3 * model.feature_dim,)


def test_channel_pool_changes_output():
    x = _sines([3, 11, 27])
    assert not torch.allclose(_moe(channel_pool="mean")(x), _moe(channel_pool="max")(x))


def test_every_parameter_gets_a_gradient():
    model = _moe(2).train()
    model(_sines([5, 10, 20])).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    head = {id(p) for p in model.head_parameters()}
    assert head.isdisjoint(id(p) for p in model.expert_parameters())
    assert len(head) + len(list(model.expert_parameters())) == len(list(model.parameters()))


@pytest.mark.parametrize("use_psd_gate", [True, False])
def test_forward_is_forward_head_of_forward_features(use_psd_gate):
    model = _moe(2, use_psd_gate=use_psd_gate)
    x = _sines([5, 10, 20], batch=3) + 0.01 * torch.randn(3, N_CHANS, N_TIMES)
    with torch.no_grad():
        for psd in (None, model.psd(x)):
            features = model.forward_features(x, psd)
            assert features.experts.shape == (3, 2, N_CHANS, 1, model.feature_dim)
            assert (features.log_psd is None) == (not use_psd_gate)
            assert torch.equal(model.forward_head(features), model(x, psd))
            logits, gates = model.forward_head(features, return_gates=True)
            want_logits, want_gates = model.forward_with_gates(x, psd)
            assert torch.equal(logits, want_logits) and torch.equal(gates, want_gates)
            # Cached features of some windows give exactly those windows' outputs.
            rows = torch.tensor([2, 0])
            torch.testing.assert_close(
                model.forward_head(features.take(rows)),
                model(x[rows]),
                rtol=1e-6,
                atol=1e-7,
            )
    # The split follows the parameters: experts before it, gates and head after it.
    model.train()
    features = model.forward_features(x)
    model.forward_head(features).sum().backward()
    head = {id(p) for p in model.head_parameters()}
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    detached = type(features)(features.experts.detach(), features.log_psd)
    model.forward_head(detached).sum().backward()
    assert all((p.grad is not None) == (id(p) in head) for p in model.parameters())


def test_short_window_uses_one_segment():
    # FingerMovements: 0.5 s at 100 Hz -> 100 samples at 200 Hz, one 100-sample segment.
    torch.manual_seed(0)
    model = SpecMoE([build_model("tiny", SFREQ)], 28, 100, SFREQ, 2).eval()
    assert (model.nperseg, model.psd_bins) == (100, 51)
    assert model(torch.randn(1, 28, 100)).shape == (1, 2)


def test_time_segments_average_consecutive_parts_of_the_window():
    # 480 samples = 4 encoder steps: 3 segments hold steps (0, 1), (2,), (3,).
    torch.manual_seed(0)
    experts = [build_model("tiny", SFREQ) for _ in range(2)]
    model = SpecMoE(experts, N_CHANS, 480, SFREQ, 4, time_segments=3).eval()
    x = 0.3 * torch.randn(2, N_CHANS, 480, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.forward_features(x)
        steps = model.experts[1](x)  # (batch, C, D, 4)
        assert features.experts.shape == (2, 2, N_CHANS, 3, model.feature_dim)
        for segment, part in enumerate(((0, 1), (2,), (3,))):
            want = steps[..., list(part)].mean(dim=-1)
            torch.testing.assert_close(features.experts[:, 1, :, segment], want)
        assert model.head[0].normalized_shape == (3 * 2 * model.feature_dim,)
        torch.testing.assert_close(model(x), model.forward_head(features))
    with pytest.raises(ConfigError, match=r"time_segments=5 exceeds the 4 encoder step"):
        SpecMoE(experts, N_CHANS, 480, SFREQ, 4, time_segments=5)


def test_erp_segments_feed_the_head_the_decimated_waveform():
    model = _moe(erp_segments=6)
    x = _sines([3, 11, 27]) + 0.05 * torch.randn(2, N_CHANS, N_TIMES)
    features = model.forward_features(x)
    torch.testing.assert_close(features.erp, x.reshape(2, N_CHANS, 6, 40).mean(dim=-1))
    assert model.erp_head.in_features == N_CHANS * 6
    torch.testing.assert_close(model(x), model.forward_head(features))
    # The waveform is per electrode: the decision follows the montage order.
    assert not torch.allclose(model(x[:, torch.tensor([2, 0, 1])]), model(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"features\.erp is None"):
        model.forward_head(features._replace(erp=None))
    with pytest.raises(ConfigError, match="erp_segments=241 exceeds"):
        _moe(erp_segments=241)
    exported = torch.export.export(model, (x[:1], model.psd(x[:1])))
    torch.testing.assert_close(exported.module()(x[:1], model.psd(x[:1])), model(x[:1]))


def test_waveform_branch_adds_learned_filter_logits():
    model = _moe(waveform_filters=4)
    x = _sines([3, 11, 27]) + 0.05 * torch.randn(2, N_CHANS, N_TIMES)
    features = model.forward_features(x)
    assert features.waveform is x
    branch = model.waveform_branch
    temporal, spatial = branch.layers[1], branch.layers[3]
    assert temporal.kernel_size == (1, 100)  # half a second at 200 Hz
    assert spatial.kernel_size == (N_CHANS, 1) and spatial.out_channels == 8
    assert branch.layers[-1].in_features == 8 * (N_TIMES // 32)
    torch.testing.assert_close(model(x), model.forward_head(features))
    # The logits are the head's plus the branch's: nothing else changes.
    head_only = copy.deepcopy(model)
    head_only.waveform_branch, head_only.waveform_filters = None, 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), head_only(x) + branch(x))
        # Learned spatial filters: the decision follows the montage order.
        assert not torch.allclose(model(x[:, torch.tensor([2, 0, 1])]), model(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"features\.waveform is None"):
        model.forward_head(features._replace(waveform=None))
    with pytest.raises(ConfigError, match="at least 32 samples"):
        SpecMoE([build_model("tiny", SFREQ)], N_CHANS, 31, SFREQ, 4, waveform_filters=2)
    exported = torch.export.export(model, (x[:1], model.psd(x[:1])))
    torch.testing.assert_close(exported.module()(x[:1], model.psd(x[:1])), model(x[:1]))


def test_torch_export_static_shapes():
    model = _moe()
    x = _sines([5, 10, 20], batch=1)
    psd = model.psd(x)
    exported = torch.export.export(model, (x, psd))
    torch.testing.assert_close(exported.module()(x, psd), model(x, psd))


def test_bad_inputs_are_named():
    model = _moe(1)
    with pytest.raises(ValueError, match=r"n_chans=3, n_times=240"):
        model(torch.zeros(1, 4, N_TIMES))
    with pytest.raises(ValueError, match=r"n_chans=3, n_times=240"):
        model(torch.zeros(1, N_CHANS, 200))
    with pytest.raises(ValueError, match="psd has shape"):
        model(torch.zeros(1, N_CHANS, N_TIMES), torch.zeros(1, N_CHANS, 51))
    wide = build_model(dataclasses.replace(model_config("tiny"), base_width=8), SFREQ)
    with pytest.raises(ValueError, match="feature_dim"):
        SpecMoE([build_model("tiny"), wide], N_CHANS, N_TIMES, SFREQ, 2)
    with pytest.raises(ConfigError, match="channel_pool"):
        SpecMoE([build_model("tiny")], N_CHANS, N_TIMES, SFREQ, 2, channel_pool="sum")
    with pytest.raises(ValueError, match="SpecHiNet"):
        SpecMoE([torch.nn.Linear(2, 2)], N_CHANS, N_TIMES, SFREQ, 2)


def test_gate_input_is_finite_for_flat_channels():
    assert torch.isfinite(gate_input(torch.zeros(3))).all()
    assert gate_input(torch.tensor([1e-2])).item() == pytest.approx(-2.0, abs=1e-6)


def test_config_validation():
    TaskConfig(ch_names=("C3", "C4"), n_times=100, labels=("a", "b"))
    TaskConfig(ch_names=("C3",), n_times=100, regression=True)
    MoEConfig()
    for bad, match in [
        (lambda: TaskConfig(ch_names=("C3", "C3"), n_times=100, labels=("a", "b")), "ch_names"),
        (lambda: TaskConfig(ch_names=("C3",), n_times=100, labels=("a",)), "labels"),
        (lambda: TaskConfig(ch_names=("C3",), n_times=1, labels=("a", "b")), "n_times"),
        (
            lambda: TaskConfig(ch_names=("C3",), n_times=100, labels=("a",), regression=True),
            "labels",
        ),
        (
            lambda: TaskConfig(ch_names=("C3", "C4"), n_times=1.5, labels=("a", "b")),
            "task.n_times takes an integer",
        ),
        (lambda: MoEConfig(n_experts=0), "n_experts"),
        (lambda: MoEConfig(dropout=1.0), "dropout"),
    ]:
        with pytest.raises(ConfigError, match=match):
            bad()
