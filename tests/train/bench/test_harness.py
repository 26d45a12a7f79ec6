"""The benchmark harness: every benchmark's TINY run, records, the report, the CLI."""

import dataclasses
import json

import pytest

from holojax.train import cli
from holojax.train.bench import harness
from holojax.train.bench.common import Result

SLOW = {"phasor", "demo", "convergence", "turbo_adam"}  # > 20 s on 2 CPU cores
# Their TINY runs end to end in their own tests (tests/train/bench/phasor/, lm/, optim/).
ELSEWHERE = {"recall", "long_context", "pretrained", "holokv", "holo_convert", "finetune",
             "big_step", "scaling", "turbo_rows"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in harness.names() if n not in ELSEWHERE])
def test_every_benchmark_runs_tiny(name, monkeypatch):
  monkeypatch.delenv("OUT", raising=False)
  mod = harness.module(name)
  assert dataclasses.is_dataclass(mod.TINY) and mod.TINY.__dataclass_params__.frozen
  if name == "holo_adam":  # its projected table on the 70B shapes is the 7B's code
    # (untied, 80 layers instead of 32; 1B is the tied one) and ~60% of the run
    monkeypatch.setattr(mod, "LLAMA_SIZES", {k: v for k, v in mod.LLAMA_SIZES.items()
                                             if not k.startswith("70B")})
  out = mod.run(mod.TINY)
  assert isinstance(out, Result) and out.table.strip() and out.results
  json.dumps(out.results)  # a record can hold it


def test_record_files_and_report(tmp_path, monkeypatch):
  monkeypatch.setenv("OUT", str(tmp_path / "out"))
  rec = harness.run("gpt_throughput", ["--tiny"], record_dir=tmp_path, quiet=True)
  (path,) = tmp_path.glob("gpt_throughput--*.json")
  saved = json.loads(path.read_text())
  assert saved == rec and len(list((tmp_path / "out").glob("gpt_throughput--*.json"))) == 1
  assert {"device", "jax", "flax", "optax", "python"} <= set(saved["environment"])
  assert saved["config"]["model"] == "tiny" and saved["command"].endswith("--tiny")
  row = saved["results"]["rows"][0]
  assert row["tokens_per_s"] > 0 and 0 < row["mfu_vs_measured_matmul"]
  text = harness.write_report(tmp_path, tmp_path / "BENCHMARKS.md").read_text()
  assert "holojax bench gpt_throughput --tiny" in text and "tokens/s" in text


def test_result_files_go_beside_the_record(tmp_path, monkeypatch):
  monkeypatch.delenv("OUT", raising=False)
  mod = harness.module("holo_layers")
  monkeypatch.setattr(mod, "run", lambda cfg, progress: Result({"rows": []}, "t",
                                                                {"plot.png": b"png"}))
  rec = harness.run("holo_layers", config=mod.TINY, record_dir=tmp_path, quiet=True)
  assert rec["command"] == "holojax bench holo_layers --tiny"
  assert (tmp_path / "plot.png").read_bytes() == b"png"
  harness.run("holo_layers", config=mod.TINY, record_dir=tmp_path / "no", save=False,
              quiet=True)
  assert not (tmp_path / "no").exists()


def test_flags_start_from_tiny_or_the_defaults():
  cfg = harness.parse("recall", ["--tiny", "--lr", "1e-3,2e-3", "--grid", "32x4", "64x8"])
  assert cfg.lrs == (1e-3, 2e-3) and cfg.grid == ((32, 4), (64, 8))
  assert cfg.widths == harness.module("recall").TINY.widths
  assert harness.parse("long_context", ["--max-minutes", "none"]).max_minutes is None
  with pytest.raises(ValueError, match="parts"):
    harness.parse("long_context", ["--parts", "lm", "nope"])
  assert harness.default_config("demo").progress is False


def test_unknown_benchmark():
  with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
    harness.run("nope", [])


def test_help_lists_benchmarks_and_flags(capsys):
  with pytest.raises(SystemExit):
    cli.main(["bench", "--help"])
  out = capsys.readouterr().out
  assert all(n in out for n in harness.names()) and "scatter-add vs one-hot" in out
  with pytest.raises(SystemExit):
    cli.main(["bench", "recall", "--help"])
  out = capsys.readouterr().out
  assert "--passkey-loss" in out and "--tiny" in out and "--lr" in out


def test_committed_records_are_in_the_report():
  records = harness.load_records()
  text = harness.REPORT.read_text()
  for rec in records:  # BENCHMARKS.md was regenerated after the last record
    assert rec["command"] in text and rec["date"] in text
