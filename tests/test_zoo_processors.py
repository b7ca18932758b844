"""The zoo ships what its published checkpoints ship: tokenizers sized to each preset's vocabulary with the
config's special tokens, built the same in every process; vision and audio processor settings; and the
artifacts carry them, so ``predict --text/--image/--audio`` and ``generate --prompt`` give what PyTorch
gives with the same processors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer
from typer.testing import CliRunner

from edgeexport.cli import app
from edgeexport.conversion import ConversionResult, convert
from edgeexport.generation_spec import TOKENIZER_FILE
from edgeexport.generator import Generator
from edgeexport.processing import Processing, answer_spans
from edgeexport.reference import load_reference
from edgeexport.reference.processors import CTC_VOCABULARY, zoo_tokenizer
from edgeexport.zoo import PRESETS, get_spec

cli = CliRunner()
TEXT = "Who wrote it? I love this little town, and 42 people live by the river."
# Where the published checkpoints keep their special tokens: config attribute -> token.
SPECIAL_TOKENS = {
    "gpt2": {"bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
    "bert": {"pad_token_id": "[PAD]"},
    "bart": {"bos_token_id": "<s>", "pad_token_id": "<pad>", "eos_token_id": "</s>", "decoder_start_token_id": "</s>"},
    "t5": {"pad_token_id": "<pad>", "eos_token_id": "</s>", "decoder_start_token_id": "<pad>"},
}
# Token strings of TEXT as each kind of tokenizer writes them back (BERT uncased lower-cases).
DECODED = {"gpt2": TEXT, "bert": TEXT.lower(), "bart": TEXT, "t5": TEXT}


def _config(name: str, preset: str) -> transformers.PretrainedConfig:
    spec = get_spec(name)
    return transformers.AutoConfig.for_model(spec.model_type, **spec.presets[preset])


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", list(SPECIAL_TOKENS))
def test_zoo_tokenizer_covers_the_vocabulary_with_the_config_special_tokens(name: str, preset: str) -> None:
    config = _config(name, preset)
    tokenizer = Tokenizer.from_str(zoo_tokenizer(name, config.vocab_size).decode())
    assert tokenizer.get_vocab_size() == config.vocab_size
    for attribute, token in SPECIAL_TOKENS[name].items():
        assert tokenizer.id_to_token(getattr(config, attribute)) == token, attribute
    encoding = tokenizer.encode(TEXT)
    assert tokenizer.token_to_id("<unk>") not in encoding.ids and tokenizer.token_to_id("[UNK]") not in encoding.ids
    assert tokenizer.decode(encoding.ids, skip_special_tokens=True) == DECODED[name]
    placeholders = sum(token.startswith(("<unused", "[unused")) for token in tokenizer.get_vocab())
    if preset == "tiny":  # the corpus fills the tiny vocabularies; published sizes are padded
        assert placeholders == 0
    else:
        assert 0 < placeholders < config.vocab_size - 500


def test_tokenizers_use_the_checkpoints_templates() -> None:
    """BERT wraps a pair in [CLS] A [SEP] B [SEP] with segment ids, BART in <s> A </s></s> B </s>, T5 appends </s>;
    GPT-2 adds nothing."""
    bert = Tokenizer.from_str(zoo_tokenizer("bert", 1000).decode()).encode("who?", "the cat")
    assert bert.tokens == ["[CLS]", "who", "?", "[SEP]", "the", "cat", "[SEP]"] and bert.type_ids == [0] * 4 + [1] * 3
    bart = Tokenizer.from_str(zoo_tokenizer("bart", 1000).decode()).encode("Hello", "world")
    assert bart.ids[:1] == [0] and bart.ids[-1] == 2 and bart.tokens.count("</s>") == 3
    t5 = Tokenizer.from_str(zoo_tokenizer("t5", 1000).decode()).encode("Hello world")
    assert t5.tokens[-1] == "</s>" and t5.tokens[0].startswith("▁")
    gpt2 = Tokenizer.from_str(zoo_tokenizer("gpt2", 1000).decode()).encode("I love the river")
    assert gpt2.tokens == ["I", "Ġlo", "ve", "Ġthe", "Ġriver"]


BUILD_IN_A_FRESH_PROCESS = """
import hashlib, sys
from edgeexport.reference.processors import zoo_tokenizer
for name, size in (("gpt2", 1000), ("bert", 1000), ("bart", 1000), ("t5", 1000), ("t5", 32128), ("bert", 30522)):
    print(hashlib.sha256(zoo_tokenizer(name, size)).hexdigest())
