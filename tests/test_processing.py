"""Task post-processing: numpy processing equals transformers' post-processors on the same outputs,
the manifest carries what processing needs, and ``edgeexport predict`` prints it without torch."""

from __future__ import annotations

import json
import logging
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from typer.testing import CliRunner

from edgeexport.artifact import Artifact
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult, convert
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.generation_spec import TOKENIZER_FILE
from edgeexport.manifest import Manifest
from edgeexport.processing import (Processing, answer_spans, audio_inputs, ctc_transcripts, decode, detections,
                                   image_inputs, semantic_maps, top_classes)
from edgeexport.reference import load_reference

RNG = np.random.default_rng(0)
LETTERS = Processing(labels=[f"L{i}" for i in range(7)])


@pytest.fixture(autouse=True)
def _no_torchvision_warnings() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def test_top_classes_are_torch_softmax_topk() -> None:
    logits = RNG.normal(size=(3, 7)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits), -1).topk(3)
    result = top_classes(logits, LETTERS, k=3)
    assert [[c["index"] for c in row] for row in result] == expected.indices.tolist()
    np.testing.assert_allclose([[c["score"] for c in row] for row in result], expected.values.numpy(), rtol=1e-6)
    assert result[0][0]["label"] == f"L{expected.indices[0, 0]}"


def test_answer_span_is_the_best_valid_pair() -> None:
    start, end = np.zeros((1, 40)), np.zeros((1, 40))
    start[0, 9], end[0, 2] = 8.0, 9.0  # the best start and end alone make an invalid span (end before start)
    end[0, 12], start[0, 1] = 6.0, 4.0
    spans = answer_spans(start, end, max_tokens=30)
    probabilities = [torch.softmax(torch.from_numpy(x[0]), -1).numpy() for x in (start, end)]
    valid = {(s, e): probabilities[0][s] * probabilities[1][e] for s in range(40) for e in range(s, min(s + 30, 40))}
    best = max(valid, key=valid.__getitem__)
    assert (spans[0]["start"], spans[0]["end"]) == best == (9, 12)
    assert spans[0]["score"] == pytest.approx(valid[best])


def test_detections_match_detr_post_processing() -> None:
    logits = RNG.normal(scale=3.0, size=(2, 12, 6)).astype(np.float32)
    boxes = RNG.uniform(0.1, 0.6, size=(2, 12, 4)).astype(np.float32)
    outputs = transformers.models.detr.modeling_detr.DetrObjectDetectionOutput(
        logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))
    expected = transformers.DetrImageProcessor().post_process_object_detection(outputs, threshold=0.3)
    ours = detections(logits, boxes, LETTERS, threshold=0.3)
    assert sum(len(row) for row in ours) > 2  # the threshold keeps some and drops others
    for row, reference in zip(ours, expected):
        assert [d["index"] for d in row] == reference["labels"].tolist()
        np.testing.assert_allclose([d["score"] for d in row], reference["scores"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(np.array([d["box"] for d in row]).reshape(-1, 4), reference["boxes"].numpy(),
                                   atol=1e-6)


def test_semantic_maps_match_mask2former_post_processing() -> None:
    # transformers first resizes the masks to 384x384; masks already that size make the resize an identity.
    classes = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    masks = RNG.normal(scale=2.0, size=(2, 5, 384, 384)).astype(np.float32)
    outputs = transformers.models.mask2former.modeling_mask2former.Mask2FormerForUniversalSegmentationOutput(
        class_queries_logits=torch.from_numpy(classes), masks_queries_logits=torch.from_numpy(masks))
    expected = transformers.Mask2FormerImageProcessor().post_process_semantic_segmentation(outputs)
    ours = semantic_maps(classes, masks)
    assert len(np.unique(ours)) == 3  # every real class wins somewhere
    agreement = np.mean([np.mean(o == e.numpy()) for o, e in zip(ours, expected)])
    assert agreement > 0.9999  # float32 (torch) vs float64 (ours) may split a near-tie pixel


@pytest.fixture(scope="module")
def ctc_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> transformers.Wav2Vec2CTCTokenizer:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate("abcdefghij")}}
    path = tmp_path_factory.mktemp("ctc") / "vocab.json"
    path.write_text(json.dumps(vocab))
    return transformers.Wav2Vec2CTCTokenizer(str(path))


