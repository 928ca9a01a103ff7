"""The one config tree from the command line: ``--config FILE``, ``--set SECTION.FIELD=VALUE``
(rtmoe.config.resolve_config / config_from_args), their precedence and their errors."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib

import pytest

from rtmoe.config import (
    PRECEDENCE,
    Config,
    ConfigError,
    CorpusConfig,
    PretrainConfig,
    RuntimeConfig,
    add_config_arguments,
    apply_overrides,
    config_from_args,
    format_config,
    load_config,
    parse_override,
    resolve_config,
    to_dict,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runtime.hop_ms=50", ("runtime", "hop_ms", 50)),
        ("runtime.rate_tolerance=0.5", ("runtime", "rate_tolerance", 0.5)),
        ("runtime.allow_remote=true", ("runtime", "allow_remote", True)),
        ("runtime.device=cuda:0", ("runtime", "device", "cuda:0")),  # no quotes needed
        ('runtime.device="cpu"', ("runtime", "device", "cpu")),
        ("signal.l_freq=none", ("signal", "l_freq", None)),
        ('corpus.channels=["C3", "C4"]', ("corpus", "channels", ["C3", "C4"])),
        (" runtime.hop_ms = 20 ", ("runtime", "hop_ms", 20)),
    ],
)
def test_parse_override_reads_toml_literals(text, expected):
    assert parse_override(text) == expected


def test_overrides_replace_fields_with_their_types():
    cfg = apply_overrides(
        Config(),
        [
            "runtime.rate_tolerance=5",
            "runtime.max_age_s=2",
            "runtime.device=cuda:1",
            "signal.notch_freq=none",
            'corpus.channels=["C3", "C4"]',
            "runtime.hop_ms=40",
            "runtime.hop_ms=60",  # the last of a key wins
        ],
    )
    assert cfg.runtime.rate_tolerance == 5.0 and isinstance(cfg.runtime.rate_tolerance, float)
    assert cfg.runtime.max_age_s == 2.0 and cfg.runtime.device == "cuda:1"
    assert cfg.runtime.hop_ms == 60.0
    assert cfg.signal.notch_freq is None
    assert cfg.corpus.channels == ("C3", "C4")
    assert apply_overrides(Config(), []) == Config()


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("runtime.hop_ms=fast", ["--set runtime.hop_ms=fast", "takes a number", '"fast"']),
        ("runtime.allow_remote=1", ["runtime.allow_remote takes true or false, not 1"]),
        ("runtime.timing_records=1.5", ["runtime.timing_records takes an integer, not 1.5"]),
        ("runtime.wait_s=soon", ["runtime.wait_s takes a number or none"]),
        ("mask.band_probs=[0.5, 0.5]", ["mask.band_probs takes a list of 4 numbers"]),
        ("corpus.channels=[1]", ["corpus.channels[0] takes a string, not 1"]),
        ("runtime.hopms=50", ["[runtime] has no field 'hopms'", "hop_ms, stall_timeout_ms"]),
        ("runtim.hop_ms=50", ["unknown section 'runtim'", "signal, corpus", "runtime"]),
        ("runtime.hop_ms", ["not SECTION.FIELD=VALUE", "--set runtime.hop_ms=50"]),
        ("hop_ms=50", ["not SECTION.FIELD=VALUE"]),
        ("runtime.hop_ms=-5", ["--set runtime.hop_ms=-5: runtime.hop_ms=-5.0 must be > 0"]),
        ("signal.l_freq=90", ["signal.l_freq=90.0 must be below signal.h_freq=75.0"]),
    ],
)
def test_bad_overrides_name_the_key_the_value_and_the_fix(text, pieces):
    with pytest.raises(ConfigError) as err:
        resolve_config(overrides=[text])
    for piece in pieces:
        assert piece in str(err.value), (piece, str(err.value))


def test_precedence_defaults_file_flags_set(tmp_path):
    assert PRECEDENCE == ("base", "--config FILE", "command-line flags", "--set")
    path = tmp_path / "c.toml"
    path.write_text(
        "[runtime]\nhop_ms = 50\nmax_age_s = 3.0\nwait_s = 4.0\nengine = 'torch'\n"
        "[signal]\nh_freq = 40.0\n"
    )
    cfg = resolve_config(
        config_file=path,
        flags={"runtime.hop_ms": 70.0, "runtime.max_age_s": 5.0, "signal.l_freq": None},
        overrides=["runtime.max_age_s=7"],
    )
    assert cfg.runtime.hop_ms == 70.0  # flag over file
    assert cfg.runtime.max_age_s == 7.0  # --set over flag
    assert cfg.runtime.wait_s == 4.0 and cfg.runtime.engine == "torch"  # file over defaults
    assert cfg.runtime.device == "auto"
    assert cfg.signal.l_freq is None  # a flag's None sets None (--l-freq none)
    assert cfg.signal.h_freq == 40.0 and cfg.signal.notch_freq == Config().signal.notch_freq
    # The base (e.g. a recipe) is below the file: fields the file does not name stay.
    base = Config().replace(runtime={"stall_timeout_ms": 900.0, "hop_ms": 10.0})
    cfg = resolve_config(base=base, config_file=path)
    assert cfg.runtime.stall_timeout_ms == 900.0 and cfg.runtime.hop_ms == 50.0


def test_config_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[runtime]\nhop_ms = "fast"\n')
    with pytest.raises(ConfigError, match=r"c.toml: runtime.hop_ms takes a number, not \"fast\""):
        resolve_config(config_file=path)
    with pytest.raises(ConfigError, match=r"c.toml.*: runtime.hop_ms takes a number"):
        load_config(path)  # the plain loader checks types too (no raw TypeError)
    path.write_text("[runtime]\nhop_ms = -5\n")
    with pytest.raises(ConfigError, match=r"--config .*c.toml: runtime.hop_ms=-5.0 must be > 0"):
        resolve_config(config_file=path)
    path.write_text("[runtim]\nhop_ms = 5\n")
    with pytest.raises(ConfigError, match="unknown section 'runtim'"):
        resolve_config(config_file=path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(config_file=tmp_path / "missing.toml")


def test_a_section_is_checked_when_it_is_made():
    with pytest.raises(ConfigError, match=r"^runtime.hop_ms=-5.0 must be > 0"):
        RuntimeConfig(hop_ms=-5)
    with pytest.raises(ConfigError, match=r'^runtime.hop_ms takes a number, not "fast"'):
        RuntimeConfig(hop_ms="fast")
    with pytest.raises(ConfigError, match=r"^runtime.max_buflen_s takes an integer, not 1.5"):
        RuntimeConfig(max_buflen_s=1.5)
    with pytest.raises(ConfigError, match=r"^pretrain.min_lr=.* exceeds pretrain.lr"):
        dataclasses.replace(PretrainConfig(), min_lr=1.0)
    with pytest.raises(ConfigError, match=r"^finetune.augment_spectral_mask=1.0 must lie in"):
        Config().replace(finetune={"augment_spectral_mask": 1.0})
    with pytest.raises(ConfigError, match=r"^Config.runtime must be a RuntimeConfig"):
        Config(runtime={"hop_ms": 50})
    cfg = RuntimeConfig(hop_ms=50, wait_s=None)  # ints become floats, as from TOML
    assert type(cfg.hop_ms) is float and cfg.wait_s is None
    assert CorpusConfig(channels=["C3", "C4"]).channels == ("C3", "C4")  # lists become tuples


def test_sources_are_checked_together_not_one_by_one(tmp_path):
    """A file raising pretrain.lr and a flag raising min_lr above the old lr: valid once
    both apply, so no source is refused for the state between them."""
    lr = PretrainConfig().lr
    path = tmp_path / "c.toml"
    path.write_text(f"[pretrain]\nlr = {lr * 10}\n")
    cfg = resolve_config(config_file=path, flags={"pretrain.min_lr": lr * 2})
    assert cfg.pretrain.lr == lr * 10 and cfg.pretrain.min_lr == lr * 2
    with pytest.raises(
        ConfigError, match=r"^--set pretrain.min_lr=1.0, --config .*c.toml: pretrain.min_lr=1.0 exc"
    ):
        resolve_config(config_file=path, overrides=["pretrain.min_lr=1.0"])


def test_a_flag_error_names_the_flag():
    with pytest.raises(ConfigError, match=r"^--hop-ms -5.0: runtime.hop_ms=-5.0 must be > 0"):
        resolve_config(flags={"runtime.hop_ms": -5.0}, flag_names={"runtime.hop_ms": "--hop-ms"})


def test_set_outside_the_command_sections_is_refused():
    with pytest.raises(ConfigError, match=r"rtmoe stream does not read \[signal\]"):
        resolve_config(
            overrides=["signal.sfreq=100"], sections=("runtime",), command="rtmoe stream"
        )


def test_format_config_round_trips(tmp_path):
    cfg = apply_overrides(Config(), ["signal.l_freq=none", "runtime.wait_s=3"])
    path = tmp_path / "resolved.toml"
    path.write_text(format_config(cfg))
    assert load_config(path) == cfg
    assert format_config(cfg, ["runtime"]).startswith("[runtime]\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--hop-ms", type=float, default=100.0, help="hop")
    parser.add_argument("--allow-remote", action="store_true")
    add_config_arguments(
        parser,
        sections=("runtime",),
        flags={"hop_ms": "runtime.hop_ms", "allow_remote": "runtime.allow_remote"},
    )
    return parser


def test_config_from_args_writes_the_resolved_values_back(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[runtime]\nhop_ms = 50\nallow_remote = true\n")
    args = _parser().parse_args(["--config", str(path)])
    cfg = config_from_args(args, command="x")
    assert cfg.runtime.hop_ms == 50.0 and args.hop_ms == 50.0  # the file beats a default
    assert args.allow_remote is True
    args = _parser().parse_args(["--config", str(path), "--hop-ms", "70"])
    assert config_from_args(args).runtime.hop_ms == 70.0
    args = _parser().parse_args(["--hop-ms", "70", "--set", "runtime.hop_ms=80"])
    assert config_from_args(args).runtime.hop_ms == 80.0 and args.hop_ms == 80.0
    args = _parser().parse_args([])
    assert config_from_args(args) == Config() and args.hop_ms == 100.0
    assert "[runtime.hop_ms, default 100.0]" in _parser().format_help()
    args = _parser().parse_args(["--set", "runtime.hop_ms=20", "--print-config"])
    with pytest.raises(SystemExit) as done:
        config_from_args(args, command="x")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "hop_ms = 20.0" in out and "[signal]" not in out


#: Commands that read no part of the tree: profiles lists and removes folders; play's
#: options (stream name, chunk, speed) are the player's own, not decoder settings;
#: sys-info prints versions; view only subscribes to a running decoder; config show is
#: the printing itself (tested below).
NO_SETTINGS = {"profiles", "play", "sys-info", "view", "config"}


def test_every_command_takes_config_set_and_print_config():
    from importlib.metadata import entry_points

    from rtmoe.cli import build_parser

    names = sorted(ep.name for ep in entry_points(group="rtmoe.commands"))
    assert {"stream", "demo", "finetune", "pretrain", "prepare", "evaluate"} <= set(names)
    for name in sorted(set(names) - NO_SETTINGS):
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        options = {opt for a in sub.choices[name]._actions for opt in a.option_strings}
        assert {"--config", "--set", "--print-config"} <= options, name


def test_finetune_resolves_recipe_file_options_and_set(tmp_path, capsys):
    from rtmoe.cli import main
    from rtmoe.offline.finetune import recipe_path

    recipe = load_config(recipe_path())
    path = tmp_path / "mine.toml"
    path.write_text("[finetune]\nepochs = 9\nplateau_patience = 4\nlr = 0.01\n")
    argv = ["finetune", "--dataset", "SelfRegulationSCP1", "--out", str(tmp_path / "m")]
    argv += ["--config", str(path), "--lr", "0.002", "--h-freq", "none"]
    argv += ["--set", "finetune.class_weighted=false", "--set", "finetune.lr=0.003"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--print-config"])
    assert done.value.code == 0
    out = tomllib.loads(capsys.readouterr().out)
    ft = out["finetune"]
    assert (ft["epochs"], ft["plateau_patience"]) == (9, 4)  # the file over the recipe
    assert ft["lr"] == 0.003 and ft["class_weighted"] is False  # --set over the flag
    assert ft["plateau_factor"] == recipe.finetune.plateau_factor  # the rest: the recipe
    assert ft["freeze_epochs"] == 0  # fresh experts: nothing to freeze
    assert out["signal"]["h_freq"] == "none"
    assert set(out) == {"signal", "model", "moe", "finetune"}


def test_config_show_prints_the_resolved_tree(tmp_path, capsys):
    from rtmoe.cli import main

    path = tmp_path / "c.toml"
    path.write_text("[runtime]\nhop_ms = 50.0\n[signal]\nl_freq = 'none'\n")
    argv = ["config", "show", "--config", str(path), "--set", "runtime.max_age_s=2"]
    assert main(argv) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert set(shown) == set(to_dict(Config()))  # the whole tree
    assert shown["runtime"]["hop_ms"] == 50.0 and shown["runtime"]["max_age_s"] == 2.0
    assert shown["signal"]["l_freq"] == "none"
    assert main([*argv, "--for", "stream"]) == 0
    assert set(tomllib.loads(capsys.readouterr().out)) == {"runtime"}
    assert main(["config", "show", "--for", "stream", "--set", "signal.sfreq=100"]) == 2
    assert "rtmoe stream does not read [signal]" in capsys.readouterr().err
    assert main(["config", "show", "--set", "runtime.hop_ms=fast"]) == 2
    assert "runtime.hop_ms takes a number" in capsys.readouterr().err
    assert main(["config", "show", "--for", "play"]) == 2
    assert "reads no settings" in capsys.readouterr().err
