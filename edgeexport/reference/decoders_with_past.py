"""Reference models of the generation tasks: decoders that take and return their KV cache.

``causal-lm-with-past`` gives one :class:`~edgeexport.reference.model.ReferenceModel` (a merged
decoder: an empty past on the first step, so one graph serves prefill and decode);
``seq2seq-lm-with-past`` gives a :class:`ReferenceBundle` of an encoder and a decoder. Names
and shapes follow :mod:`edgeexport.generation_spec`.

The wrappers rebuild transformers cache objects (``DynamicCache``, ``EncoderDecoderCache``)
from the flat tensors, so the exported graph runs the model's own attention code. The encoder
wrapper gets the cross-attention key/values by running the decoder once on a dummy token over
zero-length caches, which fills the cross-attention cache; everything else of that pass is dead
code that export removes. Caches are full-attention layers: sliding-window caches are not supported.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache

from edgeexport.errors import ArtifactError
from edgeexport.generation_spec import (TOKENIZER_FILE, GenerationConfig, GenerationSpec, TokenIds, cross_names,
                                        past_names, present_names)
from edgeexport.reference.model import Asset, CachedTextSource, ReferenceModel, TextSource
from edgeexport.zoo import InputSpec, ModelSpec

logger = logging.getLogger(__name__)

# (example, alternate) sizes: the example case is a prefill (empty past), the alternate a decode step.
AXIS_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "tiny": {"batch": (2, 3), "sequence": (4, 1), "past_sequence": (0, 6), "encoder_sequence": (8, 13)},
    "full": {"batch": (1, 2), "sequence": (16, 1), "past_sequence": (0, 32), "encoder_sequence": (32, 16)},
}
TOTAL = "past_sequence+sequence"
# transformers generation settings that change the tokens but that edgeexport.generator does not apply,
# with the value that leaves them off.
UNAPPLIED_SETTINGS = {"num_beam_groups": 1, "diversity_penalty": 0.0, "typical_p": 1.0, "min_p": None,
                      "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0,
                      "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None,
                      "suppress_tokens": None, "begin_suppress_tokens": None,
                      "exponential_decay_length_penalty": None, "constraints": None, "force_words_ids": None}
Layout = list[tuple[int, int, str]]  # per layer: heads, head_dim, dtype


@dataclass
class ReferenceBundle:
    """Reference components exported together as one bundle (:mod:`edgeexport.bundle`), by role."""

    name: str
    task: str
    preset: str | None
    source: str
    architecture: str
    components: dict[str, ReferenceModel]
    details: dict[str, Any] = field(default_factory=dict)  # more of the manifest's model block (ReferenceModel's)


class CausalLMWithPast(torch.nn.Module):
    """``forward(input_ids, attention_mask, [position_ids], *past)`` -> ``(logits, *present)``."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.cache_kwarg = _cache_kwarg(model)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = len(self.input_names)
        cache = _seeded_cache(tensors[count:])
        outputs = self.model(**dict(zip(self.input_names, tensors[:count])), **{self.cache_kwarg: cache},
                             use_cache=True, return_dict=True)
        return (outputs["logits"], *_flat(_returned_cache(outputs)))


class Seq2SeqEncoderWithCross(torch.nn.Module):
    """``forward(input_ids, attention_mask)`` -> the cross-attention key/values of every decoder layer."""

    def __init__(self, model: torch.nn.Module, self_layout: Layout, cross_layout: Layout) -> None:
        super().__init__()
        self.model = model
        self.layouts = (self_layout, cross_layout)
        self.cache_kwarg = _cache_kwarg(model.get_decoder())

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        input_ids, attention_mask = tensors
        hidden = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)[0]
        cache = EncoderDecoderCache(*(_seeded_cache(_empty_past(hidden, layout)) for layout in self.layouts))
        self.model.get_decoder()(input_ids=input_ids[:, :1], encoder_hidden_states=hidden,
                                 encoder_attention_mask=attention_mask, **{self.cache_kwarg: cache}, use_cache=True)
        return tuple(_flat(cache.cross_attention_cache))


