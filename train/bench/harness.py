"""Run a named benchmark, store its JSON record, regenerate BENCHMARKS.md.

A benchmark is a module (``BENCHMARKS`` below, grouped by the system it
measures) with a frozen config dataclass, a ``TINY`` instance and
``run(config, progress) -> common.Result``; its flags come from the config
(``holojax bench NAME --help``), ``--tiny`` starts from ``TINY``. The
harness prints progress and the table, and adds the device, library
versions, date and command to the numbers: the record goes to
``train/bench/records/<name>--<device>--<date>.json`` with the result's
files beside it (and copies under ``$OUT`` when that variable is set, as on
the lent GPU machine, where ``<name>_partial.json`` also holds the results
so far while a benchmark runs).

  holojax bench gpt_throughput --steps 20
  holojax bench recall --tiny --no-save
  holojax bench --report          # BENCHMARKS.md from every record
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

from holojax.train import flags
from holojax.train.bench.common import Progress

RECORDS = Path(__file__).resolve().parent / "records"
REPORT = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"

# name -> (module, one-line description). Later issues add theirs.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "gpt_throughput": ("holojax.train.bench.lm.throughput",
                       "Baseline transformer training throughput (tokens/s, MFU)"),
    "embed_grad": ("holojax.train.bench.lm.embed_grad",
                   "Token-embedding gradient: scatter-add vs one-hot matmul, text vs uniform ids"),
    "pretrained": ("holojax.train.bench.lm.pretrained",
                   "SmolLM2-135M: perplexity, passkey, prefill/decode speed per KV-cache kind"),
    "holokv": ("holojax.train.bench.lm.holokv",
               "HoloKV (k tokens per KV slot) vs int4/int8/window caches at equal bytes, "
               "LoRA denoising"),
    "holo_convert": ("holojax.train.bench.lm.holo_convert",
                     "SmolLM2 with HOLO / low-rank layers: fresh init (the seed) vs least "
                     "squares vs distilled; parameters, perplexity"),
    "finetune": ("holojax.train.bench.lm.finetune",
                 "SmolLM2 instruction fine-tune (stdlib docstrings), every optimizer at its "
                 "best rate: held-out loss, state bytes"),
    "scaling": ("holojax.train.bench.lm.scaling",
                "Data parallel and FSDP on 1, 2, 4 devices, every optimizer: tokens/s, "
                "scaling efficiency, memory per device"),
    "turbo_adam": ("holojax.train.bench.optim.turbo_adam",
                   "TurboAdam: state bits/param (GPT-2 124M tree) and optimizer step time"),
    "holo_adam": ("holojax.train.bench.optim.holo_adam",
                  "HoloAdam: state bits/param per preset, projected table, step time"),
    "turbo_rows": ("holojax.train.bench.optim.turbo_rows",
                   "TurboAdam's row-block passes alone: XLA vs Mosaic GPU by launch shape, "
                   "against the copy-bandwidth floor"),
    "optimizer_step": ("holojax.train.bench.optim.optimizer_step",
                       "Every optimizer's jitted step: compile time (10 vs 200 leaves), step "
                       "time vs optax.adamw, memory floor"),
    "big_step": ("holojax.train.bench.optim.big_step",
                 "A 13B Llama's full train step on one GPU per optimizer: ok or out of "
                 "memory, peak bytes, step time"),
    "convergence": ("holojax.train.bench.optim.convergence",
                    "Optimizers at equal steps on one model: final loss, gap to AdamW"),
    "demo": ("holojax.train.bench.optim.demo",
             "`holojax demo`: optimizers on the small model, equal steps (CPU)"),
    "phasor": ("holojax.train.bench.phasor.memory",
               "Phasor memory: orthogonality of codes; speed vs cuDNN attention by length"),
    "recall": ("holojax.train.bench.phasor.recall",
               "Holo-Transformer vs attention: MQAR (Zoology grid) and passkey by length"),
    "long_context": ("holojax.train.bench.phasor.long_context",
                     "Phasor LM vs RoPE transformer at 4k/16k; recurrent decode memory to 1M"),
    "holo_layers": ("holojax.train.bench.holo.layers",
                    "HoloLinear / LowRankLinear vs nnx.Linear: forward+backward time"),
    "spiral": ("holojax.train.bench.holo.spiral",
               "HOLO layers: spiral accuracy (ReLU / Holo / low-rank) and the parameter table"),
}


def names() -> list[str]:
  return sorted(BENCHMARKS)


def listing() -> str:
  """One line per benchmark: its name and description."""
  width = max(map(len, names())) + 2
  return "\n".join(f"  {n:<{width}}{flags.plain(BENCHMARKS[n][1])}" for n in names())


def module(name: str):
  """The benchmark's module."""
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; choose one of {names()}")
  return importlib.import_module(BENCHMARKS[name][0])


