"""Instruction data from Python source: examples, module split, answer-only loss masking."""

import ast

import jax.numpy as jnp
import numpy as np
import pytest

from holojax.data import default_corpus_path, instruct
from holojax.models.lm import causal_lm_loss
from holojax.models.tokenizer import chatml
from holojax.train.bench.lm.pretrained import ByteTokenizer

DOC_AREA = "The area of a w by h rectangle, in square units of w and h."
DOC_SCALE = "Scale every point by factor, keeping the origin where it is.\n\nReturns a new list."

GEO = f'''"""A module docstring is not a function's."""
import functools


def area(w, h):
  """{DOC_AREA}"""

  return w * h


def short(x):
  """Too short."""
  return x


def only_doc():
  """A function with nothing but this docstring in its body is skipped."""


class Shape:
  """A class docstring is not a function's, either (only methods count)."""

  @functools.lru_cache
  def scale(self, points, factor=2):
    """Scale every point by factor, keeping the origin where it is.

    Returns a new list.
    """
    return [p * factor for p in points]

  async def fetch(self, url):
    """Fetch a url asynchronously and return the body as text."""
    def inner(x):
      """A nested function: it is its own example, named like __qualname__."""
      return x
    return inner(url)
'''


def _tree(tmp_path):
  (tmp_path / "geo.py").write_text(GEO)
  pkg = tmp_path / "pkg"
  (pkg / "tests").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub.py").write_text(
      'def f():\n    """Sub-module function with a long enough docstring."""\n    return 1\n')
  (pkg / "tests" / "test_sub.py").write_text(GEO)  # a test folder: skipped
  (tmp_path / "broken.py").write_text("def f(:\n")  # does not parse: skipped
  (tmp_path / "latin.py").write_bytes(b"x = '\xe9'\n")  # not UTF-8: skipped
  return tmp_path


def test_docstring_task(tmp_path):
  exs = instruct.stdlib_examples(_tree(tmp_path))
  assert [(e.module, e.name) for e in exs] == [
      ("geo", "area"), ("geo", "Shape.scale"), ("geo", "Shape.fetch"),
      ("geo", "Shape.fetch.<locals>.inner"), ("pkg.sub", "f")]
  area, scale = exs[0], exs[1]
  assert area.answer == DOC_AREA and scale.answer == DOC_SCALE
  assert area.prompt == ("Write the docstring of this Python function.\n\n```python\n"
                         "def area(w, h):\n  return w * h\n```")
  # A method: decorator kept, dedented to column 0, docstring gone.
  assert "```python\n@functools.lru_cache\ndef scale(self, points, factor=2):\n" in scale.prompt
  for e in exs:
    assert e.answer not in e.prompt
  assert '"""' not in area.prompt + scale.prompt
  assert '"""A nested function' in exs[2].prompt  # the nested function's stays in the outer's


def test_code_task_reverses_docstring_task(tmp_path):
  root = _tree(tmp_path)
  docs = instruct.stdlib_examples(root)
  codes = instruct.stdlib_examples(root, task="code")
  assert [(e.module, e.name) for e in docs] == [(e.module, e.name) for e in codes]
  for d, c in zip(docs, codes):
    assert d.prompt.endswith(f"```python\n{c.answer}\n```")  # the code is the other's input
    assert c.prompt.endswith(f"that does the following:\n\n{d.answer}")
    ast.parse(c.answer)
  assert codes[1].prompt.startswith(
      "Write a Python function `def scale(self, points, factor=2)` that does the following:")
  assert codes[2].answer.startswith("async def fetch(self, url):\n  def inner(x):\n")


def test_limits_and_real_stdlib(tmp_path):
  root = _tree(tmp_path)
  assert {e.name for e in instruct.stdlib_examples(root, min_answer_chars=5)} >= {"short"}
  sizes = sorted(len(e.prompt) + len(e.answer) for e in instruct.stdlib_examples(root))
  kept = instruct.stdlib_examples(root, max_chars=sizes[1])
  assert len(kept) == sum(s <= sizes[1] for s in sizes) < len(sizes)
  # The real json package: module names as imported, docstrings absent from prompts.
  exs = instruct.stdlib_examples(default_corpus_path() / "json")
  assert ("json.decoder", "JSONDecoder.decode") in {(e.module, e.name) for e in exs}
  assert all(e.module.startswith("json") and e.answer not in e.prompt for e in exs)


def _modules_tree(tmp_path, n=20):
  for i in range(n):
    (tmp_path / f"m{i:02d}.py").write_text(
        f'def f{i}(x):\n  """Function number {i}: it returns x, as many functions do."""\n'
        "  return x\n"
        f'def g{i}(x):\n  """Function number {i}b: it also returns x, like the one above."""\n'
        "  return x\n")
  return instruct.stdlib_examples(tmp_path)


def test_split_by_module(tmp_path):
  exs = _modules_tree(tmp_path)
  assert len(exs) == 40
  train, held = instruct.split_by_module(exs, 0.3, seed=0)
  assert train and held and len(train) + len(held) == 40
  assert not {e.module for e in train} & {e.module for e in held}
  assert instruct.split_by_module(exs, 0.3, seed=0) == (train, held)  # deterministic
  assert train == [e for e in exs if e in train]  # order kept
  assert held == [e for e in exs if e in held]
  assert instruct.split_by_module(exs, 0.3, seed=1) != (train, held)


@pytest.fixture(scope="module")
def tok():
  return ByteTokenizer()


