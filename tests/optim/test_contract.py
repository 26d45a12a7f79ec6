"""Every optimizer in ``holojax.optim.registry`` passes the optax contract (tests/optim/contract.py)."""

import jax
import pytest

from holojax.kernels import turbo_adam as kernels
from holojax.optim import registry
from tests.optim import contract

# Compression thresholds small enough that the contract's tensors are compressed.
SMALL = {"turbo_adam": dict(min_m_compress_elements=1024),
         "turbo_adam_v": {},
         "holo_adam": dict(min_compress_size=1024, warmup_steps=10),
         "holo_adam_max": dict(min_compress_size=1024, warmup_steps=10),
         "holo_adam_conservative": dict(min_compress_size=1024, warmup_steps=10)}


# HoloAdam "max" (ratio 50, 2 heads) sketches its momentum at cos ~0.3 and
# needs twice the steps on Rosenbrock (the original: 8.5 of 157 left at 800).
ROSENBROCK = {"holo_adam_max": dict(steps=1600)}


# Layouts of a registered optimizer (issue 12), as cases of their own: shown name ->
# (registry name, extra keyword arguments). Both flat layouts pass the explicit-sharding
# checks (TurboAdam's splits its buffers per device, HoloAdam's stacks tensors of one
# shape and compute spec, sharded like them).
FLAT = {f"{n}[flat]": (n, dict(tree_layout="flat"))
        for n in ("turbo_adam", "turbo_adam_v", "holo_adam")}

# TurboAdam's kernel implementations (issue 12: the contract on every one), both
# layouts: "interpret" (the kernels in Pallas' interpreters, CPU) here; compiled
# "mosaic" (Hopper) and "triton" (the v step, any CUDA GPU) where they can run.
# Explicitly sharded parameters are refused with a ValueError (the kernels
# update whole tensors / draw by buffer position): that refusal replaces the two
# explicit-sharding checks.
IMPLS = {f"turbo_adam[{lay},{impl}]": ("turbo_adam", dict(tree_layout=lay, implementation=impl))
         for impl in ("interpret", "mosaic", "triton") for lay in ("leaf", "flat")}
CASES = {**FLAT, **IMPLS}


def _impl(name) -> str | None:
  """The kernel implementation a case forces (None: the optimizer's default)."""
  return CASES.get(name, (None, {}))[1].get("implementation")


def _impl_marks(name) -> list:
  """A skip where the case's kernel implementation cannot run here."""
  impl = _impl(name)
  if impl is None:
    return []
  try:
    kernels.select_implementation(bits=4, block_size=128, implementation=impl)
  except ValueError:
    return [pytest.mark.skip(reason=f"{impl} cannot run here")]
  return []


def _make(name):
  base, kw = CASES.get(name, (name, {}))
  return lambda lr: registry.get(base, lr, 0.0, **SMALL.get(base, {}), **kw)


def _refuses_sharded(make_opt):
  """A kernel implementation refuses explicitly sharded parameters, naming the
  fix: at ``init``, and at ``update`` (a state built from replicated copies)."""
  mesh = contract.explicit_mesh()
  with jax.set_mesh(mesh):
    params = contract.fsdp_params(mesh)
    opt = make_opt(1e-2)
    with pytest.raises(ValueError, match="sharded.*implementation='xla'"):
      opt.init(params)
    whole = jax.tree.map(lambda x: jax.sharding.reshard(x, jax.P()), params)
    state = opt.init(whole)
    with pytest.raises(ValueError, match="sharded.*implementation='xla'"):
      opt.update(params, state, params)


# Presets of one implementation (its code, other hyperparameters): the costly
# sharding and eager checks run for the implementation by default and for
# every preset with `pytest -m exhaustive`.
PRESET_OF = {"holo_adam_max": "holo_adam", "holo_adam_conservative": "holo_adam",
             "turbo_adam_v[flat]": "turbo_adam[flat]"}
COSTLY = (contract.check_explicit_sharding, contract.check_explicit_sharding_eager,
          contract.check_nnx_optimizer)


def _cases():
  for name in registry.names() + list(CASES):
    for check in contract.CHECKS:
      if _impl(name) is not None:
        if check is not contract.check_explicit_sharding_eager:
          yield pytest.param(name, check, id=f"{name}-{check.__name__}",
                             marks=_impl_marks(name))
        continue
      costly = check in COSTLY and (name in PRESET_OF or (
          # HoloAdam's eager update dispatches hundreds of small ops, each
          # compiled for the explicit mesh (~100 s on 2 cores, 16 s flat); jitted,
          # it is checked.
          name in ("holo_adam", "holo_adam[flat]")
          and check is contract.check_explicit_sharding_eager))
      marks = [pytest.mark.exhaustive] if costly else []
      yield pytest.param(name, check, id=f"{name}-{check.__name__}", marks=marks)


@pytest.mark.parametrize("name,check", list(_cases()))
def test_contract(name, check):
  if name in IMPLS and check is contract.check_explicit_sharding:
    _refuses_sharded(_make(name))
  elif check is contract.check_rosenbrock:
    check(_make(name), **ROSENBROCK.get(name, {}))
  else:
    check(_make(name))


def test_every_registered_optimizer_is_covered():
  assert set(SMALL) | {"adamw", "adafactor", "lion"} == set(registry.names())


@pytest.mark.parametrize("name", [pytest.param(n, marks=_impl_marks(n))
                                  for n in registry.names() + list(CASES)])
def test_orbax_roundtrip(name, tmp_path):
  contract.check_orbax_roundtrip(_make(name), tmp_path)
