"""Build reference models from the zoo, a ``save_pretrained`` folder, a hub id or a user module."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError

from edgeexport.artifact import Manifest, Tolerance
from edgeexport.errors import InputSpecError, ModelLoadError, UsageError
from edgeexport.generation_spec import TOKENIZER_FILE
from edgeexport.processing import IMAGENET_MEAN, IMAGENET_STD, LABELLED_TASKS, SAMPLING_RATE, Processing
from edgeexport.reference.decoders_with_past import ReferenceBundle, with_past_reference
from edgeexport.reference.model import ExportWrapper, ModuleWrapper, ReferenceModel, flatten_outputs
from edgeexport.reference.processors import Processors, folder_processors, zoo_processors
from edgeexport.tasks import TASKS, WITH_PAST, task_from_architecture, task_head
from edgeexport.zoo import (FP32_TOLERANCE, SPECS, InputSpec, ModelSpec, generic_spec, model_kind, spec_for_model_type,
                            zoo_task)

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
TEXT_AXES = ("sequence", "decoder_sequence")  # token axes bounded by a learned position table
TEXT_MODALITIES = ("text", "text2text")  # models that take a tokenizer's ids


def load_reference(model: str | Path, *, task: str | None = None, preset: str = "tiny", seed: int = 0,
                   allow_pickle: bool = False) -> ReferenceModel | ReferenceBundle:
    """Build the reference model for a zoo name, a local ``save_pretrained`` folder or a hub id.

    The generation task ``seq2seq-lm-with-past`` gives a :class:`ReferenceBundle` (encoder and
    decoder); every other task a single :class:`ReferenceModel`.

    Args:
        model: Zoo name (``gpt2``), a folder holding ``config.json`` and weights, or ``org/name``.
        task: Task to export; defaults to the zoo model's first task or the folder's architecture.
        preset: ``tiny`` or ``full`` (zoo models only). Defaults to ``tiny``.
        seed: Seed of the random weights of zoo models. Defaults to 0.
        allow_pickle: Allow loading pickled ``.bin`` weights, which can run code. Defaults to False.

    Raises:
        UsageError: unknown model, task or preset.
        ModelLoadError: the folder or hub id cannot be loaded.
    """
    text = str(model)
    kind = model_kind(text)
    if kind == "zoo":
        return _from_zoo(SPECS[text], task=task, preset=preset, seed=seed)
    if kind == "folder":
        return _from_folder(Path(text), task=task, source=f"folder:{Path(text).resolve()}", allow_pickle=allow_pickle)
    return _from_folder(_download(text), task=task, source=f"hub:{text}", allow_pickle=allow_pickle)


def _from_zoo(spec: ModelSpec, *, task: str | None, preset: str, seed: int) -> ReferenceModel | ReferenceBundle:
    task = zoo_task(spec, task, preset)
    config = transformers.AutoConfig.for_model(spec.model_type, **spec.presets[preset], **spec.task_config.get(task, {}))
    torch.manual_seed(seed)
    model = getattr(transformers, task_head(task).auto_class).from_config(config)
    return _reference(spec, model, task=task, preset=preset, name=spec.name, source="zoo",
                      processors=zoo_processors(spec.name, config))


def _from_folder(folder: Path, *, task: str | None, source: str,
                 allow_pickle: bool) -> ReferenceModel | ReferenceBundle:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"folder {str(folder)!r} has no config.json; save the model with save_pretrained()")
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{str(config_path)!r} cannot be read as a transformers config: {_first_line(exc)}") from None
    safe = [p for pattern in SAFE_WEIGHTS for p in folder.glob(pattern)]
    pickled = [p for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)]
    if not safe and not pickled:
        raise ModelLoadError(f"folder {str(folder)!r} has no weights (*.safetensors); save the model with save_pretrained()")
    if not safe and not allow_pickle:
        raise ModelLoadError(f"folder {str(folder)!r} holds only pickled weights ({pickled[0].name}), and loading a pickle "
                             "can run code; convert them to safetensors or pass --allow-pickle if you trust the file")
    architecture = (config.architectures or [""])[0]
    task = task or _task_of(config, architecture, folder)
    head = task_head(task)
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None or task_from_architecture(architecture, _main_input(model_class)) != task:
        model_class = getattr(transformers, head.auto_class)
    try:
        model = model_class.from_pretrained(folder, use_safetensors=bool(safe))
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(f"weights in {str(folder)!r} cannot be loaded ({_first_line(exc)}); "
                             "the file is truncated or corrupt, save the model again") from None
    spec = spec_for_model_type(config.model_type) or generic_spec(
        head.modality, config.model_type, causal=task == "causal-lm")
    return _reference(spec, model, task=task, preset=None, name=folder.name, source=source,
                      processors=folder_processors(folder))


def _task_of(config: Any, architecture: str, folder: Path) -> str:
    model_class = getattr(transformers, architecture, None)
    task = task_from_architecture(architecture, _main_input(model_class)) if model_class else None
    if task is None:
        raise UsageError(f"cannot tell the task of {str(folder)!r} (architecture {architecture or 'unknown'!r}); "
                         f"pass --task, one of: {', '.join(TASKS)}")
    return task


def _main_input(model_class: Any) -> str:
    return getattr(model_class, "main_input_name", "input_ids")


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # noqa: BLE001 - any hub failure (offline, 404, auth) becomes one clear line
        raise ModelLoadError(f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}); "
                             "check the id and network, or save the model with save_pretrained() and pass the folder") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _reference(spec: ModelSpec, model: torch.nn.Module, *, task: str, preset: str | None, name: str,
               source: str, processors: Processors) -> ReferenceModel | ReferenceBundle:
    """The reference of a transformers model with the processors it ships (tokenizer, preprocessor settings)."""
    tokenizer = processors.tokenizer
    if task in WITH_PAST:
        return with_past_reference(spec, model, task=task, preset=preset, name=name, source=source, tokenizer=tokenizer)
    head = task_head(task)
    config = model.config
    inputs = spec.inputs(config, task)
    wrapper = ExportWrapper(model, [i.name for i in inputs], head.outputs, spec.forward_kwargs).eval()
    sizes = _fit_positions(spec.sizes(preset or "full"), config)
    used_axes = {d for i in inputs for d in i.dims if isinstance(d, str)}
    assets = {TOKENIZER_FILE: tokenizer} if tokenizer is not None and head.modality in TEXT_MODALITIES else {}
    processing = _processing(config, task, inputs[0], sizes, processors, tokenized=bool(assets))
    return ReferenceModel(
        name=name, task=task, preset=preset, source=source, architecture=type(model).__name__,
        module=wrapper, inputs=inputs, output_names=list(head.outputs),
        sizes={a: s for a, s in sizes.items() if a in used_axes},
        tolerance=spec.tolerance, logits_outputs=list(head.logits), vocab_size=spec.vocab_size(config),
        assets=assets, processing=processing.to_dict(),
    )


def _fit_positions(sizes: Mapping[str, tuple[int, int]], config: Any) -> dict[str, tuple[int, int]]:
    """Text axes no longer than the model's position table: a folder model may have fewer positions
    than the full preset's 128 tokens. Two are kept spare, as RoBERTa-style ids start after the pad."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 4:
        return dict(sizes)
    usable = limit - 2
    fitted = {}
    for axis, (example, alternate) in sizes.items():
        if axis in TEXT_AXES and max(example, alternate) > usable:
            example, alternate = min(example, usable), min(alternate, usable)
            alternate = usable // 2 if alternate == example else alternate  # keep two distinct shape cases
        fitted[axis] = (example, alternate)
    return fitted


