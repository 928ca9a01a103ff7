"""Checkpoints: bit-exact round trips through safetensors + TOML + JSON, never pickle."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from rtmoe import checkpoint as ck
from rtmoe.config import Config, config_hash
from rtmoe.models.registry import build_model, load_expert, model_config


def _tiny_cfg() -> Config:
    return Config().replace(model=model_config("tiny"), pretrain={"seed": 7})


def _trained_tiny(steps: int = 2):
    """A tiny SpecHi-Net and its AdamW after a few steps (non-trivial moments and BN stats)."""
    torch.manual_seed(0)
    model = build_model("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(2, 3, 240)
    for _ in range(steps):
        opt.zero_grad()
        model(x).recon_short.square().mean().backward()
        opt.step()
    return model, opt, x


@pytest.fixture(autouse=True)
def _no_pickle(monkeypatch):
    """Any torch.load / torch.save during a test is a failure."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle-based torch.load/torch.save must never be used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch, "save", refuse)


def test_round_trip_bit_exact(tmp_path):
    model, opt, x = _trained_tiny()
    cfg = _tiny_cfg()
    tensors, spec = ck.optimizer_state(opt)
    path = ck.save_checkpoint(
        tmp_path / "c",
        model,
        cfg,
        kind=ck.EXPERT_KIND,
        extra_state={**tensors, **ck.rng_state()},
        meta={"expert": 1, "step": 2, "optimizer": spec},
    )
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [ck.WEIGHTS_FILE, ck.STATE_FILE, ck.CONFIG_FILE, ck.META_FILE]
    )
    loaded = ck.load_checkpoint(path)
    assert loaded.config == cfg
    expected = model.state_dict()
    assert loaded.weights.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded.weights[key].dtype == value.dtype
        assert torch.equal(loaded.weights[key], value), key
    meta = loaded.meta
    assert meta["kind"] == ck.EXPERT_KIND and meta["expert"] == 1 and meta["step"] == 2
    assert meta["config_hash"] == config_hash(cfg)
    assert meta["torch_version"] == torch.__version__
    digest = hashlib.sha256((path / ck.WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["weights_sha256"] == digest
    assert meta["n_parameters"] == sum(p.numel() for p in model.parameters())

    rebuilt = load_expert(path, model_name="tiny")
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x).recon_long, model(x).recon_long)


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    model, opt, x = _trained_tiny()
    tensors, spec = ck.optimizer_state(opt)
    path = ck.save_checkpoint(
        tmp_path / "c", model, _tiny_cfg(), kind="t", extra_state=tensors, meta={"opt": spec}
    )
    loaded = ck.load_checkpoint(path)
    twin = build_model("tiny")
    ck.load_weights(twin, loaded)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=5.0)  # hyper-parameters come back
    ck.load_optimizer_state(twin_opt, loaded.state, loaded.meta["opt"])

    a, b = opt.state_dict(), twin_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert isinstance(b["param_groups"][0]["betas"], tuple)
    for index, entries in a["state"].items():
        for name, value in entries.items():
            assert torch.equal(b["state"][index][name], value), (index, name)
    # One more identical step on both gives identical weights.
    for m, o in ((model, opt), (twin, twin_opt)):
        torch.manual_seed(3)
        o.zero_grad()
        m(x).recon_short.square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_rng_state_round_trip():
    state = ck.rng_state(prefix="rank0.")
    first = torch.rand(5)
    torch.rand(3)
    ck.set_rng_state(state, prefix="rank0.")
    assert torch.equal(torch.rand(5), first)


