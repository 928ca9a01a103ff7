"""Subject profiles: what calibration adds to a base model, versioned per subject.

Imports only ``rtmoe`` (never offline/ or calibration/), so that the live loop can use
it as it is.

Layout::

    <profiles_dir>/<subject>/v001/   one folder per fit, never overwritten
        profile.json          labels, alignment method, channel map, chosen settings,
                              metrics, base model identity (weights sha256), provenance,
                              the sha256 of weights.safetensors and its own content hash
        weights.safetensors   the tensors that differ from the base model, plus
                              ``alignment.matrix`` (n_chans, n_chans) when aligned
        quality.json          the signal-quality report of the session
        metrics.json          cross-validation results of every candidate setting
        confusion.png         the cross-validated confusion matrix
    <profiles_dir>/<subject>/sessions/<id>/   raw calibration sessions (rtmoe.calibration.session)

The newest version is the one loaded unless a version is named. Loading verifies the
profile first: ``profile.json`` against its ``content_sha256`` (a hash of everything else
in it), ``weights.safetensors`` against ``weights_sha256``, then its structure (every key,
as many labels as outputs, tensors of that head size); any failure is one
:class:`ProfileError` line naming the file and the fix (refit from the session, which is
kept, or remove the version). A profile is refused
for another base model (different weights sha256) or another montage (different stream
channel names or mapping), with a message saying which model and channels it needs.

Live use (what ``rtmoe stream --subject S01`` does)::

    profile = load_profile(profiles_dir, "S01")
    loaded = apply_profile(load_model(profile.base_model), profile, stream_ch_names)
    # rtmoe.signal.SignalChain applies profile.alignment to every preprocessed chunk
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from rtmoe import __version__
from rtmoe.errors import UserError
from rtmoe.models.specmoe import LoadedSpecMoE, SpecMoE
from rtmoe.signal.channels import map_channels

PROFILE_FILE = "profile.json"
#: A profile's tensors (not a checkpoint's: that is ``rtmoe.checkpoint.WEIGHTS_FILE``).
PROFILE_WEIGHTS_FILE = "weights.safetensors"
ALIGNMENT_KEY = "alignment.matrix"
#: 2: ``profile.json`` carries ``content_sha256`` and ``weights_sha256`` (format 1 had none).
PROFILE_FORMAT = 2
#: Keys every profile.json holds (checked at load; `Profile` and `apply_profile` use them).
REQUIRED_KEYS = (
    "format", "subject", "version", "created_utc", "base_model", "labels", "n_outputs",
    "model_ch_names", "n_times", "sfreq", "stream_ch_names", "channel_index", "alignment",
    "settings", "metrics", "changed_tensors", "session", "weights_sha256", "content_sha256",
)  # fmt: skip
_BASE_KEYS = ("ref", "task", "model_name", "weights_sha256")
_VERSION = re.compile(r"^v(\d{3,})$")
_SUBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ProfileError(UserError, ValueError):
    """A profile is missing, or was built for another model or montage."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """A loaded subject profile.

    Attributes
    ----------
    path : Path
        The version folder.
    subject : str
    version : int
    meta : dict
        ``profile.json``.
    weights : dict of str to Tensor
        State-dict entries that replace the base model's.
    alignment : ndarray, shape (n_chans, n_chans), float32, or None
        Applied to preprocessed samples before windowing (`rtmoe.signal.apply_alignment`).
    """

    path: Path
    subject: str
    version: int
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    alignment: np.ndarray | None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.meta["labels"])

    @property
    def base_model(self) -> str:
        """The name or path the base model was loaded from at calibration."""
        return self.meta["base_model"]["ref"]


def default_profiles_dir() -> Path:
    """``$RTMOE_HOME/subjects``, else ``$XDG_DATA_HOME/rtmoe/subjects`` (~/.local/share)."""
    home = os.environ.get("RTMOE_HOME")
    if home:
        return Path(home) / "subjects"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "rtmoe" / "subjects"


def check_subject(subject: str) -> str:
    """A subject id usable as a folder name (letters, digits, ``._-``)."""
    if not _SUBJECT.match(subject or ""):
        raise ProfileError(
            f"subject={subject!r} must start with a letter or digit and hold only letters, "
            "digits, '.', '_' or '-' (it names a folder), e.g. S01"
        )
    return subject


def resize_head(model: SpecMoE, n_outputs: int) -> SpecMoE:
    """Give ``model`` a fresh last head layer with ``n_outputs`` outputs (in place)."""
    last = model.head[-1]
    if last.out_features != n_outputs:
        model.head[-1] = nn.Linear(last.in_features, n_outputs).to(last.weight.device)
        model.n_outputs = n_outputs
    return model


def changed_weights(
    model: nn.Module, base_weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """State-dict entries of ``model`` that differ from ``base_weights`` (CPU copies)."""
    out = {}
    for key, value in model.state_dict().items():
        base = base_weights.get(key)
        value = value.detach().cpu()
        if base is None or base.shape != value.shape or not torch.equal(base, value):
            out[key] = value.clone().contiguous()
    return out


def save_profile(
    profiles_dir: str | Path,
    subject: str,
    *,
    base: LoadedSpecMoE,
    base_ref: str,
    model: SpecMoE,
    labels: Sequence[str],
    alignment: np.ndarray | None,
    stream_ch_names: Sequence[str],
    channel_index: np.ndarray,
    settings: Mapping[str, Any],
    metrics: Mapping[str, Any],
    quality: Mapping[str, Any],
    cv_results: Any = None,
    session: str | None = None,
    figures: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a new version of ``subject``'s profile atomically; returns its folder.

    Parameters
    ----------
    base : LoadedSpecMoE
        The base model as loaded (its checkpoint weights are the reference).
    base_ref : str
        How to load the base again (shipped name or checkpoint folder).
    model : SpecMoE
        The fitted model; only tensors that differ from the base are stored.
    labels : sequence of str
        Class names of the fitted head, in output order.
    alignment : ndarray, shape (n_chans, n_chans), or None
    stream_ch_names : sequence of str
        The calibration stream's channel labels.
    channel_index : ndarray, shape (n_chans,)
        Stream row feeding each model channel.
    settings, metrics, quality : mapping
        Chosen settings, cross-validated metrics, quality report (JSON-serialisable).
    cv_results : optional
        Every candidate's cross-validation results (``metrics.json``).
    session : str, optional
        Path of the calibration session.
    figures : mapping of file name to PNG bytes, optional
    """
    root = Path(profiles_dir) / check_subject(subject)
    root.mkdir(parents=True, exist_ok=True)
    version = max(_versions(root), default=0) + 1
    weights = changed_weights(model, base.checkpoint.weights)
    if alignment is not None:
        weights[ALIGNMENT_KEY] = torch.from_numpy(np.ascontiguousarray(alignment, np.float32))
    meta = {
        "format": PROFILE_FORMAT,
        "subject": subject,
        "version": version,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rtmoe_version": __version__,
        "torch_version": torch.__version__,
        "base_model": {
            "ref": base_ref,
            "task": base.task.name,
            "model_name": base.config.model.name,
            "weights_sha256": base.checkpoint.meta.get("weights_sha256"),
        },
        "labels": list(labels),
        "n_outputs": len(labels),
        "model_ch_names": list(base.task.ch_names),
        "n_times": base.task.n_times,
        "sfreq": base.config.signal.sfreq,
        "stream_ch_names": list(stream_ch_names),
        "channel_index": [int(i) for i in channel_index],
        "alignment": "none" if alignment is None else settings.get("alignment", "ea"),
        "settings": dict(settings),
        "metrics": dict(metrics),
        "changed_tensors": sorted(k for k in weights if k != ALIGNMENT_KEY),
        "session": session,
    }
    blob = save_safetensors_bytes(weights)
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    meta["content_sha256"] = profile_content_hash(meta)
    tmp = root / f".v{version:03d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / PROFILE_WEIGHTS_FILE).write_bytes(blob)
    (tmp / PROFILE_FILE).write_text(json.dumps(meta, indent=2))
    (tmp / "quality.json").write_text(json.dumps(quality, indent=2))
    (tmp / "metrics.json").write_text(json.dumps(cv_results, indent=2))
    for name, blob in (figures or {}).items():
        (tmp / name).write_bytes(blob)
    final = root / f"v{version:03d}"
    os.rename(tmp, final)
    return final


