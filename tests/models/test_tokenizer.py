"""The GGUF tokenizer: a toy vocabulary, and SmolLM2's on real text (round trip, chat template).

Equality with transformers' ids is in test_pretrained_parity.py.
"""

import builtins
import inspect
import json

import pytest

from holojax.models.tokenizer import SMOLLM2_TEMPLATE, Tokenizer, chatml


@pytest.fixture(scope="module")
def tok(smollm2_path):
  return Tokenizer.from_gguf(smollm2_path)


def test_toy_vocabulary():
  toks = ["<s>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "12"]
  tok = Tokenizer.build(toks, ["a b", "Ġ ab", "1 2"], [3] + [1] * 8, pre="smollm")
  assert tok.encode("ab ab<s>") == [3, 5, 0]
  assert tok.encode("12") == [6, 7]  # smollm splits digits before BPE
  assert Tokenizer.build(toks, ["a b", "Ġ ab", "1 2"], pre="gpt2").encode("12") == [8]
  assert tok.decode([3, 5, 0]) == "ab ab<s>"
  assert tok.decode([3, 5, 0], skip_special_tokens=True) == "ab ab"


def test_smollm2_round_trip_real_text(tok):
  text = inspect.getsource(json)[:20_000] + "\nÜnïcödé — 東京 🙂 \t\r\n  x"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert 2_000 < len(ids) < 10_000  # ~3-4 bytes per token on Python source
  assert tok.vocab_size == 49152 and (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.encode("Hello world") == [19556, 905]
  assert tok.encode("<|im_start|>user") == [1, 4093]
  assert tok.encode("hi", add_special_tokens=True) == [1, *tok.encode("hi")]
  assert tok.id_of("<|im_end|>") == 2


def test_chat_template_with_and_without_jinja(tok, monkeypatch):
  assert tok.chat_template == SMOLLM2_TEMPLATE
  msgs = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
  want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello."
          "<|im_end|>\n<|im_start|>assistant\n")
  assert chatml(msgs, add_generation_prompt=True) == want
  real_import = builtins.__import__

  def no_jinja(name, *a, **kw):
    if name.startswith("jinja2"):
      raise ImportError(name)
    return real_import(name, *a, **kw)

  with monkeypatch.context() as m:
    m.setattr(builtins, "__import__", no_jinja)
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == want
  pytest.importorskip("jinja2")  # the file's template, rendered
  assert tok.apply_chat_template(msgs, add_generation_prompt=True) == want
  assert tok.apply_chat_template(msgs, tokenize=True) == tok.encode(
      want[:-len("<|im_start|>assistant\n")])
