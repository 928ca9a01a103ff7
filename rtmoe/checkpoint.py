"""Checkpoints: safetensors weights + TOML config + JSON provenance; nothing is unpickled.

A checkpoint is a directory::

    model.safetensors   the model's state_dict (parameters and buffers)
    state.safetensors   optional extra tensors (optimizer moments, RNG states, ...)
    config.toml         the resolved config tree (rtmoe.config.save_config)
    meta.json           kind, versions, config hash, sha256 of both tensor files, created
                        time, git commit, and whatever the caller passed as ``meta``

It is written into a hidden sibling directory and renamed into place, so a crash never
leaves a half-written checkpoint under the target name. A training run keeps several
checkpoints below one folder and names the newest in a ``LATEST`` file (replaced
atomically); :func:`load_checkpoint` follows that file, so the run folder itself can be
passed wherever a checkpoint is expected.

The format knows no model: building a model from a checkpoint is the models' job
(``rtmoe.models.registry.load_expert``, ``rtmoe.models.specmoe.load_specmoe``), so
``rtmoe.models`` imports this module and never the other way round.

Optimizer and RNG states go through the same two formats: :func:`optimizer_state` splits
``optimizer.state_dict()`` into tensors (for ``state.safetensors``) and JSON (for
``meta.json``), and :func:`load_optimizer_state` reverses it bit-exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from rtmoe import __version__
from rtmoe.config import Config, config_hash, load_config, save_config
from rtmoe.errors import UserError

#: The kind written by ``rtmoe pretrain``: one SpecHi-Net with its decoder.
EXPERT_KIND = "spechinet-expert"

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.toml"
META_FILE = "meta.json"
#: Name of the pointer file (one line: a sub-directory name) inside a run folder.
LATEST_FILE = "LATEST"

_OPT_PREFIX = "optimizer.state."
_RNG_CPU = "rng.torch_cpu"
_RNG_CUDA = "rng.torch_cuda"


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint; every tensor is on the CPU.

    Attributes
    ----------
    path : Path
        The checkpoint directory (after following a ``LATEST`` pointer).
    config : Config
        The resolved config tree the model was built and trained with.
    meta : dict
        Provenance and caller metadata from ``meta.json``.
    weights : dict of str to Tensor
        The model's state_dict.
    state : dict of str to Tensor
        Extra tensors (empty when none were saved).
    """

    path: Path
    config: Config
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config: Config,
    *,
    kind: str,
    extra_state: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights, ``config`` and provenance to ``directory`` atomically.

    Parameters
    ----------
    directory : str or Path
        Target directory; an existing checkpoint there is replaced.
    model : torch.nn.Module
        Its ``state_dict()`` is saved (a DDP wrapper is unwrapped).
    config : Config
        The resolved config tree.
    kind : str
        What the weights are, e.g. :data:`EXPERT_KIND`; checked by the loaders
        (``rtmoe.models.registry.load_expert``, ``rtmoe.models.specmoe.load_specmoe``).
    extra_state : mapping of str to Tensor, optional
        Extra tensors, e.g. from :func:`optimizer_state` and :func:`rng_state`.
    meta : mapping, optional
        JSON-serialisable caller metadata (expert index, step, ...). Keys must not clash
        with the provenance keys written here, and no value may be an absolute path
        (:func:`absolute_paths`; name other checkpoints by :func:`checkpoint_identity`).

    Returns
    -------
    Path
        The checkpoint directory.
    """
    directory = Path(directory)
    model = getattr(model, "module", model)  # DistributedDataParallel wrapper
    weights = _cpu_copy(model.state_dict())
    state = _cpu_copy(extra_state or {})
    weights_blob = save_safetensors_bytes(weights)
    state_blob = save_safetensors_bytes(state) if state else None
    provenance = {
        "kind": kind,
        "model_name": config.model.name,
        "rtmoe_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "config_hash": config_hash(config),
        "weights_sha256": hashlib.sha256(weights_blob).hexdigest(),
        "state_sha256": hashlib.sha256(state_blob).hexdigest() if state_blob else None,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    clash = sorted(set(provenance) & set(meta or {}))
    if clash:
        raise CheckpointError(
            f"meta keys {clash} clash with provenance keys written by save_checkpoint; rename them"
        )
    local = absolute_paths(dict(meta or {}))
    if local:
        raise CheckpointError(
            f"{', '.join(local[:3])}: a checkpoint's meta holds no absolute path (it is "
            "copied to other machines, shipped in the package); store a name, a path "
            "relative to the checkpoint, or a content hash (checkpoint_identity)"
        )
    with _atomic_directory(directory) as tmp:
        _write_synced(tmp / WEIGHTS_FILE, weights_blob)
        if state_blob is not None:
            _write_synced(tmp / STATE_FILE, state_blob)
        save_config(config, tmp / CONFIG_FILE)
        text = json.dumps({**provenance, **(meta or {})}, indent=2, sort_keys=True)
        _write_synced(tmp / META_FILE, text.encode())
    return directory


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its content hashes.

    ``config.toml`` must match ``meta.json``'s ``config_hash`` and each tensor file its
    sha256; a mismatch, a missing hash or an unparsable file is a :class:`CheckpointError`
    naming the file and the fix.

    ``directory`` may also be a run folder holding a ``LATEST`` pointer.
    """
    directory = resolve_checkpoint(directory)
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{meta_path} is not readable JSON ({err}); the checkpoint is corrupt: restore "
            "it or re-save it (rtmoe.checkpoint.save_checkpoint / rebuild the model)"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} does not hold a JSON object; re-save the checkpoint")
    _verify_config(directory / CONFIG_FILE, meta.get("config_hash"))
    config = load_config(directory / CONFIG_FILE)
    weights = _read_verified(directory / WEIGHTS_FILE, meta.get("weights_sha256"))
    state_path = directory / STATE_FILE
    state = _read_verified(state_path, meta.get("state_sha256")) if state_path.exists() else {}
    return Checkpoint(directory, config, meta, weights, state)