def load_profile(profiles_dir: str | Path, subject: str, version: int | None = None) -> Profile:
    """The newest (or the given) version of ``subject``'s profile."""
    root = Path(profiles_dir) / check_subject(subject)
    versions = _versions(root)
    if not versions:
        raise ProfileError(
            f"no profile for subject {subject!r} in {Path(profiles_dir)}; run `rtmoe "
            f"calibrate --subject {subject}` first (or pass the right --profiles-dir)"
        )
    version = max(versions) if version is None else version
    if version not in versions:
        raise ProfileError(
            f"subject {subject!r} has no profile version {version}; it has "
            f"{sorted(versions)} (see `rtmoe profiles list`)"
        )
    path = root / f"v{version:03d}"
    meta = read_profile_meta(path)
    weights = _read_weights(path, meta)
    matrix = weights.pop(ALIGNMENT_KEY, None)
    _check_structure(path, meta, weights, matrix)
    return Profile(
        path, subject, version, meta, weights, None if matrix is None else matrix.numpy()
    )


def profile_content_hash(meta: Mapping[str, Any]) -> str:
    """sha256 of ``meta`` without its ``content_sha256`` (canonical JSON: sorted keys)."""
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _fix(path: Path, meta: Mapping[str, Any] | None = None) -> str:
    """The remedy named by every file error: refit from the kept session, or remove."""
    subject, name = path.parent.name, path.name
    session = (meta or {}).get("session") if isinstance(meta, Mapping) else None
    source = session if isinstance(session, str) else f"{path.parent}/sessions/<id>"
    version = int(m.group(1)) if (m := _VERSION.match(name)) else name
    return (
        f"refit it from its session (rtmoe calibrate --subject {subject} --from {source}) "
        f"or remove it (rtmoe profiles remove --subject {subject} --version {version})"
    )


