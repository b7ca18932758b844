"""Task agreement: does the artifact give the user what PyTorch gives, on held-out realistic examples?

Tensor bounds (:mod:`edgeexport.validation.metrics`) judge rounding; this judges what a user sees. A
text model converted from a trained checkpoint carries an evaluation set (the manifest's ``evaluation``
block): held-out sentences as raw text (:mod:`edgeexport.reference.sentences`, a split no golden case or
calibration uses) and PyTorch's task outputs on them. Any machine re-checks it with the artifact's own
tokenizer and runtime, without torch. Per task:

- ``sentence-embedding`` and text ``feature-extraction`` (mean of the token states over the mask): the
  lowest per-sentence cosine with the reference, and nearest-neighbour agreement (the fraction of
  sentences whose most similar other sentence is the reference's);
- ``sequence-classification``: label agreement and the largest probability change ``max |dp|``;
- ``token-classification``: label agreement over real tokens and their largest ``|dp|``.

The thresholds (:data:`CRITERIA`) are derived in docs/parity.md from the trained all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.artifact import save_tensors
from edgeexport.errors import ArtifactError
from edgeexport.manifest import GoldenFile
from edgeexport.processing import Processing, cosine_similarities, encode_texts, load_tokenizer, softmax

if TYPE_CHECKING:
    from pathlib import Path

    from edgeexport.artifact import Artifact
    from edgeexport.runner import Runner

EVALUATION_DIR = "evaluation"
TEXTS_FILE = f"{EVALUATION_DIR}/texts.json"
REFERENCE_FILE = f"{EVALUATION_DIR}/reference.bin"
BATCH = 16  # sentences per runtime call
EMBEDDING_TASKS = ("sentence-embedding", "feature-extraction")


@dataclass(frozen=True)
class Criteria:
    """What a task's agreement must reach: ``min_agreement`` (labels, or nearest neighbours of embeddings),
    ``max_dp`` and ``max_mean_dp`` (the largest probability change of any example, and its mean over the
    examples; classification) and ``min_cosine`` (embeddings)."""

    min_agreement: float
    max_dp: float | None = None
    max_mean_dp: float | None = None
    min_cosine: float | None = None

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


# Derived in docs/parity.md ("Task agreement") on the trained MiniLM: the passing quantized artifacts reach
# mean |dp| 0.0097 and max |dp| 0.047 (bounds about 2x those), a temperature of 1.3 gives mean |dp| 0.042 and
# 0.7 gives 0.077, two swapped labels change half the labels; embeddings: passing precisions keep cosine
# >= 0.9983, int4 and OpenVINO int8 fall to 0.95-0.97, 30 % of the features zeroed to about 0.84.
CRITERIA: dict[str, Criteria] = {
    "sentence-embedding": Criteria(min_agreement=0.97, min_cosine=0.98),
    "feature-extraction": Criteria(min_agreement=0.97, min_cosine=0.98),
    "sequence-classification": Criteria(min_agreement=0.97, max_dp=0.1, max_mean_dp=0.02),
    # Hundreds of tokens: their largest change grows with their count (int8 weights: 0.098 over 448 tokens), so
    # only the mean bounds the probabilities.
    "token-classification": Criteria(min_agreement=0.97, max_mean_dp=0.02),
}


@dataclass
class Agreement:
    """The task agreement of one run over the evaluation set; truthy when it meets its criteria."""

    task: str
    examples: int
    criteria: Criteria
    measures: dict[str, float] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.misses

    def __bool__(self) -> bool:
        return self.passed

    def describe(self) -> str:
        """``task agreement (sentence-embedding, 32 held-out sentences): agreement 100.0%, min cosine 0.99998``."""
        values = ", ".join(f"{name.replace('_', ' ')} {value:.1%}" if name == "agreement" else
                           f"{name.replace('_', ' ')} {value:.6g}" for name, value in self.measures.items())
        return f"task agreement ({self.task}, {self.examples} held-out sentences): {values}"

    def failures(self) -> list[str]:
        return [f"task agreement: {miss}" for miss in self.misses]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "examples": self.examples, "passed": self.passed,
                "criteria": self.criteria.to_dict(), "measures": self.measures, "misses": self.misses}


def task_view(task: str, outputs: Mapping[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """What a user of ``task`` reads from the outputs: embeddings or class probabilities (float32)."""
    if task == "sentence-embedding":
        return np.asarray(outputs["sentence_embedding"], np.float32)
    if task == "feature-extraction":
        weights = mask[..., None].astype(np.float64)
        pooled = (outputs["last_hidden_state"] * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        return pooled.astype(np.float32)
    return softmax(outputs["logits"]).astype(np.float32)


def judge(task: str, got: np.ndarray, want: np.ndarray, mask: np.ndarray, criteria: Criteria) -> Agreement:
    """Compare the artifact's task view with the reference's over the evaluation set."""
    result = Agreement(task=task, examples=len(want), criteria=criteria)
    if got.shape != want.shape or not np.isfinite(got).all():
        result.misses.append(f"outputs of shape {list(got.shape)} (finite: {bool(np.isfinite(got).all())}) "
                             f"cannot be compared with the reference's {list(want.shape)}")
        return result
    if task in EMBEDDING_TASKS:
        _embedding_measures(result, got, want)
    else:
        _label_measures(result, got, want, mask.astype(bool) if task == "token-classification" else None)
    return result


def _embedding_measures(result: Agreement, got: np.ndarray, want: np.ndarray) -> None:
    cosines = np.sum(_unit(got) * _unit(want), axis=-1)
    neighbours = [_nearest_others(cosine_similarities(x)) for x in (got, want)]
    result.measures = {"agreement": float(np.mean(neighbours[0] == neighbours[1])), "min_cosine": float(cosines.min())}
    criteria = result.criteria
    if result.measures["agreement"] < criteria.min_agreement:
        result.misses.append(f"nearest-neighbour agreement {result.measures['agreement']:.3f} < {criteria.min_agreement:g}")
    if criteria.min_cosine is not None and result.measures["min_cosine"] < criteria.min_cosine:
        worst = int(cosines.argmin())
        result.misses.append(f"cosine with the reference {result.measures['min_cosine']:.5f} on sentence {worst} "
                             f"< {criteria.min_cosine:g}")


def _label_measures(result: Agreement, got: np.ndarray, want: np.ndarray, tokens: np.ndarray | None) -> None:
    same = got.argmax(-1) == want.argmax(-1)
    change = np.abs(got - want).max(-1)
    if tokens is not None:  # token classification: real tokens only
        same, change = same[tokens], change[tokens]
    result.measures = {"agreement": float(same.mean()), "max_dp": float(change.max()), "mean_dp": float(change.mean())}
    criteria = result.criteria
    if result.measures["agreement"] < criteria.min_agreement:
        result.misses.append(f"label agreement {result.measures['agreement']:.3f} ({int((~same).sum())} of {same.size} "
                             f"labels changed) < {criteria.min_agreement:g}")
    if criteria.max_dp is not None and result.measures["max_dp"] > criteria.max_dp:
        result.misses.append(f"largest probability change {result.measures['max_dp']:.3f} > {criteria.max_dp:g}")
    if criteria.max_mean_dp is not None and result.measures["mean_dp"] > criteria.max_mean_dp:
        result.misses.append(f"mean probability change {result.measures['mean_dp']:.4f} > {criteria.max_mean_dp:g}")


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _nearest_others(similarity: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row."""
    masked = similarity.copy()
    np.fill_diagonal(masked, -np.inf)
    return masked.argmax(-1)


