"""Build reference models from the zoo, a ``save_pretrained`` folder, a hub id or a user module."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError

from edgeexport.artifact import sha256_file
from edgeexport.errors import InputSpecError, ModelLoadError, UsageError
from edgeexport.generation_spec import TOKENIZER_FILE
from edgeexport.manifest import Manifest, Tolerance
from edgeexport.processing import IMAGENET_MEAN, IMAGENET_STD, LABELLED_TASKS, SAMPLING_RATE, Processing
from edgeexport.reference.decoders_with_past import ReferenceBundle, token_ids, with_past_reference
from edgeexport.reference.model import (AudioSource, ExportWrapper, ImageSource, ModuleWrapper, ReferenceModel, TextSource,
                                        flatten_outputs)
from edgeexport.reference.processors import Processors, folder_processors, zoo_processors
from edgeexport.reference.sentence_embedding import (MODULES_FILE, SentenceEmbedding, SentenceModules,
                                                     is_sentence_transformers, read_modules)
from edgeexport.tasks import MODALITY_BY_MAIN_INPUT, TASKS, WITH_PAST, task_from_architecture, task_head
from edgeexport.zoo import (FP32_TOLERANCE, SPECS, InputSpec, ModelSpec, generic_spec, model_kind, spec_for_model_type,
                            zoo_task)

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
TEXT_AXES = ("sequence", "decoder_sequence")  # token axes bounded by a learned position table
TEXT_MODALITIES = ("text", "text2text")  # models that take a tokenizer's ids


def load_reference(model: str | Path, *, task: str | None = None, preset: str = "tiny", seed: int = 0,
                   allow_pickle: bool = False, allow_random_head: bool = False) -> ReferenceModel | ReferenceBundle:
    """Build the reference model for a zoo name, a local ``save_pretrained`` folder or a hub id.

    The generation task ``seq2seq-lm-with-past`` gives a :class:`ReferenceBundle` (encoder and
    decoder); every other task a single :class:`ReferenceModel`.

    Args:
        model: Zoo name (``gpt2``), a folder holding ``config.json`` and weights, or ``org/name``.
        task: Task to export; defaults to the zoo model's first task or the folder's architecture.
        preset: ``tiny`` or ``full`` (zoo models only). Defaults to ``tiny``.
        seed: Seed of the random weights of zoo models. Defaults to 0.
        allow_pickle: Allow loading pickled ``.bin`` weights, which can run code. Defaults to False.
        allow_random_head: Accept parameters the checkpoint lacks (newly initialised, such as a task head on a
            base model); the manifest names them as ``random_head``. Defaults to False.

    Raises:
        UsageError: unknown model, task or preset.
        ModelLoadError: the folder or hub id cannot be loaded, or loading it leaves parameters random.
    """
    text = str(model)
    kind = model_kind(text)
    if kind == "zoo":
        return _from_zoo(SPECS[text], task=task, preset=preset, seed=seed)
    if kind == "folder":
        return _from_folder(Path(text), task=task, source="folder", allow_pickle=allow_pickle,
                            allow_random_head=allow_random_head)
    return _from_folder(_download(text), task=task, source=f"hub:{text}", allow_pickle=allow_pickle,
                        allow_random_head=allow_random_head)


def _from_zoo(spec: ModelSpec, *, task: str | None, preset: str, seed: int) -> ReferenceModel | ReferenceBundle:
    task = zoo_task(spec, task, preset)
    config = transformers.AutoConfig.for_model(spec.model_type, **spec.presets[preset], **spec.task_config.get(task, {}))
    torch.manual_seed(seed)
    model = getattr(transformers, task_head(task).auto_class).from_config(config)
    return _reference(spec, model, task=task, preset=preset, name=spec.name, source="zoo",
                      processors=zoo_processors(spec.name, config))


def _from_folder(folder: Path, *, task: str | None, source: str, allow_pickle: bool,
                 allow_random_head: bool) -> ReferenceModel | ReferenceBundle:
    """The reference of a ``save_pretrained`` or sentence-transformers folder. ``source`` is ``folder`` (recorded
    as ``folder:<its name>``, never a path) or ``hub:<id>``."""
    sentence = is_sentence_transformers(folder)
    task = task or ("sentence-embedding" if sentence else None)
    modules = _sentence_modules(folder, task, sentence)
    weights_folder = modules.transformer if modules else folder
    config = _config(weights_folder)
    safe = _weights(weights_folder, allow_pickle)
    architecture = (config.architectures or [""])[0]
    task = task or _task_of(architecture, folder)
    head = task_head(task)
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None or task_from_architecture(architecture, _main_input(model_class)) != task:
        model_class = getattr(transformers, head.auto_class)
    model, missing = _pretrained(model_class, weights_folder, safe)
    if missing and not allow_random_head:
        raise ModelLoadError(f"{str(folder)!r} has no weights for {_named(missing)} ({architecture or 'its model'} "
                             f"with task {task!r}): they would be random; convert a folder with a trained "
                             f"{task} head, or pass --allow-random-head to convert it with the random head")
    spec = spec_for_model_type(config.model_type) or generic_spec(
        head.modality or MODALITY_BY_MAIN_INPUT.get(_main_input(model_class), "text"), config.model_type,
        causal=task == "causal-lm")
    details = {"weights_sha256": weights_digest(folder), **({"random_head": missing} if missing else {})}
    if modules is not None:
        model = SentenceEmbedding(model, modules).eval()
    reference = _reference(spec, model, task=task, preset=None, name=folder.name,
                           source=f"folder:{folder.name}" if source == "folder" else source,
                           processors=folder_processors(weights_folder), max_length=modules and modules.max_length,
                           architecture=modules and f"{architecture} ({modules.describe()})")
    reference.details.update(details)
    return reference


def _sentence_modules(folder: Path, task: str | None, sentence: bool) -> SentenceModules | None:
    """The folder's sentence-transformers modules for the ``sentence-embedding`` task (None for other tasks)."""
    if task != "sentence-embedding":
        return None
    if not sentence:
        raise UsageError(f"task 'sentence-embedding' needs a sentence-transformers folder (with {MODULES_FILE}); "
                         f"{str(folder)!r} has none, pass --task feature-extraction for its hidden states")
    return read_modules(folder)


