"""``rtmoe calibrate`` (record cue-locked trials, check them, fit a subject profile) and
``rtmoe profiles`` (list / remove subject profiles).

Entry points (pyproject ``rtmoe.commands``): ``calibrate`` and ``profiles`` name the light
stubs in ``calibration/commands.py``, whose targets are ``calibrate_command`` and
``profiles_command`` here (this module is imported only when one of them runs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rtmoe.calibration import commands as calibration_commands
from rtmoe.calibration.epochs import Trials, epoch_recording, parse_classes
from rtmoe.calibration.fit import ALIGNMENTS, TUNINGS, FitError, confusion_png, fit_subject
from rtmoe.calibration.quality import format_report, quality_report
from rtmoe.calibration.record import TrialCounter, record_lsl, record_replay
from rtmoe.calibration.session import Session, SessionError, read_meta, read_session
from rtmoe.cli import Command, UserError
from rtmoe.config import RuntimeConfig, add_config_arguments, config_from_args
from rtmoe.console import StatusLine
from rtmoe.models.specmoe import LoadedSpecMoE
from rtmoe.profiles import (
    check_subject,
    default_profiles_dir,
    list_profiles,
    remove_profile,
    save_profile,
)
from rtmoe.stream.markers import MarkerInlet

#: liblsl queue of the calibration inlets, in seconds of the stream's nominal rate: deep,
#: because losing samples costs trials (the live decoder keeps its own queue short).
CALIBRATION_BUFLEN_S = 60


def _add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subject", required=True, help="subject id, e.g. S01")
    src = parser.add_argument_group("source (one of)")
    src.add_argument("--lsl", metavar="NAME", help="LSL name of the EEG stream")
    src.add_argument(
        "--from", dest="from_file", type=Path, metavar="FILE|SESSION",
        help="recording with annotations (any file MNE reads) instead of live streams, or a "
        "session folder (<profiles-dir>/<subject>/sessions/<id>) to refit without a stream",
    )  # fmt: skip
    parser.add_argument(
        "--markers", metavar="NAME", help="LSL name of the marker stream (default: type Markers)"
    )
    parser.add_argument(
        "--model",
        help="base model: shipped name or folder (default: a session's own, else 'default')",
    )
    parser.add_argument(
        "--classes",
        help="NAME=MARKER pairs, e.g. left=1,right=2 (default: a session's own, else the "
        "model's labels)",
    )
    parser.add_argument(
        "--tmin", type=float, help="window start after the marker, s (default: a session's, else 0)"
    )
    parser.add_argument("--tmax", type=float, help="window end, s (default: tmin + model window)")
    parser.add_argument("--profiles-dir", type=Path, help="default $RTMOE_HOME/subjects")
    parser.add_argument("--new-session", action="store_true", help="do not resume a session")
    parser.add_argument("--fill", choices=("error", "zeros"), default="error")
    stop = parser.add_argument_group("when recording stops (Ctrl-C always does)")
    stop.add_argument("--trials-per-class", type=int, help="stop at this many trials per class")
    stop.add_argument("--duration-s", type=float, help="stop after this many seconds")
    stop.add_argument(
        "--idle-stop-s", type=float, default=10.0, help="stop when no EEG arrived for this long"
    )
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--no-fit", action="store_true", help="record and check only")
    fit.add_argument("--alignment", choices=(*ALIGNMENTS, "auto"), default="auto")
    fit.add_argument("--tuning", choices=(*TUNINGS, "auto"), default="auto")
    fit.add_argument("--folds", type=int, default=5)
    fit.add_argument("--epochs", type=int, default=30)
    fit.add_argument("--max-minutes", type=float, default=3.0, help="time bound of the fit")
    fit.add_argument("--min-trials-per-class", type=int, default=10)
    fit.add_argument("--reject-uv", type=float, help="reject windows of this peak-to-peak (µV)")
    fit.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    # [runtime]: the stream resolve timeout, the gap that splits trials, --fill.
    add_config_arguments(parser, sections=("runtime",), flags={"fill": "runtime.fill"})


def _load_base(ref: str) -> tuple[LoadedSpecMoE, str]:
    from rtmoe.models.shipped import load_model

    path = Path(ref)
    ref = str(path.resolve()) if path.exists() else ref
    return load_model(ref), ref


def _classes(
    args: argparse.Namespace, base: LoadedSpecMoE, saved: dict[str, Any] | None = None
) -> tuple[dict, tuple[str, ...]]:
    if args.classes:
        return parse_classes(args.classes)
    if saved and isinstance(saved.get("classes"), dict) and saved.get("labels"):
        return dict(saved["classes"]), tuple(saved["labels"])
    labels = tuple(base.task.labels)
    return {label: label for label in labels}, labels


def _session_source(path: Path | None) -> dict[str, Any] | None:
    """``session.json`` of ``--from`` when it names a session folder, else None.

    Raises UserError for a ``--from`` that does not exist or is a folder of another kind.
    """
    if path is None:
        return None
    if not path.exists():
        raise UserError(
            f"--from {path} does not exist; give a recording file MNE can read, or a session "
            "folder (<profiles-dir>/<subject>/sessions/<id>, see `rtmoe profiles list`)"
        )
    if not path.is_dir():
        return None
    try:
        return read_meta(path)
    except SessionError as err:
        raise UserError(
            f"--from {path} is a folder but not a calibration session ({err}); pass a "
            "session folder or a recording file"
        ) from None


def _profiles_root(session: Path) -> Path | None:
    """``<root>`` of a session at ``<root>/<subject>/sessions/<id>``, else None."""
    session = session.resolve()
    return session.parents[2] if session.parent.name == "sessions" else None


def _unfitted_lsl_session(root: Path, name: str) -> Path | None:
    """The newest session recorded from EEG stream ``name`` that has no profile yet."""
    if not root.is_dir():
        return None
    for path in sorted(root.iterdir(), reverse=True):
        try:
            meta = read_meta(path)
        except SessionError:
            continue
        source = meta.get("source") or {}
        if (
            meta.get("profile") is None
            and source.get("kind") == "lsl"
            and source.get("name") == name
        ):
            return path
    return None


def _find_session(root: Path, source: dict[str, Any]) -> Path | None:
    """The newest unfitted session recorded from the same source (LSL streams or file)."""
    if not root.is_dir():
        return None
    for path in sorted(root.iterdir(), reverse=True):
        try:
            meta = read_meta(path)
        except SessionError:
            continue
        if meta.get("profile") is None and meta["source"] == source:
            return path
    return None


def _open_session(
    args: argparse.Namespace, root: Path, source: dict, ch_names, sfreq: float, extra: dict
) -> Session:
    found = None if args.new_session else _find_session(root, source)
    if found is None:
        import datetime

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        path, n = root / stamp, 1
        while path.exists():
            path, n = root / f"{stamp}-{n}", n + 1
        return Session.create(
            path, subject=args.subject, ch_names=ch_names, sfreq=sfreq, source=source, extra=extra
        )
    session = Session.open(found)
    session.check_stream(ch_names, sfreq)
    print(
        f"resuming session {found} ({session.n_samples} samples, {session.n_markers} markers "
        "kept); --new-session starts afresh",
        flush=True,
    )
    return session


def _record(
    args, base, class_map, labels, index_fn, root: Path, extra: dict, runtime: RuntimeConfig
) -> Path:
    """Record (or import) into a session; returns its folder. Ctrl-C propagates."""
    from rtmoe.stream.lsl import LslError, LslSource, resolve_stream

    task, sig = base.task, base.config.signal
    if args.from_file is not None:
        from rtmoe.recording import read_recording

        replay = read_recording(args.from_file)
        index_fn(replay.ch_names)
        source = {
            "kind": "file",
            "path": str(args.from_file.resolve()),
            "size": args.from_file.stat().st_size,
        }
        session = _open_session(args, root, source, replay.ch_names, replay.sfreq, extra)
        n_after = math.ceil((args.tmin * sig.sfreq + task.n_times) * replay.sfreq / sig.sfreq)
        counter = TrialCounter(class_map, n_after)
        try:
            session.begin_run({"source": "file"})
            record_replay(session, replay, counter)
        finally:
            session.close(stopped_by="end of file")
        return session.path

    if args.lsl is None:
        raise UserError(
            "give the EEG source: --lsl NAME (live), --from FILE (a recording) or --from "
            "SESSION (a recorded session folder, refitted without a stream)"
        )
    query = {"name": args.markers} if args.markers else {"type": "Markers"}
    timeout_s = runtime.resolve_timeout_s
    try:
        eeg_info = resolve_stream(name=args.lsl, timeout_s=timeout_s)
    except LslError as err:
        kept = _unfitted_lsl_session(root, args.lsl)
        hint = (
            f"\nSession {kept} is kept: refit it without a stream with `rtmoe calibrate "
            f"--subject {args.subject} --from {kept}`"
            if kept is not None
            else ""
        )
        raise UserError(f"EEG stream: {err}{hint}") from None
    try:
        marker_info = resolve_stream(**query, timeout_s=timeout_s)
    except LslError as err:
        raise UserError(
            f"marker stream: {err}\nStart the experiment software's marker outlet "
            "(PsychoPy, rtmoe.plugins.markers.MarkerOutlet, `rtmoe play`) before calibrating, "
            "or name it with --markers NAME"
        ) from None
    # The marker inlet opens (and takes its clock offset) before the EEG inlet: LSL hands
    # an inlet only what is pushed after it opened, so every cue sent while EEG is being
    # recorded reaches the session, including those in the first seconds of a run.
    markers = MarkerInlet(marker_info)
    try:
        eeg = LslSource(eeg_info, max_buflen_s=CALIBRATION_BUFLEN_S)
    except LslError as err:
        markers.close()
        raise UserError(f"EEG stream: {err}") from None
    try:
        index_fn(eeg.channel_names)
        source = {"kind": "lsl", "name": args.lsl, "markers": marker_info.name()}
        session = _open_session(args, root, source, eeg.channel_names, eeg.sfreq, extra)
        n_after = math.ceil((args.tmin * sig.sfreq + task.n_times) * eeg.sfreq / sig.sfreq)
        counter = TrialCounter(class_map, n_after)
        if session.n_samples:  # a resumed session: count the trials it already holds
            kept = read_session(session.path)
            for t, label in zip(kept.marker_times, kept.marker_labels, strict=True):
                counter.add_marker(t, label)
            counter.add_samples(kept.times)
        stopped_by = "Ctrl-C"

        line = StatusLine(period_s=0.0)  # record_lsl reports once per progress period

        def show(p) -> None:
            if not args.quiet:
                line.update(p.line())

        markers_of = {c: sorted(k for k, v in class_map.items() if v == c) for c in labels}
        print(
            f"recording {args.lsl!r} ({', '.join(eeg.channel_names)}, {eeg.sfreq:g} Hz) and "
            f"markers {marker_info.name()!r} into {session.path}; classes {markers_of}"
            "\nCtrl-C stops recording (nothing recorded is lost).",
            flush=True,
        )
        try:
            session.begin_run({"source": "lsl", "markers_open_lsl_s": markers.opened_lsl_s})
            stopped_by = record_lsl(
                session,
                eeg,
                markers,
                counter,
                trials_per_class=args.trials_per_class,
                duration_s=args.duration_s,
                idle_stop_s=args.idle_stop_s,
                on_progress=show,
            )
        except LslError as err:
            stopped_by = f"stream lost: {err}"
            print(f"\nrecording stopped, {stopped_by}; everything so far is kept", flush=True)
        finally:
            session.close(stopped_by=stopped_by)
            line.close()
    finally:
        markers.close()
        eeg.close()
    return session.path


def _run_calibrate(args: argparse.Namespace) -> int:
    from rtmoe.signal.channels import map_channels

    runtime = config_from_args(args).runtime  # --config/--set/--fill, before anything loads
    check_subject(args.subject)
    if args.from_file is not None and args.lsl is not None:
        raise UserError("give one source: --lsl NAME or --from FILE, not both")
    if args.folds < 2:
        raise UserError(f"--folds {args.folds}: cross-validation needs at least 2 folds (e.g. 5)")
    if args.min_trials_per_class < 1:
        raise UserError(f"--min-trials-per-class {args.min_trials_per_class} must be >= 1")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs} must be >= 1")
    saved = _session_source(args.from_file)  # --from SESSION: refit what is on disk
    if saved is not None and saved.get("subject") != args.subject:
        raise UserError(
            f"session {args.from_file} was recorded for subject {saved.get('subject')!r}, not "
            f"{args.subject!r}; pass --subject {saved.get('subject')}"
        )
    profiles_dir = (
        args.profiles_dir
        or (_profiles_root(args.from_file) if saved is not None else None)
        or default_profiles_dir()
    )
    base, base_ref = _load_base(args.model or (saved or {}).get("model") or "default")
    task, sig = base.task, base.config.signal
    class_map, labels = _classes(args, base, saved)
    if args.tmin is None:
        args.tmin = float((saved or {}).get("tmin", 0.0))
    if args.tmax is not None and round((args.tmax - args.tmin) * sig.sfreq) != task.n_times:
        raise UserError(
            f"--tmin {args.tmin} --tmax {args.tmax} gives a {args.tmax - args.tmin:g} s window, "
            f"but model {base_ref!r} takes {task.n_times / sig.sfreq:g} s windows "
            f"({task.n_times} samples at {sig.sfreq:g} Hz); set --tmax "
            f"{args.tmin + task.n_times / sig.sfreq:g}"
        )
    index_holder: dict[str, Any] = {}

    def index_fn(stream_ch_names) -> np.ndarray:
        index_holder["index"] = map_channels(list(stream_ch_names), task.ch_names, args.fill)
        index_holder["names"] = list(stream_ch_names)
        return index_holder["index"]

    root = profiles_dir / args.subject / "sessions"
    extra = {"model": base_ref, "classes": class_map, "labels": list(labels), "tmin": args.tmin}
    try:
        if saved is not None:
            session_path = args.from_file.resolve()
            kept = read_session(session_path)
            index_fn(kept.ch_names)
            print(
                f"refitting session {session_path} ({kept.n_samples} samples, "
                f"{len(kept.marker_labels)} markers) from disk; no stream is needed",
                flush=True,
            )
        else:
            session_path = _record(args, base, class_map, labels, index_fn, root, extra, runtime)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: everything recorded is kept; run the same command again to "
            "resume the session",
            file=sys.stderr,
        )
        return 130
    rec = read_session(session_path)
    max_gap_s = runtime.max_gap_ms * 1e-3
    index = index_holder["index"]
    trials = epoch_recording(
        rec, index, sig, task.n_times, class_map, labels,
        tmin_s=args.tmin, max_gap_s=max_gap_s, reject_uv=args.reject_uv,
    )  # fmt: skip
    report = quality_report(rec, index, task.ch_names, trials, max_gap_s)
    print(format_report(report), flush=True)
    _report_unknown(trials, class_map, labels)
    if args.no_fit:
        print(f"session kept in {session_path}")
        return 0
    try:
        result = fit_subject(
            base,
            trials.X,
            trials.y,
            labels,
            alignments=ALIGNMENTS if args.alignment == "auto" else (args.alignment,),
            tunings=TUNINGS if args.tuning == "auto" else (args.tuning,),
            n_folds=args.folds,
            min_trials_per_class=args.min_trials_per_class,
            epochs=args.epochs,
            max_minutes=args.max_minutes,
            seed=args.seed,
            on_progress=None if args.quiet else print,
        )
    except FitError as err:
        raise UserError(
            f"{err}. The session is kept in {session_path}; refit it later with `rtmoe "
            f"calibrate --subject {args.subject} --from {session_path}`"
        ) from None
    except KeyboardInterrupt:
        print(
            f"\nfit interrupted: the session is kept in {session_path}; refit it (no stream "
            f"needed) with `rtmoe calibrate --subject {args.subject} --from {session_path}`",
            file=sys.stderr,
        )
        return 130
    m = result.metrics
    title = f"{args.subject}: CV balanced accuracy {m['balanced_accuracy']:.3f}"
    path = save_profile(
        profiles_dir,
        args.subject,
        base=base,
        base_ref=base_ref,
        model=result.model,
        labels=labels,
        alignment=result.alignment,
        stream_ch_names=index_holder["names"],
        channel_index=index,
        settings=result.settings,
        metrics=m,
        quality=report,
        cv_results={"candidates": result.candidates, "chosen": result.settings},
        session=str(session_path),
        figures={"confusion.png": confusion_png(m["confusion"], labels, title)},
    )
    session_meta = read_meta(session_path)
    session_meta["profile"] = str(path)
    (session_path / "session.json").write_text(json.dumps(session_meta, indent=2))
    print(_fit_summary(result.settings, m, labels, path), flush=True)
    return 0


def _report_unknown(trials: Trials, class_map: dict, labels: tuple[str, ...]) -> None:
    unknown: dict[str, int] = {}
    for r in trials.rejected:
        if r["reason"] == "unknown label":
            unknown[r["label"]] = unknown.get(r["label"], 0) + 1
    if not unknown:
        return
    mapping = ",".join(f"{v}={k}" for k, v in class_map.items())
    msg = (
        f"{sum(unknown.values())} marker(s) with labels {unknown} are not classes "
        f"({mapping}); they were not used. Map them with --classes NAME=MARKER,..."
    )
    if len(trials.y) == 0:
        raise UserError(f"no usable trial: {msg}")
    print(f"WARNING: {msg}", flush=True)


def _fit_summary(settings: dict, m: dict, labels, path: Path) -> str:
    width = max(len(label) for label in labels)
    rows = [f"    {'true':>{width}} \\ predicted  " + "  ".join(labels)]
    for label, row in zip(labels, m["confusion"], strict=True):
        rows.append(f"    {label:>{width}}              " + "  ".join(
            f"{n:>{len(lab)}d}" for n, lab in zip(row, labels, strict=True)))  # fmt: skip
    return "\n".join(
        [
            f"chosen: alignment {settings['alignment']}, tuning {settings['tuning']}, "
            f"{settings['epochs']} epochs, {settings['n_folds']}-fold CV",
            f"cross-validated: balanced accuracy {m['balanced_accuracy']:.3f}, accuracy "
            f"{m['accuracy']:.3f}, kappa {m['cohen_kappa']:.3f} over {m['n_trials']} trials",
            "  confusion matrix:",
            *rows,
            f"profile saved: {path}",
        ]
    )


def _add_profiles_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="list profiles")
    ls.add_argument("--subject", help="only this subject")
    rm = sub.add_parser("remove", help="remove a profile version, or all of a subject's")
    rm.add_argument("--subject", required=True)
    which = rm.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int)
    which.add_argument("--all", action="store_true")
    for p in (ls, rm):
        p.add_argument("--profiles-dir", type=Path, help="default $RTMOE_HOME/subjects")


def _run_profiles(args: argparse.Namespace) -> int:
    profiles_dir = args.profiles_dir or default_profiles_dir()
    if args.action == "list":
        rows = list_profiles(profiles_dir, args.subject)
        if not rows:
            print(f"no profiles in {profiles_dir}")
        for r in rows:
            if "error" in r:
                print(f"{r['subject']} v{r['version']:03d}  UNUSABLE: {r['error']}")
                continue
            acc = r["cv_balanced_accuracy"]
            acc = "n/a" if acc is None else f"{acc:.3f}"
            print(
                f"{r['subject']} v{r['version']:03d}  {r['created_utc']}  model "
                f"{r['base_model']}  classes {r['labels']}  alignment {r['alignment']}  "
                f"CV bal. acc. {acc}  {r['path']}"
            )
        return 0
    for path in remove_profile(profiles_dir, args.subject, None if args.all else args.version):
        print(f"removed {path}")
    return 0


calibrate_command = Command(
    help=calibration_commands.calibrate.help,  # the entry-point stub's line
    add_arguments=_add_calibrate_arguments,
    run=_run_calibrate,
)
profiles_command = Command(
    help=calibration_commands.profiles.help,  # the entry-point stub's line
    add_arguments=_add_profiles_arguments,
    run=_run_profiles,
)
