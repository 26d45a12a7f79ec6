"""The tokenizer stored in a GGUF file, built with the ``tokenizers`` library.

A ``gpt2``-type GGUF holds a byte-level BPE: its tokens (already spelled in
GPT-2's byte-to-unicode alphabet), its merges, token types (3 = control,
added as special tokens) and a pre-tokenizer name. For ``smollm`` (SmolLM /
StarCoder) llama.cpp splits digits one by one, then applies GPT-2's regex;
SmolLM2's own ``tokenizer.json`` does the same (``Digits`` then
``ByteLevel``), and so does this class. Encoding adds no special tokens
(``add_bos_token`` is false in the file); text that contains a special token
such as ``<|im_end|>`` encodes it as that one id, as transformers does.

The chat template is the file's Jinja template, rendered with ``jinja2``
when it is installed; otherwise only the ChatML template of SmolLM2 is
supported, by :func:`chatml`, which writes the same string.

Example (needs the model file; ``holojax fetch smollm2``)::

  tok = Tokenizer.from_gguf(find_gguf())
  tok.encode("Hello world")            # [19556, 905]
  tok.decode(tok.encode("Hello world"))
"""

from __future__ import annotations

import dataclasses

# SmolLM2-135M-Instruct's template, as stored in its GGUF.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_CONTROL = 3  # llama.cpp's token type for control (special) tokens


def chatml(messages, *, add_generation_prompt: bool = False,
           default_system: str = SMOLLM2_SYSTEM) -> str:
  """ChatML as SmolLM2's template writes it (a default system turn when the
  first message is not one).

  Example:
    >>> chatml([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
    ...        default_system="S")
    '<|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
  """
  out = []
  for i, m in enumerate(messages):
    if i == 0 and messages[0]["role"] != "system":
      out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
  if add_generation_prompt:
    out.append("<|im_start|>assistant\n")
  return "".join(out)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A ``tokenizers.Tokenizer`` plus the GGUF's special ids and chat template."""

  backend: object          # tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int | None
  chat_template: str | None

  @classmethod
  def from_gguf(cls, source) -> "Tokenizer":
    """From a GGUF path or an open ``gguf.GGUFReader``."""
    import gguf  # noqa: PLC0415
    from holojax.models.pretrained import open_gguf  # noqa: PLC0415
    reader = source if isinstance(source, gguf.GGUFReader) else open_gguf(source)
    f = reader.fields

    def get(key, default=None):
      return f[key].contents() if key in f else default

    kind, pre = get("tokenizer.ggml.model"), get("tokenizer.ggml.pre")
    if kind != "gpt2":
      raise ValueError(f"tokenizer.ggml.model={kind!r}: only byte-level BPE ('gpt2') is "
                       "supported")
    return cls.build(get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges"),
                     get("tokenizer.ggml.token_type"), pre=pre,
                     bos_id=get("tokenizer.ggml.bos_token_id"),
                     eos_id=get("tokenizer.ggml.eos_token_id"),
                     chat_template=get("tokenizer.chat_template"))

  @classmethod
  def build(cls, tokens, merges, token_types=None, *, pre: str | None = "smollm",
            bos_id=None, eos_id=None, chat_template=None) -> "Tokenizer":
    """A byte-level BPE from a vocabulary (in GPT-2's byte alphabet) and merges.

    Example:
      >>> toks = ["<s>", "a", "b", "ab", "Ġ", "Ġab"]
      >>> tok = Tokenizer.build(toks, ["a b", "Ġ ab"], [3, 1, 1, 1, 1, 1])
      >>> tok.encode("ab ab<s>"), tok.decode([3, 5])
      ([3, 5, 0], 'ab ab')
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers  # noqa: PLC0415
    from tokenizers import Tokenizer as Backend  # noqa: PLC0415
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Backend(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                                 byte_fallback=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre in ("smollm", "starcoder", "refact"):  # llama.cpp: digits one by one first
      steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    types = token_types if token_types is not None else [1] * len(tokens)
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types) if ty == _CONTROL]
    backend.add_special_tokens(specials)
    return cls(backend, None if bos_id is None else int(bos_id),
               None if eos_id is None else int(eos_id), chat_template)

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text`` (BOS first when ``add_special_tokens`` and the file has one)."""
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if add_special_tokens and self.bos_id is not None:
      ids = [self.bos_id, *ids]
    return ids

  def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def id_of(self, token: str) -> int:
    i = self.backend.token_to_id(token)
    if i is None:
      raise ValueError(f"token {token!r} is not in the vocabulary")
    return i

  def apply_chat_template(self, messages, *, add_generation_prompt: bool = False,
                          tokenize: bool = False):
    """The chat prompt for ``messages`` (a list of {"role", "content"}); its ids when
    ``tokenize``."""
    text = self._render(messages, add_generation_prompt)
    return self.encode(text) if tokenize else text

  def _render(self, messages, add_generation_prompt):
    template = self.chat_template
    if template is None:
      raise ValueError("this tokenizer has no chat template")
    try:
      from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415
    except ImportError:
      if template != SMOLLM2_TEMPLATE:
        raise ValueError("rendering this chat template needs jinja2 (pip install jinja2); "
                         "without it only SmolLM2's ChatML template is built in") from None
      return chatml(messages, add_generation_prompt=add_generation_prompt)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt)
