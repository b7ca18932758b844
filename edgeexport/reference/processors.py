"""The processors a reference model ships beside its weights: a tokenizer, image or feature-extractor
settings, a CTC vocabulary.

A ``save_pretrained`` folder carries them as files (``tokenizer.json``, ``preprocessor_config.json``,
``vocab.json``); :func:`folder_processors` reads them. A zoo preset is built here as its published
checkpoint ships them (:func:`zoo_processors`):

- Text models get a tokenizer of the checkpoint's kind, built with the ``tokenizers`` library from
  the built-in corpus (:mod:`edgeexport.reference.corpus`, no network) and sized to exactly the
  preset's ``vocab_size``: WordPiece for BERT, byte-level BPE for GPT-2 and BART, Unigram for T5,
  with the special tokens at the ids the model's config uses. A small corpus yields fewer pieces
  than a published vocabulary (50257 for GPT-2); the rest of the ids are placeholder tokens
  (``<unused{i}>``, BERT's ``[unused{i}]``) that no text encodes to, so ids cover the model's
  whole embedding table.
- Vision models get the image normalization of the checkpoint's image processor.
- Wav2Vec2 gets the feature extractor settings and the CTC vocabulary of ``facebook/wav2vec2-base-960h``
  (blank ``<pad>``, word delimiter ``|``, letters), sized to the preset's ``vocab_size``.

Tokenizers are built once per model and vocabulary size in a process, and are byte-identical from
one process (and conversion) to the next.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from edgeexport.processing import IMAGENET_MEAN, IMAGENET_STD, SAMPLING_RATE
from edgeexport.reference.corpus import CORPUS

PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_JSON = "tokenizer.json"
PLACEHOLDER = "<unused{}>"
# Log-probability of a Unigram placeholder: far below any trained piece's, so no text segments into one.
PLACEHOLDER_SCORE = -100.0


@dataclass(frozen=True)
class Processors:
    """What a model's processors need, as a checkpoint ships it.

    Attributes:
        tokenizer: A ``tokenizer.json`` file, or its content when built here; None without one.
        preprocessor: ``preprocessor_config.json`` settings (``size``, ``image_mean``, ``image_std``,
            ``sampling_rate``, ``do_normalize``); missing keys take the defaults.
        vocabulary: A CTC tokenizer's tokens in id order (empty without one).
    """

    tokenizer: Path | bytes | None = None
    preprocessor: dict[str, Any] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)


def folder_processors(folder: Path) -> Processors:
    """The processors saved in a ``save_pretrained`` folder (missing or unreadable files count as absent)."""
    tokenizer = folder / TOKENIZER_JSON
    return Processors(tokenizer=tokenizer if tokenizer.is_file() else None,
                      preprocessor=_json_object(folder / PREPROCESSOR_FILE), vocabulary=_ctc_vocabulary(folder))


def _ctc_vocabulary(folder: Path) -> list[str]:
    """Tokens in id order from the ``vocab.json`` a CTC tokenizer saves (empty when absent)."""
    vocab = _json_object(folder / "vocab.json")
    try:
        return [token for token, _ in sorted(vocab.items(), key=lambda item: int(item[1]))]
    except (TypeError, ValueError):
        return []


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of the model folder; empty when missing or not an object (the defaults apply)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- zoo presets

# The published checkpoints' image processors normalize with these (ViTImageProcessor: 0.5;
# GLPNImageProcessor rescales to 0..1 and does not normalize); the others use ImageNet's.
IMAGE_NORMALIZATION: dict[str, tuple[list[float], list[float]]] = {
    "vit": ([0.5] * 3, [0.5] * 3),
    "glpn": ([0.0] * 3, [1.0] * 3),
}
# facebook/wav2vec2-base-960h's vocab.json in id order: the CTC blank (pad), specials, the word
# delimiter, then upper-case letters and the apostrophe by frequency.
CTC_VOCABULARY = ("<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
                  "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z")


def zoo_processors(name: str, config: Any) -> Processors:
    """The processors of zoo model ``name`` with ``config``, as its published checkpoint ships them."""
    vocab_size = int(getattr(config, "vocab_size", 0) or 0)
    if name in TOKENIZERS:
        return Processors(tokenizer=zoo_tokenizer(name, vocab_size))
    if name == "wav2vec2":
        return Processors(preprocessor={"sampling_rate": SAMPLING_RATE, "do_normalize": True},
                          vocabulary=ctc_vocabulary(vocab_size))
    mean, std = IMAGE_NORMALIZATION.get(name, (list(IMAGENET_MEAN), list(IMAGENET_STD)))
    return Processors(preprocessor={"image_mean": mean, "image_std": std})


def ctc_vocabulary(size: int) -> list[str]:
    """The wav2vec2-base-960h CTC vocabulary cut or padded with placeholders to ``size`` tokens."""
    return [*CTC_VOCABULARY[:size], *(PLACEHOLDER.format(i) for i in range(size - len(CTC_VOCABULARY)))]


@functools.cache
def zoo_tokenizer(name: str, vocab_size: int) -> bytes:
    """``tokenizer.json`` of zoo text model ``name`` with ``vocab_size`` ids (built once per process)."""
    tokenizer = TOKENIZERS[name](vocab_size)
    if tokenizer.get_vocab_size() != vocab_size:
        raise AssertionError(f"the {name} tokenizer has {tokenizer.get_vocab_size()} ids, not {vocab_size}")
    return tokenizer.to_str(pretty=True).encode("utf-8")


def _merged(normalizer: Any, pre_tokenizer: Any, size: int, alphabet: Sequence[str] = ()) -> Tokenizer:
    """A BPE tokenizer trained on the corpus to at most ``size`` tokens (ids: alphabet, then merges in order).

    Every tokenizer here starts from this one: ``BpeTrainer`` without a subword prefix gives the
    same vocabulary in every process, while ``WordPieceTrainer`` numbers its ``##`` pieces and
    ``UnigramTrainer`` sums its scores in hash-map order, so two runs of those differ.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=list(alphabet), show_progress=False))
    return tokenizer


