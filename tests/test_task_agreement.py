"""Task agreement (edgeexport.validation.agreement): verdicts in the user's terms on held-out sentences.

Fixed plants, independent of the thresholds: a temperature of 1.3 and 0.7, two labels swapped, 30 % of an
embedding's features zeroed (outlier features present), an unrelated output; each fails, the genuine output
passes, and every criterion has a plant that only it catches. Then the trained MiniLM classifier (head trained
here) end to end: its artifact passes, and a planted temperature or label swap dropped into it fails.
"""

from __future__ import annotations

import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, write_manifest
from edgeexport.cli import app
from edgeexport.conversion import convert
from edgeexport.errors import ArtifactError
from edgeexport.manifest import OPTIONAL_CRITERIA, Manifest
from edgeexport.processing import Processing, softmax, text_batch
from edgeexport.reference.sentences import split
from edgeexport.runner import load
from edgeexport.validation.agreement import CRITERIA, Criteria, judge
from trained import HELD_OUT_LABELS, classifier_folder

RNG = np.random.default_rng(7)
LOGITS = RNG.normal(size=(32, 4)) * 3  # confident, as a trained 4-topic head (mean top probability ~0.8)
# 16 pairs of near-identical sentences (cosine ~0.99 within a pair, ~0 across): every nearest neighbour is clear.
EMBEDDINGS = np.repeat(RNG.normal(size=(16, 384)), 2, axis=0) + RNG.normal(scale=0.1, size=(32, 384))
CLASSIFY, EMBED = CRITERIA["sequence-classification"], CRITERIA["sentence-embedding"]
ONES = np.ones(32)


def classified(logits: np.ndarray, criteria: Criteria = CLASSIFY) -> list[str]:
    return judge("sequence-classification", softmax(logits), softmax(LOGITS), ONES, criteria).misses


def embedded(embeddings: np.ndarray, criteria: Criteria = EMBED) -> list[str]:
    return judge("sentence-embedding", embeddings, EMBEDDINGS, ONES, criteria).misses


def swapped_top2(logits: np.ndarray) -> np.ndarray:
    order = np.argsort(-logits, axis=-1)
    out = logits.copy()
    rows = np.arange(len(out))
    out[rows, order[:, 0]], out[rows, order[:, 1]] = logits[rows, order[:, 1]], logits[rows, order[:, 0]]
    return out


def test_the_genuine_outputs_pass() -> None:
    assert classified(LOGITS + RNG.normal(scale=0.01, size=LOGITS.shape)) == []
    assert embedded(EMBEDDINGS + RNG.normal(scale=0.01, size=EMBEDDINGS.shape)) == []


@pytest.mark.parametrize("plant", [LOGITS * 1.3, LOGITS * 0.7, swapped_top2(LOGITS), LOGITS[:, [1, 0, 2, 3]],
                                   RNG.normal(size=LOGITS.shape) * 3],
                         ids=["temperature-1.3", "temperature-0.7", "top1-top2-swapped", "labels-0-1-swapped",
                              "unrelated"])
def test_classification_plants_fail(plant: np.ndarray) -> None:
    assert classified(plant)


def test_zeroed_features_and_unrelated_embeddings_fail() -> None:
    zeroed = EMBEDDINGS.copy()
    zeroed[:, : int(0.3 * 384)] = 0  # 30 % of the features
    assert embedded(zeroed)
    assert embedded(RNG.normal(size=EMBEDDINGS.shape))


def test_label_agreement_alone_catches_near_tie_flips() -> None:
    """Two labels in near-tied rows flipped: probabilities barely move, only agreement sees it."""
    logits = LOGITS.copy()
    logits[:2] = [[1.0, 0.99, -3, -3], [-3, 1.0, 0.99, -3]]
    planted = logits.copy()
    planted[:2] = [[0.99, 1.0, -3, -3], [-3, 0.99, 1.0, -3]]
    misses = judge("sequence-classification", softmax(planted), softmax(logits), ONES, CLASSIFY).misses
    assert len(misses) == 1 and misses[0].startswith("label agreement 0.938")
    off = replace(CLASSIFY, min_agreement=0.0)
    assert judge("sequence-classification", softmax(planted), softmax(logits), ONES, off).misses == []


def test_mean_dp_alone_catches_a_mild_temperature() -> None:
    misses = classified(LOGITS * 1.2)
    assert [m.split(" ")[0] for m in misses] == ["mean"], misses
    assert classified(LOGITS * 1.2, replace(CLASSIFY, max_mean_dp=None)) == []


def test_max_dp_alone_catches_one_sentence_moved() -> None:
    planted = LOGITS.copy()
    top = int(np.argmax(softmax(LOGITS).max(-1)))
    planted[top] *= 0.15  # one confident sentence made unsure, its label kept
    misses = classified(planted)
    assert [m.split(" ")[0] for m in misses] == ["largest"], misses
    assert classified(planted, replace(CLASSIFY, max_dp=None)) == []


def test_cosine_alone_catches_one_embedding_bent() -> None:
    planted = EMBEDDINGS.copy()
    planted[5] += RNG.normal(size=384) * np.linalg.norm(planted[5]) * 0.012  # cosine ~0.93, neighbour unchanged
    misses = embedded(planted)
    assert [m.split(" ")[0] for m in misses] == ["cosine"], misses
    assert embedded(planted, replace(EMBED, min_cosine=None)) == []


