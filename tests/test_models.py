"""SpecHi-Net battery over every named size: shapes, NaN, gradients, export, electrodes."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from rtmoe.config import ConfigError, ModelConfig
from rtmoe.models import (
    AUX_FACTORS,
    MODEL_SIZES,
    SpecHiNet,
    SpecHiNetEncoder,
    aux_lengths,
    build_model,
    model_config,
)
from rtmoe.models.layers import ConvBlock, apply_rotary, rotary_frequencies, same_padding
from rtmoe.models.spechinet import pad_time

# Paper-size cases stay short so the file runs in seconds on two cores.
SHAPES = {
    "tiny": [(1, 1), (3, 50), (2, 121), (19, 800), (4, 6000)],
    "small": [(1, 1), (3, 50), (2, 121), (19, 800)],
    "paper": [(1, 7), (2, 130), (5, 240)],
}


@pytest.fixture(scope="module", params=MODEL_SIZES)
def size(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(size) -> SpecHiNet:
    torch.manual_seed(0)
    return build_model(size).eval()


def _n_params(params) -> int:
    return sum(p.numel() for p in params)


def _loss(out, x: torch.Tensor) -> torch.Tensor:
    """Sum of the four outputs' MSE against x (resampled to the auxiliary lengths)."""
    aux_targets = [F.interpolate(x, size=y.shape[-1], mode="area") for y in out[2:]]
    return sum(F.mse_loss(y, t) for y, t in zip(out, [x, x, *aux_targets], strict=True))


def test_paper_parameter_counts_match_spec():
    net = build_model("paper")
    total, encoder = _n_params(net.parameters()), _n_params(net.encoder_parameters())
    assert total == pytest.approx(2.93e6, rel=0.03)
    assert encoder == pytest.approx(1.36e6, rel=0.03)
    assert net.feature_dim == 128


def test_sizes_grow_and_encoder_is_part_of_model():
    counts = []
    for name in MODEL_SIZES:
        net = build_model(name)
        enc_ids = {id(p) for p in net.encoder_parameters()}
        assert enc_ids < {id(p) for p in net.parameters()}
        counts.append(_n_params(net.parameters()))
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_registry_names_and_errors():
    assert MODEL_SIZES == ("tiny", "small", "paper")
    assert ModelConfig() == model_config("small")  # config defaults are the CPU default
    with pytest.raises(ConfigError, match="tiny, small, paper"):
        model_config("huge")
    cfg = dataclasses.replace(model_config("tiny"), dropout=0.0)
    assert build_model(cfg, sfreq=100.0).cfg.dropout == 0.0
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model(32)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="n_heads=3"):
        ModelConfig(base_width=16, n_heads=3)
    with pytest.raises(ConfigError, match="n_heads=16"):  # head width 16/16 = 1 is odd
        ModelConfig(base_width=8, n_heads=16)
    with pytest.raises(ConfigError, match="rotary_max_period_s"):
        ModelConfig(rotary_min_period_s=5.0, rotary_max_period_s=1.0)


def test_bad_input_shape_is_explained():
    net = build_model("tiny")
    with pytest.raises(ValueError, match=r"\(batch, n_chans, n_times\)"):
        net(torch.zeros(19, 800))
    with pytest.raises(ValueError, match="n_times >= 1"):
        net.forward_features(torch.zeros(1, 19, 0))


def test_output_and_feature_shapes(size, model):
    d = model.feature_dim
    for n_chans, n_times in SHAPES[size]:
        x = torch.randn(2, n_chans, n_times)
        with torch.inference_mode():
            out = model(x)
            feats = model.forward_features(x)
        t1, t2 = aux_lengths(n_times)
        assert t1 == math.ceil(n_times / AUX_FACTORS[0]) and t2 == math.ceil(n_times / 15)
        assert out.recon_short.shape == (2, n_chans, n_times)
        assert out.recon_long.shape == (2, n_chans, n_times)
        assert out.aux_up1.shape == (2, n_chans, t1)
        assert out.aux_up2.shape == (2, n_chans, t2)
        assert feats.shape == (2, n_chans, d, math.ceil(n_times / 120))
        assert all(torch.isfinite(y).all() for y in (*out, feats))


