"""Conversion: reference -> exporter -> artifact folder (staged, then renamed) -> parity check.

:func:`convert` checks its arguments and refuses known broken combinations before torch is
imported (:func:`prepare`), builds the PyTorch reference once, and hands that same reference to
the export and to the parity check (:func:`export_reference`); :mod:`edgeexport.tuning` exports
one reference at several precisions the same way. Only building the reference needs torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport import packages
from edgeexport.artifact import check_output_dir, save_golden, staged_output, write_manifest
from edgeexport.bundle import write_bundle
from edgeexport.errors import StageError, UsageError
from edgeexport.exporter import Exporter, get_exporter
from edgeexport.generation_spec import TOKENIZER_FILE
from edgeexport.manifest import Manifest, check_bound_keys
from edgeexport.processing import Processing
from edgeexport.runner import runtime_module
from edgeexport.tasks import task_head
from edgeexport.validation.agreement import write_evaluation
from edgeexport.validation.metrics import CRITERION
from edgeexport.validation.parity import ParityReport, check_parity
from edgeexport.validation.sequence_measures import SentencePairs
from edgeexport.zoo import SPECS, model_kind, weights_note, zoo_task

if TYPE_CHECKING:
    import torch

    from edgeexport.reference.decoders_with_past import ReferenceBundle
    from edgeexport.reference.model import ReferenceModel

Progress = Callable[[str], None]


@dataclass
class ConversionResult:
    """What :func:`convert` produced. ``report`` is None when validation was skipped.

    For a bundle (:mod:`edgeexport.bundle`), ``manifest`` is the decoder's, ``components`` holds
    every component's manifest by role, and the report's cases are named ``<role>/<case>``.
    """

    artifact: Path
    manifest: Manifest
    report: ParityReport | None
    reference: ReferenceModel | ReferenceBundle
    components: dict[str, Manifest] = field(default_factory=dict)

    def describe(self) -> str:
        """The folder and what it holds: ``gpt2-gen (onnx, fp32, exporter torch.onnx/dynamo; tiny preset, random
        weights)``; the preset and random weights are named for zoo models only."""
        exporter = self.manifest.exporter
        note = weights_note(self.manifest.model)
        return (f"{self.artifact} ({self.manifest.target}, {self.manifest.precision}, exporter {exporter.get('name')}/"
                f"{exporter.get('strategy')}{f'; {note}' if note else ''})")


def convert(model: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None = None, *,
            target: str = "onnx", output_dir: str | Path | None = None, task: str | None = None, preset: str = "tiny",
            precision: str | None = None, opset: int | None = None, validate: bool = True, force: bool = False,
            tolerance: Mapping[str, float] | None = None, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
            simplify: bool = True, allow_pickle: bool = False, allow_random_head: bool = False, seed: int = 0,
            target_options: Mapping[str, Any] | None = None, progress: Progress | None = None) -> ConversionResult:
    """Convert a model to an artifact folder for ``target`` and (by default) check its parity.

    Args:
        model: Zoo name, ``save_pretrained`` folder, hub id, or an ``nn.Module`` (then pass ``example_inputs``).
        example_inputs: Tensors by ``forward`` parameter name (or in order), for an ``nn.Module``.
        target: Target name (``edgeexport list`` shows them). Defaults to ``onnx``.
        output_dir: Artifact folder. Defaults to ``./<model>-<task>-<target>-<precision>``, and for a zoo
            model (random weights) ``./<model>-<task>-<target>-<precision>-<preset>-random``.
        task: Task of a zoo model or folder. Defaults to the model's first/declared task.
        preset: ``tiny`` or ``full`` for zoo models. Defaults to ``tiny``.
        precision: Precision of the target model. Defaults to the target's default precision (``fp32``;
            ``fp16`` for coreml). :func:`edgeexport.tuning.tune` (``--precision auto``) tries every
            precision and keeps the fastest at parity.
        opset: ONNX opset. Defaults to the exporter's default.
        validate: Run golden and fresh-shape parity checks after writing. Defaults to True.
        force: Replace a non-empty ``output_dir``. Defaults to False.
        tolerance: Parity bounds to store instead of the model/precision defaults, by key
            (``atol``, ``rounding``, ``max_error``, ``rms_error``, ``scale_error``, ``min_top1``;
            docs/parity.md). Defaults to none.
        dynamic_axes: ``{input: {dim: axis}}`` for an ``nn.Module``.
        simplify: Simplify the graph (onnxslim) where the target supports it. Defaults to True.
        allow_pickle: Allow pickled weights in a model folder. Defaults to False.
        allow_random_head: Convert a folder whose checkpoint lacks some of the task's parameters (a head on a
            base model), which are then random; the manifest names them (``random_head``). Defaults to False.
        seed: Seed of zoo weights. Defaults to 0.
        target_options: Options of the target's exporter (``Exporter.options``; tensorrt: ``shapes``,
            ``workspace``; coreml: ``deployment_target``); None values are unset. Defaults to none.
        progress: Called with a short message before each stage.

    Raises:
        UsageError: bad model, task, target, precision, preset, inputs or output folder (before any work, and
            before torch is imported).
        UnsupportedError: a combination the exporter knows to be broken (:meth:`Exporter.refuse`; before torch
            is imported when the task is known from the arguments).
        CaptureError, ConversionError: export failed; nothing is written.
    """
    exporter = get_exporter(target)
    precision = precision or exporter.default_precision
    exporter.check_precision(precision)
    reference, folder, options = prepare(
        model, example_inputs, exporter, precision, output_dir=output_dir, task=task, preset=preset, opset=opset,
        force=force, tolerance=tolerance, dynamic_axes=dynamic_axes, simplify=simplify, allow_pickle=allow_pickle,
        allow_random_head=allow_random_head, seed=seed, target_options=target_options, progress=progress)
    return export_reference(reference, exporter, folder, options, precision=precision, validate=validate, force=force,
                            progress=progress)


def prepare(model: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None,
            exporter: Exporter, precision: str, *, output_dir: str | Path | None, task: str | None, preset: str,
            opset: int | None, force: bool, tolerance: Mapping[str, float] | None,
            dynamic_axes: Mapping[str, Mapping[int, str]] | None, simplify: bool, allow_pickle: bool, seed: int,
            target_options: Mapping[str, Any] | None, progress: Progress | None,
            allow_random_head: bool = False) -> tuple[ReferenceModel | ReferenceBundle, Path, Export]:
    """Check a conversion's arguments and refuse a known broken combination (before torch is imported), then
    build its reference.

    Returns the reference, the artifact folder (``precision`` names the default one) and the
    options every export of it shares. Raises :class:`UsageError` as :func:`convert` documents.
    """
    options = Export.create(opset=opset, simplify=simplify, seed=seed, tolerance=tolerance,
                            target_options=target_options)
    exporter.check_options(target_options or {})
    zoo_model_task = _checked_zoo_task(model, task, preset)
    if zoo_model_task or task:  # a known broken combination is refused before torch is imported
        exporter.refuse(str(model), zoo_model_task or task, precision)
    if output_dir is None and zoo_model_task is not None:
        output_dir = default_folder(str(model), zoo_model_task, exporter.target, precision, preset=preset)
    if output_dir is not None:
        check_output_dir(Path(output_dir), force=force)
    exporter.check_available()
    (progress or (lambda _message: None))("building the PyTorch reference")
    reference = _reference(model, example_inputs, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle,
                           allow_random_head=allow_random_head, dynamic_axes=dynamic_axes)
    folder = Path(output_dir or default_folder(reference.name, reference.task, exporter.target, precision))
    return reference, folder, options


@dataclass(frozen=True)
class Export:
    """The options of one conversion that every candidate precision shares (:func:`export_reference`)."""

    opset: int | None = None
    simplify: bool = True
    seed: int = 0
    bounds: dict[str, float] = field(default_factory=dict)
    target_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, *, opset: int | None, simplify: bool, seed: int, tolerance: Mapping[str, float] | None,
               target_options: Mapping[str, Any] | None) -> Export:
        """The options as given (bound keys checked; target options left unset, None, dropped)."""
        check_bound_keys(tolerance or {})
        return cls(opset=opset, simplify=simplify, seed=seed, bounds=dict(tolerance or {}),
                   target_options={k: v for k, v in (target_options or {}).items() if v is not None})


def export_reference(reference: ReferenceModel | ReferenceBundle, exporter: Exporter, folder: Path, options: Export, *,
                     precision: str, validate: bool = True, force: bool = False,
                     progress: Progress | None = None) -> ConversionResult:
    """Export a built reference to ``folder`` (staged, then renamed) at ``precision`` and check its parity.

    Raises:
        UnsupportedError: the exporter refuses the model at this precision (before any export).
        CaptureError, ConversionError: export failed; nothing is written.
    """
    say = progress or (lambda _message: None)
    target = exporter.target
    tool_packages = (*exporter.tool_packages, *runtime_module(exporter.runtime).RUNNER.tool_packages)
    exporter.refuse(reference.name, reference.task, precision)
    components = getattr(reference, "components", {"": reference})
    say("running the reference on the golden inputs and the evaluation set")
    golden = {role: _golden(component) for role, component in components.items()}
    evaluation = {"": _evaluation(reference)} if "" in components else {"decoder": _seq2seq_evaluation(reference)}
    with staged_output(folder, force=force) as stage:
        manifests = {}
        for role, component in components.items():
            say(f"exporting {role or 'the model'} to {target} ({precision})")
            (stage / role).mkdir(exist_ok=True)
            manifests[role] = _write_artifact(stage / role, component, golden[role], exporter, precision=precision,
                                              options=options, tool_packages=tool_packages,
                                              evaluation=evaluation.get(role))
        if "" not in components:
            write_bundle(stage, list(components), _model_info(reference, options.seed))
    report = None
    if validate:
        say("checking parity against PyTorch")
        try:
            report = check_parity(folder, reference)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{str(folder)!r} was written; its parity was not checked") from None
    return ConversionResult(artifact=folder, manifest=manifests.get("decoder", manifests.get("")), report=report,
                            reference=reference, components={r: m for r, m in manifests.items() if r})


def _checked_zoo_task(model: Any, task: str | None, preset: str) -> str | None:
    """Check a model argument without torch: a zoo name with its task and preset, a folder that exists, a
    task name. Returns a zoo model's task; None for folders, hub ids and modules."""
    if not isinstance(model, (str, Path)):
        return None
    if model_kind(str(model)) == "zoo":
        return zoo_task(SPECS[str(model)], task, preset)
    if task is not None:
        task_head(task)
    return None


