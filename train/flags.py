"""Command-line flags generated from a frozen config dataclass.

One flag per field (``batch_size`` -> ``--batch-size``), its help text taken
from the class docstring's ``Attributes:`` section; ``holojax train`` and
every benchmark build their flags here. Values by field type:

  int, float, str         --steps 20
  bool                    --resume / --no-resume (both spellings for every bool)
  X | None                --corpus-max-bytes none  (also: the X value)
  tuple[X, ...]           --widths 64 128  or  --widths 64,128
  tuple[tuple[int, ...]]  --grid 64x4,128x8

Fields of other types (a dict) get no flag. Flags left out keep the value
of the base config they are applied to (``config_from_args``). A field's
``metadata={"aliases": ("--lr",)}`` adds more names for its flag, and
``metadata={"choices": (...)}`` (or ``add_config_flags(choices=...)``) the
values it accepts, checked when parsing and listed in its help.

The help of a flag is its ``Attributes:`` entry with the markup taken out
(````ckpt_dir```` -> ``--ckpt-dir``, other ````code```` -> ``code``), then
its allowed values, then its default. An entry may name several fields
(``batch_size, seq_len: sequences per step and tokens per sequence``); each
of their flags then starts with the names of all of them. For a field whose
default is ``None``, a ``(none: meaning)`` gloss in its entry becomes the
default's description: ``(default: none, meaning all)``.

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
  >>> [a.help for a in p._actions[1:]]
  ['model widths. (default: 64)', 'skip the slow part. (default: off)']
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

# An Attributes: entry: "name: text", "a, b: text" (shared), "name (type): text";
# the text may start on the next, more deeply indented line.
_ENTRY = re.compile(r"(\w+(?:, *\w+)*)(?: \([^()]*\))?:(?: +(.*))?")
_ROLE = re.compile(r":[\w:]+:`([^`]*)`")           # :func:`f` (RST role)
_CODE = re.compile(r"``([^`]+)``|`([^`]+)`")         # ``code`` (RST), `code` (Markdown)
_STRONG = re.compile(r"(?<![\w)\]])\*\*(\S[^*]*?)\*\*")  # **bold**, not x**2
_DOCTEST = re.compile(r" *# *doctest:.*$", re.M)     # doctest directives
_NONE_GLOSS = re.compile(r" *\(none: ([^()]*)\)|; none: ([^()]*)(?=\))")


def plain(text: str, flags: Mapping[str, str] | None = None) -> str:
  """Docstring text for a terminal: RST / Markdown markup taken out.

  A code span naming a key of ``flags`` becomes its flag; layout (line
  breaks, indentation) is kept.

  Example:
    >>> plain("``holojax`` reads ``ckpt_dir`` (see :func:`train`, **bold**)",
    ...       {"ckpt_dir": "--ckpt-dir"})
    'holojax reads --ckpt-dir (see train, bold)'
  """
  flags = flags or {}
  text = _ROLE.sub(r"\1", text or "")
  text = _CODE.sub(lambda m: flags.get(m.group(1) or m.group(2), m.group(1) or m.group(2)), text)
  return _DOCTEST.sub("", _STRONG.sub(r"\1", text))


def summary(cls) -> str:
  """The docstring of ``cls`` before its ``Attributes:`` section, as plain text."""
  doc = inspect.cleandoc(cls.__doc__ or "")
  return plain(doc.split("\nAttributes:")[0].split("Attributes:")[0]).strip()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Descriptions as written; flag help wrapped without breaking at hyphens,
  so ``--ckpt-dir`` and ``--no-deps`` stay whole."""

  def _split_lines(self, text, width):
    text = self._whitespace_matcher.sub(" ", text).strip()
    return textwrap.wrap(text, width, break_on_hyphens=False)


def field_help(cls) -> dict[str, str]:
  """Field name -> the text of its entry in the ``Attributes:`` section of
  ``cls``'s docstring or of a base class's (markup kept).

  An entry is ``name: text``, ``name (type): text`` or ``a, b: text``
  (shared), continued on more deeply indented lines; the text may also
  start on the line after ``name:``.
  """
  return {name: text for name, (_, text) in _entries(cls).items()}


def _entries(cls) -> dict[str, tuple[tuple[str, ...], str]]:
  """Field name -> (the names its entry documents, the entry's text)."""
  out = {}
  for klass in reversed(cls.__mro__):
    out.update(_attributes(klass.__doc__ or ""))
  return out