def _processing(config: Any, task: str, first_input: InputSpec, sizes: Mapping[str, tuple[int, int]],
                processors: Processors, *, tokenized: bool) -> Processing:
    """What pre- and post-processing need: class names or the CTC vocabulary, and the tokenizer, image
    or audio settings (the processors' ``preprocessor_config.json`` settings, defaults where they have none)."""
    saved = processors.preprocessor
    modality = task_head(task).modality
    settings: dict[str, Any] = {}
    if modality in TEXT_MODALITIES and tokenized:
        settings["tokenizer"] = TOKENIZER_FILE
    if modality == "vision":
        settings.update(image_size=_image_size(first_input, sizes, saved.get("size")),
                        image_mean=_per_channel(saved.get("image_mean"), IMAGENET_MEAN),
                        image_std=_per_channel(saved.get("image_std"), IMAGENET_STD))
    if modality == "audio":
        settings.update(sampling_rate=int(saved.get("sampling_rate", SAMPLING_RATE)),
                        normalize_audio=bool(saved.get("do_normalize", True)))
    if task == "ctc":
        vocabulary = processors.vocabulary
        settings.update(labels=vocabulary, blank=config.pad_token_id, word_delimiter="|" if "|" in vocabulary else None)
    elif task in LABELLED_TASKS:
        settings["labels"] = [str(config.id2label[i]) for i in range(config.num_labels)]
    return Processing(**settings)