"""


def test_zoo_tokenizers_are_the_same_in_every_process() -> None:
    """Conversions are byte-deterministic, so a tokenizer built in another process must be byte-identical
    (the library's WordPiece and Unigram trainers are not: see edgeexport.reference.processors)."""
    runs = [subprocess.run([sys.executable, "-c", BUILD_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                           timeout=300, check=True).stdout.split() for _ in range(2)]
    here = [hashlib.sha256(zoo_tokenizer(name, size)).hexdigest()
            for name, size in (("gpt2", 1000), ("bert", 1000), ("bart", 1000), ("t5", 1000), ("t5", 32128),
                               ("bert", 30522))]
    assert runs[0] == runs[1] == here
    assert len(set(here)) == len(here)  # the planted difference: each model and size gives its own file


# --------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def zoo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ConversionResult]:
    """``zoo_artifacts(name, task=None)``: a tiny zoo model converted to ONNX once per module (not validated:
    parity is tested elsewhere; here the processors the artifact carries)."""
    cache: dict[tuple[str, str | None], ConversionResult] = {}

    def get(name: str, task: str | None = None) -> ConversionResult:
        if (name, task) not in cache:
            folder = tmp_path_factory.mktemp("zoo") / f"{name}-{task or 'default'}"
            cache[name, task] = convert(name, task=task, output_dir=folder, validate=False)
        return cache[name, task]

    return get


def _artifact_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(folder / TOKENIZER_FILE))


def _run_json(*args: str) -> object:
    result = cli.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_predict_text_classifies_with_the_zoo_tokenizer(bert_artifact: ConversionResult) -> None:
    encoding = _artifact_tokenizer(bert_artifact.artifact).encode("I love this")
    tensors = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask, "token_type_ids": encoding.type_ids}
    with torch.no_grad():
        logits = bert_artifact.reference.module(*(torch.tensor([tensors[n]]) for n in bert_artifact.reference.input_names))
    expected = torch.softmax(logits[0][0], -1)
    (scores,) = _run_json("predict", str(bert_artifact.artifact), "--text", "I love this")
    assert {c["label"]: c["score"] for c in scores} == pytest.approx(
        {f"LABEL_{i}": float(p) for i, p in enumerate(expected)}, abs=1e-5)
    assert scores[0]["label"] == f"LABEL_{int(expected.argmax())}"


def test_predict_answers_a_question_from_its_context(zoo_artifacts: Callable[..., ConversionResult]) -> None:
    converted = zoo_artifacts("bert", "question-answering")
    question, context = "Who wrote it?", "A model converter wrote it, and it has no network to fetch one."
    encoding = _artifact_tokenizer(converted.artifact).encode(question, context)
    with torch.no_grad():
        start, end = converted.reference.module(*(torch.tensor([getattr(encoding, attribute)]) for attribute in
                                                  ("ids", "attention_mask", "type_ids")))
    in_context = np.array([index == 1 for index in encoding.sequence_ids])
    expected = answer_spans(start.numpy(), end.numpy(), allowed=in_context[None])[0]
    (span,) = _run_json("predict", str(converted.artifact), "--text", question, "--text-pair", context)
    assert (span["start"], span["end"]) == (expected["start"], expected["end"])
    assert span["score"] == pytest.approx(expected["score"], rel=1e-4)
    offsets = encoding.offsets
    assert span["answer"] == context[offsets[span["start"]][0]:offsets[span["end"]][1]] != ""


# The published checkpoints' image processors, at the zoo model's fixed example size.
IMAGE_PROCESSORS = {
    "vit": lambda size: transformers.ViTImageProcessor(size={"height": size[0], "width": size[1]}),
    "convnext": lambda size: transformers.ViTImageProcessor(size={"height": size[0], "width": size[1]},
                                                            image_mean=[0.485, 0.456, 0.406],
                                                            image_std=[0.229, 0.224, 0.225]),
    "detr": lambda size: transformers.DetrImageProcessor(size={"height": size[0], "width": size[1]}),
}


@pytest.mark.parametrize("name", ["vit", *(pytest.param(name, marks=pytest.mark.slow) for name in ("convnext", "detr"))])
def test_predict_image_equals_pytorch_on_the_processor_pixels(name: str, tmp_path: Path,
                                                               zoo_artifacts: Callable[..., ConversionResult]) -> None:
    converted = zoo_artifacts(name)
    processing = Processing.of(converted.manifest)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)).save(
        tmp_path / "photo.png")
    pixels = IMAGE_PROCESSORS[name](processing.image_size)(Image.open(tmp_path / "photo.png"),
                                                            return_tensors="pt").pixel_values
    with torch.no_grad():
        outputs = converted.reference.module(pixels)
    probabilities = torch.softmax(outputs[0][0], -1)
    if name == "detr":  # the threshold keeps the better half of the queries (random weights score low)
        best = probabilities[:, :-1].max(-1).values
        threshold = float(best.median())
        result = _run_json("predict", str(converted.artifact), "--image", str(tmp_path / "photo.png"), "--threshold",
                           str(threshold))
        kept = best > threshold
        assert [d["index"] for d in result[0]] == probabilities[:, :-1].argmax(-1)[kept].tolist() and kept.any()
        np.testing.assert_allclose([d["score"] for d in result[0]], best[kept], atol=1e-5)
    else:
        result = _run_json("predict", str(converted.artifact), "--image", str(tmp_path / "photo.png"), "--classes", "3")
        expected = probabilities.topk(3)
        assert [c["index"] for c in result[0]] == expected.indices.tolist()
        np.testing.assert_allclose([c["score"] for c in result[0]], expected.values, atol=1e-5)


