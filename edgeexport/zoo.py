"""Declarative per-architecture specs of the reference zoo.

Each spec says, as data: the transformers model type, its tasks (default first), the config
of each preset (``tiny`` for tests, ``full`` for the published size), its flat named inputs
with symbolic axes, example and alternate sizes of each dynamic axis, and its parity
tolerance. Family base classes hold what a modality shares; an architecture overrides only
what differs. New architectures register with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeexport.errors import ModelLoadError, UsageError
from edgeexport.manifest import Tolerance
from edgeexport.tasks import WITH_PAST, supported_tasks, task_head

PRESETS = ("tiny", "full")
# fp32 parity bounds of every model and target (derived in docs/parity.md: 4x the worst measured beyond the floor).
FP32_TOLERANCE = Tolerance(atol=1e-7, rounding=3e-7, max_error=3e-4, rms_error=1.5e-5, scale_error=2e-6)


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``dims`` holds axis names (dynamic) and ints (fixed).

    A dynamic dim may also be a sum of axes, such as ``past_sequence+sequence``. ``kind`` says
    how example values are drawn: ``ids`` (token ids below the vocab size), ``mask`` (ones,
    trailing zeros in later rows to exercise padding), ``zeros``, ``positions`` (0, 1, ...
    along the last dim) or ``float`` (standard normal).
    """

    name: str
    dims: tuple[str | int, ...]
    kind: str
    dtype: str = "int64"


class ModelSpec:
    """Base spec. Subclasses set the class attributes; methods derive inputs from a config."""

    name: ClassVar[str]
    model_type: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    task_config: ClassVar[dict[str, dict[str, Any]]] = {}
    axis_sizes: ClassVar[dict[str, dict[str, tuple[int, int]]]] = {}
    forward_kwargs: ClassVar[dict[str, Any]] = {}
    tolerance: ClassVar[Tolerance] = FP32_TOLERANCE
    modality: ClassVar[str] = ""  # the family's: text, text2text, vision or audio
    fixed_shape_reason: ClassVar[str] = ""  # why dims that could vary are fixed; the manifest and inspect show it

    def inputs(self, config: Any, task: str) -> list[InputSpec]:
        raise NotImplementedError

    def sizes(self, preset: str) -> dict[str, tuple[int, int]]:
        """Example and alternate size of each dynamic axis for a preset (``full`` for loaded models)."""
        return self.axis_sizes.get(preset) or self.axis_sizes["full"]

    def fit_sizes(self, sizes: dict[str, tuple[int, int]], config: Any) -> dict[str, tuple[int, int]]:
        """The sizes for one model's config (a loaded model may differ from the preset). Defaults to ``sizes``."""
        return sizes

    def vocab_size(self, config: Any) -> int:
        return int(getattr(config, "vocab_size", 2) or 2)


class TextEncoderSpec(ModelSpec):
    """Encoder-only text models: input_ids + attention_mask over (batch, sequence)."""

    modality = "text"
    axis_sizes = {"tiny": {"batch": (2, 3), "sequence": (8, 13)}, "full": {"batch": (1, 2), "sequence": (128, 64)}}
    uses_token_type_ids: ClassVar[bool] = False

    def inputs(self, config: Any, task: str) -> list[InputSpec]:
        specs = [InputSpec("input_ids", ("batch", "sequence"), "ids"),
                 InputSpec("attention_mask", ("batch", "sequence"), "mask")]
        if self.uses_token_type_ids:
            specs.append(InputSpec("token_type_ids", ("batch", "sequence"), "zeros"))
        return specs


class CausalLMSpec(TextEncoderSpec):
    """Decoder-only language models; exported without KV cache (one full forward). They take position ids: without
    them a left-padded row's tokens sit at the wrong positions (the tiny GPT-2's logits move by 0.48 of their 0.61
    largest), and decoders are batched with left padding."""

    forward_kwargs = {"use_cache": False}

    def inputs(self, config: Any, task: str) -> list[InputSpec]:
        return [*super().inputs(config, task), InputSpec("position_ids", ("batch", "sequence"), "positions")]