def default_folder(name: str, task: str, target: str, precision: str, *, preset: str | None = None) -> Path:
    """``<name>-<task>-<target>-<precision>``; a zoo model's (``preset`` given) ends ``-<preset>-random``, as
    its weights are."""
    return Path("-".join([name, task, target, precision, *([preset, "random"] if preset else [])]))


Golden = list[tuple[str, dict[str, int], dict[str, Any], dict[str, Any]]]


def _golden(reference: ReferenceModel) -> Golden:
    cases = [(name, sizes, reference.make_inputs(sizes, seed=i)) for i, (name, sizes) in enumerate(reference.shape_cases())]
    return [(name, sizes, inputs, reference.run(inputs)) for name, sizes, inputs in cases]


Evaluation = tuple[list[str] | list[tuple[str, str]] | list[Path] | np.ndarray | dict[str, np.ndarray] | SentencePairs,
                   np.ndarray | dict[str, np.ndarray]] | None


def _evaluation(reference: ReferenceModel) -> Evaluation:
    """The held-out examples and the reference's task view of them (:mod:`edgeexport.validation.agreement`): sentences
    or (question, context) pairs for a trained text model, photographs or speech files for an image or audio model,
    sentences (token ids without a tokenizer) for a language model, where the task has agreement criteria; None for
    any other."""
    from edgeexport.reference.model import TextSource
    from edgeexport.validation.agreement import (CRITERIA, evaluation_feed, example_inputs, media_kind, media_views,
                                                 task_view)
    from edgeexport.validation.sequence_measures import LM_TASKS

    if reference.task in LM_TASKS:
        return _sequences_evaluation(reference)
    if reference.task == "seq2seq-lm":
        return _seq2seq_evaluation(reference)
    source = getattr(reference, "input_source", None)  # a bundle's components have none
    if source is None or reference.task not in CRITERIA:
        return None
    processing = Processing.from_dict(reference.processing)
    if isinstance(source, TextSource):
        if reference.source == "zoo":  # random text heads: near-uniform labels, near-tied spans (docs/parity.md)
            return None
        texts = source.texts("evaluation")
        feed, mask = evaluation_feed(processing, source.load(), texts, reference.input_names)
        return texts, task_view(reference.task, reference.run(feed), mask)
    if media_kind(processing, reference.input_names) != source.kind:
        return None
    from edgeexport.reference.media import photographs, speech

    files = (photographs if source.kind == "photographs" else speech)("evaluation")
    batch = reference.sizes["batch"][0] if "batch" in reference.sizes else 1
    return files, media_views(reference.task, [example_inputs(processing, path) for path in files], reference.run,
                              batch)