# What each zoo reference carries for its artifact's processing block (checked without exporting).
TOKENIZED = {"tokenizer": TOKENIZER_FILE}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
PROCESSING = {
    "gpt2": TOKENIZED, "bert": TOKENIZED, "bart": TOKENIZED, "t5": TOKENIZED,
    "vit": {"image_size": [32, 32], "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    "convnext": {"image_size": [64, 64], **IMAGENET}, "detr": {"image_size": [64, 64], **IMAGENET},
    "mask2former": {"image_size": [64, 64], **IMAGENET},
    "glpn": {"image_size": [64, 64], "image_mean": [0.0] * 3, "image_std": [1.0] * 3},
    "wav2vec2": {"labels": list(CTC_VOCABULARY), "blank": 0, "word_delimiter": "|", "sampling_rate": 16000,
                 "normalize_audio": True},
}


@pytest.mark.parametrize("name", list(PROCESSING))
def test_every_zoo_reference_carries_its_checkpoints_processors(name: str) -> None:
    reference = load_reference(name)
    expected = {k: v for k, v in reference.processing.items() if k in PROCESSING[name]}
    assert expected == PROCESSING[name]
    assert ({TOKENIZER_FILE} if "tokenizer" in PROCESSING[name] else set()) == set(reference.assets)
    if name in SPECIAL_TOKENS:
        assert reference.assets[TOKENIZER_FILE] == zoo_tokenizer(name, reference.vocab_size)


@pytest.mark.parametrize(("name", "task"), [("gpt2", "causal-lm-with-past"), ("bart", "seq2seq-lm-with-past")])
def test_generation_decoders_carry_the_tokenizer(name: str, task: str) -> None:
    reference = load_reference(name, task=task)
    decoder = getattr(reference, "components", {}).get("decoder", reference)
    assert decoder.generation["tokenizer"] == TOKENIZER_FILE
    assert decoder.assets == {TOKENIZER_FILE: zoo_tokenizer(name, decoder.vocab_size)}


def test_predict_audio_transcribes_with_the_ctc_vocabulary(tmp_path: Path,
                                                           zoo_artifacts: Callable[..., ConversionResult]) -> None:
    converted = zoo_artifacts("wav2vec2")
    processing = Processing.of(converted.manifest)
    assert processing.labels == list(CTC_VOCABULARY) and processing.blank == 0 and processing.word_delimiter == "|"
    rate, t = 16000, np.arange(8000) / 16000
    pcm = np.round(np.clip(0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(1).normal(size=t.size),
                           -1, 1) * 32767).astype("<i2")
    with wave.open(str(tmp_path / "speech.wav"), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(pcm.tobytes())
    (folder := tmp_path / "ctc").mkdir()
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(CTC_VOCABULARY)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    features = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)(pcm / 32768.0, sampling_rate=rate,
                                                                         return_tensors="pt").input_values
    with torch.no_grad():
        expected = tokenizer.decode(converted.reference.module(features)[0][0].argmax(-1))
    assert expected.strip()  # random weights still say something
    assert _run_json("predict", str(converted.artifact), "--audio", str(tmp_path / "speech.wav")) == [expected]


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize(("name", "task"), [("gpt2", "causal-lm-with-past"),
                                            pytest.param("t5", "seq2seq-lm-with-past", marks=pytest.mark.slow)])
def test_generate_prompt_equals_transformers_generate(name: str, task: str,
                                                      zoo_artifacts: Callable[..., ConversionResult]) -> None:
    converted = zoo_artifacts(name, task)
    reference = getattr(converted.reference, "components", {}).get("decoder", converted.reference)
    model = reference.module.model
    prompt = "Translate English to German: the house is wonderful."
    decoder = converted.artifact / "decoder" if (converted.artifact / "decoder").is_dir() else converted.artifact
    tokenizer = _artifact_tokenizer(decoder)
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    with torch.inference_mode():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
    new = expected[0, 1 if model.config.is_encoder_decoder else ids.shape[1]:].tolist()
    with Generator.load(converted.artifact) as generator:
        assert generator.prompt(prompt).tolist() == ids.tolist()
        ours = generator.generate(generator.prompt(prompt), max_new_tokens=8).tokens[0].tolist()
    assert ours == new
    result = cli.invoke(app, ["generate", str(converted.artifact), "--prompt", prompt, "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip("\n") == tokenizer.decode(new, skip_special_tokens=True)
