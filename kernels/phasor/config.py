"""Tile sizes of the Pallas phasor kernels (``pallas_triton``, ``mosaic_gpu``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PhasorBlocks:
  """Tile sizes of the phasor kernels.

  block_t: rows of T per chunk, the unit of the in-chunk prefix sum (power
    of two, >= 16).
  chunks: chunks per program: a program walks a segment of block_t *
    chunks rows, carrying its running sum, so the carries that XLA sums
    between programs number T / (block_t * chunks). 0: one segment spans
    the whole sequence (no totals pass and no carries: fewest bytes, but
    only B * H * D / block_d programs; measured 5-40% slower than the
    default at B4 H16 D128, T = 16k, on an H100).
  block_d: head-dim columns per program (power of two); capped at the head
    dim's largest power-of-two divisor.
  num_warps, num_stages: Triton launch parameters.
  fast_trig: hardware cos/sin after an explicit range reduction on GPU
    (see ``_cos_sin``); False uses libdevice's. The interpreter always
    uses ``jnp.cos`` / ``jnp.sin``.

  The Mosaic GPU kernel reads the same fields its own way: block_d rounded
  to 128 or 256 columns (one or two per thread of a warpgroup), num_stages
  the pipeline's slots (at least 2), num_warps unused; with ``blocks=None``
  it uses ``mosaic_gpu.DEFAULT_BLOCKS``.

  The defaults were tuned on an H100 (``holojax bench phasor --tune``);
  ``phasor_memory(blocks=)``, ``PhasorAttention(blocks=)`` and
  ``HoloConfig(blocks=)`` take tuned ones.

  Example:
    >>> PhasorBlocks(block_t=32, chunks=4).segment
    128
  """

  block_t: int = 16
  chunks: int = 16
  block_d: int = 64
  num_warps: int = 4
  num_stages: int = 1
  fast_trig: bool = True

  def __post_init__(self):
    for name in ("block_t", "block_d"):
      val = getattr(self, name)
      if val < 1 or val & (val - 1):
        raise ValueError(f"{name}={val} must be a power of two")
    if self.chunks < 0:
      raise ValueError(f"chunks={self.chunks} must be >= 0 (0: whole sequence)")
    if self.block_t < 16:
      raise ValueError(f"block_t={self.block_t} must be at least 16")
    if self.num_warps < 1 or self.num_stages < 1:
      raise ValueError(f"num_warps={self.num_warps} and num_stages="
                       f"{self.num_stages} must be positive")

  @property
  def segment(self) -> int:
    return self.block_t * self.chunks
