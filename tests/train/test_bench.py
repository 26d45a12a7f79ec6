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
