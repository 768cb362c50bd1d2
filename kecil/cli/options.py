"""Command-line options made from a config dataclass's fields, so a default and its help are written once.

A field declares its help next to its default: `max_tokens: int = field(default=256,
metadata={"help": "Most tokens to generate."})`. Optional metadata keys: "flag" (the option's
names when `--max-tokens` is not right, a string or a tuple such as `("--context", "-c")`),
"hidden" (True: a setting for the library or benchmarks, not offered on the command line),
"parse" (a function reading the option's text into the field's value, e.g. "4GB" into bytes)
and "metavar" (the placeholder help shows for the value).

`@config_options(GenerationConfig)` on a command adds one typer option per field (its type,
default and help from the field) to the command's own parameters and hands the command the
built config instead. A field with no metadata help gets the `help` given to the decorator, or
none. Field types the command line cannot express (nested configs, tuples of records) are left
to their defaults unless the command names them in `exclude` and sets them itself.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

_SCALARS = (str, int, float, bool, Path)


def _cli_type(annotation: Any) -> tuple[Any, bool] | None:
    """(the type typer parses, whether the value is a tuple) for a field's annotation; None if
    the command line cannot express it."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(parts) != 1:
            return None
        optional, annotation = True, parts[0]
    if annotation in _SCALARS:
        return (Optional[annotation] if optional else annotation), False
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS and args[0] is not bool:
            return Optional[list[args[0]]], True
    return None


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's type, as far as it resolves: a name a config imports only for type checking
    (a nested config) stays unresolved, and that field off the command line."""
    module = vars(sys.modules[cls.__module__])
    types_ = {}
    for f in dataclasses.fields(cls):
        try:
            types_[f.name] = eval(f.type, module) if isinstance(f.type, str) else f.type  # noqa: S307 (annotation text)
        except NameError:
            pass
    return types_


def _flags(name: str, declared: Any) -> tuple[str, ...]:
    if declared is None:
        return (f"--{name.replace('_', '-')}",)
    return (declared,) if isinstance(declared, str) else tuple(declared)


def field_options(
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    arguments: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
    help: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> list[tuple[inspect.Parameter, Callable | None]]:
    """The typer parameters for `cls`'s fields, each with what turns its value into the field's
    (None: the value is the field's as it is).

    `only`/`exclude` choose fields; `arguments` become positional arguments; `flags`, `help` and
    `defaults` override, per field, what the field itself declares (a command's own default, such
    as chat's longer replies, or help for a field that declares none yet)."""
    hints = _field_types(cls)
    chosen = list(only) if only is not None else None
    exclude, arguments = set(exclude), set(arguments)
    flags, help, defaults = flags or {}, help or {}, defaults or {}
    by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
    # `help` may name fields a config no longer has (it fills in for configs still being given
    # their own help), so only the other names are checked.
    unknown = [n for n in (*(chosen or ()), *exclude, *arguments, *flags, *defaults) if n not in by_name]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    params = []
    for name in chosen or by_name:
        f = by_name[name]
        if name in exclude or (chosen is None and f.metadata.get("hidden")):
            continue
        parsed = _cli_type(hints[name]) if name in hints else None
        if parsed is None:
            if chosen is not None:
                raise TypeError(f"{cls.__name__}.{name} ({hints.get(name, f.type)}) cannot be a command-line option")
            continue  # left at its default; a command that needs it sets it itself
        kind, as_tuple = parsed
        convert = None
        if "parse" in f.metadata:
            kind, convert = Optional[str], _parsing(f.metadata["parse"])
        text = f.metadata.get("help") or help.get(name)
        if name in defaults:
            default = defaults[name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty  # required
        if as_tuple:
            convert = _tupled(default)
            default = None  # typer's "not given" for a repeatable option
        if name in arguments:
            info = typer.Argument(help=text, show_default=False, metavar=f.metadata.get("metavar"))
        else:
            names = _flags(name, flags.get(name, f.metadata.get("flag")))
            if kind is bool and len(names) == 1 and "/" not in names[0]:
                # an off-by-default switch is one flag (--resume); an on-by-default one can be turned off
                names = (names[0],) if default is False else (f"{names[0]}/--no-{names[0][2:]}",)
            info = typer.Option(*names, help=text, metavar=f.metadata.get("metavar"))
        params.append((inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info]), convert))
    return params


def config_options(cls: type, *, into: str = "config", build: bool = True, **choose) -> Callable:
    """Decorator: the command gets options for `cls`'s fields (see `field_options` for `choose`)
    and receives, as parameter `into`, the config built from them (or, with build=False, the
    dict of their values, for a command that adds fields of its own before building)."""
    generated = field_options(cls, **choose)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)  # the command's own annotations, resolved
        own = [p for p in signature.parameters.values() if p.name != into]
        clash = {p.name for p in own} & {p.name for p, _ in generated}
        if clash:
            raise TypeError(f"{command.__name__} declares {', '.join(sorted(clash))}, which {cls.__name__} provides")

        @functools.wraps(command)
        def run(**values):
            fields = {}
            for p, convert in generated:
                value = values.pop(p.name)
                fields[p.name] = convert(value) if convert is not None else value
            values[into] = cls(**fields) if build else fields
            return command(**values)

        # Help lists parameters in this order: the command's arguments, the config's, then the
        # required options, the config's options and the command's own.
        made = [p for p, _ in generated]
        parameters = [p for p in own if _is_argument(p)] + [p for p in made if _is_argument(p)]
        options = [p for p in made + own if not _is_argument(p)]
        parameters += sorted(options, key=lambda p: p.default is not inspect.Parameter.empty)
        run.__signature__ = signature.replace(parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters])
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        del run.__wrapped__  # typer must read the signature above, not the command's own
        return run

    return decorate


def _is_argument(p: inspect.Parameter) -> bool:
    metadata = getattr(p.annotation, "__metadata__", ())
    return any(isinstance(m, typer.models.ArgumentInfo) for m in metadata)


def _parsing(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """`parse` for text from the command line; a default that is already a value passes as it is."""
    return lambda value: parse(value) if isinstance(value, str) else value


def _tupled(default: Any) -> Callable[[Any], Any]:
    """A repeatable option's list as the field's tuple; not given, the field's default."""
    return lambda value: default if value is None else tuple(value)
