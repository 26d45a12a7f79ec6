import json

import pytest

from holojax.train.bench import harness


def test_gpt_throughput_record_and_report(tmp_path, monkeypatch):
  monkeypatch.delenv("OUT", raising=False)
  rec = harness.run("gpt_throughput", ["--tiny"], record_dir=tmp_path)
  (path,) = tmp_path.glob("gpt_throughput--*.json")
  saved = json.loads(path.read_text())
  assert saved == rec
  assert {"device", "jax", "flax", "optax", "python"} <= set(saved["environment"])
  row = saved["results"]["rows"][0]
  assert row["tokens_per_s"] > 0 and 0 < row["mfu_vs_measured_matmul"]
  report = harness.write_report(tmp_path, tmp_path / "BENCHMARKS.md")
  text = report.read_text()
  assert "holojax bench gpt_throughput --tiny" in text and "tokens/s" in text


def test_unknown_benchmark():
  with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
    harness.run("nope", [])


def test_committed_records_are_in_the_report():
  records = harness.load_records()
  text = harness.REPORT.read_text()
  for rec in records:  # BENCHMARKS.md was regenerated after the last record
    assert rec["command"] in text and rec["date"] in text


@pytest.mark.parametrize("name,argv", [("holo_layers", ["--tiny"]),
                                       ("phasor", ["--tiny", "--skip-speed"]),
                                       ("embed_grad", ["--tiny"]),
                                       ("convergence", ["--tiny", "--optimizers", "adamw"])])
def test_other_benchmarks_write_records(tmp_path, monkeypatch, name, argv):
  monkeypatch.setenv("OUT", str(tmp_path / "out"))
  rec = harness.run(name, argv, record_dir=tmp_path)
  assert rec["table"].strip() and rec["results"]
  assert len(list(tmp_path.glob(f"{name}--*.json"))) == 1
  assert len(list((tmp_path / "out").glob(f"{name}--*.json"))) == 1  # the GPU machine's copy


def test_embed_grad_bench_times_every_combination(tmp_path, monkeypatch):
  monkeypatch.delenv("OUT", raising=False)
  rec = harness.run("embed_grad", ["--tiny"], record_dir=tmp_path)
  rows = rec["results"]["rows"]
  assert {(r["gradient"], r["ids"]) for r in rows} == {
      ("scatter", "text"), ("scatter", "uniform"), ("onehot", "text"),
      ("onehot", "uniform")}
  assert all(r["fwd_bwd_ms"] > 0 for r in rows)
