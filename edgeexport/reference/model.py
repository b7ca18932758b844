"""A reference model ready for export: a flat-I/O wrapper, its input specs and an input generator."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeexport.errors import InputSpecError
from edgeexport.manifest import TensorSpec, Tolerance, axis_size
from edgeexport.processing import Processing, audio_values, image_inputs, position_ids, wav_samples
from edgeexport.zoo import InputSpec

CALIBRATION_SEED = 500  # away from the golden (0, 1) and fresh (1000+) seeds

Asset = Path | bytes  # a file copied into the artifact, or the content written there


class ExportWrapper(torch.nn.Module):
    """Calls a transformers model with named inputs, returns the task's outputs as a flat tuple."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 forward_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.forward_kwargs = dict(forward_kwargs or {})

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(**dict(zip(self.input_names, tensors)), **self.forward_kwargs, return_dict=True)
        return tuple(outputs[name] for name in self.output_names)


class ModuleWrapper(torch.nn.Module):
    """Wraps a user module so it takes positional inputs and returns a flat tuple of tensors."""

    def __init__(self, module: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.input_names = list(input_names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self.module(**dict(zip(self.input_names, tensors))))[1]


def flatten_outputs(result: Any) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """Names and tensors of a module's result: a tensor, a tuple/list or a dict of tensors."""
    if isinstance(result, torch.Tensor):
        return ["output"], (result,)
    if isinstance(result, Mapping):
        items = [(k, v) for k, v in result.items() if isinstance(v, torch.Tensor)]
        return [k for k, _ in items], tuple(v for _, v in items)
    if isinstance(result, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in result):
        return [f"output_{i}" for i in range(len(result))], tuple(result)
    raise InputSpecError(f"the module returned {type(result).__name__}; return a tensor, a tuple or a dict of tensors")


@dataclass(frozen=True)
class TextSource:
    """Realistic token ids: the built-in sentences (:mod:`edgeexport.reference.sentences`), or for ``kind``
    ``questions`` the built-in (question, context) pairs (:mod:`edgeexport.reference.questions`), through a
    model's own tokenizer, with its special tokens, the texts' natural lengths and right padding. Right for decoders
    too: a left-padded row's padding attends to nothing, so its logits there are whatever a runtime makes of an
    all-masked row (the tiny GPT-2's differ by 0.53 spreads between PyTorch and onnxruntime); the language models'
    evaluation reads only real tokens and runs them left-padded (:mod:`edgeexport.validation.sequence_measures`).
    An encoder-decoder's source (``decoder_start`` set) also gives its teacher-forced ``decoder_input_ids``: that
    token followed by a target, another sentence of the split (:meth:`decoder_ids`), padded with ``pad`` (the model's
    pad id; the tokenizer's, else 0, where None)."""

    tokenizer: Asset
    kind: str = "sentences"
    decoder_start: int | None = None
    pad: int | None = None

    def load(self) -> Any:
        """A fresh ``tokenizers.Tokenizer`` (callers change its padding and truncation)."""
        from tokenizers import Tokenizer

        if isinstance(self.tokenizer, bytes):
            return Tokenizer.from_str(self.tokenizer.decode())
        return Tokenizer.from_file(str(self.tokenizer))

    def texts(self, split: str) -> list[str] | list[tuple[str, str]]:
        """The sentences of ``split``, or its (question, context) pairs."""
        if self.kind == "questions":
            from edgeexport.reference.questions import split as questions

            return [(q.question, q.context) for q in questions(split)]
        from edgeexport.reference.sentences import split as sentences

        return [sentence for sentence, _ in sentences(split)]

    def encode(self, split: str, drawn: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` and ``position_ids`` of as many texts of ``split`` as
        ``drawn``'s ``input_ids`` has rows (chosen by ``seed``), each padded to its length and truncated to it, a row
        ``r`` to ``2 * r`` tokens less (at least 2), so that texts longer than a short case still leave padding, as
        random inputs' masks do."""
        batch, length = drawn["input_ids"].shape
        tokenizer = self._padded(length)
        pool = self.texts(split)
        encodings = []
        for row in range(batch):
            tokenizer.enable_truncation(max(2, length - 2 * row))
            encodings.append(tokenizer.encode(*_parts(pool[(seed * batch + row) % len(pool)])))
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        encoded = {"input_ids": np.array([e.ids for e in encodings], np.int64), "attention_mask": mask,
                   "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
                   "position_ids": position_ids(mask)}
        if self.decoder_start is not None and "decoder_input_ids" in drawn:
            encoded["decoder_input_ids"] = self.decoder_ids(split, drawn["decoder_input_ids"].shape, seed)
        return encoded

    def decoder_ids(self, split: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
        """``(batch, length)`` decoder ids of an encoder-decoder, as its labels shifted right: :attr:`decoder_start`,
        then the sentence half the split away from each row's source (a target that is not the source) with its
        special tokens, its first tokens as far as the length goes (not truncated by the tokenizer, which would keep
        the end-of-sequence token in a window this short), and padding only after a sentence shorter than that (the
        decoder has no mask: padding is tokens the model reads)."""
        batch, length = shape
        tokenizer = self._padded(length - 1)
        tokenizer.no_truncation()
        pool = self.texts(split)
        rows = []
        for row in range(batch):
            target = tokenizer.encode(*_parts(pool[(seed * batch + row + len(pool) // 2) % len(pool)]))
            rows.append([self.decoder_start, *target.ids[:length - 1]])
        return np.array(rows, np.int64)

    def _padded(self, length: int) -> Any:
        """A fresh tokenizer that pads to ``length`` with :attr:`pad` (or its own pad token)."""
        tokenizer = self.load()
        pad = tokenizer.padding or {}
        pad_id = self.pad if self.pad is not None else pad.get("pad_id", 0)
        tokenizer.enable_padding(length=length, pad_id=pad_id,
                                 pad_token=tokenizer.id_to_token(pad_id) or pad.get("pad_token", "[PAD]"))
        return tokenizer


Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]  # a reference component's numpy call


@dataclass(frozen=True)
class CachedTextSource:
    """Realistic inputs of a decoder with a cache: a decode step in the middle of real sentences. Each row is a
    sentence of the split through the tokenizer of ``text`` (an encoder-decoder's: its target after the decoder-start
    token, :meth:`TextSource.decoder_ids`, over the source sentence's cross-attention key/values from ``encoder``), as
    long as the step's past and new tokens together; the cache is what the decoder itself (``decoder``) gives for the
    first ``past`` tokens over an empty cache, and ``input_ids`` are the tokens after them. A causal decoder's prefill
    (no past) is right-padded as :class:`TextSource`'s rows are (row ``r`` ``2 * r`` tokens shorter), with the mask
    and position ids over the real tokens: left padding, as generation pads a batch, leaves padded positions
    attending to nothing, whose logits differ between runtimes (the language models' evaluation runs that, reading
    real tokens only). A step with a past keeps every row whole, so that its new tokens are real ones.
    ``past``/``present`` name the cache inputs and the decoder's outputs that fill them, in the same order."""

    text: TextSource
    decoder: Run
    past: tuple[str, ...]
    present: tuple[str, ...]
    encoder: Run | None = None
    kind: str = "sentences"

    def encode(self, split: str, drawn: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        """The step's inputs for the sizes of ``drawn`` (rows chosen by ``seed`` as :meth:`TextSource.encode`)."""
        batch, new = drawn["input_ids"].shape
        past = next(drawn[name] for name in self.past).shape[2]
        if self.encoder is not None:
            whole = self._seq2seq(split, drawn, past + new, seed)
        else:
            whole = self._causal(split, batch, past + new, seed, shorter=0 if past else 2)
        steps = [name for name in ("input_ids", "position_ids") if name in whole]  # inputs of the new tokens only
        cache = {name: drawn[name] for name in self.past}
        if past:
            prefix = {name: whole[name][:, :past] for name in (*steps, "attention_mask") if name in whole}
            empty = {name: value[:, :, :0] for name, value in cache.items()}
            filled = self.decoder({**drawn, **whole, **prefix, **empty})
            cache = {name: filled[output] for name, output in zip(self.past, self.present)}
        return {**whole, **cache, **{name: whole[name][:, past:] for name in steps}}

    def _causal(self, split: str, batch: int, total: int, seed: int, shorter: int) -> dict[str, np.ndarray]:
        """``total`` tokens a row, right-padded, row ``r`` ``shorter * r`` shorter but at least one token: ids, the
        mask and position ids over them."""
        tokenizer = self.text.load()
        tokenizer.no_padding()
        tokenizer.enable_truncation(total)
        pool = self.text.texts(split)
        ids, mask = np.zeros((batch, total), np.int64), np.zeros((batch, total), np.int64)
        for row in range(batch):
            tokens = tokenizer.encode(*_parts(pool[(seed * batch + row) % len(pool)])).ids
            tokens = tokens[:max(1, total - shorter * row)]
            ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
        return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}

    def _seq2seq(self, split: str, drawn: Mapping[str, np.ndarray], total: int, seed: int) -> dict[str, np.ndarray]:
        """``total`` decoder ids a row (the decoder-start token and a target) over its source's cross-attention
        key/values and mask."""
        assert self.encoder is not None  # only for an encoder-decoder
        batch, length = drawn["encoder_attention_mask"].shape
        sources = self.text.encode(split, {"input_ids": np.zeros((batch, length), np.int64)}, seed)
        cross = self.encoder({"input_ids": sources["input_ids"], "attention_mask": sources["attention_mask"]})
        return {"input_ids": self.text.decoder_ids(split, (batch, total), seed),
                "encoder_attention_mask": sources["attention_mask"], **cross}


def _parts(text: str | tuple[str, str]) -> tuple[str, ...]:
    """A sentence, or a (question, context) pair, as ``Tokenizer.encode``'s arguments."""
    return (text,) if isinstance(text, str) else text


@dataclass(frozen=True)
class ImageSource:
    """Realistic ``pixel_values``: the bundled photographs (:mod:`edgeexport.reference.media`) through the model's
    image processing (:func:`edgeexport.processing.image_inputs`), resized to the size asked for."""

    processing: Processing
    kind: str = "photographs"

    def encode(self, split: str, drawn: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        from edgeexport.reference.media import photographs

        batch, _, height, width = drawn["pixel_values"].shape
        pool, sized = photographs(split), replace(self.processing, image_size=[height, width])
        rows = [image_inputs(sized, pool[(seed * batch + row) % len(pool)])["pixel_values"][0] for row in range(batch)]
        return {"pixel_values": np.stack(rows)}


@dataclass(frozen=True)
class AudioSource:
    """Realistic ``input_values``: the bundled speech (:mod:`edgeexport.reference.media`), a window of each clip as
    long as asked for (centred; zero-padded when the clip is shorter), normalized as the feature extractor does."""

    processing: Processing
    kind: str = "speech"

    def encode(self, split: str, drawn: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        from edgeexport.reference.media import speech

        batch, length = drawn["input_values"].shape
        pool = speech(split)
        rows = [audio_values(self.processing, _window(wav_samples(self.processing, pool[(seed * batch + row) % len(pool)]),
                                                      length)) for row in range(batch)]
        return {"input_values": np.stack(rows)}


def _window(samples: np.ndarray, length: int) -> np.ndarray:
    """``length`` samples from the middle of ``samples``, zero-padded on both sides where it is shorter."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start:start + length]
    before = (length - len(samples)) // 2
    return np.pad(samples, (before, length - len(samples) - before))


InputSource = TextSource | CachedTextSource | ImageSource | AudioSource


@dataclass
class ReferenceModel:
    """Everything the exporters and validation need from the PyTorch side.

    ``module`` takes the inputs positionally in the order of ``inputs`` and returns a tuple in
    the order of ``output_names``. ``sizes`` holds the (example, alternate) size of every
    dynamic axis; golden cases are drawn at both. ``output_axes`` names dynamic output dims
    (``{output: {dim: axis}}``) where they cannot be found by comparing shape cases;
    ``generation`` is the manifest's generation block (:mod:`edgeexport.generation_spec`),
    ``assets`` maps artifact-relative paths to files copied into the artifact or their content (a tokenizer) and
    ``processing`` is the manifest's pre- and post-processing block (:mod:`edgeexport.processing`);
    ``fixed_shape_reason`` says why dims that could vary are fixed (the manifest's model block keeps it);
    ``details`` holds more entries of that block (a folder's ``weights_sha256``, a ``random_head``);
    ``input_source`` makes the inputs realistic instead of random: real sentences (or questions on a context)
    through a trained text encoder's tokenizer (:class:`TextSource`), photographs through an image model's processing (:class:`ImageSource`), speech
    for an audio model (:class:`AudioSource`).
    """

    name: str
    task: str
    preset: str | None
    source: str
    architecture: str
    module: torch.nn.Module
    inputs: list[InputSpec]
    output_names: list[str]
    sizes: dict[str, tuple[int, int]]
    tolerance: Tolerance
    logits_outputs: list[str] = field(default_factory=list)
    vocab_size: int = 2
    example_values: dict[str, np.ndarray] = field(default_factory=dict)
    output_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Asset] = field(default_factory=dict)
    processing: dict[str, Any] = field(default_factory=dict)
    fixed_shape_reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    input_source: InputSource | None = None

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {s.name: {i: d for i, d in enumerate(s.dims) if isinstance(d, str)} for s in self.inputs}

    def shape_cases(self) -> list[tuple[str, dict[str, int]]]:
        """The example sizes and one alternate case that moves every dynamic axis at once."""
        example = {axis: sizes[0] for axis, sizes in self.sizes.items()}
        alternate = {axis: sizes[1] for axis, sizes in self.sizes.items()}
        cases = [("example", example)]
        if alternate != example:
            cases.append(("alternate", alternate))
        return cases

    def make_inputs(self, sizes: Mapping[str, int] | None = None, *, seed: int = 0,
                    split: str = "golden") -> dict[str, np.ndarray]:
        """Inputs with the given dynamic-axis sizes (example sizes by default), seeded: examples of ``split`` from the
        reference's :attr:`input_source` where it has one, else random values."""
        axes = {axis: s[0] for axis, s in self.sizes.items()} | dict(sizes or {})
        rng = np.random.default_rng(seed)
        drawn = {spec.name: self._draw(spec, axes, rng) for spec in self.inputs}
        if self.input_source is not None:
            encoded = self.input_source.encode(split, drawn, seed)
            drawn.update({name: value.astype(drawn[name].dtype) for name, value in encoded.items() if name in drawn})
        return drawn

    def calibration_inputs(self, count: int, sizes: Mapping[str, int] | None = None) -> list[dict[str, np.ndarray]]:
        """``count`` seeded inputs for quantization calibration (example sizes by default), none equal
        to a golden or fresh case (references with a source: its calibration split)."""
        return [self.make_inputs(sizes, seed=CALIBRATION_SEED + i, split="calibration") for i in range(count)]

    def _draw(self, spec: InputSpec, axes: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
        shape = tuple(axis_size(d, axes) if isinstance(d, str) else d for d in spec.dims)
        if spec.kind == "ids":
            return rng.integers(0, self.vocab_size, size=shape).astype(spec.dtype)
        if spec.kind == "mask":
            mask = np.ones(shape, dtype=spec.dtype)
            for row in range(1, shape[0]):  # later rows get right padding, so masks are exercised
                mask[row, max(1, shape[1] - 2 * row):] = 0
            return mask
        if spec.kind == "zeros":
            return np.zeros(shape, dtype=spec.dtype)
        if spec.kind == "positions":
            return np.broadcast_to(np.arange(shape[-1], dtype=spec.dtype), shape).copy()
        if spec.kind == "sample":
            low, high = self.example_values[spec.name].min(), self.example_values[spec.name].max()
            if np.issubdtype(np.dtype(spec.dtype), np.integer):
                return rng.integers(low, high + 1, size=shape).astype(spec.dtype)
            if spec.dtype == "bool":
                return rng.integers(0, 2, size=shape).astype(bool)
        return rng.standard_normal(shape).astype(spec.dtype)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """PyTorch eager outputs for numpy inputs."""
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names]
        with torch.inference_mode():
            outputs = self.module(*tensors)
        return {name: out.detach().cpu().numpy() for name, out in zip(self.output_names, outputs)}

    def input_tensor_specs(self) -> list[TensorSpec]:
        return [TensorSpec(s.name, s.dtype, s.dims) for s in self.inputs]

    def output_tensor_specs(self, cases: Sequence[tuple[Mapping[str, int], Mapping[str, np.ndarray]]]) -> list[TensorSpec]:
        """Output specs with dynamic dims found by comparing outputs of the shape cases.

        A dim that changes between cases is named by ``output_axes``, else after the input axis
        whose size it equals in every case, else ``<output>_dim<i>``.
        """
        specs = []
        for name in self.output_names:
            shapes = [outputs[name].shape for _, outputs in cases]
            dims: list[int | str] = []
            declared = self.output_axes.get(name, {})
            for i, size in enumerate(shapes[0]):
                if i in declared:
                    dims.append(declared[i])
                    continue
                if all(s[i] == size for s in shapes):
                    dims.append(int(size))
                    continue
                axis = next((a for a in self.sizes if all(axes[a] == s[i] for (axes, _), s in zip(cases, shapes))), None)
                dims.append(axis or f"{name}_dim{i}")
            specs.append(TensorSpec(name, str(cases[0][1][name].dtype), tuple(dims)))
        return specs
