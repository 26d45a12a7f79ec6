"""Pure-``jnp`` reference of the fused TurboAdam v step (the kernel's contract).

For one tensor viewed as blocks ``[nb, bs]``, given the gradient ``g``, the
first moment ``m_t`` already updated, and the packed log-scale ``v``::

  v_{t-1} = decode(codes, lo, hi)
  v_t     = b2 v_{t-1} + (1 - b2) g^2
  u_t     = (m_t (1 / bc1)) / (sqrt(v_t (1 / bc2)) + eps)
  codes', lo', hi' = encode_stochastic(v_t, u(seed, index))   # sticky grid

with ``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``. Returns ``(u_t, codes', lo', hi')``.
The bias corrections multiply by their reciprocals, written out: XLA:CPU
rewrites a division by a broadcast scalar into that product in some
programs and not in others (an ulp apart), so the kernels and this
reference all spell it the way it is not rewritten.
The draws ``u`` hash the element index ``row * bs + column``: the row's
position in ``g`` or, given ``row_ids``, its id there (a block's row in the
unsharded buffer, for a buffer cut into shards).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from holojax.kernels import quant


def fused_v_update_reference(g: jax.Array, m: jax.Array, codes: jax.Array, lo: jax.Array,
                             hi: jax.Array, scalars: jax.Array, seed: jax.Array, *,
                             bits: int, row_ids: jax.Array | None = None
                             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Reference fused step.

  Args:
    g: ``float32[nb, bs]`` gradient blocks.
    m: ``float32[nb, bs]`` first moment at step t (not bias corrected).
    codes: ``uint8[nb, bs*bits/8]`` packed v codes; ``lo``/``hi``: ``float16[nb]``.
    scalars: ``float32[4]`` = ``(b2, eps, bc1, bc2)``.
    seed: ``uint32[]`` seed of this step and tensor.
    bits: v code width.
    row_ids: ``int32[nb]`` row of each block in the draws' index (default: its position).

  Returns:
    ``(update float32[nb, bs], codes, lo, hi)``.
  """
  bs = g.shape[-1]
  b2, eps, bc1, bc2 = scalars[0], scalars[1], scalars[2], scalars[3]
  v_old = quant.decode_log(quant.unpack_bits(codes, bits, bs), lo, hi, bits=bits)
  v = b2 * v_old + (1.0 - b2) * jnp.square(g)
  upd = (m * (1.0 / bc1)) / (jnp.sqrt(v * (1.0 / bc2)) + eps)
  u = (quant.hash_uniform(seed, v.shape) if row_ids is None
       else quant.hash_uniform_rows(seed, row_ids, bs))
  new_codes, new_lo, new_hi = quant.encode_log(v, u, bits=bits, prev_lo=lo, prev_hi=hi)
  return upd, quant.pack_bits(new_codes, bits), new_lo, new_hi
