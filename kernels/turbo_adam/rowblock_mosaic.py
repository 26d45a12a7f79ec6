"""placeholder"""
from holojax.kernels import backend


def check_layout(*, v_bits, ref_bits, block_size):
  if block_size != 128 or v_bits not in (2, 4, 8) or ref_bits not in (1, 2):
    raise backend.Unsupported(f"block_size={block_size}, v_bits={v_bits}, m_ref_bits={ref_bits}")
