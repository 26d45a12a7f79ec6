"""HOLO layers: spiral accuracy (ReLU / Holo / low-rank) over seeds, and the parameter table.

  holojax bench spiral                  # 3 seeds, 500 steps: a minute on a CPU
  holojax bench spiral --tiny --no-save
"""

from __future__ import annotations

import dataclasses

from holojax.train.bench.common import Progress, Result
from holojax.train.spiral import format_param_table, holo_param_table, run_spiral

NETS = ("relu", "holo", "lowrank", "holo_seed_init")


@dataclasses.dataclass(frozen=True)
class SpiralBenchConfig:
  """``holojax spiral``'s nets on 2 x 1000 points, one run per seed.

  Attributes:
    steps: full-batch Adam steps per net.
    seeds: data and init seeds.
  """

  steps: int = 500
  seeds: tuple[int, ...] = (0, 1, 2)

  def __post_init__(self):
    if self.steps < 1 or not self.seeds:
      raise ValueError(f"steps={self.steps} must be >= 1 and seeds={self.seeds} not empty")


TINY = SpiralBenchConfig(steps=20, seeds=(0,))


def run(cfg: SpiralBenchConfig, progress: Progress = Progress()) -> Result:
  runs = {}
  for s in cfg.seeds:
    runs[s] = run_spiral(cfg.steps, s)
    progress.say(f"seed {s}: " + ", ".join(f"{n} {runs[s][n]['acc']:.3f}" for n in NETS))
  lines = [f"spiral: 2000 points, {cfg.steps} full-batch Adam steps; training accuracy per seed",
           f"{'net':<16}{'learned params':>15}" + "".join(f"{f'seed {s}':>9}" for s in cfg.seeds)]
  for net in NETS:
    lines.append(f"{net:<16}{runs[cfg.seeds[0]][net]['params']:>15,}" +
                 "".join(f"{runs[s][net]['acc']:>9.3f}" for s in cfg.seeds))
  table = holo_param_table()
  lines += ["", "parameter table (holo = learned 2*out*H; basis = fixed H*in, counted apart)",
            format_param_table(table)]
  return Result({"spiral": runs, "param_table": table}, "\n".join(lines))
