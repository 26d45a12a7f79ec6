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
import numpy as np
from flax import nnx

from holojax.nn.holo import (HoloLinear, LowRankLinear, equal_param_rank, holo_param_count,
                             lowrank_param_count)

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
  """

  kind: str = "holo"
  targets: str | tuple[str, ...] = "all"
  harmonics: int = 32
  rank: int | None = None
  seed: int = 0

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
    return f"{self.kind}-{where}-{size}"


class LayerFit(NamedTuple):
  """One converted projection: its name, shape, parameters before and after, and
  the relative Frobenius error of the new layer's kernel against the old."""

  layer: str
  in_features: int
  out_features: int
  dense_params: int
  params: int
  rel_err: float


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


def _swap(spec: ConvertSpec, name: str, base: nnx.Linear):
  k_io = np.asarray(base.kernel[...], np.float64)
  bias = None if base.bias is None else np.asarray(base.bias[...], np.float32)
  d_in, d_out = k_io.shape
  if spec.kind == "lowrank":
    layer, err = LowRankLinear.from_dense(k_io, _rank_of(spec, d_in, d_out), bias=bias,
                                          rngs=nnx.Rngs(spec.seed))
    params = lowrank_param_count(d_in, d_out, layer.rank, use_bias=bias is not None)
  elif spec.kind == "holo":
    layer, err = HoloLinear.from_dense(k_io, spec.harmonics, basis_seed=_basis_seed(spec, name),
                                       bias=bias, rngs=nnx.Rngs(spec.seed))
    params = holo_param_count(d_in, d_out, spec.harmonics, use_bias=bias is not None)
  else:  # the seed's swap: nothing transferred, one seed everywhere
    layer = HoloLinear(d_in, d_out, spec.harmonics, use_bias=bias is not None,
                       basis_seed=spec.seed, init="seed", rngs=nnx.Rngs(spec.seed))
    w_oi = k_io.T
    err = float(np.linalg.norm(np.asarray(layer.dense_kernel(), np.float64).T - w_oi)
                / max(np.linalg.norm(w_oi), 1e-30))
    params = holo_param_count(d_in, d_out, spec.harmonics, use_bias=bias is not None)
  dtype = base.kernel[...].dtype  # stored like the layer it replaces
  nnx.update(layer, jax.tree.map(lambda x: x.astype(dtype), nnx.state(layer)))
  return layer, LayerFit(name, d_in, d_out, k_io.size + (0 if bias is None else d_out),
                         params, err)


def convert(model, spec: ConvertSpec):
  """Swaps ``spec``'s projections of every block of ``model.layers`` (in place).

  Every layer is checked before any is swapped, so a bad spec leaves the model
  as it was.

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
  fits = []
  for i, block in enumerate(model.layers):
    for n in names:
      layer, fit = _swap(spec, f"layers[{i}].{n}", getattr(block, n))
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
           "param_count", "stored_bytes", "swapped_params", "trainable"]
