"""Command-line flags generated from a frozen config dataclass.

One flag per field (``batch_size`` -> ``--batch-size``), its help text taken
from the class docstring's ``Attributes:`` section; ``holojax train`` and
every benchmark build their flags here. Values by field type:

  int, float, str         --steps 20
  bool                    --resume (default False) / --no-progress (default True)
  X | None                --corpus-max-bytes none  (also: the X value)
  tuple[X, ...]           --widths 64 128  or  --widths 64,128
  tuple[tuple[int, ...]]  --grid 64x4,128x8

Fields of other types (a dict) get no flag. Flags left out keep the value
of the base config they are applied to (``config_from_args``). A field's
``metadata={"aliases": ("--lr",)}`` adds more names for its flag.

Example:
  >>> import argparse, dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Cfg:
  ...   '''Attributes:
  ...     widths: model widths.
  ...     fast: skip the slow part.
  ...   '''
  ...   widths: tuple[int, ...] = (64,)
  ...   fast: bool = False
  >>> p = argparse.ArgumentParser()
  >>> add_config_flags(p, Cfg)
  >>> config_from_args(Cfg(), p.parse_args(["--widths", "32,64", "128", "--fast"]))
  Cfg(widths=(32, 64, 128), fast=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any

_ENTRY = re.compile(r"(\w+(?:, \w+)*): (.*)")


def field_help(cls) -> dict[str, str]:
  """Field name -> the text of its entry in the ``Attributes:`` section of
  ``cls``'s docstring or of a base class's.

  An entry is ``name: text`` or ``a, b: text`` (shared), continued on more
  deeply indented lines.
  """
  out = {}
  for klass in reversed(cls.__mro__):
    out.update(_attributes(klass.__doc__ or ""))
  return out


def _attributes(doc: str) -> dict[str, str]:
  lines = inspect.cleandoc(doc).splitlines()
  start = next((i for i, l in enumerate(lines) if l.strip() == "Attributes:"), None)
  if start is None:
    return {}
  out, names, indent = {}, [], None
  for line in lines[start + 1:]:
    if not line.strip():
      continue
    depth = len(line) - len(line.lstrip())
    if depth == 0:
      break
    indent = depth if indent is None else indent
    m = _ENTRY.fullmatch(line.strip())
    if depth == indent and m:
      names = m.group(1).split(", ")
      for n in names:
        out[n] = m.group(2)
    elif names:
      for n in names:
        out[n] += " " + line.strip()
  return out


def _base(hint) -> tuple[Any, bool]:
  """(the type without ``None``, whether ``None`` is allowed)."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0], len(args) < len(typing.get_args(hint))
  return hint, False


def _scalar(hint):
  return hint if hint in (int, float) else str


def _word(hint):
  """One command-line word -> value: a scalar, or for a tuple field a comma list
  whose items are scalars or 'x'-joined tuples (``64x4``)."""
  if typing.get_origin(hint) is not tuple:
    return _scalar(hint)
  item = typing.get_args(hint)[0]
  if typing.get_origin(item) is tuple:
    inner = _scalar(typing.get_args(item)[0])
    conv = lambda t: tuple(inner(x) for x in t.split("x"))  # noqa: E731
  else:
    conv = _scalar(item)
  return lambda text: tuple(conv(x) for x in text.split(",") if x)


def add_config_flags(parser: argparse.ArgumentParser, cls):
  """Adds one flag per field of ``cls`` (dict fields aside).

  Flags not given are absent from the parsed namespace (``SUPPRESS``), so
  ``config_from_args`` applies only those given.
  """
  hints, helps = typing.get_type_hints(cls), field_help(cls)
  for f in dataclasses.fields(cls):
    hint, optional = _base(hints[f.name])
    if dict in (hint, typing.get_origin(hint)):
      continue
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    flag = f.name.replace("_", "-")
    shown = ("on; this flag turns it off" if default else "off") if hint is bool else _show(default)
    text = f"{helps.get(f.name, '')} (default: {shown})".lstrip()
    kw = dict(dest=f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
    if hint is bool:
      parser.add_argument("--no-" + flag if default else "--" + flag,
                          action="store_false" if default else "store_true", **kw)
      continue
    conv = _word(hint)
    if optional:
      conv = (lambda c: lambda t: None if t.lower() == "none" else c(t))(conv)
    if typing.get_origin(hint) is tuple:
      kw["nargs"] = "+"
    parser.add_argument("--" + flag, *f.metadata.get("aliases", ()), type=conv,
                        metavar=f.name.upper(), **kw)


def config_argv(config) -> list[str]:
  """The flags that turn the class defaults into ``config`` (dict fields aside).

  Example:
    >>> from holojax.train.config import TrainConfig
    >>> config_argv(TrainConfig(steps=5, progress=False, clip_norm=None))
    ['--clip-norm', 'none', '--steps', '5', '--no-progress']
  """
  base, hints, out = type(config)(), typing.get_type_hints(type(config)), []
  for f in dataclasses.fields(config):
    value, hint = getattr(config, f.name), _base(hints[f.name])[0]
    if value == getattr(base, f.name) or dict in (hint, typing.get_origin(hint)):
      continue
    flag = f.name.replace("_", "-")
    if hint is bool:
      out.append(f"--{flag}" if value else f"--no-{flag}")
    else:
      out += [f"--{flag}", "none" if value is None else _show(value)]
  return out


def _show(value) -> str:
  if isinstance(value, tuple):
    return ",".join(_show(v) if not isinstance(v, tuple) else "x".join(map(str, v))
                    for v in value)
  return str(value)


def config_from_args(base, args: argparse.Namespace, **extra):
  """``base`` with the fields given on the command line (and ``extra``) replaced."""
  given = {f.name: getattr(args, f.name) for f in dataclasses.fields(base)
           if hasattr(args, f.name)}
  for name, words in given.items():
    if isinstance(words, list):  # nargs="+": a tuple per word, or None for "none"
      given[name] = None if None in words else tuple(v for w in words for v in w)
  return dataclasses.replace(base, **given, **extra)
