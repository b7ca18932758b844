"""Task post-processing: numpy decoding equals transformers' post-processors on the same outputs,
the manifest carries what decoding needs, and ``edgeexport predict`` prints it without torch."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, Manifest
from edgeexport.cli import app
from edgeexport.errors import ArtifactError, UsageError
from edgeexport.pipeline import ConversionResult, convert
from edgeexport.postprocess import (Decoding, answer_spans, ctc_transcripts, decode, detections, semantic_maps,
                                    top_classes)

RNG = np.random.default_rng(0)
LETTERS = Decoding(labels=[f"L{i}" for i in range(7)])


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
    decoding = Decoding(labels=vocabulary, blank=ctc_tokenizer.pad_token_id, word_delimiter="|")
    ids = RNG.choice([0, 0, 4, 5, 6, 7, 8], size=(3, 40))
    ids[0, 10:14] = 5  # a repeat to merge
    ids[0, 20:23] = [6, 0, 6]  # a blank between repeats keeps both
    logits = np.eye(15, dtype=np.float32)[ids]
    assert ctc_transcripts(logits, decoding) == [ctc_tokenizer.decode(row) for row in ids]
    assert ctc_transcripts(logits, Decoding(blank=0))[0].split()[0] == str(ids[0][ids[0] != 0][0])  # no vocabulary: ids


def test_unknown_task_names_the_raw_outputs() -> None:
    with pytest.raises(UsageError, match=r"^task 'causal-lm' has no post-processing; read the raw outputs"):
        decode("causal-lm", {"logits": np.zeros((1, 2, 3))}, Decoding())


def test_manifest_carries_the_config_labels(bert_artifact: ConversionResult) -> None:
    data = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    assert data["postprocess"] == {"labels": ["LABEL_0", "LABEL_1", "LABEL_2"]}
    manifest = Manifest.from_dict(data)
    assert Decoding.of(manifest).labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    with pytest.raises(ArtifactError, match=r"^manifest postprocess.labels must be a list of strings; re-run convert$"):
        Decoding.from_dict({"labels": [1, 2]})
    del data["postprocess"]  # an artifact written before the block existed: classes show as indices
    assert Decoding.of(Manifest.from_dict(data)).label(2) == "2"


def test_predict_prints_the_labels_of_the_golden_outputs(bert_artifact: ConversionResult,
                                                         cli_without_torch: Callable[..., subprocess.CompletedProcess[str]]
                                                         ) -> None:
    artifact = Artifact.open(bert_artifact.artifact)
    _, golden = artifact.load_golden(artifact.manifest.golden[0])
    result = cli_without_torch("predict", str(bert_artifact.artifact), "--json", "--top-k", "2")
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
    decoding = Decoding.of(converted.manifest)
    assert decoding.labels[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and decoding.blank == 0
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.stderr
    artifact = Artifact.open(tmp_path / "out")
    _, outputs = artifact.load_golden(artifact.manifest.golden[0])
    assert json.loads(result.stdout) == [ctc_tokenizer.decode(row) for row in outputs["logits"].argmax(-1)]