def _sequences_evaluation(reference: ReferenceModel) -> Evaluation:
    """A language model's held-out sentences through its tokenizer (the first :data:`SEQUENCES` of the evaluation
    split), or seeded random token ids where it has none, and PyTorch's view of them."""
    from edgeexport.reference.model import TextSource
    from edgeexport.validation.sequence_measures import (SEQUENCES, evaluation_sequences, forward_model,
                                                         reference_view, text_sequences)

    examples: list[str] | np.ndarray
    if TOKENIZER_FILE in reference.assets:
        source = TextSource(reference.assets[TOKENIZER_FILE])
        examples = [text for text in source.texts("evaluation") if isinstance(text, str)][:SEQUENCES]
        ids = text_sequences(source.load(), examples)
    else:
        examples = ids = evaluation_sequences(reference.vocab_size)
    return examples, reference_view(forward_model(reference.run, reference.input_tensor_specs()), ids)


def _seq2seq_evaluation(reference: ReferenceModel | ReferenceBundle) -> Evaluation:
    """An encoder-decoder's evaluation pairs and PyTorch's view of them: a ``seq2seq-lm`` graph's, or a bundle's
    encoder and decoder together (the decoder's artifact carries them); None for a model without a decoder-start (or
    BOS) token. The pairs are held-out sentences through the model's tokenizer (sources the evaluation split's first
    :data:`SEQUENCES`, targets its next), or seeded random ids where it has none."""
    from edgeexport.generation_spec import TokenIds
    from edgeexport.reference.decoders_with_past import token_ids
    from edgeexport.reference.model import TextSource
    from edgeexport.validation.sequence_measures import (SEQUENCES, reference_view, seq2seq_components, seq2seq_graph,
                                                         seq2seq_model, seq2seq_sequences)

    if hasattr(reference, "components"):
        encoder, decoder = reference.components["encoder"], reference.components["decoder"]
        tokens, vocab_size = TokenIds.from_dict(decoder.generation["tokens"]), decoder.vocab_size
        assets = decoder.assets
        logits = seq2seq_components(encoder.run, decoder.run, decoder.input_tensor_specs())
    else:
        tokens, vocab_size, assets = token_ids(reference.module.model), reference.vocab_size, reference.assets
        logits = seq2seq_graph(reference.run, reference.input_tensor_specs())
    start = tokens.first_decoder_token
    if start is None:
        return None
    examples: SentencePairs | dict[str, np.ndarray]
    if TOKENIZER_FILE in assets:
        source = TextSource(assets[TOKENIZER_FILE])
        sentences = [text for text in source.texts("evaluation") if isinstance(text, str)]
        examples = SentencePairs(list(zip(sentences[:SEQUENCES], sentences[SEQUENCES:2 * SEQUENCES])), start)
        sequences = examples.token_ids(source.load())
    else:
        examples = sequences = seq2seq_sequences(vocab_size, start)
    return examples, reference_view(seq2seq_model(logits, start), sequences["ids"],
                                    decoder_ids=sequences["decoder_ids"])