def test_every_parameter_gets_a_gradient(size):
    torch.manual_seed(1)
    net = build_model(size).train()
    x = torch.randn(2, 3, 240)
    _loss(net(x), x).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    zero = [n for n, p in net.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"zero gradient for {zero}"


def test_export_with_static_shape(size, model):
    x = torch.randn(1, 4, 360)
    with torch.no_grad():
        exported = torch.export.export(model.encoder, (x,)).module()
        torch.testing.assert_close(exported(x), model.forward_features(x))
        if size != "paper":  # the full graph is the same code at any width; keep it quick
            exported = torch.export.export(model, (x,)).module()
            for got, want in zip(exported(x), model(x), strict=True):
                torch.testing.assert_close(got, want)


def test_permuting_electrodes_permutes_features(model):
    torch.manual_seed(2)
    x = torch.randn(2, 6, 360)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        feats, feats_perm = model.forward_features(x), model.forward_features(x[:, perm])
        recon, recon_perm = model(x).recon_long, model(x[:, perm]).recon_long
    torch.testing.assert_close(feats_perm, feats[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(recon_perm, recon[:, perm], atol=1e-5, rtol=1e-4)


def test_convolutions_stay_inside_each_electrode(model):
    """Changing one electrode changes no other electrode's Down1 skips (pure conv stack)."""
    x = torch.randn(1, 4, 240)
    y = x.clone()
    y[0, 2] += torch.randn(240)
    with torch.no_grad():
        a, b = model.encoder.encode(pad_time(x)), model.encoder.encode(pad_time(y))
    for skip_a, skip_b in ((a.skip1_short, b.skip1_short), (a.skip1_long, b.skip1_long)):
        assert torch.equal(skip_a[[0, 1, 3]], skip_b[[0, 1, 3]])
        assert not torch.equal(skip_a[2], skip_b[2])
    assert not torch.equal(a.features[0], b.features[0])  # attention mixes electrodes


def test_encoder_alone_reproduces_forward_features(model):
    """The decoder can be dropped: a bare encoder with the same weights gives the features."""
    encoder = SpecHiNetEncoder(model.cfg, model.sfreq).eval()
    encoder.load_state_dict(model.encoder.state_dict())
    x = torch.randn(1, 3, 500)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model.forward_features(x))


def test_same_padding_keeps_length():
    assert same_padding(4) == (1, 2)
    assert same_padding(65, 4) == (128, 128)
    assert same_padding(8) == (3, 4)
    block = ConvBlock(2, 3, 65, 4).eval()
    for n_times in (1, 7, 256, 300):
        assert block(torch.randn(5, 2, n_times)).shape == (5, 3, n_times)


def test_rotary_scores_depend_only_on_time_difference():
    omega = rotary_frequencies(8, 2.0, 200.0)
    assert torch.allclose(2 * math.pi / omega[[0, -1]], torch.tensor([2.0, 200.0]))
    q, k = torch.randn(8), torch.randn(8)

    def score(t_q: float, t_k: float) -> torch.Tensor:
        def rot(v, t):
            return apply_rotary(v[None], (t * omega).cos()[None], (t * omega).sin()[None])[0]

        return rot(q, t_q) @ rot(k, t_k)

    torch.testing.assert_close(score(1.3, 0.4), score(11.3, 10.4))
    assert not torch.allclose(score(1.3, 0.4), score(1.3, 0.9))


def test_rotary_time_is_in_seconds():
    for sfreq in (100.0, 200.0):
        net = build_model("tiny", sfreq=sfreq)
        assert net.encoder.attn2.token_period_s == pytest.approx(60 / sfreq)
        assert net.encoder.bottleneck_attn.token_period_s == pytest.approx(120 / sfreq)


def test_tiny_learns_to_reconstruct_sinusoids():
    """A real model: a few Adam steps cut the reconstruction loss of clean sinusoids."""
    torch.manual_seed(3)
    t = torch.arange(480) / 200.0
    freqs = torch.tensor([3.0, 7.0, 11.0])[:, None]
    x = torch.sin(2 * math.pi * freqs * t)[None].repeat(4, 1, 1)
    net = build_model(dataclasses.replace(model_config("tiny"), dropout=0.0)).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = _loss(net(x), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_shapes_on_device(device):
    net = build_model("tiny").to(device).eval()
    x = torch.randn(2, 5, 250, device=device)
    with torch.no_grad():
        out, feats = net(x), net.forward_features(x)
    assert [tuple(y.shape) for y in out] == [(2, 5, 250), (2, 5, 250), (2, 5, 5), (2, 5, 17)]
    assert feats.shape == (2, 5, 16, 3) and feats.device.type == device.type
    assert all(torch.isfinite(y).all() for y in (*out, feats))


@pytest.mark.slow
def test_three_small_encoders_fit_a_single_core_budget():
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoders = [build_model("small").encoder.eval() for _ in range(3)]
        x = torch.randn(1, 19, 800)
        times_ms = []
        with torch.inference_mode():
            for i in range(35):
                start = time.perf_counter()
                for encoder in encoders:
                    encoder(x)
                if i >= 5:  # warm-up
                    times_ms.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(n_threads)
    assert statistics.median(times_ms) < 50.0