def default_config(name: str):
  """The config a plain ``holojax bench NAME`` runs."""
  mod = module(name)
  return getattr(mod, "DEFAULT", None) or type(mod.TINY)()


def parser(name: str) -> argparse.ArgumentParser:
  """``holojax bench NAME``'s flags: one per config field, and ``--tiny``."""
  mod = module(name)
  p = argparse.ArgumentParser(prog=f"holojax bench {name}", description=flags.plain(mod.__doc__),
                              usage=f"holojax bench {name} [-h] [--tiny] [--FLAG VALUE ...]",
                              formatter_class=flags.HelpFormatter)
  p.add_argument("--tiny", action="store_true",
                 help="start from the TINY config (a CPU run of well under a minute)")
  flags.add_config_flags(p, type(mod.TINY))
  return p


def parse(name: str, argv: list[str]):
  """The config of ``holojax bench NAME *argv``."""
  args = parser(name).parse_args(argv)
  base = module(name).TINY if args.tiny else default_config(name)
  return flags.config_from_args(base, args)


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


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _out_dirs(record_dir: Path) -> list[Path]:
  return [Path(record_dir)] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])


def _write(path: Path, data: bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  print(f"wrote {path}", file=sys.stderr)


def run(name: str, argv: list[str] = (), *, config=None, save: bool = True,
        record_dir: Path = RECORDS, quiet: bool = False) -> dict:
  """Runs benchmark ``name`` with ``config`` (default: parsed from ``argv``),
  prints its table and, with ``save``, writes its record; returns the record.

  ``quiet`` prints nothing (tests).
  """
  mod, argv = module(name), list(argv)
  if config is None:
    config = parse(name, argv)
  elif not argv:
    argv = ["--tiny"] if config == mod.TINY else flags.config_argv(config)
  t0 = time.perf_counter()
  show = (lambda *a, **k: None) if quiet else print

  def say(msg: str):
    show(f"[{name} {time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

  def partial(results: dict):
    if save and os.environ.get("OUT"):
      rec = {"name": name, "config": dataclasses.asdict(config), "results": results}
      _write(Path(os.environ["OUT"]) / f"{name}_partial.json",
             (json.dumps(rec, indent=1) + "\n").encode())

  out = mod.run(config, Progress(say, partial))
  now = dt.datetime.now(dt.timezone.utc)
  env = environment()
  record = {"name": name, "description": BENCHMARKS[name][1],
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "command": "holojax bench " + " ".join(shlex.quote(a) for a in [name, *argv]),
            "environment": env, "config": dataclasses.asdict(config),
            "results": out.results, "table": out.table}
  record = json.loads(json.dumps(record))  # as stored: lists for tuples, string keys
  show(out.table, flush=True)
  if save:
    fname = f"{name}--{_slug(env['device'])}--{now.strftime('%Y%m%d-%H%M%S')}.json"
    for d in _out_dirs(record_dir):
      _write(d / fname, (json.dumps(record, indent=1) + "\n").encode())
      for file, data in out.files.items():
        _write(d / file, data)
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
