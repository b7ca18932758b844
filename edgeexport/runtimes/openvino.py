"""OpenVINO runner for ``model.xml`` artifacts: CPU by default; GPU, NPU and AUTO passed through."""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from edgeexport.artifact import Artifact
from edgeexport.errors import UsageError
from edgeexport.generation_spec import GenerationSpec
from edgeexport.runner import Runner

logger = logging.getLogger(__name__)

PERFORMANCE_HINTS = ("latency", "throughput")
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
SEQUENCE_STEP = 8  # token sequences are padded to the next multiple of this for a static-shape model
STATIC_SHAPES_KEPT = 8  # compiled static-shape models kept (least recently used dropped): each holds its own weights
# OpenVINO 2026.4's CPU plugin gets an encoder-decoder's decoder wrong below f32 whenever its self-attention length
# (past + new tokens) equals the encoder's length, as generation does once the output is as long as the source: its
# fused-subgraph compiler ("snippets") fails on a fresh request with "SetLoadStoreScalar expects static shapes" and
# returns logits off by up to 0.6 relative KL on a request used before (tiny BART in bf16 on a 2-core AMX Xeon; no
# other length failed, f32 never did; docs/parity.md). Without snippets the decoder matches f32 within bf16 rounding.
CROSS_ATTENTION_SNIPPETS = "DISABLE"