# --------------------------------------------------------------------------- the artifact's evaluation set


def write_evaluation(folder: Path, task: str, texts: Sequence[str], reference: np.ndarray) -> dict[str, Any]:
    """Write the held-out texts and the reference's task view into the artifact; return the manifest block."""
    (folder / EVALUATION_DIR).mkdir(exist_ok=True)
    (folder / TEXTS_FILE).write_text(json.dumps(list(texts), indent=0, ensure_ascii=False) + "\n")
    stored = save_tensors(folder, REFERENCE_FILE, {"reference": reference})
    return {"task": task, "texts": TEXTS_FILE, "reference": stored.to_dict(), "criteria": CRITERIA[task].to_dict()}


def evaluation_feed(processing: Processing, tokenizer: Any, texts: Sequence[str],
                    input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The evaluation texts as model inputs, all padded to the longest (and ``attention_mask`` always)."""
    encoded = encode_texts(tokenizer, texts, processing.max_length)
    return {name: encoded[name] for name in {*input_names, "attention_mask"}}


def check_evaluation(artifact: Artifact, runner: Runner) -> Agreement | None:
    """Run the artifact's evaluation set through ``runner`` in batches and judge it (None when it has none)."""
    block = artifact.manifest.evaluation
    if not block:
        return None
    processing = Processing.of(artifact.manifest)
    texts = _texts(artifact, block["texts"])
    want = artifact.read_tensors(GoldenFile.from_dict(block["reference"], "evaluation.reference"))["reference"]
    feed = evaluation_feed(processing, load_tokenizer(artifact, processing.tokenizer or ""), texts,
                           artifact.manifest.input_names)
    names, mask = artifact.manifest.input_names, feed["attention_mask"]
    views = [task_view(block["task"], runner({name: feed[name][start:start + BATCH] for name in names}),
                       mask[start:start + BATCH]) for start in range(0, len(texts), BATCH)]
    return judge(block["task"], np.concatenate(views), want, mask, Criteria(**block["criteria"]))


def _texts(artifact: Artifact, relative: str) -> list[str]:
    """The evaluation texts, a JSON list of strings; anything else is a corrupt artifact (one line)."""
    try:
        texts = json.loads(artifact.file(relative).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"evaluation texts {relative!r} cannot be read ({type(exc).__name__}); the artifact is "
                            "corrupt, re-run convert") from None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ArtifactError(f"evaluation texts {relative!r} must be a non-empty JSON list of strings; re-run convert")
    return texts
