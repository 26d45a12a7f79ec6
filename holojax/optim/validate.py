"""Argument validation shared by holojax's optimizers.

Construction-time checks raise ``TypeError`` for a wrong kind of value and
``ValueError`` for a value out of range; both name the argument and what is
allowed. Traced values (under ``jax.jit`` or ``optax.inject_hyperparams``)
cannot be inspected and pass unchecked, except where a shape depends on
them (:func:`static_int`, :func:`static_bool`).

Example:
  >>> check_real("b1", 0.9, 0.0, 1.0, hi_open=True)
  >>> check_real("b1", 1.0, 0.0, 1.0, hi_open=True)
  Traceback (most recent call last):
  ...
  ValueError: b1=1.0 must be a finite number in [0.0, 1.0)
  >>> static_int("v_bits", 4.0, choices=(2, 3, 4, 6, 8))
  Traceback (most recent call last):
  ...
  TypeError: v_bits=4.0 sets array shapes and must be a Python int, one of (2, 3, 4, 6, 8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

_STATIC_HINT = ("under optax.inject_hyperparams pass it in static_args (e.g. "
                "holojax.optim.TURBO_ADAM_STATIC_ARGS / HOLO_ADAM_STATIC_ARGS)")


def _is_traced(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def _range(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
  return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def check_real(name: str, value, lo: float = -math.inf, hi: float = math.inf, *,
               lo_open: bool = False, hi_open: bool = False) -> None:
  """A real number (Python, NumPy or a concrete 0-d array) in the given range.

  Raises:
    TypeError: ``value`` is not a real number (a string, a bool, an array
      with more than one element).
    ValueError: ``value`` is NaN, infinite where ``hi`` is finite, or out of
      range.
  """
  if _is_traced(value):
    return
  if isinstance(value, (bool, np.bool_, str, bytes)) or not (
      isinstance(value, (int, float, np.number)) or (hasattr(value, "shape")
                                                     and hasattr(value, "dtype"))):
    raise TypeError(f"{name}={value!r} must be a real number in "
                    f"{_range(lo, hi, lo_open, hi_open)}, not {type(value).__name__}")
  arr = np.asarray(value)
  if arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
    raise TypeError(f"{name} must be a real scalar, got {arr.dtype}{list(arr.shape)}")
  x = float(arr)
  bad = (math.isnan(x) or (math.isinf(x) and not math.isinf(hi)) or x < lo or x > hi
         or (lo_open and x == lo) or (hi_open and x == hi))
  if bad:
    raise ValueError(f"{name}={value!r} must be a finite number in "
                     f"{_range(lo, hi, lo_open, hi_open)}")


def check_scalar_or_schedule(name: str, value, lo: float = 0.0) -> None:
  """A learning rate: a callable schedule, or a finite real number ``>= lo``."""
  if callable(value):
    return
  check_real(name, value, lo, math.inf, hi_open=True)


def static_int(name: str, value, lo: int | None = None, *,
               choices: Sequence[int] | None = None) -> None:
  """A Python integer that sets array shapes (never traced, never a float).

  Raises:
    TypeError: ``value`` is an array or tracer, a float, a bool or a string.
    ValueError: ``value < lo`` or not in ``choices``.
  """
  allowed = f"one of {tuple(choices)}" if choices is not None else f">= {lo}"
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    raise TypeError(f"{name} sets array shapes and must be a Python int ({allowed}), "
                    f"not an array; {_STATIC_HINT}")
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}={value!r} sets array shapes and must be a Python int, {allowed}")
  if (choices is not None and value not in choices) or (lo is not None and value < lo):
    raise ValueError(f"{name}={value!r} is not allowed; must be {allowed}")


def static_choice(name: str, value, choices: Sequence[str]) -> None:
  """A Python string naming one of ``choices`` (a code path or state layout).

  Raises:
    TypeError: ``value`` is not a string.
    ValueError: ``value`` is not in ``choices``.
  """
  if not isinstance(value, str):
    raise TypeError(f"{name}={value!r} must be a str, one of {tuple(choices)}")
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not allowed; must be one of {tuple(choices)}")


def static_bool(name: str, value) -> None:
  """A Python bool that selects a code path (never traced)."""
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    raise TypeError(f"{name} selects a code path and must be True or False, not an array; "
                    f"{_STATIC_HINT}")
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name}={value!r} must be True or False")


def check_seed(name: str, value) -> None:
  """A PRNG seed: a non-negative integer, or a traced integer array."""
  if _is_traced(value):
    return
  arr = np.asarray(value)
  if isinstance(value, (bool, np.bool_)) or arr.shape != () or not np.issubdtype(
      arr.dtype, np.integer):
    raise TypeError(f"{name}={value!r} must be a non-negative integer")
  if int(arr) < 0:
    raise ValueError(f"{name}={value!r} must be a non-negative integer")


def check_float_params(fn_name: str, params) -> None:
  """Every leaf of ``params`` has a floating dtype (at ``init``)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating):
      raise TypeError(f"{fn_name} needs floating-point params; "
                      f"{jax.tree_util.keystr(path)} has dtype {leaf.dtype}")


def check_param_shapes(fn_name: str, updates, params) -> None:
  """Every gradient leaf has its parameter's shape (checked at trace time).

  Raises:
    ValueError: naming the first leaf whose shape differs.
  """
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  refs = jax.tree.structure(updates).flatten_up_to(params)
  for (path, g), p in zip(flat, refs):
    if p is not None and hasattr(p, "shape") and tuple(g.shape) != tuple(p.shape):
      raise ValueError(f"{fn_name}: the gradient of {jax.tree_util.keystr(path)} has shape "
                       f"{tuple(g.shape)} but the parameter has shape {tuple(p.shape)}")


def raise_state_mismatch(fn_name: str, path, shape) -> None:
  """Raises the error for a gradient that does not fit its optimizer state."""
  raise ValueError(f"{fn_name}: the gradient of {jax.tree_util.keystr(path)} has shape "
                   f"{tuple(shape)}, which does not match the optimizer state built for "
                   "that parameter at init")