def test_ctc_transcripts_match_the_wav2vec2_tokenizer(ctc_tokenizer: transformers.Wav2Vec2CTCTokenizer) -> None:
    vocabulary = [t for t, _ in sorted(ctc_tokenizer.get_vocab().items(), key=lambda item: item[1])][:15]
    processing = Processing(labels=vocabulary, blank=ctc_tokenizer.pad_token_id, word_delimiter="|")
    ids = RNG.choice([0, 0, 4, 5, 6, 7, 8], size=(3, 40))
    ids[0, 10:14] = 5  # a repeat to merge
    ids[0, 20:23] = [6, 0, 6]  # a blank between repeats keeps both
    logits = np.eye(15, dtype=np.float32)[ids]
    assert ctc_transcripts(logits, processing) == [ctc_tokenizer.decode(row) for row in ids]
    assert ctc_transcripts(logits, Processing(blank=0))[0].split()[0] == str(ids[0][ids[0] != 0][0])  # no vocabulary: ids


def test_tasks_without_post_processing_say_what_to_use() -> None:
    with pytest.raises(UsageError, match=r"^task 'custom' has no post-processing; read the raw outputs with "
                                         r"edgeexport.load\(ARTIFACT\)$"):
        decode("custom", {"y": np.zeros((1, 2))}, Processing())
    with pytest.raises(UsageError, match=r"^task 'seq2seq-lm' generates text; convert with --task "
                                         r"seq2seq-lm-with-past and run edgeexport generate ARTIFACT --prompt \.\.\.$"):
        decode("seq2seq-lm", {"logits": np.zeros((1, 2, 3))}, Processing())


def test_manifest_carries_the_config_labels(bert_artifact: ConversionResult) -> None:
    data = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    assert data["processing"] == {"labels": ["LABEL_0", "LABEL_1", "LABEL_2"], "tokenizer": TOKENIZER_FILE}
    manifest = Manifest.from_dict(data)
    assert Processing.of(manifest).labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    with pytest.raises(ArtifactError, match=r"^manifest processing.labels must be a list of strings; re-run convert$"):
        Processing.from_dict({"labels": [1, 2]})
    with pytest.raises(ArtifactError, match=r"^manifest processing needs image_size \[height, width\] and 3 "):
        Processing.from_dict({"image_size": [32], "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    del data["processing"]  # an artifact written before the block existed: classes show as indices
    assert Processing.of(Manifest.from_dict(data)).label(2) == "2"


def test_predict_prints_the_labels_of_the_golden_outputs(bert_artifact: ConversionResult,
                                                         cli_without_torch: Callable[..., subprocess.CompletedProcess[str]]
                                                         ) -> None:
    artifact = Artifact.open(bert_artifact.artifact)
    _, golden = artifact.load_golden(artifact.manifest.golden[0])
    result = cli_without_torch("predict", str(bert_artifact.artifact), "--json", "--classes", "2")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row[0]["index"] for row in rows] == golden["logits"].argmax(-1).tolist()
    assert [len(row) for row in rows] == [2] * len(golden["logits"])
    text = CliRunner().invoke(app, ["predict", str(bert_artifact.artifact)])
    assert text.exit_code == 0 and text.stdout.splitlines()[0].startswith(f"[0] LABEL_{rows[0][0]['index']} ")


def test_predict_refuses_an_unknown_case_and_a_broken_npz(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(bert_artifact.artifact), "--case", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: the artifact has no golden case 'nope'; choose one of: example, alternate"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    result = CliRunner().invoke(app, ["predict", str(bert_artifact.artifact), "--inputs", str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: --inputs '{tmp_path / 'bad.npz'}' is not a "
                                                              "readable .npz of arrays (")


def test_ctc_folder_model_decodes_with_its_saved_vocabulary(tmp_path: Path,
                                                            ctc_tokenizer: transformers.Wav2Vec2CTCTokenizer) -> None:
    """Real loading code: a save_pretrained folder with its tokenizer; predict reads the vocabulary from the manifest."""
    config = transformers.Wav2Vec2Config(vocab_size=len(ctc_tokenizer), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16),
                                         conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2, pad_token_id=ctc_tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "asr")
    ctc_tokenizer.save_pretrained(tmp_path / "asr")
    converted = convert(tmp_path / "asr", output_dir=tmp_path / "out")
    assert converted.report is not None and converted.report.passed
    processing = Processing.of(converted.manifest)
    assert processing.labels[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and processing.blank == 0
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.stderr
    artifact = Artifact.open(tmp_path / "out")
    _, outputs = artifact.load_golden(artifact.manifest.golden[0])
    assert json.loads(result.stdout) == [ctc_tokenizer.decode(row) for row in outputs["logits"].argmax(-1)]
    # From a WAV file: the feature extractor's normalization, the model, then the tokenizer's decoding.
    samples = _write_wav(tmp_path / "speech.wav", 16000, seconds=0.5)
    features = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)(samples, sampling_rate=16000,
                                                                         return_tensors="pt").input_values
    with torch.no_grad():
        expected = ctc_tokenizer.decode(converted.reference.module(features)[0][0].argmax(-1))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--audio", str(tmp_path / "speech.wav"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [expected]