def read_profile_meta(path: str | Path) -> dict[str, Any]:
    """``profile.json`` of a version folder, verified against its ``content_sha256``.

    Raises
    ------
    ProfileError
        Missing or unparsable file, another format, a missing hash, or content that
        differs from what was saved (edited after calibration).
    """
    path = Path(path)
    file = path / PROFILE_FILE
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{file} is missing; {_fix(path)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProfileError(f"{file} is not readable JSON ({err}); {_fix(path)}") from None
    if not isinstance(meta, dict):
        raise ProfileError(f"{file} does not hold a JSON object; {_fix(path)}")
    if meta.get("format") != PROFILE_FORMAT:
        raise ProfileError(
            f"{file} has format {meta.get('format')!r}, this rtmoe reads {PROFILE_FORMAT} "
            f"(content-hashed profiles); {_fix(path, meta)}"
        )
    want = meta.get("content_sha256")
    if not isinstance(want, str):
        raise ProfileError(
            f"{file} records no content_sha256, so it cannot be verified; {_fix(path, meta)}"
        )
    if profile_content_hash(meta) != want:
        raise ProfileError(
            f"{file} does not match its content_sha256: it was edited or damaged after "
            f"calibration, and its weights were fitted with the original; {_fix(path, meta)}"
        )
    return meta


def _read_weights(path: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    file = path / PROFILE_WEIGHTS_FILE
    try:
        blob = file.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"{file} is missing; {_fix(path, meta)}") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise ProfileError(
            f"{file} does not match the weights_sha256 recorded in {PROFILE_FILE}: it is "
            f"corrupt or was replaced; {_fix(path, meta)}"
        )
    try:
        return load_safetensors_bytes(blob)
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ProfileError(
            f"{file} is not a valid safetensors file ({err}); {_fix(path, meta)}"
        ) from None


def _check_structure(
    path: Path,
    meta: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None,
    matrix: torch.Tensor | None,
) -> None:
    """Refuse a profile whose keys, label count or tensor shapes do not fit together.

    ``weights`` None checks ``profile.json`` alone (what `list_profiles` reads).
    """
    file = path / PROFILE_FILE

    def bad(what: str) -> ProfileError:
        return ProfileError(f"{file}: {what}; {_fix(path, meta)}")

    missing = [k for k in REQUIRED_KEYS if k not in meta]
    base = meta.get("base_model")
    if isinstance(base, Mapping):
        missing += [f"base_model.{k}" for k in _BASE_KEYS if k not in base]
    elif "base_model" in meta:
        missing.append("base_model (not an object)")
    if missing:
        raise bad(f"missing key(s) {missing}")
    labels, n_outputs = meta["labels"], meta["n_outputs"]
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise bad(f"labels={labels!r} is not a list of class names")
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise bad(f"labels={labels} must be at least 2 distinct class names")
    if n_outputs != len(labels):
        raise bad(f"{len(labels)} labels {labels} but n_outputs={n_outputs!r}")
    n_model = len(meta["model_ch_names"])
    index = meta["channel_index"]
    n_stream = len(meta["stream_ch_names"])
    if len(index) != n_model or not all(isinstance(i, int) and -1 <= i < n_stream for i in index):
        raise bad(
            f"channel_index={index} does not map {n_model} model channels onto the "
            f"{n_stream} stream channels"
        )
    if weights is None:
        return
    if sorted(weights) != sorted(meta["changed_tensors"]):
        raise bad(
            f"changed_tensors {meta['changed_tensors'][:3]}... do not list the tensors in "
            f"{PROFILE_WEIGHTS_FILE} {sorted(weights)[:3]}..."
        )
    if matrix is not None and tuple(matrix.shape) != (n_model, n_model):
        raise bad(
            f"{ALIGNMENT_KEY} has shape {tuple(matrix.shape)}, expected ({n_model}, {n_model})"
        )
    if (matrix is None) != (meta["alignment"] == "none"):
        raise bad(f"alignment={meta['alignment']!r} but {PROFILE_WEIGHTS_FILE} "
                  f"{'lacks' if matrix is None else 'holds'} {ALIGNMENT_KEY}")  # fmt: skip


def list_profiles(profiles_dir: str | Path, subject: str | None = None) -> list[dict[str, Any]]:
    """One summary per profile version (subject, version, labels, model, accuracy, ...).

    A version that fails verification is listed too, with only ``subject``, ``version``,
    ``path`` and ``error`` (the one-line reason and fix), so one damaged profile hides
    none of the others.
    """
    root = Path(profiles_dir)
    subjects = (
        [check_subject(subject)]
        if subject
        else sorted(p.name for p in root.iterdir() if p.is_dir())
        if root.is_dir()
        else []
    )
    rows = []
    for name in subjects:
        for version in sorted(_versions(root / name)):
            path = root / name / f"v{version:03d}"
            try:
                meta = read_profile_meta(path)
                _check_structure(path, meta, None, None)
                rows.append(
                    {
                        "subject": name,
                        "version": version,
                        "created_utc": meta["created_utc"],
                        "base_model": meta["base_model"]["ref"],
                        "labels": meta["labels"],
                        "alignment": meta["alignment"],
                        "cv_balanced_accuracy": meta["metrics"].get("balanced_accuracy"),
                        "path": str(path),
                    }
                )
            except (ProfileError, KeyError, TypeError, AttributeError) as err:
                message = str(err) if isinstance(err, ProfileError) else f"{path}: {err!r}"
                rows.append(
                    {"subject": name, "version": version, "path": str(path), "error": message}
                )
    return rows


def remove_profile(
    profiles_dir: str | Path, subject: str, version: int | None = None
) -> list[Path]:
    """Delete one version, or every version of ``subject`` (sessions are kept)."""
    root = Path(profiles_dir) / check_subject(subject)
    versions = sorted(_versions(root))
    targets = versions if version is None else [version]
    missing = sorted(set(targets) - set(versions))
    if missing or not targets:
        raise ProfileError(
            f"subject {subject!r} has no profile version {missing or '(none at all)'} in "
            f"{Path(profiles_dir)}; existing versions: {versions}"
        )
    removed = []
    for v in targets:
        path = root / f"v{v:03d}"
        shutil.rmtree(path)
        removed.append(path)
    return removed


def check_compatible(
    profile: Profile, base: LoadedSpecMoE, stream_ch_names: Sequence[str] | None = None
) -> None:
    """Refuse a profile built for another base model or another montage.

    Raises
    ------
    ProfileError
        The base model's weights differ from those the profile was fitted on, or the
        stream's channels are not the ones the profile was calibrated with.
    """
    want = profile.meta["base_model"]
    have = base.checkpoint.meta.get("weights_sha256")
    if want["weights_sha256"] != have:
        raise ProfileError(
            f"profile {profile.subject} v{profile.version} was calibrated on model "
            f"{want['ref']!r} (task {want['task']!r}, size {want['model_name']!r}, weights "
            f"{str(want['weights_sha256'])[:12]}), not on this one (task {base.task.name!r}, "
            f"weights {str(have)[:12]}); stream with --model {want['ref']} or recalibrate "
            "the subject with this model"
        )
    if list(base.task.ch_names) != profile.meta["model_ch_names"]:
        raise ProfileError(
            f"profile {profile.subject} v{profile.version} expects model channels "
            f"{profile.meta['model_ch_names']}, the model has {list(base.task.ch_names)}; "
            "recalibrate with this model"
        )
    if stream_ch_names is not None:
        ours = profile.meta["stream_ch_names"]
        index = map_channels(stream_ch_names, base.task.ch_names, "zeros").tolist()
        used = [stream_ch_names[i] if i >= 0 else None for i in index]
        calibrated = [ours[i] if i >= 0 else None for i in profile.meta["channel_index"]]
        if used != calibrated:
            raise ProfileError(
                f"profile {profile.subject} v{profile.version} was calibrated with stream "
                f"channels {ours} (model inputs {calibrated}), but this stream has "
                f"{list(stream_ch_names)} (model inputs {used}); use the calibration "
                "montage or recalibrate the subject with this one"
            )


def apply_profile(
    base: LoadedSpecMoE, profile: Profile, stream_ch_names: Sequence[str] | None = None
) -> LoadedSpecMoE:
    """The base model with the profile's weights and labels (checked first).

    ``base`` is not modified: the model is a copy. The returned ``task`` carries the
    profile's labels and ``"<task>:<subject>v<version>"`` as its name.
    """
    import copy

    check_compatible(profile, base, stream_ch_names)
    model = copy.deepcopy(base.model)
    resize_head(model, profile.meta["n_outputs"])
    state = model.state_dict()
    unknown = sorted(set(profile.weights) - set(state))
    if unknown:
        raise ProfileError(
            f"profile {profile.path} holds tensors {unknown[:3]} the model lacks; it does not "
            f"belong to this model: {_fix(profile.path, profile.meta)}"
        )
    reshaped = [
        f"{k} {tuple(v.shape)} vs {tuple(state[k].shape)}"
        for k, v in profile.weights.items()
        if tuple(v.shape) != tuple(state[k].shape)
    ]
    if reshaped:
        raise ProfileError(
            f"{profile.path / PROFILE_WEIGHTS_FILE} does not fit the model with the "
            f"{len(profile.labels)} labels {list(profile.labels)} of {PROFILE_FILE} "
            f"({', '.join(reshaped[:3])}); {_fix(profile.path, profile.meta)}"
        )
    state.update({k: v.to(state[k].device) for k, v in profile.weights.items()})
    model.load_state_dict(state, strict=True)
    task = dataclasses.replace(
        base.task,
        labels=profile.labels,
        name=f"{base.task.name}:{profile.subject}v{profile.version}",
    )
    return LoadedSpecMoE(model.eval(), base.config, task, base.moe, base.checkpoint)


def _versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))]