class Seq2SeqSpec(ModelSpec):
    """Encoder-decoder text models, exported as one graph returning decoder logits."""

    modality = "text2text"
    axis_sizes = {
        "tiny": {"batch": (2, 3), "sequence": (8, 13), "decoder_sequence": (5, 7)},
        "full": {"batch": (1, 2), "sequence": (128, 64), "decoder_sequence": (32, 16)},
    }
    forward_kwargs = {"use_cache": False}

    def inputs(self, config: Any, task: str) -> list[InputSpec]:
        return [InputSpec("input_ids", ("batch", "sequence"), "ids"),
                InputSpec("attention_mask", ("batch", "sequence"), "mask"),
                InputSpec("decoder_input_ids", ("batch", "decoder_sequence"), "ids")]


class VisionSpec(ModelSpec):
    """Image models: pixel_values (batch, channels, height, width).

    ``dynamic_image_size`` says whether height and width are dynamic axes; a model whose graph
    cannot follow the image size keeps them fixed at ``config.image_size`` and says why in
    ``fixed_shape_reason``.
    """

    modality = "vision"
    dynamic_image_size: ClassVar[bool] = True
    axis_sizes = {"tiny": {"batch": (2, 3), "height": (64, 96), "width": (64, 128)},
                  "full": {"batch": (1, 2), "height": (224, 256), "width": (224, 288)}}

    def inputs(self, config: Any, task: str) -> list[InputSpec]:
        channels = int(getattr(config, "num_channels", 3))
        if self.dynamic_image_size:
            return [InputSpec("pixel_values", ("batch", channels, "height", "width"), "float", "float32")]
        size = _image_size(config)
        return [InputSpec("pixel_values", ("batch", channels, size, size), "float", "float32")]


class AudioSpec(ModelSpec):
    """Raw-waveform audio models: input_values (batch, audio_length)."""

    modality = "audio"
    axis_sizes = {"tiny": {"batch": (2, 3), "audio_length": (2000, 3200)},
                  "full": {"batch": (1, 2), "audio_length": (16000, 24000)}}

    def inputs(self, config: Any, task: str) -> list[InputSpec]:
        return [InputSpec("input_values", ("batch", "audio_length"), "float", "float32")]


SPATIAL_AXES = ("height", "width")


def _image_size(config: Any) -> int:
    size = getattr(config, "image_size", None) or getattr(getattr(config, "backbone_config", None), "image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# --------------------------------------------------------------------------- registry

SPECS: dict[str, ModelSpec] = {}


def register(cls: type[ModelSpec]) -> type[ModelSpec]:
    """Class decorator adding a spec to the zoo under ``cls.name``."""
    SPECS[cls.name] = cls()
    return cls


def get_spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise _unknown_model(name)
    return SPECS[name]


def _unknown_model(name: str) -> UsageError:
    return UsageError(f"unknown model {name!r}; choose one of: {', '.join(SPECS)} "
                      "(or pass a save_pretrained folder or a hub id like org/name)")


def model_kind(model: str) -> str:
    """How a model argument is read: ``zoo`` (a zoo name, which wins over a folder of that name; pass
    ./name for the folder), ``folder`` (a save_pretrained folder) or ``hub`` (an ``org/name`` id).

    Raises:
        UsageError: an unknown zoo name. ModelLoadError: a folder path that does not exist.
    """
    path = Path(model)
    if model in SPECS:
        return "zoo"
    if path.is_dir():
        return "folder"
    if "/" in model and not path.exists() and not model.startswith((".", "/")):
        return "hub"
    if "/" in model or model.startswith("."):
        raise ModelLoadError(f"model folder {model!r} does not exist; pass a zoo name, a save_pretrained folder or a "
                             "hub id")
    raise _unknown_model(model)


def zoo_task(spec: ModelSpec, task: str | None, preset: str) -> str:
    """The task of a zoo model (its first by default), checked against its tasks, and the preset checked.

    Raises:
        UsageError: an unknown task or preset, or a task the model does not have.
    """
    task = task or spec.tasks[0]
    task_head(task)
    if WITH_PAST.get(task, task) not in spec.tasks:
        raise UsageError(f"model {spec.name!r} does not support task {task!r}; "
                         f"its tasks: {', '.join(supported_tasks(spec.tasks))}")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return task


def weights_note(model: Mapping[str, Any]) -> str:
    """What a manifest's ``model`` block says of random weights: ``tiny preset, random weights`` for a zoo model,
    ``random head (classifier.bias, classifier.weight)`` for a checkpoint converted with parameters it lacked;
    '' for any other."""
    if model.get("source") == "zoo":
        return f"{model.get('preset')} preset, random weights"
    missing = model.get("random_head")
    if isinstance(missing, list) and missing:
        return f"random head ({', '.join(map(str, missing[:4]))}{', ...' if len(missing) > 4 else ''})"
    return ""


def spec_for_model_type(model_type: str) -> ModelSpec | None:
    return next((s for s in SPECS.values() if s.model_type == model_type), None)


FAMILY_BY_MODALITY: dict[str, type[ModelSpec]] = {
    "text": TextEncoderSpec, "text2text": Seq2SeqSpec, "vision": VisionSpec, "audio": AudioSpec,
}


def generic_spec(modality: str, model_type: str, *, causal: bool = False) -> ModelSpec:
    """A spec for an architecture outside the zoo, from its modality's family."""
    base = CausalLMSpec if causal else FAMILY_BY_MODALITY[modality]
    return type(f"Generic{base.__name__}", (base,), {"name": model_type, "model_type": model_type, "tasks": ()})()


# --------------------------------------------------------------------------- the zoo

_TEXT_TINY = {"vocab_size": 1000, "max_position_embeddings": 128}


@register
class GPT2Spec(CausalLMSpec):
    name = "gpt2"
    model_type = "gpt2"
    tasks = ("causal-lm",)
    presets = {
        "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 1000, "n_positions": 128,
                 "bos_token_id": 999, "eos_token_id": 999},
        "full": {},  # GPT2Config() is gpt2 (124M)
    }