def _write_wav(path: Path, rate: int, *, seconds: float, channels: int = 1) -> np.ndarray:
    """A 16-bit PCM WAV of noise and a tone; returns its samples as floats in -1..1 (channel 0)."""
    t = np.arange(int(rate * seconds)) / rate
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * RNG.normal(size=t.size)
    pcm = np.round(np.clip(signal, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(channels)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(np.repeat(pcm, channels).tobytes())
    return pcm / 32768.0


def test_audio_inputs_match_the_wav2vec2_feature_extractor(tmp_path: Path) -> None:
    samples = _write_wav(tmp_path / "a.wav", 16000, seconds=0.25, channels=2)
    processing = Processing(sampling_rate=16000, normalize_audio=True)
    expected = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)(samples, sampling_rate=16000,
                                                                         return_tensors="np").input_values
    np.testing.assert_allclose(audio_inputs(processing, tmp_path / "a.wav")["input_values"], expected, atol=1e-5)
    _write_wav(tmp_path / "b.wav", 8000, seconds=0.1)
    with pytest.raises(InputSpecError, match=r"^'.*b.wav' is sampled at 8000 Hz, the model expects 16000 Hz; "
                                             r"resample it \(e.g. ffmpeg -i IN -ar 16000 OUT.wav\)$"):
        audio_inputs(processing, tmp_path / "b.wav")
    (tmp_path / "c.wav").write_bytes(b"RIFF1234")
    with pytest.raises(InputSpecError, match=r"^cannot read WAV file '.*c.wav' \(.*\); pass a 16-bit PCM .wav$"):
        audio_inputs(processing, tmp_path / "c.wav")


def test_image_inputs_match_the_vit_image_processor(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, size=(50, 40, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    processing = Processing(image_size=[32, 24], image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25])
    expected = transformers.ViTImageProcessor(size={"height": 32, "width": 24}, image_mean=[0.5, 0.4, 0.3],
                                              image_std=[0.2, 0.3, 0.25])(Image.open(tmp_path / "photo.png"),
                                                                          return_tensors="np").pixel_values
    np.testing.assert_allclose(image_inputs(processing, tmp_path / "photo.png")["pixel_values"], expected, atol=1e-5)
    with pytest.raises(InputSpecError, match=r"^the artifact does not take images; pass --inputs FILE\.npz$"):
        image_inputs(Processing(), tmp_path / "photo.png")
    audio_model = Processing(sampling_rate=16000)
    with pytest.raises(InputSpecError, match=r"^the artifact does not take images; pass --audio or --inputs FILE.npz$"):
        image_inputs(audio_model, tmp_path / "photo.png")


def test_vit_folder_model_classifies_an_image_file(tmp_path: Path) -> None:
    """A save_pretrained folder with its image processor: predict --image equals PyTorch on the processor's pixels."""
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=37, num_labels=4,
                                    id2label={0: "cat", 1: "dog", 2: "bird", 3: "fish"})
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "vit")
    converted = convert(tmp_path / "vit", output_dir=tmp_path / "out")
    assert Processing.of(converted.manifest).image_mean == [0.5, 0.5, 0.5]  # the saved processor's, not ImageNet's
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "out")])
    assert "4 labels (cat, dog, bird, fish); images 32x32, mean [0.5, 0.5, 0.5]" in shown.stdout
    Image.fromarray(RNG.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    pixels = processor(Image.open(tmp_path / "photo.png"), return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = torch.softmax(converted.reference.module(pixels)[0][0], -1)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--image", str(tmp_path / "photo.png"),
                                      "--json", "--classes", "1"])
    assert result.exit_code == 0, result.stderr
    (best,), = json.loads(result.stdout)
    assert best["label"] == config.id2label[int(expected.argmax())]
    assert best["score"] == pytest.approx(float(expected.max()), abs=1e-4)


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "who", "?"]


