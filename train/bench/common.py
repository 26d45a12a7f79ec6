"""Pieces the benchmarks share: training to a time budget.

Benchmarks that compare models at equal steps within a wall-clock budget
(``recall``, ``long_context``) time a few steps after compiling, then fit
the number of steps to what is left (``fit_steps``); their learning rate is
set per step from the host (``step.host_lr``), so fixing the total late
costs no recompilation.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import optax
from flax import nnx

from holojax.models.gpt import GPT, GPTConfig
from holojax.models.holo_transformer import HoloConfig, HoloForCausalLM
from holojax.train.step import with_learning_rate

LM_ARCHS = ("phasor", "attention")


def lm_config(arch: str, *, vocab_size: int, width: int, layers: int, heads: int,
              max_seq_len: int, dtype: str, hd_dim: int | None = None, **phasor):
  """A phasor LM (``HoloConfig``, memory width ``hd_dim``, ``phasor`` extra
  fields) or a RoPE attention LM (``GPTConfig``) of equal width, depth, heads
  and MLP (4 width): the two sides of the phasor benchmarks.

  Example:
    >>> lm_config("attention", vocab_size=256, width=64, layers=2, heads=1,
    ...           max_seq_len=128, dtype="float32").d_ff
    256
  """
  if arch == "phasor":
    return HoloConfig(vocab_size=vocab_size, hidden_size=width, hd_dim=hd_dim,
                      num_hidden_layers=layers, num_heads=heads, mlp_ratio=4.0,
                      max_seq_len=max_seq_len, dtype=dtype, **phasor)
  if arch == "attention":
    return GPTConfig(vocab_size=vocab_size, d_model=width, n_layers=layers, n_heads=heads,
                     d_ff=4 * width, max_seq_len=max_seq_len, dtype=dtype)
  raise ValueError(f"arch {arch!r} must be one of {LM_ARCHS}")


def build_lm(config, seed: int) -> nnx.Module:
  """The model of an ``lm_config``."""
  cls = HoloForCausalLM if isinstance(config, HoloConfig) else GPT
  return cls(config, rngs=nnx.Rngs(seed))


def adamw(learning_rate, *, weight_decay: float, b2: float,
          matrices_only: bool = False) -> optax.GradientTransformation:
  """Global-norm clipping at 1, then AdamW (b1 = 0.9) with decoupled weight
  decay on every parameter or, with ``matrices_only``, on those of 2+ dims."""
  mask = (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)) if matrices_only else None
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(learning_rate, b1=0.9, b2=b2, weight_decay=weight_decay,
                                 mask=mask))


def warmup_cosine(peak: float, warmup: int, total: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine to
  peak / 10 at ``total`` (``optax.warmup_cosine_decay_schedule``).

  Example:
    >>> s = warmup_cosine(1.0, 10, 100)
    >>> [round(float(s(i)), 3) for i in (0, 5, 10, 55, 100)]
    [0.0, 0.5, 1.0, 0.55, 0.1]
  """
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1),
                                            0.1 * peak)


def fit_steps(seconds: float, step_s: float, *, done: int, most: int) -> int:
  """The step total when ``done`` steps are run and ``seconds`` are left at
  ``step_s`` seconds a step: done + floor(seconds / step_s), within [done, most].

  Example:
    >>> fit_steps(10.0, 0.5, done=30, most=1000), fit_steps(-1.0, 0.5, done=30, most=1000)
    (50, 30)
  """
  return max(done, min(most, done + int(seconds / step_s)))


def train_steps(step, state, batch_at: Callable[[int], Any], lr_at: Callable[[int], float],
                steps: range, *, losses: list, stop_at: float | None = None,
                log_at: Callable[[int], bool] | None = None,
                on_loss: Callable[[int, float], None] | None = None) -> tuple[Any, int]:
  """Runs ``step`` (a ``make_train_step``) over ``steps`` with learning rate
  ``lr_at(i)`` and batch ``batch_at(i)``.

  Appends each step's loss (a device scalar) to ``losses``. The loss of every
  step i with ``log_at(i)`` goes to ``on_loss(i, loss)`` one step later, so
  reading it never waits for the step just queued. Stops before a step once
  ``time.perf_counter() >= stop_at``. Returns (state, index after the last
  step run).
  """
  pending, done = None, steps.start
  for i in steps:
    if stop_at is not None and time.perf_counter() >= stop_at:
      break
    state, metrics = step(with_learning_rate(state, lr_at(i)), batch_at(i))
    losses.append(metrics["train/loss"])
    done = i + 1
    if pending is not None:
      on_loss(pending[0], float(pending[1]))
      pending = None
    if on_loss is not None and log_at(i):
      pending = (i, metrics["train/loss"])
  if pending is not None:
    on_loss(pending[0], float(pending[1]))
  return state, done


def check_finite(tag: str, i: int, loss: float):
  """Raises ``FloatingPointError`` naming ``tag`` and step ``i`` if ``loss`` is NaN/Inf."""
  if not math.isfinite(loss):
    raise FloatingPointError(f"{tag}: loss {loss} at step {i}")