@register
class BertSpec(TextEncoderSpec):
    name = "bert"
    model_type = "bert"
    tasks = ("sequence-classification", "token-classification", "question-answering")
    uses_token_type_ids = True
    presets = {
        "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64, "type_vocab_size": 2, **_TEXT_TINY},
        "full": {},  # BertConfig() is bert-base-uncased
    }
    task_config = {"sequence-classification": {"num_labels": 3}, "token-classification": {"num_labels": 5}}


@register
class BartSpec(Seq2SeqSpec):
    name = "bart"
    model_type = "bart"
    tasks = ("seq2seq-lm",)
    presets = {
        "tiny": {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, **_TEXT_TINY},
        "full": {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 12,
                 "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
                 "vocab_size": 50265, "max_position_embeddings": 1024},  # facebook/bart-base
    }


@register
class T5Spec(Seq2SeqSpec):
    name = "t5"
    model_type = "t5"
    tasks = ("seq2seq-lm",)
    presets = {
        # T5Config() leaves decoder_start_token_id unset; t5-small starts decoding with pad (0).
        "tiny": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 2, "num_decoder_layers": 2,
                 "num_heads": 2, "vocab_size": 1000, "relative_attention_num_buckets": 8, "decoder_start_token_id": 0},
        "full": {"vocab_size": 32128, "decoder_start_token_id": 0},  # T5Config() is t5-small
    }


@register
class ViTSpec(VisionSpec):
    name = "vit"
    model_type = "vit"
    tasks = ("image-classification",)
    # Any image size: the learned position table (a grid of image_size / patch_size) is
    # interpolated to the image's patch grid; at the trained size it is the table itself.
    forward_kwargs = {"interpolate_pos_encoding": True}
    presets = {
        "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 64},
        "full": {},  # ViTConfig() is vit-base-patch16-224
    }
    task_config = {"image-classification": {"num_labels": 10}}
    axis_sizes = {"tiny": {"batch": (2, 3), "height": (32, 48), "width": (32, 64)},
                  "full": {"batch": (1, 2), "height": (224, 256), "width": (224, 288)}}

    def fit_sizes(self, sizes: dict[str, tuple[int, int]], config: Any) -> dict[str, tuple[int, int]]:
        """The example image is the trained size (what the model mostly runs at, and one of Core ML's
        enumerated shapes); the alternate size checks the interpolated position table."""
        trained, patch = _image_size(config), int(getattr(config, "patch_size", 16))
        fitted = dict(sizes)
        for axis in SPATIAL_AXES:
            alternate = sizes[axis][1]
            fitted[axis] = (trained, alternate if alternate != trained else trained + 2 * patch)
        return fitted


@register
class ConvNextSpec(VisionSpec):
    name = "convnext"
    model_type = "convnext"
    tasks = ("image-classification",)
    presets = {
        "tiny": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "image_size": 64},
        "full": {},  # ConvNextConfig() is convnext-tiny-224
    }
    task_config = {"image-classification": {"num_labels": 10}}