class Seq2SeqDecoderWithPast(torch.nn.Module):
    """``forward(input_ids, encoder_attention_mask, *past, *cross)`` -> ``(logits, *present)``."""

    def __init__(self, model: torch.nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers
        self.cache_kwarg = _cache_kwarg(model)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        input_ids, encoder_attention_mask = tensors[:2]
        past, cross = tensors[2:2 + 2 * self.layers], tensors[2 + 2 * self.layers:]
        cache = EncoderDecoderCache(_seeded_cache(past), _seeded_cache(cross))
        # The decoder reads only the batch size, length and dtype of the encoder states once the
        # cross-attention cache is filled; a slice of the first cross key carries exactly those.
        stand_in = cross[0][:, 0]
        outputs = self.model(attention_mask=encoder_attention_mask, decoder_input_ids=input_ids,
                             encoder_outputs=(stand_in,), **{self.cache_kwarg: cache}, use_cache=True, return_dict=True)
        return (outputs["logits"], *_flat(_returned_cache(outputs).self_attention_cache))


def with_past_reference(spec: ModelSpec, model: torch.nn.Module, *, task: str, preset: str | None, name: str,
                        source: str, tokenizer: Asset | None = None) -> ReferenceModel | ReferenceBundle:
    """The reference of a generation task: a merged decoder, or an encoder + decoder bundle.

    Args:
        spec: The model's zoo (or generic) spec, for its tolerance and vocab size.
        model: The transformers model with its LM head.
        task: ``causal-lm-with-past`` or ``seq2seq-lm-with-past``.
        preset: Zoo preset (sizes of the golden cases); None for loaded models.
        name: Model name for the manifest.
        source: Where the model came from (manifest ``model.source``).
        tokenizer: A ``tokenizer.json`` (or its content) to put into the decoder artifact.
    """
    model.eval()
    common = {"name": name, "task": task, "preset": preset, "source": source,
              "architecture": type(model).__name__, "tolerance": spec.tolerance,
              "vocab_size": spec.vocab_size(model.config)}
    sizes = AXIS_SIZES[preset or "full"]
    tokens, config = token_ids(model), generation_config(model)
    assets = {TOKENIZER_FILE: tokenizer} if tokenizer is not None else {}
    text = TextSource(tokenizer, pad=tokens.pad) if tokenizer is not None else None
    if task == "causal-lm-with-past":
        return _in_sentences(_causal(model, _layout(model), tokens, config, sizes, assets, common), text)
    self_layout, cross_layout = _seq2seq_layout(model)
    encoder = _seq2seq_encoder(model, self_layout, cross_layout, tokens, sizes, common, text)
    decoder = _seq2seq_decoder(model, self_layout, cross_layout, tokens, config, sizes, assets, common)
    if tokens.first_decoder_token is not None:
        decoder = _in_sentences(decoder, text and replace(text, decoder_start=tokens.first_decoder_token), encoder)
    return ReferenceBundle(name=name, task=task, preset=preset, source=source, architecture=common["architecture"],
                           components={"encoder": encoder, "decoder": decoder})


def token_ids(model: torch.nn.Module) -> TokenIds:
    """Special token ids from the model's generation config (falling back to its config)."""
    def pick(key: str) -> Any:
        value = getattr(model.generation_config, key, None)
        return value if value is not None else getattr(model.config, key, None)

    eos = pick("eos_token_id")
    eos = () if eos is None else tuple(int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos]))
    singles = {field: pick(f"{field}_token_id") for field in ("bos", "pad", "decoder_start", "forced_bos", "forced_eos")}
    return TokenIds(eos=eos, **{k: None if v is None else int(v) for k, v in singles.items()})


