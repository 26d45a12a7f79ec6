"""Instruction tuning data from the standard library's source: docstring <-> code.

Every function or method in a folder of ``.py`` files (by default the running
Python's standard library, so nothing is downloaded) that has a docstring
gives one chat example, in one of two directions (``TASKS``):

* ``"docstring"``: the user shows the function without its docstring and asks
  for the docstring; the assistant answers with the docstring text.
* ``"code"``: the user gives the signature and the docstring and asks for the
  function; the assistant answers with its source, docstring removed.

:func:`encode` renders each example with SmolLM2's ChatML template (the user
turn after the default system turn, then the assistant's answer and
``<|im_end|>``) and masks the labels so that only the answer is learned;
:func:`batches` shuffles the rows into fixed-shape batches.

Example::

  >>> import pathlib, shutil, tempfile
  >>> root = pathlib.Path(tempfile.mkdtemp())
  >>> _ = (root / "geo.py").write_text(
  ...     'def area(w, h):\\n'
  ...     '  "The area of a w by h rectangle, in square units."\\n'
  ...     '  return w * h\\n')
  >>> [ex] = stdlib_examples(root)
  >>> ex.module, ex.name, ex.answer
  ('geo', 'area', 'The area of a w by h rectangle, in square units.')
  >>> print(ex.prompt)
  Write the docstring of this Python function.
  <BLANKLINE>
  ```python
  def area(w, h):
    return w * h
  ```
  >>> print(stdlib_examples(root, task="code")[0].prompt)
  Write a Python function `def area(w, h)` that does the following:
  <BLANKLINE>
  The area of a w by h rectangle, in square units.
  >>> class Bytes:  # any object with encode(text) -> list[int]
  ...   def encode(self, text):
  ...     return list(text.encode("utf-8"))
  >>> enc, dropped = encode(Bytes(), [ex], max_len=256, system="S")
  >>> enc.ids_bt.shape, dropped, answer_token_count(enc) == len(ex.answer) + len("<|im_end|>\\n")
  ((1, 256), 0, True)
  >>> next(batches(enc, 1, seed=0)).labels_bt.shape
  (1, 256)
  >>> shutil.rmtree(root)
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import os
import tokenize
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from holojax.data.text import default_corpus_path

TASKS = ("docstring", "code")
IGNORE = -100  # label of positions without a target (holojax.models.lm.causal_lm_loss)
TURN_END = "<|im_end|>\n"  # closes the assistant's turn; learned with the answer

# Folders left out wherever they occur below the root: the test suites (their
# functions test rather than do things, and lib2to3's test data is Python 2),
# IDLE (an application, with its own test folder), third-party packages (they
# differ between machines) and bytecode caches. Names starting with "_" stay:
# _pydecimal, _pyio, _collections_abc, ... are the library's real, documented
# pure-Python implementations.
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__"})

DOCSTRING_PROMPT = "Write the docstring of this Python function.\n\n```python\n{code}\n```"
CODE_PROMPT = "Write a Python function `{signature}` that does the following:\n\n{docstring}"


@dataclasses.dataclass(frozen=True)
class Example:
  """One instruction example: a user prompt and the assistant's answer.

  Attributes:
    module: dotted module name relative to the root, e.g. ``"json.decoder"``
      (a root that is itself a package keeps its package name: the root
      ``.../json`` gives ``"json.decoder"`` too).
    name: the function's qualified name, e.g. ``"JSONDecoder.decode"``
      (Python's ``__qualname__``: ``"outer.<locals>.inner"`` for nested ones).
    prompt: the user's message.
    answer: the assistant's answer.
  """
  module: str
  name: str
  prompt: str
  answer: str


class Encoded(NamedTuple):
  """Tokenized chat examples, one per row, right-padded to a common length.

  Labels are aligned with the inputs (the loss shifts: logits at t predict
  labels[t + 1]). Right padding needs no attention mask under causal
  attention: no real token attends to a later pad.
  """

  ids_bt: np.ndarray     # int32 [N, max_len], right-padded with pad_id
  labels_bt: np.ndarray  # int32 [N, max_len], the id on answer + turn-end tokens, else IGNORE


# --- Examples ---------------------------------------------------------------------------------


def _python_files(root: Path) -> list[Path]:
  """The ``.py`` files under ``root`` in sorted order, ``SKIP_DIRS`` pruned."""
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
  return files


def _package_prefix(root: Path) -> list[str]:
  """The package names of ``root`` and its parents, outermost first (empty if not a package)."""
  names, d = [], root.resolve()
  while (d / "__init__.py").is_file() and d.name:
    names.insert(0, d.name)
    d = d.parent
  return names


def _module_name(prefix: Sequence[str], rel: Path) -> str:
  """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
  parts = [*prefix, *rel.with_suffix("").parts]
  if parts[-1] == "__init__" and len(parts) > 1:
    parts.pop()
  return ".".join(parts)


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
  """(qualified name, node) of every function in ``node``, in source order.

  Only statements are searched (a def cannot sit inside an expression), which
  keeps the recursion as deep as the block nesting.
  """
  for child in ast.iter_child_nodes(node):
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield prefix + child.name, child
      yield from _functions(child, f"{prefix}{child.name}.<locals>.")
    elif isinstance(child, ast.ClassDef):
      yield from _functions(child, f"{prefix}{child.name}.")
    elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
      yield from _functions(child, prefix)


def _blank(text: str) -> bool:
  """Whitespace or a comment only."""
  return not text.strip() or text.lstrip().startswith("#")


def _split_function(lines: Sequence[str], fn) -> tuple[str, str] | None:
  """(signature, source without the docstring) of ``fn``, dedented to column 0.

  ``lines`` is the file split at ``"\\n"`` (ast's line numbering). The source
  starts at the first decorator; the docstring's lines are deleted, with the
  blank lines right after it. ``None`` when the docstring shares a line with
  other code, or nothing but the docstring is left.
  """
  doc = fn.body[0]
  first, last = lines[doc.lineno - 1], lines[doc.end_lineno - 1]
  # Column offsets count UTF-8 bytes.
  if first.encode()[:doc.col_offset].strip() or not _blank(
      last.encode()[doc.end_col_offset:].decode()):
    return None
  start = min([d.lineno for d in fn.decorator_list] + [fn.lineno])
  indent = lines[fn.lineno - 1][:fn.col_offset]

  def dedent(block):
    return [s[len(indent):] if s.startswith(indent) else s for s in block]

  header = dedent(lines[fn.lineno - 1:doc.lineno - 1])
  rest = lines[doc.end_lineno:fn.end_lineno]
  while rest and not rest[0].strip():
    rest = rest[1:]
  if not rest:
    return None
  code = "\n".join(dedent(lines[start - 1:doc.lineno - 1] + rest)).rstrip()
  signature = "\n".join(header).rstrip()
  signature = signature[:-1] if signature.endswith(":") else signature
  try:
    ast.parse(code)
  except SyntaxError:  # not expected; never hand out code that does not parse
    return None
  return signature, code


def _examples_of(source: str, tree: ast.Module, module: str, task: str, min_answer_chars: int,
                 max_chars: int) -> Iterator[Example]:
  lines = source.split("\n")
  for name, fn in _functions(tree):
    docstring = ast.get_docstring(fn, clean=True)
    if docstring is None or len(docstring) < min_answer_chars or len(fn.body) < 2:
      continue
    parts = _split_function(lines, fn)
    if parts is None:
      continue
    signature, code = parts
    if task == "docstring":
      prompt, answer = DOCSTRING_PROMPT.format(code=code), docstring
    else:
      prompt, answer = CODE_PROMPT.format(signature=signature, docstring=docstring), code
    if len(prompt) + len(answer) <= max_chars:
      yield Example(module, name, prompt, answer)


def stdlib_examples(root: str | os.PathLike | None = None, *, task: str = "docstring",
                    min_answer_chars: int = 40, max_chars: int = 2000) -> list[Example]:
  """One example per documented function under ``root``, in a deterministic order.

  Files are read in sorted order (folders in ``SKIP_DIRS`` left out, files
  that do not decode or parse skipped silently) and their functions in source
  order: module-level functions, methods (``Class.method``) and nested
  functions (``outer.<locals>.inner``), sync or async. A function counts when
  its docstring (``ast.get_docstring``, cleaned) has at least
  ``min_answer_chars`` characters and its body has more than the docstring;
  one whose docstring shares a line with other code is skipped. Both tasks
  select the same functions.

  Code is the function's source from its first decorator to its end, the
  docstring's lines deleted (and blank lines right after it), dedented by the
  ``def`` line's indentation; the signature is the ``def`` line(s) up to the
  docstring, without the closing colon.

  Args:
    root: a folder of ``.py`` files (walked recursively); ``None`` means the
      running Python's standard library (``default_corpus_path()``).
    task: ``"docstring"`` (code -> docstring) or ``"code"`` (signature and
      docstring -> code); see the module docstring.
    min_answer_chars: the shortest docstring kept, in characters.
    max_chars: the longest example kept, ``len(prompt) + len(answer)``.

  Returns:
    The examples, by file then by position in the file.

  Raises:
    ValueError: an unknown ``task``, ``min_answer_chars`` or ``max_chars``
      below 1, or a ``root`` that is not a directory.
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  if min_answer_chars < 1:
    raise ValueError(f"min_answer_chars must be >= 1, got {min_answer_chars}")
  if max_chars < 1:
    raise ValueError(f"max_chars must be >= 1, got {max_chars}")
  root = Path(root) if root is not None else default_corpus_path()
  if not root.is_dir():
    raise ValueError(f"root must be a directory of .py files, got {str(root)!r}")
  prefix = _package_prefix(root)
  examples = []
  for path in _python_files(root):
    try:
      with tokenize.open(path) as f:  # the file's coding cookie, universal newlines
        source = f.read()
      tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
      continue  # not Python 3 source (Python 2, test data, NUL bytes), or unreadable
    module = _module_name(prefix, path.relative_to(root))
    examples.extend(_examples_of(source, tree, module, task, min_answer_chars, max_chars))
  return examples


def _unit_hash(seed: int, module: str) -> float:
  """A machine-independent hash of ``(seed, module)`` in [0, 1)."""
  digest = hashlib.sha256(f"{seed}\0{module}".encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2.0**64


def split_by_module(examples: Sequence[Example], held_out: float = 0.1, *,
                    seed: int = 0) -> tuple[list[Example], list[Example]]:
  """(train, held-out) with whole modules on one side, in the input order.

  A module is held out when a SHA-256 hash of ``(seed, module)``, mapped to
  [0, 1), is below ``held_out``: the same modules on every machine and run,
  about a ``held_out`` fraction of them (of modules, not of examples).

  Example:
    >>> exs = [Example(f"m{i % 20}", "f", "p", "a") for i in range(100)]
    >>> train, held = split_by_module(exs, 0.25)
    >>> len(train) + len(held), {e.module for e in train} & {e.module for e in held}
    (100, set())

  Raises:
    ValueError: ``held_out`` not in (0, 1).
  """
  if not 0.0 < held_out < 1.0:
    raise ValueError(f"held_out must be in (0, 1), got {held_out}")
  held = {m for m in {e.module for e in examples} if _unit_hash(seed, m) < held_out}
  return ([e for e in examples if e.module not in held],
          [e for e in examples if e.module in held])


# --- Tokens -----------------------------------------------------------------------------------


def encode(tok, examples: Sequence[Example], max_len: int, *, pad_id: int = 0,
           system: str | None = None) -> tuple[Encoded, int]:
  """Chat-formatted token rows with only the answer in the labels.

  Row = ids of ``chatml([user: prompt], add_generation_prompt=True)`` (the
  system turn is SmolLM2's default, or ``system``) followed by the ids of
  ``answer + "<|im_end|>\\n"``; the two parts are encoded separately, so the
  boundary between them is exact. ``labels[j] = ids[j]`` on the second part,
  ``IGNORE`` (-100) on the system and user turns, the ``<|im_start|>assistant``
  header and the padding. Rows longer than ``max_len`` tokens are dropped,
  never truncated (a cut answer would teach a wrong one).

  Args:
    tok: anything with ``encode(text) -> list[int]`` that adds no special
      tokens of its own (``holojax.models.Tokenizer``).
    examples: the examples, kept in this order.
    max_len: columns of the result; longer rows are dropped.
    pad_id: the id written after each row's end.
    system: the system turn's text (``None``: SmolLM2's default).

  Returns:
    (Encoded with int32 [N, max_len] arrays, how many examples were dropped).

  Raises:
    ValueError: ``max_len`` below 2, a negative ``pad_id``, no examples, or
      none that fits.
  """
  from holojax.models.tokenizer import chatml  # noqa: PLC0415 (keeps holojax.data light)
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2, got {max_len}")
  if pad_id < 0:
    raise ValueError(f"pad_id must be a token id >= 0, got {pad_id}")
  if not examples:
    raise ValueError("examples is empty")
  kw = {} if system is None else {"default_system": system}
  rows, shortest = [], None
  for ex in examples:
    prompt = chatml([{"role": "user", "content": ex.prompt}], add_generation_prompt=True, **kw)
    p_ids, a_ids = list(tok.encode(prompt)), list(tok.encode(ex.answer + TURN_END))
    n = len(p_ids) + len(a_ids)
    shortest = n if shortest is None else min(shortest, n)
    if n <= max_len:
      rows.append((p_ids, a_ids))
  if not rows:
    raise ValueError(f"none of the {len(examples)} examples fits max_len={max_len} tokens "
                     f"(the shortest has {shortest}); raise max_len")
  ids_bt = np.full((len(rows), max_len), pad_id, np.int32)
  labels_bt = np.full((len(rows), max_len), IGNORE, np.int32)
  for i, (p_ids, a_ids) in enumerate(rows):
    p, n = len(p_ids), len(p_ids) + len(a_ids)
    ids_bt[i, :n] = p_ids + a_ids
    labels_bt[i, p:n] = a_ids
  return Encoded(ids_bt, labels_bt), len(examples) - len(rows)


def answer_token_count(enc: Encoded) -> int:
  """How many labels are counted by the loss (not ``IGNORE``)."""
  return int(np.sum(enc.labels_bt != IGNORE))


def batches(enc: Encoded, batch: int, *, seed: int, epochs: bool = True) -> Iterator[Encoded]:
  """Shuffled batches of exactly ``batch`` rows, each ``[batch, max_len]``.

  Epoch ``e`` visits the rows in the order of
  ``np.random.default_rng([seed, e]).permutation(N)`` and drops the last
  ``N % batch`` of them. Batches keep all ``max_len`` columns, so one compiled
  step serves every batch.

  Args:
    enc: the encoded examples (:func:`encode`).
    batch: rows per batch, 1 .. N.
    seed: the shuffle's seed.
    epochs: ``True``: epoch after epoch, without end; ``False``: one epoch.

  Raises:
    ValueError: ``batch`` not in [1, N].
  """
  n = len(enc.ids_bt)
  if not 1 <= batch <= n:
    raise ValueError(f"batch must be in [1, {n}] (the number of rows), got {batch}")
  return _batches(enc, batch, seed, epochs)


def _batches(enc: Encoded, batch: int, seed: int, epochs: bool) -> Iterator[Encoded]:
  n, epoch = len(enc.ids_bt), 0
  while True:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    for k in range(n // batch):
      rows = perm[k * batch:(k + 1) * batch]
      yield Encoded(enc.ids_bt[rows], enc.labels_bt[rows])
    if not epochs:
      return
    epoch += 1
