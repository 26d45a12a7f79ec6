"""TurboAdam's fused v step: its ``jnp`` reference, two Pallas kernels, the public op.

``reference.py`` (the contract), ``mosaic_gpu.py`` (the Hopper kernel,
Pallas Mosaic GPU), ``rowblock_reference.py`` / ``rowblock_mosaic.py`` (the
whole default step as two row passes: contract and Hopper kernels), ``pallas_triton.py`` (the Triton kernel, compiled on
GPU; both also run in the Pallas interpreter) and ``api.py`` (the public
:func:`fused_v_update`, which picks a backend; the kernels are opt-in). The
bit packing all use is :mod:`holojax.kernels.quant`.
"""

from holojax.kernels.turbo_adam.api import (DEFAULT_ORDER, IMPLEMENTATIONS, fused_v_update,
                                            rowblock_backend, rowblock_pass_a, rowblock_pass_b,
                                            select_implementation)
from holojax.kernels.turbo_adam.mosaic_gpu import fused_v_update_mosaic
from holojax.kernels.turbo_adam.pallas_triton import (KERNEL_WIDTHS, check_layout,
                                                      fused_v_update_pallas)
from holojax.kernels.turbo_adam.reference import fused_v_update_reference

__all__ = ["DEFAULT_ORDER", "IMPLEMENTATIONS", "KERNEL_WIDTHS", "check_layout", "fused_v_update",
           "fused_v_update_mosaic", "fused_v_update_pallas", "fused_v_update_reference",
           "rowblock_backend", "rowblock_pass_a", "rowblock_pass_b", "select_implementation"]