def generation_config(model: torch.nn.Module) -> GenerationConfig:
    """The model's generation settings that :mod:`edgeexport.generator` applies, as ``generate()`` reads
    them from its generation config; logs those it sets that are left out (not applied there, or
    values the generator refuses, which then keep their defaults)."""
    settings = model.generation_config
    left_out = [name for name, off in UNAPPLIED_SETTINGS.items() if getattr(settings, name, off) not in (off, None)]
    kept = {}
    for name in (f.name for f in dataclasses.fields(GenerationConfig)):
        value = getattr(settings, name, None)
        if value is None:
            continue
        try:
            GenerationConfig.from_dict({name: value})
        except ArtifactError:
            left_out.append(f"{name}={value!r}")
        else:
            kept[name] = value
    if left_out:
        logger.warning("generation config settings left out of the artifact (its generation loop does not apply "
                       "them): %s", ", ".join(left_out))
    return GenerationConfig.from_dict(kept)


def _causal(model: torch.nn.Module, layout: Layout, tokens: TokenIds, config: GenerationConfig,
            sizes: dict[str, tuple[int, int]], assets: dict[str, Asset], common: dict[str, Any]) -> ReferenceModel:
    inputs = [InputSpec("input_ids", ("batch", "sequence"), "ids"), InputSpec("attention_mask", ("batch", TOTAL), "mask")]
    if "position_ids" in inspect.signature(model.forward).parameters:
        inputs.append(InputSpec("position_ids", ("batch", "sequence"), "positions"))
    layers = len(layout)
    inputs += _cache_inputs(past_names(layers), layout, "past_sequence")
    module = CausalLMWithPast(model, [i.name for i in inputs[:len(inputs) - 2 * layers]]).eval()
    generation = GenerationSpec(role="decoder", past=tuple(past_names(layers)), present=tuple(present_names(layers)),
                                tokens=tokens, tokenizer=TOKENIZER_FILE if assets else None, config=config)
    return _component(module, inputs, ["logits", *present_names(layers)], sizes, generation, assets, common,
                      output_axes={"logits": {0: "batch", 1: "sequence"},
                                   **{n: {0: "batch", 2: TOTAL} for n in present_names(layers)}})


def _seq2seq_encoder(model: torch.nn.Module, self_layout: Layout, cross_layout: Layout, tokens: TokenIds,
                     sizes: dict[str, tuple[int, int]], common: dict[str, Any],
                     sources: TextSource | None) -> ReferenceModel:
    """The encoder component, its golden sources the built-in sentences where the model has a tokenizer."""
    layers = len(cross_layout)
    inputs = [InputSpec("input_ids", ("batch", "encoder_sequence"), "ids"),
              InputSpec("attention_mask", ("batch", "encoder_sequence"), "mask")]
    generation = GenerationSpec(role="encoder", cross=tuple(cross_names(layers)), tokens=tokens)
    return _component(Seq2SeqEncoderWithCross(model, self_layout, cross_layout).eval(), inputs, cross_names(layers),
                      sizes, generation, {}, common, input_source=sources,
                      output_axes={n: {0: "batch", 2: "encoder_sequence"} for n in cross_names(layers)})


def _seq2seq_decoder(model: torch.nn.Module, self_layout: Layout, cross_layout: Layout, tokens: TokenIds,
                     config: GenerationConfig, sizes: dict[str, tuple[int, int]], assets: dict[str, Asset],
                     common: dict[str, Any]) -> ReferenceModel:
    layers = len(self_layout)
    inputs = [InputSpec("input_ids", ("batch", "sequence"), "ids"),
              InputSpec("encoder_attention_mask", ("batch", "encoder_sequence"), "mask"),
              *_cache_inputs(past_names(layers), self_layout, "past_sequence"),
              *_cache_inputs(cross_names(layers), cross_layout, "encoder_sequence")]
    generation = GenerationSpec(role="decoder", past=tuple(past_names(layers)), present=tuple(present_names(layers)),
                                cross=tuple(cross_names(layers)), tokens=tokens,
                                tokenizer=TOKENIZER_FILE if assets else None, config=config)
    return _component(Seq2SeqDecoderWithPast(model, layers).eval(), inputs, ["logits", *present_names(layers)], sizes,
                      generation, assets, common,
                      output_axes={"logits": {0: "batch", 1: "sequence"},
                                   **{n: {0: "batch", 2: TOTAL} for n in present_names(layers)}})