def _examples():
  return [instruct.Example("m", "f", "Say hi.", "Hi there!"),
          instruct.Example("m", "g", "Say a longer thing, please.", "A longer thing. " * 6),
          instruct.Example("n", "h", "Ok?", "ok")]


def test_labels_are_the_answer_only(tok):
  exs = _examples()
  enc, dropped = instruct.encode(tok, exs, 512, pad_id=7, system="Be brief.")
  assert dropped == 0 and enc.ids_bt.shape == enc.labels_bt.shape == (3, 512)
  assert enc.ids_bt.dtype == enc.labels_bt.dtype == np.int32
  total = 0
  for ex, ids, labels in zip(exs, enc.ids_bt, enc.labels_bt):
    prompt_ids = tok.encode(chatml([{"role": "user", "content": ex.prompt}],
                                   add_generation_prompt=True, default_system="Be brief."))
    answer_ids = tok.encode(ex.answer + "<|im_end|>\n")
    p, n = len(prompt_ids), len(prompt_ids) + len(answer_ids)
    assert ids[:n].tolist() == prompt_ids + answer_ids
    assert (ids[n:] == 7).all() and (labels[n:] == -100).all()  # padding
    assert (labels[:p] == -100).all()  # system and user turns, assistant header
    assert labels[labels != -100].tolist() == answer_ids
    total += len(answer_ids)
  assert instruct.answer_token_count(enc) == total
  # The default system turn is SmolLM2's.
  enc_default, _ = instruct.encode(tok, exs[:1], 512)
  assert "You are a helpful AI assistant" in bytes(enc_default.ids_bt[0].tolist()).decode()


def test_loss_counts_exactly_the_answer_tokens(tok):
  enc, _ = instruct.encode(tok, _examples(), 160, system="S")
  logits = np.random.default_rng(0).normal(size=(*enc.ids_bt.shape, 256)).astype(np.float32)
  loss = float(causal_lm_loss(jnp.asarray(logits), jnp.asarray(enc.labels_bt)))
  # By hand: logits at t predict labels[t + 1], only where that label is an answer token.
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = [-logp[b, t - 1, enc.labels_bt[b, t]]
         for b, t in zip(*np.nonzero(enc.labels_bt != -100))]
  assert len(nll) == instruct.answer_token_count(enc)
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)


def test_too_long_is_dropped_not_truncated(tok):
  exs = _examples()
  lengths = [len(tok.encode(chatml([{"role": "user", "content": e.prompt}],
                                   add_generation_prompt=True)))
             + len(tok.encode(e.answer + "<|im_end|>\n")) for e in exs]
  max_len = lengths[0]  # example 0 fits exactly, 1 is longer, 2 shorter
  assert lengths[1] > max_len >= lengths[2]
  enc, dropped = instruct.encode(tok, exs, max_len)
  assert dropped == 1 and enc.ids_bt.shape == (2, max_len)
  answers = [bytes(r[r != -100].tolist()).decode() for r in enc.labels_bt]
  assert answers == [exs[0].answer + "<|im_end|>\n", exs[2].answer + "<|im_end|>\n"]
  with pytest.raises(ValueError, match="none of the 3 examples fits max_len=10"):
    instruct.encode(tok, exs, 10)


def test_batches(tok):
  exs = [instruct.Example("m", f"f{i}", f"Q{i}", f"A{i}") for i in range(10)]
  enc, _ = instruct.encode(tok, exs, 96, system="S")
  it = instruct.batches(enc, 4, seed=3)
  first = [next(it) for _ in range(4)]
  assert all(b.ids_bt.shape == b.labels_bt.shape == (4, 96) for b in first)
  rows = {r.tobytes() for b in first[:2] for r in b.ids_bt}
  assert len(rows) == 8  # one epoch: 2 full batches of distinct rows, 2 rows dropped
  again = list(instruct.batches(enc, 4, seed=3, epochs=False))
  assert len(again) == 2
  for a, b in zip(again, first):
    np.testing.assert_array_equal(a.ids_bt, b.ids_bt)
    np.testing.assert_array_equal(a.labels_bt, b.labels_bt)


@pytest.mark.parametrize("call, match", [
    (lambda p: instruct.stdlib_examples(p, task="summary"), r"task must be one of \('docstring'"),
    (lambda p: instruct.stdlib_examples(p, min_answer_chars=0), "min_answer_chars"),
    (lambda p: instruct.stdlib_examples(p, max_chars=0), "max_chars"),
    (lambda p: instruct.stdlib_examples(p / "missing"), "root must be a directory"),
    (lambda p: instruct.split_by_module([], 1.0), r"held_out must be in \(0, 1\)"),
    (lambda p: instruct.split_by_module([], 0.0), "held_out"),
    (lambda p: instruct.encode(ByteTokenizer(), _examples(), 1), "max_len must be >= 2"),
    (lambda p: instruct.encode(ByteTokenizer(), _examples(), 64, pad_id=-1), "pad_id"),
    (lambda p: instruct.encode(ByteTokenizer(), [], 64), "examples is empty"),
    (lambda p: instruct.batches(instruct.encode(ByteTokenizer(), _examples(), 512)[0], 4,
                                seed=0), r"batch must be in \[1, 3\]"),
], ids=["task", "min_answer_chars", "max_chars", "root", "held_out_1", "held_out_0", "max_len",
        "pad_id", "no_examples", "batch"])
def test_bad_input(tmp_path, call, match):
  with pytest.raises(ValueError, match=match):
    call(tmp_path)