def _config(folder: Path) -> Any:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"folder {str(folder)!r} has no config.json; save the model with save_pretrained()")
    try:
        return transformers.AutoConfig.from_pretrained(folder)
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{str(config_path)!r} cannot be read as a transformers config: {_first_line(exc)}") from None


def _weights(folder: Path, allow_pickle: bool) -> bool:
    """Whether the folder holds safetensors weights (else pickled ones, when allowed)."""
    safe = [p for pattern in SAFE_WEIGHTS for p in folder.glob(pattern)]
    pickled = [p for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)]
    if not safe and not pickled:
        raise ModelLoadError(f"folder {str(folder)!r} has no weights (*.safetensors); save the model with save_pretrained()")
    if not safe and not allow_pickle:
        raise ModelLoadError(f"folder {str(folder)!r} holds only pickled weights ({pickled[0].name}), and loading a pickle "
                             "can run code; convert them to safetensors or pass --allow-pickle if you trust the file")
    return bool(safe)


def _pretrained(model_class: Any, folder: Path, safe: bool) -> tuple[torch.nn.Module, list[str]]:
    """The loaded model and the parameters the checkpoint lacked (newly initialised), sorted; transformers'
    load report and warnings are kept off the terminal (the caller says what matters in one line)."""
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(folder, use_safetensors=safe, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(f"weights in {str(folder)!r} cannot be loaded ({_first_line(exc)}); "
                             "the file is truncated or corrupt, save the model again") from None
    return model, sorted(info.get("missing_keys") or [])


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging at errors only and no progress bars while loading (its load report, "you should
    train" notes and weight-loading bar)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _named(names: Sequence[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def weights_digest(folder: Path) -> str:
    """sha256 of a model folder's weights: of the one weights file, or of the ``name sha256`` lines of all of them
    (a sentence-transformers folder's sub-folders included), whatever the folder is called or where it lies."""
    files = sorted(p for pattern in (*SAFE_WEIGHTS, *PICKLE_WEIGHTS) for p in folder.rglob(pattern))
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.relative_to(folder).as_posix()} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _task_of(architecture: str, folder: Path) -> str:
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
               source: str, processors: Processors, max_length: int | None = None,
               architecture: str | None = None) -> ReferenceModel | ReferenceBundle:
    """The reference of a transformers model with the processors it ships (tokenizer, preprocessor settings).

    ``max_length`` is the longest input in tokens its processing truncates to (a sentence-transformers
    folder's ``max_seq_length``); ``architecture`` names the model when its class does not say it all.
    """
    tokenizer = processors.tokenizer
    if task in WITH_PAST:
        return with_past_reference(spec, model, task=task, preset=preset, name=name, source=source, tokenizer=tokenizer)
    head = task_head(task)
    config = model.config
    modality = head.modality or spec.modality
    inputs = spec.inputs(config, task)
    wrapper = ExportWrapper(model, [i.name for i in inputs], head.outputs, spec.forward_kwargs).eval()
    sizes = spec.fit_sizes(_fit_positions(spec.sizes(preset or "full"), config), config)
    used_axes = {d for i in inputs for d in i.dims if isinstance(d, str)}
    assets = {TOKENIZER_FILE: tokenizer} if tokenizer is not None and modality in TEXT_MODALITIES else {}
    processing = _processing(config, task, modality, inputs[0], sizes, processors, tokenized=bool(assets),
                             max_length=max_length)
    reference = ReferenceModel(
        name=name, task=task, preset=preset, source=source, architecture=architecture or type(model).__name__,
        module=wrapper, inputs=inputs, output_names=list(head.outputs),
        sizes={a: s for a, s in sizes.items() if a in used_axes},
        tolerance=spec.tolerance, logits_outputs=list(head.logits), vocab_size=spec.vocab_size(config),
        assets=assets, processing=processing.to_dict(), fixed_shape_reason=spec.fixed_shape_reason,
        input_source=_text_source(task, modality, assets, model) or _media_source(inputs[0], processing),
    )
    if head.optional:
        wrapper.output_names = reference.output_names = _returned_outputs(reference, (*head.outputs, *head.optional))
    return reference