class OpenVinoRunner(Runner):
    """Runs ``model.xml`` compiled by ``openvino.Core`` with one infer request.

    Options:
        device: OpenVINO device (``CPU``, ``GPU``, ``GPU.1``, ``NPU``, ``AUTO``, ``AUTO:GPU,CPU``...).
            Defaults to ``CPU``.
        performance_hint: ``latency`` or ``throughput``; None keeps the device's default. Defaults to None.
        threads: ``INFERENCE_NUM_THREADS`` (0 = OpenVINO's default). Defaults to 0.
        inference_precision: ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``, ``f16``). Defaults to the
            manifest's ``runtime_options`` (``f32`` for edgeexport's artifacts, since the CPU plugin
            would otherwise run bf16 on CPUs that have it); None there keeps the device's default.
        static_shapes: run token sequences through static-shape models (see :meth:`_static_request`) where the
            artifact's inputs allow it. Defaults to True.
    """

    name = "openvino"
    requires = ("openvino",)
    install = "pip install openvino"
    tool_packages = ("openvino",)
    label = "openvino"

    def __init__(self, artifact: Artifact, *, device: str = "CPU", performance_hint: str | None = None,
                 threads: int = 0, inference_precision: str | None = None, static_shapes: bool = True) -> None:
        super().__init__(artifact)
        if performance_hint is not None and performance_hint not in PERFORMANCE_HINTS:
            raise UsageError(f"unknown performance hint {performance_hint!r}; "
                             f"choose one of: {', '.join(PERFORMANCE_HINTS)}")
        self.device = device
        self.performance_hint = performance_hint
        self.threads = threads
        self.inference_precision = inference_precision or artifact.manifest.runtime_options.get("inference_precision")
        self.core: Any = None
        self.compiled: Any = None
        self.request: Any = None
        self.sequence_axis = padded_sequence_axis(artifact) if static_shapes else None
        self.cross_attention_decoder = _cross_attention_decoder(artifact)
        self._static: OrderedDict[tuple[int, int], Any] = OrderedDict()

    @property
    def config(self) -> dict[str, Any]:
        """The properties passed to ``compile_model``."""
        config: dict[str, Any] = {}
        if self.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if self.performance_hint:
            config["PERFORMANCE_HINT"] = self.performance_hint.upper()
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.cross_attention_decoder and self.inference_precision != "f32" and self.device.split(".")[0] == "CPU":
            config["SNIPPETS_MODE"] = CROSS_ATTENTION_SNIPPETS
        return config

    def _activate_impl(self) -> None:
        import openvino as ov

        core = ov.Core()
        device = self.device.split(":")[0].split(".")[0]
        available = core.available_devices
        if device not in VIRTUAL_DEVICES and not any(d.split(".")[0] == device for d in available):
            raise UsageError(f"OpenVINO device {self.device!r} is not available here; "
                             f"available: {', '.join(available)}")
        self.core = core
        self.compiled = core.compile_model(str(self.artifact.model_path), self.device, self.config)
        self.request = self.compiled.create_infer_request()
        self._warn_unmet_precision()

    @property
    def computed_precision(self) -> str | None:
        """The precision the compiled model computes in (``f32``, ``bf16``, ``f16``); None before activation."""
        if self.compiled is None:
            return None
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _warn_unmet_precision(self) -> None:
        """A device without the asked arithmetic (bf16 on a CPU with neither AVX512_BF16 nor AMX) silently
        computes in f32: then parity and latency measured here say nothing about the precision asked for."""
        computed = self.computed_precision
        if self.inference_precision and computed != self.inference_precision:
            logger.warning("%s computes in %s, not the %s the artifact asks for (this device has no %s arithmetic): "
                           "its parity and latency here are those of %s; check it on a device with %s", self.device,
                           computed, self.inference_precision, self.inference_precision, computed,
                           self.inference_precision)

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self.sequence_axis is None:
            results = self.request.infer(feed)
            return {spec.name: results[spec.name] for spec in self.outputs}
        batch, length = feed["attention_mask"].shape
        padded = -(-length // SEQUENCE_STEP) * SEQUENCE_STEP
        results = self._static_request(batch, padded).infer(
            {name: np.pad(value, ((0, 0), (0, padded - length))) for name, value in feed.items()})
        return {spec.name: _cut(results[spec.name], spec.shape, self.sequence_axis, length) for spec in self.outputs}

    def _static_request(self, batch: int, length: int) -> Any:
        """An infer request of the model reshaped to ``[batch, length]``, compiled on first use (0.13 s for
        all-MiniLM-L6-v2). Hand-written because OpenVINO's CPU plugin has no bucketing of its own: with dynamic
        shapes every new sentence length costs it 0.7 ms of shape handling (all-MiniLM-L6-v2 at batch 1 on a
        2-core AMX Xeon, bf16: 1.25 ms a sentence static, 2.26 ms dynamic over lengths 9-20). Padding with a
        zero attention mask leaves the real tokens' outputs as they are (docs/parity.md)."""
        key = (batch, length)
        if key not in self._static:
            model = self.core.read_model(str(self.artifact.model_path))
            model.reshape({spec.name: [batch, length] for spec in self.inputs})
            self._static[key] = self.core.compile_model(model, self.device, self.config).create_infer_request()
            if len(self._static) > STATIC_SHAPES_KEPT:
                self._static.popitem(last=False)
        self._static.move_to_end(key)
        return self._static[key]

    def step(self, feed: Mapping[str, Any], *, keep: Collection[str] = ()) -> dict[str, Any]:
        """Unchecked call that shares the input arrays with the request instead of copying them in
        (a generation loop feeds last step's KV cache back). Outputs are fresh copies, so feeding
        them to the next step is safe; ``keep`` needs nothing more here."""
        self.activate()
        with self.timed():
            results = self.request.infer(dict(feed), share_inputs=True)
        return {spec.name: results[spec.name] for spec in self.outputs}

    def _deactivate_impl(self) -> None:
        self.request = None
        self.compiled = None
        self.core = None
        self._static.clear()


def _cross_attention_decoder(artifact: Artifact) -> bool:
    """Whether the artifact is an encoder-decoder's decoder (:data:`CROSS_ATTENTION_SNIPPETS`)."""
    if not artifact.manifest.generation:
        return False
    generation = GenerationSpec.of(artifact.manifest)
    return generation.role == "decoder" and generation.encoder_decoder


def padded_sequence_axis(artifact: Artifact) -> str | None:
    """The token axis that may be padded, or None: every input is ``[batch, <axis>]`` over the same named axis and one
    is ``attention_mask``, so padding with mask 0 hides the added tokens from the real ones (a model with a KV cache,
    audio or images has other inputs)."""
    shapes = {tuple(spec.shape) for spec in artifact.manifest.inputs}
    names = {spec.name for spec in artifact.manifest.inputs}
    if "attention_mask" not in names or len(shapes) != 1:
        return None
    shape = next(iter(shapes))
    return shape[1] if len(shape) == 2 and all(isinstance(d, str) for d in shape) else None


def _cut(output: np.ndarray, shape: tuple[int | str, ...], axis: str, length: int) -> np.ndarray:
    """``output`` with its token axis (if it has one) cut back to the feed's ``length``."""
    return output[tuple(slice(0, length) if d == axis else slice(None) for d in shape)]


def describe(artifact: Artifact) -> dict[str, Any]:
    """Op histogram (OpenVINO node types, parameters and results excluded) and constant element count."""
    import openvino as ov

    model = ov.Core().read_model(str(artifact.model_path))
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in ("Parameter", "Result")]
    kinds = Counter(op.get_type_name() for op in ops)
    parameters = sum(int(np.prod(op.get_output_shape(0))) for op in ops if op.get_type_name() == "Constant")
    return {"ops": dict(kinds.most_common()), "parameters": parameters, "nodes": len(ops)}


RUNNER = OpenVinoRunner