def _bert_folder(folder: Path, model_class: type, **config: Any) -> transformers.BertTokenizerFast:
    """A tiny BERT with a WordPiece tokenizer, saved as save_pretrained writes them; returns the tokenizer."""
    folder.mkdir()
    (folder / "words.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "words.txt"))
    torch.manual_seed(0)
    model_class(transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=37, **config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_older_processor_settings_are_read(tmp_path: Path) -> None:
    """Processors saved by older transformers: one int for a square size, one number for every channel."""
    config = transformers.ViTConfig(image_size=48, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=37)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({"size": 48, "image_mean": 0.5,
                                                                           "image_std": 0.25}))
    processing = Processing.from_dict(load_reference(tmp_path / "vit").processing)
    assert (processing.image_size, processing.image_mean, processing.image_std) == ([48, 48], [0.5] * 3, [0.25] * 3)
    (tmp_path / "vit" / "preprocessor_config.json").write_text("not json")
    processing = Processing.from_dict(load_reference(tmp_path / "vit").processing)  # the defaults apply
    assert (processing.image_size, processing.image_mean) == ([48, 48], [0.485, 0.456, 0.406])


def test_bert_folder_model_answers_from_the_context(tmp_path: Path) -> None:
    tokenizer = _bert_folder(tmp_path / "qa", transformers.BertForQuestionAnswering)
    converted = convert(tmp_path / "qa", output_dir=tmp_path / "out")
    question, context = "who sat ?", "the cat sat on a mat the dog sat"
    encoded = tokenizer(question, context, return_tensors="pt", return_offsets_mapping=True)
    with torch.no_grad():
        start, end = converted.reference.module(*(encoded[n] for n in converted.reference.input_names))
    in_context = np.array(encoded.sequence_ids(0)) == 1
    expected = answer_spans(start.numpy(), end.numpy(), allowed=in_context[None])[0]
    assert in_context[expected["start"]] and in_context[expected["end"]]
    offsets = encoded["offset_mapping"][0]
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--text", question, "--text-pair", context,
                                      "--json"])
    assert result.exit_code == 0, result.stderr
    (span,) = json.loads(result.stdout)
    assert (span["start"], span["end"]) == (expected["start"], expected["end"])
    assert span["answer"] == context[int(offsets[span["start"]][0]):int(offsets[span["end"]][1])] != ""


def test_bert_folder_model_classifies_text_with_its_tokenizer(tmp_path: Path) -> None:
    tokenizer = _bert_folder(tmp_path / "bert", transformers.BertForSequenceClassification, num_labels=2,
                             id2label={0: "negative", 1: "positive"})
    converted = convert(tmp_path / "bert", output_dir=tmp_path / "out")
    encoded = tokenizer("the cat sat", "on a mat", return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(converted.reference.module(*(encoded[n] for n in converted.reference.input_names))[0][0],
                                 -1)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--text", "the cat sat", "--text-pair",
                                      "on a mat", "--json"])
    assert result.exit_code == 0, result.stderr
    (scores,) = json.loads(result.stdout)
    assert {c["label"]: c["score"] for c in scores} == pytest.approx(
        {"negative": float(expected[0]), "positive": float(expected[1])}, abs=1e-5)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--text", "x", "--image", "y.png"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: --text, --image were given together; pass one input"