def _in_sentences(decoder: ReferenceModel, text: TextSource | None,
                  encoder: ReferenceModel | None = None) -> ReferenceModel:
    """The decoder with golden inputs that are a decode step in the middle of sentences (:class:`CachedTextSource`:
    its cache its own on their first tokens, an encoder-decoder's cross-attention the ``encoder``'s on the sources),
    where it has a tokenizer (``text``)."""
    if text is None:
        return decoder
    spec = GenerationSpec.from_dict(decoder.generation)
    source = CachedTextSource(text, decoder.run, spec.past, spec.present, encoder.run if encoder else None)
    return replace(decoder, input_source=source)


def _component(module: torch.nn.Module, inputs: list[InputSpec], output_names: list[str],
               sizes: dict[str, tuple[int, int]], generation: GenerationSpec, assets: dict[str, Asset],
               common: dict[str, Any], *, output_axes: dict[str, dict[int, str]],
               input_source: TextSource | None = None) -> ReferenceModel:
    used = {term for spec in inputs for dim in spec.dims if isinstance(dim, str) for term in dim.split("+")}
    return ReferenceModel(module=module, inputs=inputs, output_names=output_names,
                          sizes={axis: size for axis, size in sizes.items() if axis in used},
                          logits_outputs=["logits"] if "logits" in output_names else [], output_axes=output_axes,
                          generation=generation.to_dict(), assets=assets, input_source=input_source, **common)


def _cache_inputs(names: list[str], layout: Layout, axis: str) -> list[InputSpec]:
    return [InputSpec(name, ("batch", heads, axis, head_dim), "float", dtype)
            for name, (heads, head_dim, dtype) in zip(names, (entry for entry in layout for _ in range(2)))]


def _layout(model: torch.nn.Module) -> Layout:
    """Heads, head dim and dtype of every cache layer, read from one short forward pass."""
    ids = torch.zeros((1, 2), dtype=torch.long)
    with torch.inference_mode():
        outputs = model(input_ids=ids, use_cache=True, return_dict=True)
    return _shapes(_returned_cache(outputs).layers)


def _seq2seq_layout(model: torch.nn.Module) -> tuple[Layout, Layout]:
    ids = torch.zeros((1, 2), dtype=torch.long)
    with torch.inference_mode():
        cache = _returned_cache(model(input_ids=ids, decoder_input_ids=ids[:, :1], use_cache=True, return_dict=True))
    return _shapes(cache.self_attention_cache.layers), _shapes(cache.cross_attention_cache.layers)


def _shapes(layers: Iterable[Any]) -> Layout:
    return [(int(layer.keys.shape[1]), int(layer.keys.shape[3]), str(layer.keys.dtype).removeprefix("torch."))
            for layer in layers]


def _empty_past(like: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """Zero-length past key/values, ``(batch, heads, 0, head_dim)`` per tensor of every layer, batch as ``like``'s."""
    return [like.new_zeros((like.shape[0], heads, 0, head_dim), dtype=getattr(torch, dtype))
            for heads, head_dim, dtype in layout for _ in range(2)]


def _cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; use the name ``forward`` takes."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _returned_cache(outputs: Any) -> Any:
    return outputs["cache"] if "cache" in outputs else outputs["past_key_values"]


def _seeded_cache(flat: Sequence[torch.Tensor]) -> DynamicCache:
    """A cache whose layers hold the given past key/values themselves.

    ``DynamicCache(pairs)`` concatenates each past tensor onto an empty 1-D tensor: the values
    are the same, but the captured graph gains a Concat per tensor, and OpenVINO's PyTorch
    frontend cannot convert that ``aten::cat`` (GPT-2 with its cache then went through ONNX: full
    preset 71 s and 3.2 GB peak RSS to export, 32 s and 1.5 GB from PyTorch). Setting the layers'
    tensors leaves those concatenations dead, so tracing drops them.
    """
    pairs = list(zip(flat[0::2], flat[1::2]))
    cache = DynamicCache(pairs)
    for layer, (keys, values) in zip(cache.layers, pairs):
        layer.keys, layer.values = keys, values
    return cache


def _flat(cache: Any) -> list[torch.Tensor]:
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]
