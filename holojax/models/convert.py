"""Swap a Llama's linear layers for HOLO or low-rank layers, weights transferred.

For every target projection ``W`` [out, in] (``nnx.Linear`` kernel ``K = W^T``)
of every block, ``convert`` builds one of

* ``"holo"``: ``HoloLinear.from_dense``, ``C = W B^+`` for a fixed random
  basis ``B`` [H, in] (least squares; relative error ``||C B - W|| / ||W||``,
  about ``sqrt(1 - H / in)`` for a generic ``W``: a random H-dimensional
  row space keeps about H / in of its energy);
* ``"holo-fresh"``: the seed's swap (HOLO-PHI.py), a fresh ``HoloLinear``
  with amplitude ``1 / H``, random phases and the *same* seed in every layer:
  no weight is transferred (its relative error is reported all the same);
* ``"lowrank"``: ``LowRankLinear.from_dense``, the truncated SVD of ``K`` at
  the rank whose ``r (in + out)`` parameters match the HOLO layer's
  ``2 out H`` (``equal_param_rank``), or at ``rank`` when given: the best
  rank-r map (Eckart-Young), the honest baseline.

With ``calibrated=True`` each fit minimises the error of the layer's
*outputs* on calibration inputs ``X`` instead of its weights: with the
inputs' Gram matrix ``G = X^T X`` (``input_grams``), the HOLO coefficients
solve ``(B G B^T) C^T = B G K`` and the low-rank layer is the truncated SVD
of ``L^T K`` mapped back, ``K' = L^-T (L^T K)_r`` (``G = L L^T``; as in
ASVD / SVD-LLM): directions the inputs never take cost nothing.

``targets="all"`` converts all seven projections (q, k, v, o, gate, up, down:
the seed's "100%"; embeddings and norms stay), ``"mlp"`` only gate/up/down
(the seed's hybrid), ``"attn"`` only q/k/v/o; a tuple names them.

Example:
  >>> import jax.numpy as jnp
  >>> from holojax.models.llama import LLAMA_PRESETS, Llama
  >>> m = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(0))
  >>> m, fits = convert(m, ConvertSpec("holo", targets="mlp", harmonics=8))
  >>> len(fits), fits[0].layer, type(m.layers[0].up_proj).__name__
  (6, 'layers[0].gate_proj', 'HoloLinear')
  >>> m(jnp.zeros((1, 4), jnp.int32)).shape
  (1, 4, 256)
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.nn.holo import HoloLinear, LowRankLinear, equal_param_rank, holo_param_count

KINDS = ("holo", "holo-fresh", "lowrank")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = {"all": ATTN + MLP, "mlp": MLP, "attn": ATTN}


@dataclasses.dataclass(frozen=True)
class ConvertSpec:
  """How ``convert`` swaps layers (module docstring).

  Attributes:
    kind: ``"holo"`` (least squares), ``"holo-fresh"`` (the seed's fresh
      init) or ``"lowrank"`` (truncated SVD).
    targets: ``"all"``, ``"mlp"``, ``"attn"`` or a tuple of projection names.
    harmonics: H of the HOLO layers; for ``"lowrank"`` it sets the rank by
      equal parameters unless ``rank`` is given.
    rank: the low-rank layers' rank (``"lowrank"`` only).
    seed: basis seeds (``seed`` + a hash of the layer's name for ``"holo"``,
      ``seed`` for every layer for ``"holo-fresh"``, as the seed did).
    calibrated: fit each layer's outputs on calibration inputs (``grams`` of
      ``convert``) rather than its weights; not for ``"holo-fresh"``.
  """

  kind: str = "holo"
  targets: str | tuple[str, ...] = "all"
  harmonics: int = 32
  rank: int | None = None
  seed: int = 0
  calibrated: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
    names = self.target_names()
    bad = [n for n in names if n not in TARGETS["all"]]
    if bad or not names:
      raise ValueError(f"targets={self.targets!r} must be one of {sorted(TARGETS)} or a "
                       f"non-empty tuple of {TARGETS['all']}; cannot convert {bad}")
    if isinstance(self.harmonics, bool) or not isinstance(self.harmonics, int) \
        or self.harmonics < 1:
      raise ValueError(f"harmonics={self.harmonics!r} must be an int >= 1")
    if self.calibrated and self.kind == "holo-fresh":
      raise ValueError("calibrated=True fits weights to data; kind='holo-fresh' fits nothing")
    if self.rank is not None and (self.kind != "lowrank" or self.rank < 1):
      raise ValueError(f"rank={self.rank!r} is for kind='lowrank' only and must be >= 1")

  def target_names(self) -> tuple[str, ...]:
    return TARGETS[self.targets] if isinstance(self.targets, str) and self.targets in TARGETS \
        else tuple(self.targets) if not isinstance(self.targets, str) else (self.targets,)

  @property
  def name(self) -> str:
    """A short label, e.g. ``holo-all-h32``, ``lowrank-mlp-r16``."""
    where = self.targets if isinstance(self.targets, str) else "+".join(self.targets)
    size = f"r{self.rank}" if self.rank else f"h{self.harmonics}"
    return f"{self.kind}{'-cal' if self.calibrated else ''}-{where}-{size}"


class LayerFit(NamedTuple):
  """One converted projection: its name, shape, parameters before and after, the
  relative Frobenius error of the new kernel against the old, and (with
  calibration inputs) the relative error of its outputs on them,
  ``||X (K' - K)|| / ||X K||``."""

  layer: str
  in_features: int
  out_features: int
  dense_params: int
  params: int
  rel_err: float
  out_err: float | None = None


def _basis_seed(spec: ConvertSpec, name: str) -> int:
  if spec.kind == "holo-fresh":
    return spec.seed
  return (spec.seed + zlib.crc32(name.encode())) % (2 ** 31)


def _rank_of(spec: ConvertSpec, d_in: int, d_out: int) -> int:
  return spec.rank or equal_param_rank(d_in, d_out, spec.harmonics)


def _check_fits(spec: ConvertSpec, name: str, base) -> None:
  if not isinstance(base, nnx.Linear):
    raise ValueError(f"{name} is {type(base).__name__}, not an nnx.Linear: it cannot be "
                     f"converted")
  d_in, d_out = base.in_features, base.out_features
  limit = min(d_in, d_out)
  size = _rank_of(spec, d_in, d_out) if spec.kind == "lowrank" else spec.harmonics
  what = "rank" if spec.kind == "lowrank" else "harmonics"
  if size > limit:
    raise ValueError(f"{name} ({d_in} -> {d_out}) has rank at most {limit}: {what}={size} "
                     f"is larger than its rank limit")


def _damped(g_ii: np.ndarray) -> np.ndarray:
  """G + 1e-4 mean(diag G) I: positive definite even where inputs span less than R^in."""
  return g_ii + 1e-4 * max(float(np.mean(np.diag(g_ii))), 1e-12) * np.eye(len(g_ii))


def _holo_calibrated(layer: HoloLinear, k_io: np.ndarray, g_ii: np.ndarray) -> None:
  """Sets C to argmin ||X (B^T C^T - K)||_F: (B G B^T) C^T = B G K."""
  b_hi = np.asarray(layer.basis_hi[...], np.float64)
  gb_ih = g_ii @ b_hi.T
  ct_ho = np.linalg.solve(b_hi @ gb_ih, gb_ih.T @ k_io)
  layer.amp_oh[...] = jnp.asarray(ct_ho.T, jnp.float32)
  layer.phase_oh[...] = jnp.zeros_like(layer.phase_oh[...])


def _lowrank_calibrated(layer: LowRankLinear, k_io: np.ndarray, g_ii: np.ndarray) -> None:
  """Sets u v to argmin over rank r of ||X (u v - K)||_F (whitened truncated SVD)."""
  l_ii = np.linalg.cholesky(g_ii)  # G = L L^T, ||X M|| = ||L^T M||
  u_ik, s_k, vt_ko = np.linalg.svd(l_ii.T @ k_io, full_matrices=False)
  r = layer.rank
  root = np.sqrt(s_k[:r])
  layer.u_ir[...] = jnp.asarray(np.linalg.solve(l_ii.T, u_ik[:, :r] * root), jnp.float32)
  layer.v_ro[...] = jnp.asarray(root[:, None] * vt_ko[:r], jnp.float32)


def _kernel_of(layer) -> np.ndarray:
  if isinstance(layer, HoloLinear):
    return np.asarray(layer.dense_kernel(), np.float64)
  return np.asarray(layer.u_ir[...], np.float64) @ np.asarray(layer.v_ro[...], np.float64)


def _swap(spec: ConvertSpec, name: str, base: nnx.Linear, g_ii: np.ndarray | None):
  k_io = np.asarray(base.kernel[...], np.float64)
  bias = None if base.bias is None else np.asarray(base.bias[...], np.float32)
  d_in, d_out = k_io.shape
  rngs, use_bias = nnx.Rngs(spec.seed), bias is not None
  if spec.kind == "holo-fresh":  # the seed's swap: nothing transferred, one seed everywhere
    layer = HoloLinear(d_in, d_out, spec.harmonics, use_bias=use_bias, basis_seed=spec.seed,
                       init="seed", rngs=rngs)
  elif not spec.calibrated:  # fit the weights
    layer = (LowRankLinear.from_dense(k_io, _rank_of(spec, d_in, d_out), bias=bias, rngs=rngs)
             if spec.kind == "lowrank" else
             HoloLinear.from_dense(k_io, spec.harmonics, basis_seed=_basis_seed(spec, name),
                                   bias=bias, rngs=rngs))[0]
  elif spec.kind == "lowrank":  # fit the outputs on the calibration inputs
    layer = LowRankLinear(d_in, d_out, _rank_of(spec, d_in, d_out), use_bias=use_bias, rngs=rngs)
    _lowrank_calibrated(layer, k_io, _damped(g_ii))
  else:
    layer = HoloLinear(d_in, d_out, spec.harmonics, use_bias=use_bias,
                       basis_seed=_basis_seed(spec, name), rngs=rngs)
    _holo_calibrated(layer, k_io, _damped(g_ii))
  if spec.calibrated and use_bias:
    layer.bias_o[...] = jnp.asarray(bias)
  diff_io = _kernel_of(layer) - k_io
  err = float(np.linalg.norm(diff_io) / max(np.linalg.norm(k_io), 1e-30))
  out_err = None
  if g_ii is not None:  # ||X M||^2 = tr(M^T G M)
    out_err = float(np.sqrt(np.sum(diff_io * (g_ii @ diff_io))
                            / max(np.sum(k_io * (g_ii @ k_io)), 1e-300)))
  dtype = base.kernel[...].dtype  # stored like the layer it replaces
  nnx.update(layer, jax.tree.map(lambda x: x.astype(dtype), nnx.state(layer)))
  return layer, LayerFit(name, d_in, d_out, param_count(base), param_count(layer), err, out_err)


class _Gram(nnx.Variable):
  """A running sum of x^T x over the tokens a layer has read (calibration only)."""


class _Recorder(nnx.Module):
  """``base`` (an ``nnx.Linear``) that also accumulates its inputs' Gram matrix."""

  def __init__(self, base: nnx.Linear):
    self.base = base
    self.gram = _Gram(jnp.zeros((base.in_features, base.in_features), jnp.float32))

  def __call__(self, x):
    x_ni = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    self.gram[...] = self.gram[...] + x_ni.T @ x_ni
    return self.base(x)


def input_grams(model, ids_nbt, names=TARGETS["all"]) -> dict[str, np.ndarray]:
  """``{"layers[i].name": G float64[in, in]}``: the Gram matrix ``X^T X`` of the inputs each
  projection ``names`` of each block reads while ``model`` reads every batch of ``ids_nbt``
  int32[N, B, T] (the model is left as it was).

  Example:
    >>> from holojax.models.llama import LLAMA_PRESETS, Llama
    >>> m = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(0))
    >>> g = input_grams(m, np.zeros((1, 2, 8), np.int32), ("down_proj",))
    >>> sorted(g), g["layers[0].down_proj"].shape
    (['layers[0].down_proj', 'layers[1].down_proj'], (128, 128))
  """
  for block in model.layers:
    for n in names:
      setattr(block, n, _Recorder(getattr(block, n)))
  try:
    read = nnx.jit(lambda m, ids: m(ids))
    for ids_bt in np.asarray(ids_nbt):
      read(model, jnp.asarray(ids_bt, jnp.int32))
    return {f"layers[{i}].{n}": np.asarray(getattr(block, n).gram[...], np.float64)
            for i, block in enumerate(model.layers) for n in names}
  finally:
    for block in model.layers:
      for n in names:
        setattr(block, n, getattr(block, n).base)


def convert(model, spec: ConvertSpec, grams: dict[str, np.ndarray] | None = None):
  """Swaps ``spec``'s projections of every block of ``model.layers`` (in place).

  Every layer is checked before any is swapped, so a bad spec leaves the model
  as it was. ``grams`` (``input_grams``) are needed by ``spec.calibrated`` and,
  when given, give every fit its output error.

  Returns:
    ``(model, fits)``: ``fits`` a list of ``LayerFit``, one per swapped layer,
    in order (block, then ``spec.target_names()``).

  Raises:
    ValueError: a target that is not an ``nnx.Linear`` (e.g. already converted,
      or wrapped in LoRA), or a ``harmonics`` / rank above the layer's rank
      limit ``min(in, out)``; the message names the layer.
  """
  names = spec.target_names()
  for i, block in enumerate(model.layers):
    for n in names:
      _check_fits(spec, f"layers[{i}].{n}", getattr(block, n, None))
      if (spec.calibrated or grams is not None) and f"layers[{i}].{n}" not in (grams or {}):
        raise ValueError(f"layers[{i}].{n} has no calibration Gram matrix in grams "
                         f"(input_grams gives them)")
  fits = []
  for i, block in enumerate(model.layers):
    for n in names:
      key = f"layers[{i}].{n}"
      layer, fit = _swap(spec, key, getattr(block, n), None if grams is None else grams[key])
      setattr(block, n, layer)
      fits.append(fit)
  return model, fits


def trainable(spec: ConvertSpec):
  """The ``nnx`` filter of the converted layers' learned parameters (their
  ``nnx.Param``s; a HOLO basis is not one): distillation trains these only."""
  return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in spec.target_names())))


