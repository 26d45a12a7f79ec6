"""Run a named benchmark, store its JSON record, regenerate BENCHMARKS.md.

A benchmark is a module in ``holojax.train.bench`` with
``run(argv) -> dict(config=..., results=..., table=str)``. The harness adds
the device, library versions, date and command, and writes
``train/bench/records/<name>--<device>--<date>.json`` (and a copy under
``$OUT`` when that variable is set, as on the lent GPU machine).

  holojax bench gpt_throughput --steps 20
  holojax bench --report          # BENCHMARKS.md from every record
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RECORDS = Path(__file__).resolve().parent / "records"
REPORT = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"

# name -> (module, one-line description). Later issues add theirs.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "gpt_throughput": ("holojax.train.bench.gpt_throughput",
                       "Baseline transformer training throughput (tokens/s, MFU)"),
    "turbo_adam": ("holojax.train.bench.turbo_adam_bench",
                   "TurboAdam: state bits/param (GPT-2 124M tree) and optimizer step time"),
    "holo_adam": ("holojax.train.bench.holo_adam_bench",
                  "HoloAdam: state bits/param per preset, projected table, step time"),
    "phasor": ("holojax.train.bench.phasor_bench",
               "Phasor memory: orthogonality of codes; speed vs cuDNN attention by length"),
    "holo_layers": ("holojax.train.bench.holo_layers_bench",
                    "HoloLinear / LowRankLinear vs nnx.Linear: forward+backward time"),
    "long_context": ("holojax.train.bench.long_context_bench",
                     "Phasor LM vs RoPE transformer at 4k/16k; recurrent decode memory to 1M"),
    "convergence": ("holojax.train.bench.convergence",
                    "Optimizers at equal steps on one model: final loss, gap to AdamW"),
    "recall": ("holojax.train.bench.recall_bench",
               "Holo-Transformer vs attention: MQAR (Zoology grid) and passkey by length"),
    "spiral": ("holojax.train.spiral",
               "HOLO layers: spiral accuracy (ReLU / Holo / low-rank) and the parameter table"),
    "embed_grad": ("holojax.train.bench.embed_grad_bench",
                   "Token-embedding gradient: scatter-add vs one-hot matmul, text vs uniform ids"),
    "demo": ("holojax.train.demo",
             "`holojax demo`: optimizers on the small model, equal steps (CPU)"),
}


def names() -> list[str]:
  return sorted(BENCHMARKS)


def environment() -> dict:
  import flax
  import jax
  import jaxlib
  import optax
  dev = jax.devices()[0]
  return {
      "device": getattr(dev, "device_kind", dev.platform),
      "platform": dev.platform,
      "device_count": jax.device_count(),
      "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "flax": flax.__version__, "optax": optax.__version__,
  }


def _run_main(module, argv: list[str]) -> dict:
  """Adapter for benchmarks written as ``main(argv) -> dict`` that print their table."""
  import contextlib
  import io

  class Tee(io.StringIO):  # keep the table, still show progress as it prints
    def write(self, s):
      sys.__stdout__.write(s)
      sys.__stdout__.flush()
      return super().write(s)

  buf = Tee()
  with contextlib.redirect_stdout(buf):
    results = module.main(argv)
  return {"config": {"argv": argv}, "results": results, "table": buf.getvalue()}


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def run(name: str, argv: list[str], *, save: bool = True, record_dir: Path = RECORDS) -> dict:
  """Runs benchmark ``name`` with ``argv``; returns (and saves) its record."""
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; choose one of {names()}")
  module = importlib.import_module(BENCHMARKS[name][0])
  out = module.run(list(argv)) if hasattr(module, "run") else _run_main(module, list(argv))
  now = dt.datetime.now(dt.timezone.utc)
  env = environment()
  record = {"name": name, "description": BENCHMARKS[name][1],
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "command": "holojax bench " + " ".join(shlex.quote(a) for a in [name, *argv]),
            "environment": env, "config": out["config"], "results": out["results"],
            "table": out["table"]}
  if hasattr(module, "run"):
    print(out["table"])
  if save:
    fname = f"{name}--{_slug(env['device'])}--{now.strftime('%Y%m%d-%H%M%S')}.json"
    targets = [Path(record_dir) / fname]
    if os.environ.get("OUT"):
      targets.append(Path(os.environ["OUT"]) / fname)
    for path in targets:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(record, indent=1) + "\n")
      print(f"wrote {path}", file=sys.stderr)
  return record


def load_records(directory: Path = RECORDS) -> list[dict]:
  return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def write_report(directory: Path = RECORDS, path: Path = REPORT) -> Path:
  """BENCHMARKS.md: every record's table with its command, device and date."""
  lines = ["# Benchmarks", "",
           "Generated by `holojax bench --report` from the JSON records in "
           "`train/bench/records/`. Every number below comes from a run of this project; "
           "each section gives the command, device, date and library versions. Compare "
           "numbers only within one record (one run).", ""]
  for rec in sorted(load_records(directory), key=lambda r: (r["name"], r["date"])):
    env = rec["environment"]
    lines += [f"## {rec['name']}: {rec['description']}", "",
              f"- command: `{rec['command']}`",
              f"- device: {env['device']} x{env['device_count']} ({env['platform']}), "
              f"date: {rec['date']}",
              f"- versions: python {env['python']}, jax {env['jax']}, flax {env['flax']}, "
              f"optax {env['optax']}", *[f"- note: {n}" for n in rec.get("notes", [])],
              "", "```", rec["table"].rstrip(), "```", ""]
  path.write_text("\n".join(lines))
  return path
