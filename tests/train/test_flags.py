"""Flags from config dataclasses: docstring entries, help text, values."""

import argparse
import dataclasses

import pytest

from holojax.train import flags
from holojax.train.bench import harness
from holojax.train.config import TrainConfig
from holojax.train.demo import DemoConfig
from holojax.train.spiral import SpiralConfig


@dataclasses.dataclass(frozen=True)
class Cfg:
  """Attributes:
    steps (int): optimizer steps.
    batch_size, seq_len: sequences per step and tokens per sequence.
    corpus: text file
      or directory (none: the standard library).
    note:
      text on the next line, for ``steps``.
    fast: skip the slow part.
    mode: how to run.
    parts: which parts run.

  Example: not an entry.
  """
  steps: int = 3
  batch_size: int = 8
  seq_len: int = 32
  corpus: str | None = None
  note: str = "a"
  fast: bool = True
  mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
  parts: tuple[str, ...] | None = ("x",)


def _parser(**kw):
  p = argparse.ArgumentParser()
  flags.add_config_flags(p, Cfg, **kw)
  return p


def _helps(p):
  return {a.dest: a.help for a in p._actions if a.dest != "help"}


def test_every_entry_form_is_read():
  assert flags.field_help(Cfg) == {
      "steps": "optimizer steps.",
      "batch_size": "sequences per step and tokens per sequence.",
      "seq_len": "sequences per step and tokens per sequence.",
      "corpus": "text file or directory (none: the standard library).",
      "note": "text on the next line, for ``steps``.",
      "fast": "skip the slow part.", "mode": "how to run.", "parts": "which parts run."}


def test_help_text():
  h = _helps(_parser(choices={"parts": ("x", "y")}))
  assert h["steps"] == "optimizer steps. (default: 3)"
  assert h["seq_len"] == ("--batch-size, --seq-len: sequences per step and tokens per "
                          "sequence. (default: 32)")
  assert h["corpus"] == "text file or directory. (default: none, meaning the standard library)"
  assert h["note"] == "text on the next line, for --steps. (default: a)"
  assert h["fast"] == "skip the slow part. (default: on)"
  assert h["mode"] == "how to run. One of: a, b. (default: a)"
  assert h["parts"] == "which parts run. Each one of: x, y. (default: x)"


def test_values():
  p = _parser(choices={"parts": ("x", "y")})
  args = p.parse_args(["--no-fast", "--corpus", "none", "--parts", "x,y", "--mode", "b"])
  assert flags.config_from_args(Cfg(), args) == Cfg(fast=False, mode="b", parts=("x", "y"))
  assert flags.config_from_args(Cfg(fast=False), p.parse_args(["--fast"])).fast
  assert flags.config_from_args(Cfg(), p.parse_args(["--parts", "none"])).parts is None


@pytest.mark.parametrize("argv", [["--mode", "c"], ["--parts", "x,z"]])
def test_choices_are_checked(argv, capsys):
  with pytest.raises(SystemExit):
    _parser(choices={"parts": ("x", "y")}).parse_args(argv)
  assert "invalid choice" in capsys.readouterr().err


def test_listed_values_are_shown_not_checked():
  p = _parser(listed={"note": ("a", "b")})
  assert "One of: a, b." in _helps(p)["note"] and p.parse_args(["--note", "c"]).note == "c"


def test_plain():
  assert flags.plain("``a`` `b` **c** :func:`d` ``e_f``", {"e_f": "--e-f"}) == "a b c d --e-f"
  assert flags.plain("  >>> run(TINY)  # doctest: +SKIP") == "  >>> run(TINY)"
  assert flags.plain("sum(f(x)**2) and y**2") == "sum(f(x)**2) and y**2"


def test_config_argv_round_trips():
  cfg = TrainConfig(steps=5, progress=False, clip_norm=None, schedule="linear",
                    batch_size=4)
  p = argparse.ArgumentParser()
  flags.add_config_flags(p, TrainConfig)
  assert flags.config_from_args(TrainConfig(), p.parse_args(flags.config_argv(cfg))) == cfg


CONFIGS = {"train": TrainConfig, "demo": DemoConfig, "spiral": SpiralConfig,
           **{f"bench {n}": type(harness.module(n).TINY) for n in harness.names()}}


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_config_field_is_documented(cls):
  p = argparse.ArgumentParser()
  flags.add_config_flags(p, cls)
  documented = flags.field_help(cls)
  for a in p._actions[1:]:
    assert documented.get(a.dest, "").strip(), f"{cls.__name__}.{a.dest} has no Attributes: entry"
    assert a.help.count("(default:") == 1, a.help
    assert "``" not in a.help, a.help