def _image_size(spec: InputSpec, sizes: Mapping[str, tuple[int, int]], saved: Any) -> list[int]:
    """(height, width): the processor's fixed size if it names one (older processors save one int for a
    square), else the model's example size."""
    if isinstance(saved, dict) and {"height", "width"} <= saved.keys():
        return [int(saved["height"]), int(saved["width"])]
    if isinstance(saved, int) and not isinstance(saved, bool):
        return [saved, saved]
    return [dim if isinstance(dim, int) else sizes[dim][0] for dim in spec.dims[2:]]


def _per_channel(saved: Any, default: Sequence[float]) -> list[float]:
    """Three channel values from a processor setting (a list, or one number for all), else ``default``."""
    if isinstance(saved, (int, float)) and not isinstance(saved, bool):
        return [float(saved)] * 3
    if isinstance(saved, list) and len(saved) == 3 and all(isinstance(v, (int, float)) for v in saved):
        return [float(v) for v in saved]
    return list(default)


def reference_from_module(module: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], *,
                          dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, name: str | None = None,
                          tolerance: Tolerance = FP32_TOLERANCE) -> ReferenceModel:
    """Wrap a user ``nn.Module`` and its example inputs as a reference model.

    Args:
        module: The model; its ``forward`` takes the example inputs by name (or position).
        example_inputs: Tensors by parameter name, or a sequence in ``forward``'s order.
        dynamic_axes: ``{input_name: {dim: axis_name}}``; other dims stay fixed.
        name: Model name for the manifest. Defaults to the module's class name.
        tolerance: Parity bounds. Defaults to the zoo's fp32 bounds (docs/parity.md).

    Raises:
        InputSpecError: names that ``forward`` does not take, non-tensors, or bad dynamic axes.
    """
    import inspect

    parameters = list(inspect.signature(module.forward).parameters)
    if not isinstance(example_inputs, Mapping):
        example_inputs = dict(zip(parameters, example_inputs))
    for key, value in example_inputs.items():
        if key not in parameters:
            raise InputSpecError(f"example input {key!r} is not a parameter of {type(module).__name__}.forward"
                                 f"({', '.join(parameters)})")
        if not isinstance(value, torch.Tensor):
            raise InputSpecError(f"example input {key!r} is a {type(value).__name__}; pass a torch.Tensor")
    axes = {k: dict(v) for k, v in (dynamic_axes or {}).items()}
    specs, sizes = [], {}
    for key, tensor in example_inputs.items():
        dims: list[str | int] = list(tensor.shape)
        for dim, axis in axes.pop(key, {}).items():
            if not 0 <= dim < tensor.dim():
                raise InputSpecError(f"dynamic axis {dim} of input {key!r} is out of range for its rank {tensor.dim()}")
            dims[dim] = axis
            sizes[axis] = (int(tensor.shape[dim]), int(tensor.shape[dim]) + 1)
        specs.append(InputSpec(key, tuple(dims), "sample", str(tensor.dtype).removeprefix("torch.")))
    if axes:
        raise InputSpecError(f"dynamic_axes names {sorted(axes)} that are not example inputs ({', '.join(example_inputs)})")
    module.eval()
    with torch.inference_mode():
        output_names, _ = flatten_outputs(module(**example_inputs))
    return ReferenceModel(
        name=name or type(module).__name__, task="custom", preset=None, source="module",
        architecture=type(module).__name__, module=ModuleWrapper(module, list(example_inputs)).eval(),
        inputs=specs, output_names=output_names, sizes=sizes, tolerance=tolerance,
        example_values={k: v.detach().cpu().numpy() for k, v in example_inputs.items()},
    )


def rebuild_reference(manifest: Manifest) -> ReferenceModel | ReferenceBundle:
    """The reference model an artifact was converted from, rebuilt from its manifest (needs torch)."""
    info = manifest.model
    source = str(info.get("source", ""))
    if source == "zoo":
        return load_reference(info["name"], task=info["task"], preset=info["preset"], seed=int(info.get("seed", 0)))
    if source.startswith(("folder:", "hub:")):
        return load_reference(source.split(":", 1)[1], task=info["task"])
    raise UsageError(f"the artifact was converted from a Python module ({info.get('name')}); --reference cannot "
                     "rebuild it, call edgeexport.check_parity(artifact, reference) from Python instead")