def param_count(model) -> int:
  """Learned parameters (``nnx.Param`` elements) of ``model``."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def stored_bytes(model) -> int:
  """Bytes of every array the model holds (parameters and fixed HOLO bases)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model))
             if hasattr(x, "dtype"))


def swapped_params(dense: dict[str, tuple[int, int]], layers: int, harmonics: int,
                   kept: int) -> tuple[int, int]:
  """(parameters before, after) of a 100% HOLO swap by formula: ``dense`` maps each
  projection to (in, out), repeated over ``layers`` blocks, plus ``kept`` untouched
  parameters (embeddings, norms). Checks a published row without its model.

  Example (Phi-3-mini's shapes, the seed's table: 3.82B -> 0.33B at H = 64):
    >>> phi3 = {"qkv": (3072, 9216), "o": (3072, 3072), "gate_up": (3072, 16384),
    ...         "down": (8192, 3072)}
    >>> kept = 2 * 32064 * 3072 + (2 * 32 + 1) * 3072
    >>> [round(n / 1e9, 2) for n in swapped_params(phi3, 32, 64, kept)]
    [3.82, 0.33]
  """
  before = kept + layers * sum(i * o for i, o in dense.values())
  after = kept + layers * sum(holo_param_count(i, o, harmonics) for i, o in dense.values())
  return before, after


__all__ = ["ATTN", "KINDS", "MLP", "TARGETS", "ConvertSpec", "LayerFit", "convert",
           "input_grams", "param_count", "stored_bytes", "swapped_params", "trainable"]
