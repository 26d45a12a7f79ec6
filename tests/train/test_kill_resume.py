"""A training process killed (SIGKILL) or stopped (SIGTERM) and resumed ends
where an uninterrupted one does."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

# 120 steps: a kill or stop after step 40 leaves 80 steps (>1 s) of margin; fewer
# steps than before, the same checkpoint cadence, signals and resume paths.
STEPS = 120
ARGS = ["--model", "tiny", "--steps", str(STEPS), "--batch-size", "8", "--seq-len", "32",
        "--eval-every", "1000", "--eval-batches", "1", "--log-every", "10",
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


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  """(final step, final parameters) of the uninterrupted run."""
  clean_dir = tmp_path_factory.mktemp("clean")
  subprocess.run(_cli(clean_dir), env=_env(), check=True, capture_output=True)
  return _final_params(clean_dir)


def _metrics_steps(ckpt_dir):
  path = ckpt_dir / "metrics.jsonl"
  if not path.exists():
    return []
  import json
  return [json.loads(l)["step"] for l in path.read_text().splitlines() if "train/loss" in l]


@pytest.mark.slow
def test_sigterm_saves_then_resume_is_bitwise_uninterrupted(tmp_path, clean):
  d = tmp_path / "stopped"
  proc = subprocess.Popen(_cli(d, "--ckpt-every", "1000"), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and max(_metrics_steps(d), default=0) < 40:
    time.sleep(0.02)
  assert proc.poll() is None, f"run ended before SIGTERM: {proc.stderr.read()[-2000:]}"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert "SIGTERM at step" in err and "Traceback" not in err
  saved = _finalized_steps(d)
  assert len(saved) == 1 and 40 <= saved[0] < STEPS  # saved where it stopped, not on cadence
  res = subprocess.run(_cli(d, "--resume", "--ckpt-every", "1000"), env=_env(),
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  step, params = _final_params(d)
  assert step == clean[0] == STEPS
  for a, b in zip(params, clean[1], strict=True):
    np.testing.assert_array_equal(a, b)
  steps = _metrics_steps(d)  # rows past the checkpoint were dropped, then rewritten
  assert steps == sorted(set(steps)) and steps[-1] == STEPS


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, clean):
  killed_dir = tmp_path / "killed"
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
  assert 40 <= max(before) < STEPS, before

  subprocess.run(_cli(killed_dir, "--resume"), env=_env(), check=True, capture_output=True)
  step, resumed = _final_params(killed_dir)
  assert step == clean[0] == STEPS
  for a, b in zip(resumed, clean[1], strict=True):
    np.testing.assert_array_equal(a, b)
  steps = _metrics_steps(killed_dir)  # no duplicate rows for the steps run twice
  assert steps == sorted(set(steps)) and steps[-1] == STEPS