def test_kind_and_size_mismatch_name_both(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    path = ck.save_checkpoint(tmp_path / "c", model, _tiny_cfg(), kind=ck.EXPERT_KIND)
    with pytest.raises(ck.CheckpointError, match=r"'spechinet-expert'.*'specmoe'"):
        load_expert(path, kind="specmoe")
    with pytest.raises(ck.CheckpointError, match="size 'tiny', not 'small'"):
        load_expert(path, model_name="small")
    small = build_model("small")
    with pytest.raises(ck.CheckpointError, match=r"size 'tiny'\).*size 'small'.*shape mismatch"):
        ck.load_weights(small, ck.load_checkpoint(path), model_name="small")


def test_corrupt_weights_detected(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    path = ck.save_checkpoint(tmp_path / "c", model, _tiny_cfg(), kind="t")
    blob = bytearray((path / ck.WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (path / ck.WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ck.CheckpointError, match="sha256"):
        ck.load_checkpoint(path)


def test_failed_save_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    model, _, _ = _trained_tiny(steps=0)
    cfg = _tiny_cfg()
    target = tmp_path / "c"
    real_save_config, disk_full = ck.save_config, [True]

    def flaky_save_config(config, path):
        if disk_full[0]:
            raise OSError("disk full")
        real_save_config(config, path)

    monkeypatch.setattr(ck, "save_config", flaky_save_config)
    # A failure while writing a new checkpoint leaves nothing at all behind.
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(target, model, cfg, kind="t", meta={"v": 1})
    assert list(tmp_path.iterdir()) == []
    disk_full[0] = False
    ck.save_checkpoint(target, model, cfg, kind="t", meta={"v": 1})
    # A failure while replacing it keeps the old one, readable and unchanged.
    disk_full[0] = True
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(target, model, cfg, kind="t", meta={"v": 2})
    assert ck.load_checkpoint(target).meta["v"] == 1
    disk_full[0] = False
    ck.save_checkpoint(target, model, cfg, kind="t", meta={"v": 2})
    assert ck.load_checkpoint(target).meta["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_latest_pointer_and_errors(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    run = tmp_path / "run"
    ck.save_checkpoint(run / "checkpoints" / "a", model, _tiny_cfg(), kind="t", meta={"i": 0})
    ck.save_checkpoint(run / "checkpoints" / "b", model, _tiny_cfg(), kind="t", meta={"i": 1})
    ck.write_latest(run, "checkpoints/b")
    assert ck.load_checkpoint(run).meta["i"] == 1
    with pytest.raises(ck.CheckpointError, match=r"neither meta\.json nor a LATEST"):
        ck.load_checkpoint(tmp_path)
    with pytest.raises(ck.CheckpointError, match="clash"):
        ck.save_checkpoint(tmp_path / "x", model, _tiny_cfg(), kind="t", meta={"kind": "y"})


def test_meta_is_plain_json_and_config_is_toml(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    path = ck.save_checkpoint(tmp_path / "c", model, _tiny_cfg(), kind="t")
    meta = json.loads((path / ck.META_FILE).read_text())
    assert {"rtmoe_version", "python_version", "created_utc", "git_commit"} <= meta.keys()
    assert 'name = "tiny"' in (path / ck.CONFIG_FILE).read_text()


def test_meta_holds_no_machine_path_and_checkpoints_are_named_by_content(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    for bad in ("/home/me/runs/e0", "C:\\runs\\e0", ["ok", {"deep": "/tmp/x"}]):
        with pytest.raises(ck.CheckpointError, match="absolute path"):
            ck.save_checkpoint(tmp_path / "x", model, _tiny_cfg(), kind="t", meta={"p": bad})
    assert not (tmp_path / "x").exists()
    ck.save_checkpoint(tmp_path / "x", model, _tiny_cfg(), kind="t", meta={"p": "runs/e0"})
    run = tmp_path / "run"
    ck.save_checkpoint(run / "checkpoints" / "s1", model, _tiny_cfg(), kind="t")
    ck.write_latest(run, "checkpoints/s1")
    ident = ck.checkpoint_identity(run)
    meta = ck.load_checkpoint(run).meta
    assert ident == {
        "name": "run/checkpoints/s1",
        "kind": "t",
        "config_hash": meta["config_hash"],
        "weights_sha256": meta["weights_sha256"],
    }
    assert ck.checkpoint_identity(tmp_path / "x")["name"] == "x"


# -- files verified: config hash, missing hashes, unparsable files (issue 12 item 7) --------


def test_edited_config_is_refused_though_shapes_still_fit(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    path = ck.save_checkpoint(tmp_path / "c", model, _tiny_cfg(), kind="t")
    toml = path / ck.CONFIG_FILE
    toml.write_text(toml.read_text().replace("unit_uv = 100.0", "unit_uv = 1.0"))
    with pytest.raises(ck.CheckpointError, match=r"config\.toml does not match the config_hash"):
        ck.load_checkpoint(path)


def test_missing_hashes_and_unparsable_files_are_one_line_errors(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    path = ck.save_checkpoint(tmp_path / "c", model, _tiny_cfg(), kind="t")
    meta_path, toml = path / ck.META_FILE, path / ck.CONFIG_FILE
    good_meta, good_toml = meta_path.read_text(), toml.read_text()
    cases = {
        "no config_hash": lambda: meta_path.write_text(
            json.dumps({k: v for k, v in json.loads(good_meta).items() if k != "config_hash"})
        ),
        "no sha256": lambda: meta_path.write_text(
            json.dumps({k: v for k, v in json.loads(good_meta).items() if k != "weights_sha256"})
        ),
        "not readable JSON": lambda: meta_path.write_text(good_meta[:-5]),
        "not readable TOML": lambda: toml.write_text(good_toml + "\n[[[oops\n"),
    }
    for expected, damage in cases.items():
        meta_path.write_text(good_meta)
        toml.write_text(good_toml)
        damage()
        with pytest.raises(ck.CheckpointError, match=expected) as info:
            ck.load_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message and "re" in message
        assert info.value.__cause__ is None  # no chained traceback


def test_bad_safetensors_with_a_matching_sha256_is_a_checkpoint_error(tmp_path):
    model, _, _ = _trained_tiny(steps=0)
    path = ck.save_checkpoint(tmp_path / "c", model, _tiny_cfg(), kind="t")
    blob = b"\xff" * 64  # not safetensors; meta updated so that only the parse can fail
    (path / ck.WEIGHTS_FILE).write_bytes(blob)
    meta = json.loads((path / ck.META_FILE).read_text())
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (path / ck.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match="not a valid safetensors file"):
        ck.load_checkpoint(path)


def test_shipped_default_model_verifies():
    from rtmoe.models.shipped import shipped_path

    loaded = ck.load_checkpoint(shipped_path("default"))
    # Hashed as written: the check holds even after rtmoe adds config fields (with
    # defaults), which change the hash of the resolved tree but not of the saved file.
    assert loaded.meta["config_hash"] == ck.file_config_hash(loaded.path / ck.CONFIG_FILE)


# -- the TensorRT engine cache is verified before anything unpickles it --------------------


class _FakeTorchTensorRT:
    """Stands in for torch_tensorrt (not installed on CPU machines): records loads."""

    def __init__(self):
        self.loaded = []

    def load(self, path):
        self.loaded.append(path)
        return torch.export.ExportedProgram.__new__(torch.export.ExportedProgram)


def test_tensorrt_cache_loads_only_what_was_recorded_at_build(tmp_path, monkeypatch):
    from rtmoe.engine.base import EngineError
    from rtmoe.engine.tensorrt import ENGINE_FILE, HASH_FILE, load_cached, record_artifact

    monkeypatch.setattr(torch.export.ExportedProgram, "module", lambda self: "module")
    path = tmp_path / ENGINE_FILE
    path.write_bytes(b"PK\x03\x04 compiled engine" * 100)
    record_artifact(path)
    fake = _FakeTorchTensorRT()
    assert load_cached(fake, path) == "module" and fake.loaded == [str(path)]

    good = path.read_bytes()
    refusals = {
        "does not match the sha256": lambda: path.write_bytes(good[:-1] + b"X"),
        "writable by group or others": lambda: path.chmod(0o666),
        f"no readable {HASH_FILE}": lambda: (tmp_path / HASH_FILE).unlink(),
    }
    for expected, tamper in refusals.items():
        fake.loaded.clear()
        tamper()
        with pytest.raises(EngineError, match=expected) as info:
            load_cached(fake, path)
        assert str(path) in str(info.value) and "rebuilt" in str(info.value)
        assert fake.loaded == []  # refused before torch_tensorrt.load saw the file
        path.write_bytes(good)
        record_artifact(path)


def test_unverifiable_tensorrt_entry_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """The engine builder discards an entry whose engine fails verification and rebuilds."""
    import rtmoe.engine.build as build
    from rtmoe.engine.base import EngineError
    from rtmoe.engine.tensorrt import ENGINE_FILE, record_artifact, verify_artifact

    events = []

    class FakeEngine:
        def __init__(self, folder):
            path = folder / ENGINE_FILE
            if path.exists():
                verify_artifact(path)  # what TensorRTEngine does through load_cached
                events.append("load")
            else:
                path.write_bytes(b"fresh engine")
                record_artifact(path)
                events.append("build")

    monkeypatch.setattr(build, "_factory", lambda *a, **k: (FakeEngine, {"trt": "0"}))
    monkeypatch.setattr(build, "check_parity", lambda *a, **k: 1.0)
    monkeypatch.setattr(build, "timed", lambda f, *a: (f(*a), 0.0))
    model = build_model("tiny")
    module = build.DecodeModule(model)
    x = torch.zeros(1, 3, 240)
    psd = torch.zeros(1, 3, 9)
    args = dict(fp16=False, softmax=True, n_threads=None, atol=1e-4, min_cosine=0.99)
    build_one = build._build_checked
    build_one("tensorrt", module, x, psd, tmp_path, [], **args)
    build_one("tensorrt", module, x, psd, tmp_path, [], **args)
    assert events == ["build", "load"]
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    (entry / ENGINE_FILE).write_bytes(b"tampered engine")
    engine = build_one("tensorrt", module, x, psd, tmp_path, [], **args)
    assert events == ["build", "load", "build"]
    assert "discarded and rebuilt" in engine.reason and "sha256" in engine.reason
    with pytest.raises(EngineError):
        verify_artifact(tmp_path / "nowhere" / ENGINE_FILE)


def test_the_format_imports_no_model():
    # rtmoe.models imports rtmoe.checkpoint (to load weights); never the other way round,
    # not even lazily inside a function: no import cycle between the two.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ck))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("rtmoe.models")]