def _pieces(tokenizer: Tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def _layout(leading: Sequence[str], pieces: Sequence[str], trailing: Sequence[str], size: int,
            placeholder: str = PLACEHOLDER) -> dict[str, int]:
    """Token -> id: ``leading`` special tokens from id 0, the pieces, placeholders, ``trailing`` at the last ids."""
    room = size - len(leading) - len(trailing)
    body = [p for p in dict.fromkeys(pieces) if p not in (*leading, *trailing)][:room]
    body += [placeholder.format(i) for i in range(room - len(body))]
    return {token: index for index, token in enumerate([*leading, *body, *trailing])}


def _byte_level_bpe(size: int, leading: Sequence[str], trailing: Sequence[str]) -> Tokenizer:
    """GPT-2's kind: byte-level BPE, no normalization, no prefix space."""
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained = _merged(None, pre_tokenizer, size - len(leading) - len(trailing), pre_tokenizers.ByteLevel.alphabet())
    merges = [tuple(pair) for pair in json.loads(trained.to_str())["model"]["merges"]]
    tokenizer = Tokenizer(models.BPE(_layout(leading, _pieces(trained), trailing, size), merges))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoders.ByteLevel()
    tokenizer.add_special_tokens([*leading, *trailing])
    return tokenizer


def gpt2_tokenizer(size: int) -> Tokenizer:
    """GPT-2: ``<|endoftext|>`` (bos = eos) at the last id."""
    tokenizer = _byte_level_bpe(size, (), ("<|endoftext|>",))
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def bart_tokenizer(size: int) -> Tokenizer:
    """BART: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` last; ``<s> A </s></s> B </s>``."""
    tokenizer = _byte_level_bpe(size, ("<s>", "<pad>", "</s>", "<unk>"), ("<mask>",))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                            add_prefix_space=False)
    return tokenizer


BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORD_START = "▁"


def bert_tokenizer(size: int) -> Tokenizer:
    """BERT uncased: WordPiece; ``[PAD]`` 0 ... ``[MASK]`` 4; ``[CLS] A [SEP] B [SEP]`` with segment ids.

    The pieces come from BPE over words marked with a word-start sign (``▁``): a marked piece
    starts a word, any other continues one (``##``). Every character is kept in both forms, so
    any word of the corpus' alphabet can be spelled.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    marked = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                      pre_tokenizers.Metaspace(WORD_START, prepend_scheme="always")])
    pieces = [p for p in _pieces(_merged(normalizer, marked, size)) if p != WORD_START]
    characters = [p for p in pieces if len(p) == 1]
    words = [p.removeprefix(WORD_START) if p.startswith(WORD_START) else f"##{p}" for p in pieces]
    vocab = _layout(BERT_SPECIAL, [*characters, *(f"##{c}" for c in characters), *words], (), size, "[unused{}]")
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.add_special_tokens(list(BERT_SPECIAL))
    return tokenizer


T5_SPECIAL = ("<pad>", "</s>", "<unk>")


def t5_tokenizer(size: int) -> Tokenizer:
    """T5: Unigram over ``▁``-marked words; ``<pad>`` 0 (also the decoder start), ``</s>`` 1, ``<unk>`` 2; ``A </s>``.

    Each piece's score is its log-probability in the corpus segmented by the BPE it comes from
    (add-one smoothed): one hard EM step, deterministic where ``UnigramTrainer`` is not.
    """
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    pre_tokenizer = pre_tokenizers.Metaspace(WORD_START, prepend_scheme="always")
    trained = _merged(normalizer, pre_tokenizer, size - len(T5_SPECIAL))
    counts = Counter(token for encoding in trained.encode_batch(CORPUS.splitlines()) for token in encoding.tokens)
    pieces = _pieces(trained)
    total = sum(counts.values()) + len(pieces)
    vocab = _layout(T5_SPECIAL, pieces, (), size)
    scores = {p: math.log((counts[p] + 1) / total) for p in pieces}
    tokenizer = Tokenizer(models.Unigram([(token, 0.0 if token in T5_SPECIAL else scores.get(token, PLACEHOLDER_SCORE))
                                          for token in vocab], unk_id=vocab["<unk>"]))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.Metaspace(WORD_START, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", vocab["</s>"])])
    tokenizer.add_special_tokens(list(T5_SPECIAL))
    return tokenizer


TOKENIZERS: dict[str, Callable[[int], Tokenizer]] = {
    "gpt2": gpt2_tokenizer, "bert": bert_tokenizer, "bart": bart_tokenizer, "t5": t5_tokenizer,
}
