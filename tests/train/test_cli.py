import json
import re
import subprocess
import sys

import pytest

from holojax.train import cli, flags
from holojax.train.bench import harness

TINY = ["--model", "tiny", "--batch-size", "8", "--seq-len", "32", "--eval-batches", "1",
        "--corpus-max-bytes", "500000", "--no-progress", "--mesh-data", "1"]


def test_train_command_prints_summary(capsys, tmp_path):
  assert cli.main(["train", *TINY, "--steps", "4", "--eval-every", "4", "--opt-arg", "b1=0.8",
                   "--metrics-path", str(tmp_path / "m.jsonl")]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["steps"] == 4 and summary["final_eval_loss"] < 6.0
  lines = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
  keys = set().union(*lines)
  assert {"train/loss", "train/grad_norm", "perf/tokens_per_s", "opt/state_bits_per_param",
          "eval/loss"} <= keys


@pytest.mark.parametrize("argv,match", [
    (["train", "--optimizer", "sgdz"], "unknown optimizer 'sgdz'"),
    (["train", "--model", "huge"], "unknown model preset 'huge'"),
    (["train", "--model", "tiny", "--seq-len", "4096"], "larger than model 'tiny' supports"),
    (["train", "--corpus", "/nonexistent/dir"], "does not exist"),
    (["train", *TINY, "--opt-arg", "bogus=1"], "takes no argument 'bogus'; it accepts b1, b2"),
    (["train", *TINY, "--opt-arg", "b1"], "--opt-arg expects NAME=VALUE"),
    (["train", *TINY, "--ckpt-dir", "/proc/version"], "cannot hold checkpoints"),
    (["train", *TINY, "--ckpt-dir", "/nonexistent-holojax", "--resume"], "nothing to resume"),
])
def test_bad_input_exits_2_with_message(capsys, argv, match):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("holojax: error:") and match in err and len(err.splitlines()) == 1


def test_resume_of_another_run_is_one_line(capsys, tmp_path):
  run = ["train", *TINY, "--steps", "2", "--ckpt-dir", str(tmp_path)]
  assert cli.main(run) == 0
  capsys.readouterr()
  assert cli.main([*run, "--resume", "--optimizer", "lion", "--seed", "3"]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "--optimizer 'adamw' there, 'lion' now" in err
  assert "--seed 0 there, 3 now" in err
  assert cli.main([*run, "--resume"]) == 0  # a finished run: nothing left, no NaN in the summary
  out = capsys.readouterr()
  assert json.loads(out.out.splitlines()[-1])["tokens_per_s"] is None
  assert "nan" not in out.err.lower()


def test_listing(capsys):
  cli.main(["optimizers"])
  assert "adamw" in capsys.readouterr().out.split()


def test_demo_runs_and_writes_plot(tmp_path):
  # A real subprocess: the console entry point as a user runs it.
  out = subprocess.run([sys.executable, "-m", "holojax.train.cli", "demo", "--model", "tiny",
                        "--steps", "6", "--out", str(tmp_path), "--no-progress",
                        "--optimizers", "adamw", "lion"],
                       capture_output=True, text=True, check=True)
  assert "val loss" in out.stdout and "adamw" in out.stdout and "lion" in out.stdout
  assert (tmp_path / "loss_curves.png").stat().st_size > 1000
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert {r["optimizer"] for r in rows} == {"adamw", "lion"}
  assert rows[0]["state_bits_per_param"] > rows[1]["state_bits_per_param"]  # lion keeps one moment


# --help: every command explains itself.

def _subparsers(parser):
  import argparse
  (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  return sub.choices


def _help_text(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main([*argv, "--help"])
  assert e.value.code == 0
  return capsys.readouterr().out


def test_every_train_option_has_help():
  train = _subparsers(cli.build_parser())["train"]
  for action in train._actions:
    if action.dest == "help":
      continue
    text = re.sub(r"\(default: [^)]*\)$", "", action.help or "").strip()
    assert text, f"{action.option_strings} has no help beyond its default"
    assert (action.help or "").count("(default:") <= 1, action.help


def test_booleans_show_both_spellings_and_on_off(capsys):
  out = _help_text(["train"], capsys)
  assert "--progress, --no-progress" in out and "--resume, --no-resume" in out
  assert "(default: True)" not in out and "(default: False)" not in out
  actions = {a.dest: a for a in _subparsers(cli.build_parser())["train"]._actions}
  assert actions["progress"].help.endswith("(default: on)")
  assert actions["resume"].help.endswith("(default: off)")


def test_fixed_values_are_listed_and_checked(capsys):
  from holojax.models import registry as models
  from holojax.optim import registry as optimizers
  from holojax.train.config import SCHEDULES
  actions = {a.dest: a for a in _subparsers(cli.build_parser())["train"]._actions}
  for dest, values in [("schedule", SCHEDULES), ("dtype", ("float32", "bfloat16")),
                       ("model", models.names()), ("optimizer", optimizers.names())]:
    assert all(v in actions[dest].help for v in values), actions[dest].help
  with pytest.raises(SystemExit):
    cli.main(["train", "--schedule", "cosinus"])
  assert "invalid choice 'cosinus' (choose from constant, cosine, linear)" in (
      capsys.readouterr().err)


HELP_COMMANDS = [[], ["train"], ["demo"], ["bench"], ["fetch"], ["models"], ["optimizers"],
                 ["spiral"]] + [["bench", n] for n in harness.names()]


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=lambda a: " ".join(a) or "holojax")
def test_help_has_a_description_and_no_markup(argv, capsys):
  out = _help_text(argv, capsys)
  assert out.startswith("usage: holojax") and "\n\n" in out.split("options:")[0]
  assert "``" not in out and not re.search(r"(^|\s)\*\*\w|:\w+:`", out, re.M)


def test_bench_help_lists_every_benchmark_with_its_description(capsys):
  out = _help_text(["bench"], capsys)
  for name, (_, description) in harness.BENCHMARKS.items():
    assert re.search(rf"^  {name} +{re.escape(flags.plain(description))}$", out, re.M), name
