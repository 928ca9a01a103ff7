"""Runtime plugins: post-processing stages and sinks, found by entry point, run in isolation.

A plugin is any object with either

- ``process(msg: DecodeMessage) -> DecodeMessage`` (a **stage**: smoothing, evidence
  accumulation, artifact flags; it may return a changed copy, e.g. new probabilities or
  ``extras``), or
- ``send(msg: DecodeMessage) -> None`` (a **sink**: an LSL re-publisher, a file, a socket),

and optionally ``open(context: PluginContext)`` (called once the model is loaded, before
the first sample) and ``close()`` (called when the runtime stops). Per decode the runner
calls the stages in the order given, the runtime publishes the result on ZeroMQ, then
the runner hands it to every sink.

Plugins are named by a spec ``name[:key=value,key=value]`` where ``name`` is an entry
point of the group ``rtmoe.plugins`` (so third-party packages add plugins without rtmoe
importing them) or ``package.module:attr``. The entry point is a factory (usually the
class) called with the spec's arguments, converted to the types its signature annotates
(``float``, ``int``, ``bool``, ``str``). docs/plugins.md documents the protocol.

A plugin that raises (in ``open``, ``process``, ``send`` or ``close``) or whose stage
returns something other than a `DecodeMessage` is disabled: one line on stderr, counted
in `PluginRunner.n_errors`, named in the status message's ``disabled_plugins``; the
stream goes on without it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, TextIO, runtime_checkable

from rtmoe.errors import UserError
from rtmoe.transport.messages import DecodeMessage

ENTRY_POINT_GROUP = "rtmoe.plugins"


class PluginError(UserError, ValueError):
    """A plugin spec cannot be loaded: unknown name, bad arguments, not a plugin."""


@dataclass(frozen=True)
class PluginContext:
    """What a plugin learns about the decoder before the first decode.

    Attributes
    ----------
    model_id, subject_id : str, str or None
        As in every `DecodeMessage`.
    labels : tuple of str, shape (n_outputs,)
        Class names in the model's output order.
    gate_names : tuple of str
        Keys of `DecodeMessage.gates`.
    sfreq : float
        The model's sample rate, Hz.
    hop_s : float
        Time between decodes, seconds.
    """

    model_id: str
    subject_id: str | None
    labels: tuple[str, ...]
    gate_names: tuple[str, ...]
    sfreq: float
    hop_s: float


@runtime_checkable
class Stage(Protocol):
    """Transforms each decode before it is published (``open``/``close`` optional)."""

    def process(self, msg: DecodeMessage) -> DecodeMessage: ...


@runtime_checkable
class Sink(Protocol):
    """Receives each published decode (``open``/``close`` optional)."""

    def send(self, msg: DecodeMessage) -> None: ...


Plugin = Stage | Sink


def available_plugins() -> dict[str, EntryPoint]:
    """Installed plugins by entry-point name (group ``rtmoe.plugins``)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``name[:k=v,...]`` or ``module:attr[:k=v,...]`` into target and raw arguments.

    Values are strings here (a value cannot contain ``,``); `load_plugin` converts them.
    """
    target, _, rest = spec.strip().partition(":")
    head, _, tail = rest.partition(":")
    if head and "=" not in head:  # "module:attr", possibly followed by arguments
        target, rest = f"{target}:{head}", tail
    if not target or target.startswith(":"):
        raise PluginError(
            f"--plugin {spec!r} has no plugin name; write name[:key=value,...], "
            "e.g. smooth:alpha=0.3"
        )
    args: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise PluginError(
                f"--plugin {spec!r}: argument {item!r} is not key=value; write "
                f"{target}:key=value,key=value"
            )
        if key in args:
            raise PluginError(f"--plugin {spec!r} gives argument {key!r} twice")
        args[key] = value.strip()
    return target, args


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


_CONVERTERS: dict[Any, Callable[[str], Any]] = {
    float: float,
    int: int,
    bool: _parse_bool,
    str: str,
}


def _signature(factory: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    try:
        signature = inspect.signature(factory)
    except (ValueError, TypeError):  # a builtin without one: it takes no spec arguments
        signature = inspect.Signature()
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that cannot be resolved: keep strings
        hints = {}
    return signature, hints


def _build(target: str, factory: Callable[..., Any], raw: dict[str, str]) -> Any:
    signature, hints = _signature(factory)
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    accepted = ", ".join(
        f"{n}: {getattr(hints.get(n), '__name__', 'str')} = {p.default!r}"
        if p.default is not p.empty
        else f"{n}: {getattr(hints.get(n), '__name__', 'str')} (required)"
        for n, p in params.items()
    )
    kwargs: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in params:
            raise PluginError(
                f"plugin {target!r} has no argument {key!r}; it accepts: {accepted or 'none'}"
            )
        kind = hints.get(key, str)
        convert = _CONVERTERS.get(kind, str)
        try:
            kwargs[key] = convert(text)
        except ValueError:
            raise PluginError(
                f"plugin {target!r} argument {key}={text!r} is not a "
                f"{getattr(kind, '__name__', kind)}; it accepts: {accepted}"
            ) from None
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise PluginError(f"plugin {target!r}: {err}; it accepts: {accepted}") from None
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as err:  # the factory's own argument checks
        raise PluginError(f"plugin {target!r}: {err}") from None


def load_plugin(spec: str) -> Plugin:
    """Create the plugin a spec names.

    Parameters
    ----------
    spec : str
        ``name[:key=value,...]`` with ``name`` an entry point of ``rtmoe.plugins``, or
        ``package.module:attr[:key=value,...]``.

    Raises
    ------
    PluginError
        Unknown name (the message lists the installed ones), an argument the factory
        does not take or cannot convert, or an object that is neither stage nor sink.
    """
    target, raw = parse_spec(spec)
    if ":" in target:
        module_name, _, attr = target.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise PluginError(f"--plugin {spec!r}: cannot load {target!r}: {err}") from None
    else:
        installed = available_plugins()
        if target not in installed:
            raise PluginError(
                f"--plugin {spec!r}: no plugin named {target!r}; installed: "
                f"{sorted(installed) or 'none'} (entry-point group {ENTRY_POINT_GROUP!r}), "
                "or give package.module:attr"
            )
        factory = installed[target].load()
    if not callable(factory):
        raise PluginError(
            f"--plugin {spec!r}: {target!r} is a {type(factory).__name__}; a plugin entry "
            "point names a factory (a class or function) that returns the plugin"
        )
    plugin = _build(target, factory, raw)
    _check_plugin(spec, plugin)
    return plugin


def _check_plugin(name: str, plugin: Any) -> None:
    is_stage, is_sink = isinstance(plugin, Stage), isinstance(plugin, Sink)
    if is_stage == is_sink:
        raise PluginError(
            f"plugin {name!r} is a {type(plugin).__name__} with "
            + ("both process() and send()" if is_stage else "neither process() nor send()")
            + "; a plugin is a stage (process(msg) -> msg) or a sink (send(msg)), see "
            "docs/plugins.md"
        )


class PluginRunner:
    """Runs stages then sinks on each decode; a plugin that raises is disabled, not fatal.

    Parameters
    ----------
    plugins : sequence of str, Stage or Sink
        Specs (see `load_plugin`) or plugin objects, in the order they run; all specs
        are loaded here, so a typo fails before anything starts.
    stderr : text stream, optional
        Where a disabled plugin is reported (default ``sys.stderr``).

    Attributes
    ----------
    names : tuple of str
        Each plugin's spec (or class name for objects).
    disabled : tuple of str
        Names of the disabled plugins, in the order they failed.
    n_errors : int
        Exceptions caught from plugins (each disables its plugin).
    """

    def __init__(self, plugins: Sequence[str | Plugin] = (), stderr: TextIO | None = None):
        self._stderr = stderr
        self._entries: list[tuple[str, Plugin]] = []
        for item in plugins:
            if isinstance(item, str):
                self._entries.append((item, load_plugin(item)))
            else:
                _check_plugin(type(item).__name__, item)
                self._entries.append((type(item).__name__, item))
        self.names = tuple(name for name, _ in self._entries)
        self.disabled: tuple[str, ...] = ()
        self.n_errors = 0
        self._off: set[int] = set()
        self._refresh()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def network_visible(self) -> tuple[tuple[str, str], ...]:
        """``(name, what it shows)`` of each plugin visible from other machines.

        A plugin declares that with a ``network_visible`` string attribute (e.g.
        ``lsl-out``: an LSL outlet is discoverable on the LAN); the runtime refuses such
        plugins unless ``allow_remote`` is set.
        """
        return tuple(
            (name, what)
            for name, plugin in self._entries
            if isinstance(what := getattr(plugin, "network_visible", None), str) and what
        )

    def open(self, context: PluginContext) -> None:
        """Call each plugin's ``open(context)``; one that raises is disabled."""
        for i, (name, plugin) in enumerate(self._entries):
            opener = getattr(plugin, "open", None)
            if opener is not None:
                try:
                    opener(context)
                except Exception as err:
                    self._disable(i, name, err, "open()")

    def process(self, msg: DecodeMessage) -> DecodeMessage:
        """The decode after every enabled stage, in order."""
        for i, name, stage in self._stages:
            try:
                out = stage.process(msg)
                if not isinstance(out, DecodeMessage):
                    raise TypeError(
                        f"process() returned a {type(out).__name__}, not a DecodeMessage"
                    )
            except Exception as err:
                self._disable(i, name, err, f"decode seq {msg.seq}")
                continue
            msg = out
        return msg

    def send(self, msg: DecodeMessage) -> None:
        """Hand the published decode to every enabled sink."""
        for i, name, sink in self._sinks:
            try:
                sink.send(msg)
            except Exception as err:
                self._disable(i, name, err, f"decode seq {msg.seq}")

    def close(self) -> None:
        """Call every plugin's ``close()`` (disabled ones too: they may hold resources)."""
        for name, plugin in self._entries:
            closer = getattr(plugin, "close", None)
            if closer is not None:
                try:
                    closer()
                except Exception as err:
                    self._report(name, err, "close()")

    def _refresh(self) -> None:
        # Rebuilt only when a plugin is disabled, so the per-decode loops allocate nothing.
        active = [(i, n, p) for i, (n, p) in enumerate(self._entries) if i not in self._off]
        self._stages = [(i, n, p) for i, n, p in active if isinstance(p, Stage)]
        self._sinks = [(i, n, p) for i, n, p in active if isinstance(p, Sink)]

    def _disable(self, index: int, name: str, err: BaseException, where: str) -> None:
        self.n_errors += 1
        self._off.add(index)
        self.disabled = (*self.disabled, name)
        self._refresh()
        self._report(name, err, where, "; disabled, the stream goes on without it")

    def _report(self, name: str, err: BaseException, where: str, then: str = "") -> None:
        stream = self._stderr or sys.stderr
        print(
            f"rtmoe: plugin {name!r} raised {type(err).__name__}: {err} ({where}){then}",
            file=stream,
            flush=True,
        )
