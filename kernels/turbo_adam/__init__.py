"""TurboAdam's fused v step: its ``jnp`` reference, a Pallas kernel, the public op.

``reference.py`` (the contract), ``pallas_triton.py`` (the kernel, compiled
on GPU or run by the Pallas interpreter) and ``api.py`` (the public
:func:`fused_v_update`, which picks a backend; the kernel is opt-in). The
bit packing both use is :mod:`holojax.kernels.quant`.
"""

from holojax.kernels.turbo_adam.api import (DEFAULT_ORDER, IMPLEMENTATIONS, fused_v_update,
                                            select_implementation)
from holojax.kernels.turbo_adam.pallas_triton import (KERNEL_WIDTHS, check_layout,
                                                      fused_v_update_pallas)
from holojax.kernels.turbo_adam.reference import fused_v_update_reference

__all__ = ["DEFAULT_ORDER", "IMPLEMENTATIONS", "KERNEL_WIDTHS", "check_layout", "fused_v_update",
           "fused_v_update_pallas", "fused_v_update_reference", "select_implementation"]