@register
class DetrSpec(VisionSpec):
    name = "detr"
    model_type = "detr"
    tasks = ("object-detection",)
    presets = {
        "tiny": {"backbone_config": {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 64, 128],
                                     "depths": [1, 1, 1, 1], "layer_type": "basic", "out_features": ["stage4"]},
                 "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 10},
        "full": {},  # DetrConfig() is detr-resnet-50 with a randomly initialised ResNet-50 backbone
    }
    task_config = {"object-detection": {"num_labels": 5}}


@register
class Mask2FormerSpec(VisionSpec):
    name = "mask2former"
    model_type = "mask2former"
    tasks = ("segmentation",)
    # Measured with height and width dynamic (tiny, 64x64 and 96x128): OpenVINO's trace fails at
    # the second size ("the shape of input data (2.8.8.64) conflicts with the reshape pattern
    # (2.48.64)"), and torch.export (ONNX) did not finish in 20 minutes (45 s at a fixed size).
    # Keeping them symbolic means rewriting Swin's padding branches and the pixel decoder's
    # level bookkeeping (Python ints, torch.tensor constants) for every capture.
    dynamic_image_size = False
    fixed_shape_reason = ("height and width are fixed at the backbone's image_size: capturing keeps Swin's window "
                          "grid and the pixel decoder's feature-map sizes as constants, so another image size fails "
                          "in a Reshape; resize images to this size")
    presets = {
        "tiny": {"backbone_config": {"model_type": "swin", "image_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1],
                                     "num_heads": [1, 1, 2, 2], "window_size": 4,
                                     "out_features": ["stage1", "stage2", "stage3", "stage4"]},
                 "feature_size": 32, "mask_feature_size": 32, "hidden_dim": 32, "encoder_feedforward_dim": 64,
                 "encoder_layers": 1, "decoder_layers": 2, "num_attention_heads": 2, "dim_feedforward": 64,
                 "num_queries": 10},
        "full": {"backbone_config": {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2],
                                     "num_heads": [3, 6, 12, 24], "window_size": 7, "image_size": 384,
                                     "out_features": ["stage1", "stage2", "stage3", "stage4"]}},  # swin-tiny
    }
    task_config = {"segmentation": {"num_labels": 5}}
    axis_sizes = {"tiny": {"batch": (1, 2)}, "full": {"batch": (1, 2)}}


@register
class GLPNSpec(VisionSpec):
    name = "glpn"
    model_type = "glpn"
    tasks = ("depth-estimation",)
    presets = {
        "tiny": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 2, 2],
                 "decoder_hidden_size": 16},
        "full": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 8, 27, 3],  # vinvino02/glpn-kitti (MiT-b4)
                 "num_attention_heads": [1, 2, 5, 8], "decoder_hidden_size": 64},
    }
    axis_sizes = {"tiny": {"batch": (2, 3), "height": (64, 96), "width": (64, 128)},
                  "full": {"batch": (1, 2), "height": (352, 384), "width": (704, 736)}}


@register
class Wav2Vec2Spec(AudioSpec):
    name = "wav2vec2"
    model_type = "wav2vec2"
    tasks = ("ctc", "audio-classification")
    presets = {
        "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                 "conv_dim": [16, 16], "conv_stride": [5, 2], "conv_kernel": [10, 3],
                 "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "vocab_size": 32,
                 "classifier_proj_size": 16},
        "full": {},  # Wav2Vec2Config() is wav2vec2-base
    }
    task_config = {"audio-classification": {"num_labels": 4}}


# The published checkpoint (hub id) whose architecture and size each zoo model's full preset has,
# and whose tokenizer kind and preprocessing its artifacts carry (edgeexport.reference.processors).
# Convert it by this id for its trained weights (a bare name such as gpt2 is the zoo model).
PUBLISHED: dict[str, str] = {
    "gpt2": "openai-community/gpt2", "bert": "google-bert/bert-base-uncased", "bart": "facebook/bart-base",
    "t5": "google-t5/t5-small",
    "vit": "google/vit-base-patch16-224", "convnext": "facebook/convnext-tiny-224", "detr": "facebook/detr-resnet-50",
    "mask2former": "facebook/mask2former-swin-tiny-ade-semantic", "glpn": "vinvino02/glpn-kitti",
    "wav2vec2": "facebook/wav2vec2-base-960h",
}