def test_neighbour_agreement_alone_catches_swapped_neighbours() -> None:
    """Sentence 0 sits between 1 and 2, a little nearer 1; the artifact leans it a little towards 2 (cosine
    0.9999 with the reference): one of 32 nearest neighbours changes, and only agreement sees it."""
    want = np.eye(32, 384)
    want[0] = want[0] + 0.5 * want[1] + 0.49 * want[2]
    got = want.copy()
    got[0] = np.eye(32, 384)[0] + 0.49 * want[1] + 0.5 * want[2]
    misses = judge("sentence-embedding", got, want, ONES, EMBED).misses
    assert misses == ["nearest-neighbour agreement 0.969 < 0.97"]
    assert judge("sentence-embedding", got, want, ONES, replace(EMBED, min_agreement=0.0)).misses == []


# --------------------------------------------------------------------------- the trained classifier, end to end


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    return convert(classifier_folder(root / "minilm-topics"), output_dir=root / "onnx-fp32").artifact


def test_the_trained_classifier_passes_with_its_evaluation_set(classifier: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(classifier)])
    assert result.exit_code == 0, result.output
    assert "task agreement (sequence-classification, 96 held-out sentences): agreement 100.0%" in result.output


@pytest.mark.parametrize("plant", [{"temperature": 1.3}, {"swap": (0, 1)}], ids=["temperature-1.3", "labels-swapped"])
def test_a_planted_head_dropped_into_the_artifact_fails(classifier: Path, tmp_path: Path, plant: dict) -> None:
    planted = convert(classifier_folder(tmp_path / "planted-folder", **plant), output_dir=tmp_path / "planted",
                      validate=False).artifact
    dropped = tmp_path / "dropped"
    shutil.copytree(classifier, dropped)
    for name in ("model.onnx", "model.onnx.data"):
        if (planted / name).exists():
            shutil.copyfile(planted / name, dropped / name)
    write_manifest(dropped, Artifact.open(dropped).manifest)  # re-hashed, as an attacker or a bad copy would
    result = CliRunner().invoke(app, ["validate", str(dropped)])
    assert result.exit_code == 1, result.output
    assert "task agreement: " in result.output


# ------------------------------------------------------------------------- out of sample: a head nothing was fitted on

# OpenVINO int8 is the listed case of docs/parity.md ("Out of sample"): borderline on every criterion, it fails on the
# evaluation split (3 of 96 labels changed, max |dp| 0.180) and passes on the 64 held-out sentences by a hair (1 of 64,
# max |dp| 0.097 against 0.1, mean 0.018 against 0.02).
BORDERLINE = pytest.mark.xfail(strict=True, reason="borderline OpenVINO int8, listed in docs/parity.md")
HELD_OUT_PRECISIONS = [("onnx", p) for p in ("fp32", "fp16", "int8-weights", "int4-weights", "int8")] + [
    ("openvino", p) for p in ("fp32", "fp16", "bf16", "int8-weights", "int4-weights")] + [
    pytest.param("openvino", "int8", marks=BORDERLINE)]


@pytest.fixture(scope="module")
def held_out_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classifier_folder(tmp_path_factory.mktemp("held-out") / "minilm-outdoors", labels=HELD_OUT_LABELS)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "precision"), HELD_OUT_PRECISIONS)
def test_validate_passes_exactly_when_held_out_sentences_keep_their_labels(held_out_head: Path, target: str,
                                                                           precision: str, tmp_path: Path) -> None:
    """Out of sample (docs/parity.md): a 2-label head no bound or criterion was derived on, converted at every ONNX and
    OpenVINO precision. ``convert``'s verdict (tensor bounds and task agreement on the evaluation split) must equal
    the task criterion applied to the 64 sentences of the golden and calibration splits (the head was trained on the
    train split, so its sentences would be easy ones) run through the artifact's own tokenizer and runtime against
    PyTorch."""
    pytest.importorskip(target)
    result = convert(held_out_head, target=target, precision=precision, output_dir=tmp_path / "artifact")
    runner = load(result.artifact)
    manifest = runner.artifact.manifest
    texts = [sentence for name in ("golden", "calibration") for sentence, _ in split(name)]
    feed = text_batch(Processing.of(manifest), runner.artifact, texts)
    got = softmax(runner({name: feed[name] for name in manifest.input_names})["logits"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(held_out_head).eval()
    with torch.inference_mode():
        want = softmax(model(**{name: torch.from_numpy(feed[name]) for name in manifest.input_names}).logits.numpy())
    held_out = judge("sequence-classification", got, want, feed["attention_mask"], CLASSIFY)
    verdict = "pass" if result.report.passed else f"FAIL {result.report.failures()[:2]}"
    print(f"{target} {precision}: verdict {verdict}; {held_out.describe()}")
    assert result.report.passed == held_out.passed, (result.report.failures(), held_out.measures)


def test_the_manifest_takes_every_criterion_and_names_them_when_it_meets_another(tmp_path: Path) -> None:
    """The manifest parser keeps its own list of Criteria's optional fields (it loads without the validation
    package): a criterion added to Criteria and not to the list would make every artifact judged by it corrupt."""
    assert {f.name for f in fields(Criteria)} == {"min_agreement", *OPTIONAL_CRITERIA}
    artifact = convert("vit", task="image-classification", output_dir=tmp_path / "vit").artifact
    manifest = Artifact.open(artifact).manifest
    manifest.evaluation["criteria"]["max_wobble"] = 0.1
    line = (r"^manifest evaluation.criteria needs min_agreement and may hold max_dp, max_mean_dp, .*, max_relative_kl "
            r"and min_greedy_agreement; re-run convert$")
    with pytest.raises(ArtifactError, match=line):
        Manifest.from_dict(manifest.to_dict())
