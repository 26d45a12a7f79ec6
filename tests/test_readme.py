"""Every ```python block of README.md runs as written.

Each block runs on its own, in a fresh namespace, so a reader can copy any one
of them; a failing block's test id and traceback name its README line. A block
that loads the pretrained model needs its file (`holojax fetch smollm2`) and is
skipped without it.
"""

import os
import pathlib
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
  """(line of the opening fence, source) for every ```python block."""
  blocks, start, body = [], None, []
  for i, line in enumerate(text.splitlines(), 1):
    if start is None:
      if line.strip() == "```python":
        start, body = i, []
    elif line.strip() == "```":
      blocks.append((start, "\n".join(body)))
      start = None
    else:
      body.append(line)
  assert start is None, f"README.md:{start}: ```python block never closed"
  return blocks


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_blocks():
  assert BLOCKS


def _param(line, source):
  # Loading the 135M model and compiling its decoding takes about a minute on 2 CPU cores.
  marks = [pytest.mark.slow] if "load_pretrained(" in source else []
  return pytest.param(line, source, marks=marks, id=f"README.md:{line}")


@pytest.mark.parametrize("line, source", [_param(*b) for b in BLOCKS])
def test_block_runs(line, source):
  if "load_pretrained(" in source:
    from holojax.models import pretrained  # noqa: PLC0415
    try:
      pretrained.find_gguf()
    except FileNotFoundError as e:
      pytest.skip(f"README.md:{line} needs the model file: {e}")
    # Its own interpreter, without conftest's older CPU fusion emitters: they
    # compile small programs faster but run the 135M bfloat16 model slower
    # (47 s here vs 64 s in-process with them). The same block, run the same way.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if f != "--xla_cpu_use_fusion_emitters=false"]
    runner = (f"import sys; exec(compile(sys.stdin.read(), {str(README)!r}, 'exec'), "
              f"{{'__name__': 'readme_line_{line}'}})")
    done = subprocess.run([sys.executable, "-c", runner], input="\n" * line + source,
                          env={**os.environ, "XLA_FLAGS": " ".join(flags)},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return
  # Blank lines in front, so tracebacks give README.md's own line numbers.
  code = compile("\n" * line + source, str(README), "exec")
  exec(code, {"__name__": f"readme_line_{line}"})  # noqa: S102
