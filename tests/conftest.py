"""Test settings: 8 CPU devices (for mesh tests), strict rank promotion."""

import os

# Must happen before JAX initialises its backends. Set once, in the first process
# (pytest's, or xdist's controller); workers, subprocesses and notebook kernels
# inherit it.
# Faster XLA compiles on CPU: tests run tiny models, compile time dominates.
_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
          "--xla_llvm_disable_expensive_passes=true")
# XLA:CPU's older fusion emitters compile the suite's programs ~2.5x faster than
# the default (MLIR) ones; same HLO, same results to float32 rounding
# (tests/test_golden.py passes either way). Only where this XLA still has the
# flag: an unknown flag aborts the process, so a child process tries it first.
_FAST_CPU_CODEGEN = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
  try:
    return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                          capture_output=True, timeout=120, check=False).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


# The 8 CPU devices meet in in-process collectives; XLA:CPU aborts the whole
# process (SIGABRT, a crashed xdist worker) when one device has not joined a
# collective within its timeout, which a 2-core machine running two workers can
# exceed while the other worker compiles. Wait longer where this XLA has the flags.
_PATIENT_COLLECTIVES = ("--xla_cpu_collective_timeout_seconds=1800 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=1800")


def _optional_flags(*flags: str) -> str:
  """The flags this XLA accepts: all at once if it can, else one by one."""
  if _xla_accepts(" ".join(flags)):
    return " ".join(flags)
  return " ".join(f for f in flags if _xla_accepts(f))


if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = f"{_FLAGS} {_optional_flags(_FAST_CPU_CODEGEN, _PATIENT_COLLECTIVES)}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session, empty at its start and
# shared by the xdist workers, the subprocesses (CLI, kill/resume) and notebook
# kernels: a program compiled in one process (the tiny model's train step, the
# eager ops of every init) is loaded, not compiled again, in the others. It only
# replaces XLA compiles of identical programs. HOLOJAX_TEST_JIT_CACHE=0 turns it
# off; a JAX_COMPILATION_CACHE_DIR already set is used as it is.
if (os.environ.get("HOLOJAX_TEST_JIT_CACHE", "1") != "0"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  import atexit
  import shutil
  import tempfile
  _cache = tempfile.mkdtemp(prefix="holojax-test-jit-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# On a GPU, XLA's default float32 matmul is TF32 (10-bit mantissa): the tests
# compare float32 programs with float64 references at 1e-4 - 1e-5, so they ask
# for full float32 products there (CPU products are already full precision).
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")