def resolve_checkpoint(directory: str | Path) -> Path:
    """The checkpoint directory itself, or the one a run folder's ``LATEST`` names."""
    directory = Path(directory)
    if (directory / META_FILE).exists():
        return directory
    pointer = directory / LATEST_FILE
    if pointer.exists():
        return resolve_checkpoint(directory / pointer.read_text().strip())
    raise CheckpointError(
        f"checkpoint directory {directory} holds neither {META_FILE} nor a {LATEST_FILE} "
        "pointer; pass the folder written by save_checkpoint or by `rtmoe pretrain --out`"
    )


def write_latest(run_dir: str | Path, name: str) -> None:
    """Atomically point ``run_dir/LATEST`` at the sub-directory ``name``."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{LATEST_FILE}.tmp-{os.getpid()}"
    _write_synced(tmp, f"{name}\n".encode())
    os.replace(tmp, run_dir / LATEST_FILE)


def checkpoint_identity(directory: str | Path) -> dict[str, Any]:
    """What names a checkpoint in another one's provenance, without a machine path.

    Returns ``name`` (the checkpoint folder's name, after following ``LATEST``: e.g.
    ``step-00000120``, or the run folder's name joined to it), ``kind``,
    ``config_hash`` and ``weights_sha256`` from its ``meta.json``: the hashes identify
    the content wherever it is copied.
    """
    given = Path(directory)
    resolved = resolve_checkpoint(given)
    meta = json.loads((resolved / META_FILE).read_text())
    name = given.resolve().name
    if resolved.resolve() != given.resolve():
        name = f"{name}/{resolved.resolve().relative_to(given.resolve()).as_posix()}"
    return {
        "name": name,
        "kind": meta.get("kind"),
        "config_hash": meta.get("config_hash"),
        "weights_sha256": meta.get("weights_sha256"),
    }


def absolute_paths(meta: Any, key: str = "meta") -> list[str]:
    """Entries of a JSON-like tree whose string value is an absolute filesystem path.

    Returns ``key[sub][...]=value`` descriptions; ``save_checkpoint`` refuses a ``meta``
    with any, because a checkpoint travels (the shipped models are checkpoints) and a
    path of the machine that wrote it means nothing, or the wrong thing, elsewhere.
    """
    if isinstance(meta, str):
        posix = meta.startswith("/") and len(meta) > 1
        windows = len(meta) > 2 and meta[0].isalpha() and meta[1:3] in (":\\", ":/")
        return [f"{key}={meta!r}"] if posix or windows or meta.startswith("\\\\") else []
    if isinstance(meta, Mapping):
        return [p for k, v in meta.items() for p in absolute_paths(v, f"{key}[{k!r}]")]
    if isinstance(meta, list | tuple):
        return [p for i, v in enumerate(meta) for p in absolute_paths(v, f"{key}[{i}]")]
    return []


def load_weights(
    model: torch.nn.Module, checkpoint: Checkpoint, *, model_name: str | None = None
) -> None:
    """Copy a checkpoint's weights into ``model`` strictly (same keys, same shapes).

    ``model_name`` names the model's size in the error raised on a mismatch.
    """
    model = getattr(model, "module", model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(checkpoint.weights))
    unexpected = sorted(set(checkpoint.weights) - set(expected))
    reshaped = sorted(
        f"{k} {tuple(checkpoint.weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in checkpoint.weights and checkpoint.weights[k].shape != v.shape
    )
    if missing or unexpected or reshaped:
        ours = f"size {model_name!r}" if model_name else type(model).__name__
        raise CheckpointError(
            f"checkpoint {checkpoint.path} ({checkpoint.kind!r}, size "
            f"{checkpoint.config.model.name!r}) does not fit the model ({ours}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(reshaped)} shape mismatches {reshaped[:3]}; build the "
            "model with the checkpoint's config (rtmoe.models.registry.load_expert, "
            "rtmoe.models.specmoe.load_specmoe)"
        )
    model.load_state_dict(checkpoint.weights, strict=True)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-serialisable rest.

    Returns
    -------
    tensors : dict of str to Tensor
        ``optimizer.state.<param index>.<name>`` for every tensor in the per-parameter state.
    spec : dict
        ``param_groups`` (hyper-parameters, parameter indices) and non-tensor state values.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPT_PREFIX}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = json.loads(json.dumps(sd["param_groups"]))
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], spec: dict
) -> None:
    """Restore what :func:`optimizer_state` split; ``tensors`` may hold other keys too."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPT_PREFIX):
            index, name = key[len(_OPT_PREFIX) :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entries in spec["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for saved, current in zip(spec["param_groups"], optimizer.param_groups, strict=True):
        # JSON turned tuples (e.g. AdamW betas) into lists; give them back their type.
        groups.append(
            {k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(
    device: str | torch.device | None = None, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The torch CPU generator's state and, for a CUDA ``device``, that device's.

    Returns uint8 tensors keyed ``<prefix>rng.torch_cpu`` and ``<prefix>rng.torch_cuda``.
    """
    tensors = {f"{prefix}{_RNG_CPU}": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        tensors[f"{prefix}{_RNG_CUDA}"] = torch.cuda.get_rng_state(device)
    return tensors


def set_rng_state(
    tensors: Mapping[str, torch.Tensor],
    device: str | torch.device | None = None,
    prefix: str = "",
) -> None:
    """Restore the generators saved by :func:`rng_state` with the same arguments."""
    torch.set_rng_state(tensors[f"{prefix}{_RNG_CPU}"])
    key = f"{prefix}{_RNG_CUDA}"
    if device is not None and torch.device(device).type == "cuda" and key in tensors:
        torch.cuda.set_rng_state(tensors[key], device)


def _cpu_copy(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A copy per tensor: safetensors refuses tensors that share storage.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def file_config_hash(path: Path) -> str:
    """:func:`rtmoe.config.config_hash` of a saved ``config.toml`` as written.

    Hashes the file's own tree (not the resolved :class:`Config`, which gains defaults
    when rtmoe adds a field), so it equals the hash taken at save time exactly when the
    file is unchanged.
    """
    from rtmoe.config import _none_from_toml

    return config_hash(_none_from_toml(tomllib.loads(path.read_text())))


def _verify_config(path: Path, expected: str | None) -> None:
    """Refuse a ``config.toml`` whose content hash differs from ``meta.json``'s."""
    if expected is None:
        raise CheckpointError(
            f"{path.parent / META_FILE} records no config_hash, so {path} cannot be "
            "verified; re-save the checkpoint (rtmoe.checkpoint.save_checkpoint)"
        )
    try:
        actual = file_config_hash(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; restore it or re-save the checkpoint") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise CheckpointError(
            f"{path} is not readable TOML ({err}); restore it or re-save the checkpoint"
        ) from None
    if actual != expected:
        raise CheckpointError(
            f"{path} does not match the config_hash recorded in {META_FILE} ({actual} vs "
            f"{expected}): the config was edited or replaced after saving, and the weights "
            "were trained with the original; restore the file, or rebuild/re-save the "
            "checkpoint with the new config"
        )


def _read_verified(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; restore it or use another checkpoint") from None
    if sha256 is None:
        raise CheckpointError(
            f"{META_FILE} records no sha256 for {path}, so it cannot be verified; re-save "
            "the checkpoint (rtmoe.checkpoint.save_checkpoint)"
        )
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise CheckpointError(
            f"{path} does not match the sha256 recorded in {META_FILE}; the file is "
            "corrupt or was replaced; restore it or use another checkpoint"
        )
    try:
        return load_safetensors_bytes(blob)
    except Exception as err:  # safetensors raises its own SafetensorError (not ValueError)
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({err}); restore it or re-save the checkpoint"
        ) from None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a hidden sibling directory that replaces ``target`` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.parent / f".{target.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():  # config.toml is written by save_config, unsynced
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        if target.exists():
            # A directory cannot be renamed over a non-empty one: move the old aside first.
            aside = target.parent / f".{target.name}.old-{token}"
            os.rename(target, aside)
            os.rename(tmp, target)
            shutil.rmtree(aside)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _git_commit() -> str | None:
    """The commit of the rtmoe source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
