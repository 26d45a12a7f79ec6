"""A training process killed with SIGKILL and resumed ends where an uninterrupted one does."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ARGS = ["--model", "tiny", "--steps", "300", "--batch-size", "8", "--seq-len", "32",
        "--eval-every", "1000", "--eval-batches", "1", "--log-every", "50",
        "--corpus-max-bytes", "1000000", "--ckpt-every", "20", "--no-progress", "--mesh-data", "1"]


def _cli(ckpt_dir, *extra):
  return [sys.executable, "-m", "holojax.train.cli", "train", *ARGS, "--ckpt-dir", str(ckpt_dir),
          *extra]


def _env():
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def _final_params(ckpt_dir):
  mngr = ocp.CheckpointManager(str(ckpt_dir))
  step = mngr.latest_step()
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  import jax
  return step, [np.asarray(x) for x in jax.tree.leaves(state)]


def _finalized_steps(ckpt_dir):
  if not ckpt_dir.exists():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
  proc = subprocess.Popen(_cli(killed_dir), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(s >= 40 for s in _finalized_steps(killed_dir)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  before = _finalized_steps(killed_dir)
  assert 40 <= max(before) < 300, before

  subprocess.run(_cli(killed_dir, "--resume"), env=_env(), check=True, capture_output=True)
  subprocess.run(_cli(clean_dir), env=_env(), check=True, capture_output=True)
  step_a, resumed = _final_params(killed_dir)
  step_b, clean = _final_params(clean_dir)
  assert step_a == step_b == 300
  assert len(resumed) == len(clean)
  for a, b in zip(resumed, clean):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