def _attributes(doc: str) -> dict[str, tuple[tuple[str, ...], str]]:
  # Indentation as written (not inspect.cleandoc's): a docstring may open with
  # "Attributes:" on its first line, its entries indented below it.
  lines = doc.expandtabs().splitlines()
  start = next((i for i, l in enumerate(lines) if l.strip() == "Attributes:"), None)
  if start is None:
    return {}
  head = len(lines[start]) - len(lines[start].lstrip())
  entries, indent = [], None  # [(names, [text lines])]
  for line in lines[start + 1:]:
    if not line.strip():
      continue
    depth = len(line) - len(line.lstrip())
    if depth <= head or (indent is not None and depth < indent):
      break
    indent = depth if indent is None else indent
    m = _ENTRY.fullmatch(line.strip())
    if depth == indent and m:
      names = tuple(n.strip() for n in m.group(1).split(","))
      entries.append((names, [m.group(2) or ""]))
    elif entries:
      entries[-1][1].append(line.strip())
  return {n: (names, " ".join(t for t in text if t)) for names, text in entries for n in names}


def _base(hint) -> tuple[Any, bool]:
  """(the type without ``None``, whether ``None`` is allowed)."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0], len(args) < len(typing.get_args(hint))
  return hint, False


def _scalar(hint):
  return hint if hint in (int, float) else str


def _word(hint, choices=None):
  """One command-line word -> value: a scalar, or for a tuple field a comma list
  whose items are scalars or 'x'-joined tuples (``64x4``). Scalars not in
  ``choices`` are refused."""
  if typing.get_origin(hint) is not tuple:
    return _checked(_scalar(hint), choices)
  item = typing.get_args(hint)[0]
  if typing.get_origin(item) is tuple:
    inner = _scalar(typing.get_args(item)[0])
    conv = lambda t: tuple(inner(x) for x in t.split("x"))  # noqa: E731
  else:
    conv = _checked(_scalar(item), choices)
  return lambda text: tuple(conv(x) for x in text.split(",") if x)


def _checked(conv, choices):
  if not choices:
    return conv

  def check(text):
    value = conv(text)
    if value not in choices:
      raise argparse.ArgumentTypeError(
          f"invalid choice {text!r} (choose from {', '.join(map(str, choices))})")
    return value
  return check


def add_config_flags(parser: argparse.ArgumentParser, cls, *,
                     choices: Mapping[str, Sequence] | None = None,
                     listed: Mapping[str, Sequence] | None = None):
  """Adds one flag per field of ``cls`` (dict fields aside).

  ``choices``: field name -> the values it accepts (checked when parsing; a
  field's ``metadata["choices"]`` too). ``listed``: field name -> the values
  its help lists, left to the config's own checks (registry names, whose
  lookup has the better message). Flags not given are absent from the parsed
  namespace (``SUPPRESS``), so ``config_from_args`` applies only those given.
  """
  hints, entries = typing.get_type_hints(cls), _entries(cls)
  flag_of = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(cls)}
  for f in dataclasses.fields(cls):
    hint, optional = _base(hints[f.name])
    if dict in (hint, typing.get_origin(hint)):
      continue
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    allowed = (choices or {}).get(f.name, f.metadata.get("choices"))
    names, text = entries.get(f.name, ((f.name,), ""))
    kw = dict(dest=f.name, default=argparse.SUPPRESS,
              help=_help(text, names, flag_of, default, hint,
                         allowed or (listed or {}).get(f.name)).replace("%", "%%"))
    if hint is bool:
      parser.add_argument(flag_of[f.name], *f.metadata.get("aliases", ()),
                          action=argparse.BooleanOptionalAction, **kw)
      continue
    conv = _word(hint, allowed)
    if optional:
      conv = (lambda c: lambda t: None if t.lower() == "none" else c(t))(conv)
    if typing.get_origin(hint) is tuple:
      kw["nargs"] = "+"
    parser.add_argument(flag_of[f.name], *f.metadata.get("aliases", ()), type=conv,
                        metavar=f.name.upper(), **kw)


def _help(text: str, names: tuple[str, ...], flag_of: Mapping[str, str], default, hint,
          values) -> str:
  """A flag's help: its entry (with the flags of a shared entry first), its
  allowed values, its default."""
  body = " ".join(plain(text, flag_of).split())
  if len(names) > 1:
    body = f"{', '.join(flag_of.get(n, n) for n in names)}: {body}"
  if hint is bool:
    shown = "on" if default else "off"
  elif default is None:
    m = _NONE_GLOSS.search(body)
    shown = "none"
    if m:
      body = body[:m.start()] + body[m.end():]
      shown += f", meaning {m.group(1) or m.group(2)}"
  else:
    shown = _show(default) or "empty"
  parts = [body]
  if values:
    each = "Each one of" if typing.get_origin(hint) is tuple else "One of"
    parts.append(f"{each}: {', '.join(map(str, values))}.")
  parts.append(f"(default: {shown})")
  return " ".join(p for p in parts if p)


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
