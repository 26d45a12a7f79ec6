"""``holojax demo`` as a benchmark record: optimizers on the small model, equal steps (CPU).

  holojax bench demo                  # the demo's defaults, minutes on a 2-core CPU
  holojax bench demo --tiny --no-save # two optimizers, the tiny model, seconds
"""

from __future__ import annotations

from holojax.train.bench.common import Progress, Result
from holojax.train.demo import DemoConfig, format_table, train_all

DEFAULT = DemoConfig(progress=False)
TINY = DemoConfig(optimizers=("adamw", "lion"), model="tiny", steps=6, progress=False,
                  workers=1)


def run(cfg: DemoConfig, progress: Progress = Progress()) -> Result:
  rows = train_all(cfg, say=progress.say)
  summary = [{k: r[k] for k in ("optimizer", "learning_rate", "final_eval_loss", "tokens_per_s",
                                "state_bits_per_param")} for r in rows]
  return Result({"rows": summary}, format_table(rows))
