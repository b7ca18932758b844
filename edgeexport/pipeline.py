"""The library behind validate, bench and predict: validating an artifact (parity, divergence
localization, the run report and its gate), timing it, and running it on text, images, audio or
arrays. Conversion is :mod:`edgeexport.conversion`.

Every decision a command makes lives in the library, so Python callers get the same behaviour as
the command line: tolerance overrides, when to localise a divergence, rebuilding the reference
(with one error line when torch is missing), the run report and its gate, predict's inputs.
Only the ``reference``/``explain`` options need torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport import packages
from edgeexport.artifact import load_npz
from edgeexport.bundle import open_components
from edgeexport.errors import InputSpecError, ModelLoadError, UsageError
from edgeexport.generation_spec import GenerationSpec
from edgeexport.manifest import Manifest
from edgeexport.processing import (Processing, audio_inputs, cosine_similarities, decode, describe, image_inputs,
                                   text_inputs)
from edgeexport.reporting import Gate, RunReport, check_report_paths, write_reports
from edgeexport.runner import load, open_artifact, runtime_module
from edgeexport.validation.latency import LatencyStats, measure
from edgeexport.validation.parity import ParityReport, check_components

if TYPE_CHECKING:
    from edgeexport.artifact import Artifact
    from edgeexport.reference.decoders_with_past import ReferenceBundle
    from edgeexport.reference.model import ReferenceModel
    from edgeexport.validation.localize import Localization


def bench(folder: str | Path, *, reference: ReferenceModel | bool = False, inputs: Mapping[str, Any] | None = None,
          warmup: int = 3, iterations: int = 20, rounds: int = 2, **runner_options: Any) -> list[LatencyStats]:
    """Latency of the artifact, and of PyTorch eager on the same inputs when a reference is given.

    See :func:`compare_latency` (one artifact, its runner given ``runner_options``).
    """
    return compare_latency([folder], reference=reference, inputs=inputs, warmup=warmup, iterations=iterations,
                           rounds=rounds, runner_options=[runner_options])


def compare_latency(folders: Sequence[str | Path], *, reference: ReferenceModel | bool = False,
                    inputs: Mapping[str, Any] | None = None, warmup: int = 3, iterations: int = 20, rounds: int = 2,
                    runner_options: Sequence[Mapping[str, Any]] | None = None) -> list[LatencyStats]:
    """Latency of artifacts of one model side by side, and of PyTorch eager when a reference is given.

    Each backend is timed alone in a fresh process (no other runtime's threads alive), at the same
    boundary (numpy in, numpy out), in ``rounds`` alternating rounds whose samples are pooled, so
    drift of a shared machine hits every backend alike. PyTorch comes first: its row is the
    baseline of the speed-ups. A model converted from a zoo name, folder or hub id is rebuilt in
    its own process from the first artifact's manifest; a Python module's reference is timed in
    this process (no runtime session is alive here).

    Args:
        folders: Artifacts taking the same inputs.
        reference: Also time PyTorch eager: True, or the reference model (needed for a Python
            module's artifact). Defaults to False.
        inputs: Named inputs. Defaults to the first artifact's golden example case.
        warmup: Untimed runs in each round. Defaults to 3.
        iterations: Timed samples in all, split over the rounds. Defaults to 20.
        rounds: Alternating rounds of all backends. Defaults to 2.
        runner_options: Options of each artifact's runner (threads, ...), in the order of ``folders``.
            Defaults to none.
    """
    from edgeexport.validation.latency import isolated, time_artifact

    artifacts = [open_artifact(folder) for folder in folders]
    options_list = [dict(options) for options in runner_options or [{}] * len(artifacts)]
    if inputs is None:
        inputs, _ = artifacts[0].load_golden(artifacts[0].manifest.golden[0])
    inputs = dict(inputs)
    per_round = max(1, iterations // rounds)
    timers: list[Callable[[], LatencyStats]] = []
    if reference is not False:
        if artifacts[0].manifest.model.get("source") == "module" and not isinstance(reference, bool):
            timers.append(lambda: measure(lambda: reference.run(inputs), label=EAGER, batch=_batch(inputs),
                                          warmup=warmup, iterations=per_round))
        else:
            threads = int(options_list[0].get("threads") or 0)
            timers.append(lambda: isolated(_time_eager, str(folders[0]), inputs, warmup, per_round, threads))
    for artifact, options in zip(artifacts, options_list):
        label = f"{artifact.manifest.target} ({_runner_label(artifact)}, {artifact.manifest.precision})"
        timers.append(lambda path=str(artifact.path), label=label, options=options: isolated(
            time_artifact, path, label, inputs, warmup, per_round, options))
    results: list[LatencyStats | None] = [None] * len(timers)
    for _ in range(rounds):
        for index, timer in enumerate(timers):
            stats = timer()
            results[index] = stats if results[index] is None else results[index].merged(stats)
    return [r for r in results if r is not None]


EAGER = "pytorch eager"


def _runner_label(artifact: Any) -> str:
    runner = runtime_module(artifact.manifest.runtime).RUNNER
    return runner.label or runner.name


def _time_eager(folder: str, inputs: dict[str, Any], warmup: int, iterations: int, threads: int) -> LatencyStats:
    """PyTorch eager on ``inputs``, the reference rebuilt from the artifact's manifest (runs in its own process),
    with the runner's thread count when one was given."""
    import torch

    from edgeexport.reference import rebuild_reference

    if threads:
        torch.set_num_threads(threads)
    manifest = open_artifact(folder, verify=False).manifest
    reference = rebuild_reference(manifest)
    if hasattr(reference, "components"):
        reference = reference.components[GenerationSpec.of(manifest).role]
    return measure(lambda: reference.run(inputs), label=EAGER, batch=_batch(inputs), warmup=warmup,
                   iterations=iterations)


def _batch(inputs: Mapping[str, Any]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 1


def rebuilt_reference(manifest: Manifest, needed_by: str) -> ReferenceModel | ReferenceBundle:
    """The reference an artifact was converted from (:func:`edgeexport.reference.rebuild_reference`).

    Raises:
        MissingBackendError: torch or transformers is missing; the message starts with ``needed_by``.
    """
    packages.require_torch(needed_by)
    from edgeexport.reference import rebuild_reference

    return rebuild_reference(manifest)


def validate(artifact: str | Path, *, reference: bool = False, tolerance: Mapping[str, float] | None = None,
             threads: int = 0, explain: bool = False, gate: Gate | None = None,
             reports: Sequence[str | Path] = (), verify_key: str | Path | None = None) -> RunReport:
    """Check an artifact (or each component of a bundle) against its golden cases; judge and report the run.

    Args:
        artifact: The artifact or bundle folder.
        reference: Also re-run PyTorch on fresh inputs (needs torch). Defaults to False.
        tolerance: Bounds replacing the manifest's, by key (docs/parity.md). Defaults to the manifest's.
        threads: Runtime threads (0 = the runtime's default). Defaults to 0.
        explain: Localise the first diverging op (ONNX, needs torch). It also runs when parity
            fails and torch is installed. Defaults to False.
        gate: What fails the run. Defaults to ``Gate()`` (any parity failure).
        reports: Report files to write; the suffix picks the format (checked before any work).
        verify_key: The signer's public key (PEM): the artifact must carry a valid signature by its
            private key (:mod:`edgeexport.signing`), checked before anything else. Defaults to None.

    Returns:
        The run report: ``parity``, ``localization`` (or None), and ``failures`` under the gate.

    Raises:
        UsageError: a bad report path, artifact or option; MissingBackendError: torch missing for
            ``reference`` or ``explain``.
    """
    if verify_key is not None:
        from edgeexport.signing import verify

        verify(artifact, verify_key)
    paths = check_report_paths(reports)
    components = open_components(artifact)  # opened and hash-checked once; passed on to the checks below
    manifest = next(iter(components.values())).manifest
    bounds = manifest.tolerance.overridden(**tolerance) if tolerance else None
    ref = rebuilt_reference(manifest, "--reference") if reference else None
    report = check_components(components, str(artifact), ref, tolerance=bounds, threads=threads)
    localization = None
    if explain or not report.passed:
        localization = localize_divergence(Path(artifact), components, ref, report, requested=explain)
    return _judged("validate", artifact, manifest, gate, paths, parity=report, localization=localization)


def localize_divergence(folder: Path, components: Mapping[str, Artifact], reference: ReferenceModel | None,
                        report: ParityReport, *, requested: bool) -> Localization | None:
    """:func:`edgeexport.validation.localize.explain` where it can run: on one ONNX artifact, with torch.
    Otherwise None, or when ``requested`` a one-line error saying why."""
    manifest = next(iter(components.values())).manifest
    problem = ""
    if manifest.target != "onnx":
        problem = "divergence localization works on ONNX artifacts"
    elif packages.missing(packages.TORCH):
        if requested:
            packages.require_torch("--explain: divergence localization")
        return None
    elif "" not in components:
        problem = f"divergence localization works on one artifact; pass a component such as {folder / 'decoder'}"
    if problem:
        if requested:
            raise UsageError(f"--explain: {problem}")
        return None
    if reference is None:
        try:
            reference = rebuilt_reference(manifest, "--explain")
        except ModelLoadError:
            if requested:
                raise
            return None  # the source folder is elsewhere: the verdict stands without localization
    from edgeexport.validation.localize import explain

    return explain(components[""], reference, report)


def benchmark(artifact: str | Path, *, reference: bool = False, warmup: int = 3, iterations: int = 20, rounds: int = 2,
              threads: int = 0, gate: Gate | None = None, reports: Sequence[str | Path] = ()) -> RunReport:
    """:func:`bench` on an artifact's golden inputs (and PyTorch eager with ``reference``); judge and report the run.

    Args:
        artifact: The artifact folder.
        reference: Also time PyTorch eager on the same inputs (needs torch). Defaults to False.
        warmup: Untimed warm-up runs in each round. Defaults to 3.
        iterations: Timed samples in all. Defaults to 20.
        rounds: Alternating rounds of the backends, each in its own process. Defaults to 2.
        threads: Runtime threads (0 = the runtime's default), PyTorch's too. Defaults to 0.
        gate: What fails the run (latency regressions against its baseline). Defaults to ``Gate()``.
        reports: Report files to write; the suffix picks the format (checked before any work).

    Returns:
        The run report: ``latency`` (PyTorch first when timed) and ``failures`` under the gate.
    """
    paths = check_report_paths(reports)
    manifest = open_artifact(artifact, verify=False).manifest  # bench verifies before running
    if reference:
        packages.require_torch("--reference")
    stats = bench(artifact, reference=reference, warmup=warmup, iterations=iterations, rounds=rounds, threads=threads)
    return _judged("bench", artifact, manifest, gate, paths, latency=stats)


def _judged(command: str, artifact: str | Path, manifest: Manifest, gate: Gate | None, reports: Sequence[Path],
            **findings: Any) -> RunReport:
    """The run report of ``command`` judged by ``gate``, written to every report path."""
    run = RunReport.create(command, artifact, manifest, gate=gate or Gate(), **findings)
    write_reports(run, reports)
    return run


@dataclass
class Prediction:
    """What :func:`predict` found: the task, the artifact's processing block, one decoded result per row, and
    for several texts embedded together their pairwise cosine similarities."""

    task: str
    processing: Processing
    results: list[Any]
    similarity: list[list[float]] | None = None

    def describe(self) -> list[str]:
        """One line per row: labels, spans, boxes, maps or transcripts in words; then one per pair of embedded
        texts: their cosine similarity."""
        lines = [f"[{row}] {describe(self.task, result, self.processing)}" for row, result in enumerate(self.results)]
        pairs = [(a, b) for a in range(len(self.similarity or [])) for b in range(a + 1, len(self.similarity or []))]
        return lines + [f"cosine similarity [{a}] [{b}]: {self.similarity[a][b]:.4f}" for a, b in pairs]

    def to_json(self) -> Any:
        """The decoded rows, with the similarity matrix beside them when texts were embedded together."""
        if self.similarity is None:
            return self.results
        return {"embeddings": self.results, "cosine_similarity": self.similarity}


def predict(artifact: str | Path, *, text: str | Sequence[str] | None = None, text_pair: str | None = None,
            image: str | Path | None = None, audio: str | Path | None = None, inputs: str | Path | None = None,
            case: str = "example", classes: int = 5, threshold: float = 0.5, threads: int = 0) -> Prediction:
    """Run an artifact on text, an image, audio or arrays (default: a golden case's inputs) and decode
    what its outputs mean (:func:`edgeexport.processing.decode`). Needs no torch.

    Args:
        artifact: The artifact folder of a task model.
        text: Text to classify or embed (with the artifact's tokenizer); for question answering, the question.
            Several texts (sentence-embedding artifacts) are embedded together and compared.
        text_pair: Second text: the context of a question.
        image: Image file (PNG, JPEG).
        audio: 16-bit PCM WAV file at the model's sampling rate.
        inputs: An ``.npz`` of named model inputs.
        case: Golden case whose inputs to use when no input is given. Defaults to ``example``.
        classes: Classes per row, most likely first (classification). Defaults to 5.
        threshold: Lowest score of a kept detection (object detection). Defaults to 0.5.
        threads: Runtime threads (0 = the runtime's default). Defaults to 0.

    Raises:
        UsageError: more than one input source, or several texts for a task that takes one;
            InputSpecError: inputs the artifact cannot take.
    """
    texts = [text] if isinstance(text, str) else list(text or [])
    sources = {"--text": texts or None, "--image": image, "--audio": audio, "--inputs": inputs}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise UsageError(f"{', '.join(given)} were given together; pass one input")
    with load(artifact, threads=threads) as runner:
        task, processing = runner.artifact.manifest.model.get("task", ""), Processing.of(runner.artifact.manifest)
        if task == "sentence-embedding" and texts:
            results = decode(task, {"sentence_embedding": runner.embed(texts)}, processing)
            return Prediction(task, processing, results, similarity=cosine_similarities(np.array(results)).tolist())
        if len(texts) > 1:
            raise UsageError(f"--text was given {len(texts)} times; a {task} artifact takes one text (several texts "
                             "are for sentence-embedding artifacts)")
        feed, encoded = _predict_inputs(runner.artifact, processing, text=texts[0] if texts else None,
                                        text_pair=text_pair, image=image, audio=audio, inputs=inputs, case=case)
        results = decode(task, runner(feed), processing, top_k=classes, threshold=threshold, text=encoded)
    return Prediction(task, processing, results)


def _predict_inputs(artifact: Artifact, processing: Processing, *, text: str | None, text_pair: str | None,
                    image: str | Path | None, audio: str | Path | None, inputs: str | Path | None,
                    case: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model inputs of :func:`predict` (pre-processed text, image or audio, an .npz, or a golden case),
    and the text encoding when text was given."""
    if text is not None:  # the tokenizer gives every text input; the model takes some of them
        encoded = text_inputs(processing, artifact, text, text_pair)
        return {name: encoded[name] for name in artifact.manifest.input_names if name in encoded}, encoded
    if image is not None:
        return image_inputs(processing, image), None
    if audio is not None:
        return audio_inputs(processing, audio), None
    if inputs is not None:
        try:
            return load_npz(inputs), None
        except (OSError, ValueError) as exc:
            raise InputSpecError(f"--inputs {str(inputs)!r} is not a readable .npz of arrays ({exc}); write it with "
                                 "numpy.savez") from None
    golden = {g.name: g for g in artifact.manifest.golden}
    if case not in golden:
        raise InputSpecError(f"the artifact has no golden case {case!r}; choose one of: {', '.join(golden)}")
    return artifact.load_golden(golden[case])[0], None
