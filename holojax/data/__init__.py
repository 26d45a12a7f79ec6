"""Corpora and synthetic tasks."""

from holojax.data import instruct
from holojax.data.spirals import make_spirals
from holojax.data.synthetic import LMExamples, mqar, passkey, shifted_accuracy
from holojax.data.text import (VOCAB_SIZE, Corpus, PackedBatches, decode, default_corpus_path,
                               encode, eval_batches, load_corpus)

__all__ = ["VOCAB_SIZE", "Corpus", "LMExamples", "PackedBatches", "decode",
           "default_corpus_path", "encode", "eval_batches", "instruct", "load_corpus",
           "make_spirals", "mqar", "passkey", "shifted_accuracy"]