def _text_source(task: str, modality: str, assets: Mapping[str, Any], model: torch.nn.Module) -> TextSource | None:
    """Sentences through the model's tokenizer, or questions on a context for question answering, an encoder-decoder's
    with decoder ids after its first decoder token; None without a tokenizer, or for an encoder-decoder without a
    decoder-start (or BOS) token."""
    if modality not in TEXT_MODALITIES or TOKENIZER_FILE not in assets:
        return None
    if modality == "text2text":
        tokens = token_ids(model)
        if tokens.first_decoder_token is None:
            return None
        return TextSource(assets[TOKENIZER_FILE], decoder_start=tokens.first_decoder_token, pad=tokens.pad)
    return TextSource(assets[TOKENIZER_FILE], kind="questions" if task == "question-answering" else "sentences")


def _media_source(first_input: InputSpec, processing: Processing) -> ImageSource | AudioSource | None:
    """Photographs for RGB ``pixel_values``, speech for ``input_values`` at a sampling rate; None for any other input."""
    if first_input.name == "pixel_values" and processing.image_size and first_input.dims[1] == 3:
        return ImageSource(processing)
    if first_input.name == "input_values" and processing.sampling_rate:
        return AudioSource(processing)
    return None


def _returned_outputs(reference: ReferenceModel, names: Sequence[str]) -> list[str]:
    """Those of ``names`` the model returns on its example inputs (a base model has a pooler or not)."""
    inputs = {name: torch.from_numpy(value) for name, value in reference.make_inputs().items()}
    wrapper = reference.module
    with torch.inference_mode():
        outputs = wrapper.model(**inputs, **wrapper.forward_kwargs, return_dict=True)
    return [name for name in names if outputs.get(name) is not None]


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


def _processing(config: Any, task: str, modality: str, first_input: InputSpec, sizes: Mapping[str, tuple[int, int]],
                processors: Processors, *, tokenized: bool, max_length: int | None = None) -> Processing:
    """What pre- and post-processing need: class names or the CTC vocabulary, and the tokenizer, image
    or audio settings (the processors' ``preprocessor_config.json`` settings, defaults where they have none)."""
    saved = processors.preprocessor
    settings: dict[str, Any] = {}
    if modality in TEXT_MODALITIES and tokenized:
        settings["tokenizer"] = TOKENIZER_FILE
        if max_length:
            settings["max_length"] = max_length
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


def _source_folder(info: Mapping[str, Any]) -> Path:
    """The folder a folder model was converted from: the manifest keeps its name and weights digest, not its path
    (artifacts travel), so it is looked for by name in the working directory and checked by digest."""
    folder = Path(str(info["source"]).split(":", 1)[1])
    digest = str(info.get("weights_sha256", ""))
    if not folder.is_dir() or (digest and weights_digest(folder) != digest):
        found = "is not in the working directory" if not folder.is_dir() else "here holds other weights"
        raise ModelLoadError(f"the artifact was converted from folder {folder.name!r} (weights sha256 {digest[:12]}), "
                             f"which {found}; run from the directory that holds that folder")
    return folder


def rebuild_reference(manifest: Manifest) -> ReferenceModel | ReferenceBundle:
    """The reference model an artifact was converted from, rebuilt from its manifest (needs torch)."""
    info = manifest.model
    source = str(info.get("source", ""))
    if source == "zoo":
        return load_reference(info["name"], task=info["task"], preset=info["preset"], seed=int(info.get("seed", 0)))
    if source.startswith("hub:"):
        return load_reference(source.split(":", 1)[1], task=info["task"], allow_random_head="random_head" in info)
    if source.startswith("folder:"):
        return load_reference(_source_folder(info), task=info["task"], allow_random_head="random_head" in info)
    raise UsageError(f"the artifact was converted from a Python module ({info.get('name')}); --reference cannot "
                     "rebuild it, call edgeexport.check_parity(artifact, reference) from Python instead")