def _model_info(reference: ReferenceModel | ReferenceBundle, seed: int) -> dict[str, Any]:
    fixed = getattr(reference, "fixed_shape_reason", "")  # a bundle (decoder with past) has none
    inputs = getattr(getattr(reference, "input_source", None), "kind", "random")  # where golden and calibration inputs come from
    return {"name": reference.name, "task": reference.task, "preset": reference.preset, "seed": seed,
            "source": reference.source, "architecture": reference.architecture, "inputs": inputs,
            **({"fixed_shape": fixed} if fixed else {}), **reference.details}


def _write_artifact(stage: Path, reference: ReferenceModel, golden: Golden, exporter: Exporter, *, precision: str,
                    options: Export, tool_packages: Sequence[str], evaluation: Evaluation = None) -> Manifest:
    """Export one reference into ``stage`` with its golden cases, evaluation set, assets and manifest."""
    tolerance = exporter.tolerance(reference, precision).overridden(**options.bounds)
    try:
        result = exporter.export(reference, stage, precision=precision, opset=options.opset,
                                 simplify_graph=options.simplify, **options.target_options)
    except StageError as exc:  # numbered in the exporter's stages, which the error cannot know
        raise exc.numbered(exporter.stages) from exc.__cause__
    for relative, source in reference.assets.items():
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            (stage / relative).write_bytes(source)
        else:
            shutil.copyfile(source, stage / relative)
    manifest = Manifest(
        model=_model_info(reference, options.seed), target=exporter.target, runtime=exporter.runtime, precision=precision,
        model_file=result.model_file, exporter=result.exporter, inputs=reference.input_tensor_specs(),
        outputs=reference.output_tensor_specs([(sizes, outputs) for _, sizes, _, outputs in golden]),
        tolerance=tolerance, logits_outputs=reference.logits_outputs, runtime_options=result.runtime_options,
        golden=[save_golden(stage, name, sizes, inputs, outputs) for name, sizes, inputs, outputs in golden],
        generation=reference.generation, processing=reference.processing,
        evaluation=write_evaluation(stage, reference.task, *evaluation) if evaluation else {},
        criterion=dict(CRITERION),
    )
    return write_manifest(stage, manifest, tool_packages)


def _reference(model: Any, example_inputs: Any, *, task: str | None, preset: str, seed: int, allow_pickle: bool,
               allow_random_head: bool, dynamic_axes: Any) -> ReferenceModel | ReferenceBundle:
    packages.require_torch("converting")
    from edgeexport.reference import load_reference, reference_from_module

    if isinstance(model, (str, Path)):
        if example_inputs is not None:
            raise UsageError("example_inputs are only for nn.Module models; zoo and folder models make their own")
        return load_reference(model, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle,
                              allow_random_head=allow_random_head)
    if example_inputs is None:
        raise UsageError(f"converting a {type(model).__name__} module needs example_inputs (tensors by forward() name)")
    return reference_from_module(model, example_inputs, dynamic_axes=dynamic_axes)

