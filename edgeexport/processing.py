"""Task pre- and post-processing in numpy: raw text, images and audio in, meaning out.

Post-processing decodes each task head's outputs the way transformers' own post-processors do,
so a device gets the same answer without torch or transformers: classification scores and
top-k labels (sequence, image, audio), one label per token, the best answer span, DETR boxes
above a score threshold (``DetrImageProcessor.post_process_object_detection`` without
rescaling), Mask2Former semantic maps (``post_process_semantic_segmentation`` at the mask
resolution, not resized to 384x384), depth maps, and CTC greedy transcripts
(``Wav2Vec2CTCTokenizer.decode`` of the argmax ids). Pre-processing turns text (the artifact's
``tokenizers`` file), an image (Pillow: RGB, bilinear resize, rescale, normalize, like
transformers' PIL image processors) or a 16-bit PCM WAV file (``wave``; zero-mean unit-variance
like ``Wav2Vec2FeatureExtractor``) into the model's inputs. transformers' processors return or
take torch tensors, which a device does not have; these are the same formulas on numpy arrays,
and ``tests/test_processing.py`` checks them against transformers on the same data.

The manifest's optional ``processing`` block (:class:`Processing`) carries what this needs from
the source model: class names in index order, the CTC vocabulary, blank id and word delimiter,
the tokenizer file, and the image size, mean and std or the audio sampling rate (from the model
folder's ``preprocessor_config.json`` when it has one). Like :mod:`edgeexport.generation_spec`, this
module imports neither torch nor a runtime (the :mod:`edgeexport.reference` package imports
torch, so it does not live there).
"""

from __future__ import annotations

import wave
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.errors import ArtifactError, InputSpecError, MissingBackendError, UsageError

if TYPE_CHECKING:
    from edgeexport.artifact import Artifact
    from edgeexport.manifest import Manifest

# Tasks whose outputs index the config's id2label classes.
CLASSIFICATION_TASKS = frozenset({"sequence-classification", "image-classification", "audio-classification"})
LABELLED_TASKS = frozenset({"sequence-classification", "token-classification", "image-classification",
                            "object-detection", "segmentation", "audio-classification"})
QA_MAX_ANSWER_TOKENS = 30  # transformers' question-answering pipeline default (max_answer_len=15 words)
# transformers' IMAGENET_DEFAULT_MEAN/STD, for sources without a preprocessor_config.json (the zoo).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLING_RATE = 16000


@dataclass(frozen=True)
class Processing:
    """The manifest's ``processing`` block.

    Attributes:
        labels: Class names in index order (CTC: the vocabulary); empty when the source had none,
            and classes then show as their index.
        blank: CTC blank (pad) token id.
        word_delimiter: CTC token that separates words (``|`` for Wav2Vec2), printed as a space.
        tokenizer: Artifact-relative path of the ``tokenizers`` JSON file of text models, if copied.
        max_length: Longest text input in tokens; longer texts are truncated (a sentence-transformers
            folder's ``max_seq_length``). None: the tokenizer file's own truncation.
        image_size: (height, width) images are resized to.
        image_mean, image_std: Per-channel normalization after rescaling to 0..1.
        sampling_rate: Audio samples per second the model expects.
        normalize_audio: Zero-mean unit-variance normalization of each waveform.
    """

    labels: list[str] = field(default_factory=list)
    blank: int | None = None
    word_delimiter: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    image_size: list[int] = field(default_factory=list)
    image_mean: list[float] = field(default_factory=list)
    image_std: list[float] = field(default_factory=list)
    sampling_rate: int | None = None
    normalize_audio: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Processing:
        """Parse a manifest block; raise :class:`ArtifactError` naming what is malformed."""
        processing = cls(labels=_typed(data, "labels", list, str), blank=_typed(data, "blank", int),
                         word_delimiter=_typed(data, "word_delimiter", str), tokenizer=_typed(data, "tokenizer", str),
                         max_length=_typed(data, "max_length", int),
                         image_size=_typed(data, "image_size", list, int),
                         image_mean=_typed(data, "image_mean", list, (int, float)),
                         image_std=_typed(data, "image_std", list, (int, float)),
                         sampling_rate=_typed(data, "sampling_rate", int),
                         normalize_audio=_typed(data, "normalize_audio", bool))
        if processing.image_size and not (len(processing.image_size) == 2 and
                                          len(processing.image_mean) == len(processing.image_std) == 3):
            raise ArtifactError("manifest processing needs image_size [height, width] and 3 image_mean and image_std "
                                "values; re-run convert")
        return processing

    @classmethod
    def of(cls, manifest: Manifest) -> Processing:
        """The processing of an artifact (empty for artifacts converted before the block existed)."""
        return cls.from_dict(manifest.processing)

    def summary(self) -> str:
        """One line for ``edgeexport inspect``."""
        shown = ", ".join(self.labels[:5]) + (", ..." if len(self.labels) > 5 else "")
        parts = [f"{len(self.labels)} labels ({shown})" if self.labels else "",
                 f"blank {self.blank}" if self.blank is not None else "",
                 f"tokenizer {self.tokenizer}{f' (at most {self.max_length} tokens)' if self.max_length else ''}"
                 if self.tokenizer else "",
                 f"images {'x'.join(map(str, self.image_size))}, mean {self.image_mean}, std {self.image_std}"
                 if self.image_size else "",
                 f"audio {self.sampling_rate} Hz{', normalized' if self.normalize_audio else ''}"
                 if self.sampling_rate else ""]
        return "; ".join(part for part in parts if part)

    def accepted(self) -> str:
        """The ``predict`` inputs the artifact takes, for a message: ``--text or --inputs FILE.npz`` (a tokenizer's
        text, an image size's images, a sampling rate's audio, and always arrays)."""
        flags = [flag for flag, taken in (("--text", self.tokenizer), ("--image", self.image_size),
                                          ("--audio", self.sampling_rate)) if taken]
        return ", ".join(flags) + (" or " if flags else "") + "--inputs FILE.npz"

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)


ITEM_NAMES = {str: "strings", int: "integers"}


def _typed(data: Mapping[str, Any], key: str, kind: type, item: type | tuple[type, ...] | None = None) -> Any:
    value = data.get(key, [] if kind is list else None)
    valid = value is None or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
    if valid and item is not None:
        valid = all(isinstance(v, item) and not isinstance(v, bool) for v in value)
    if not valid:
        expected = f"a list of {ITEM_NAMES.get(item, 'numbers')}" if item else f"a {kind.__name__}"
        raise ArtifactError(f"manifest processing.{key} must be {expected}; re-run convert")
    return value


def load_tokenizer(artifact: Artifact, relative: str) -> Any:
    """The ``tokenizers.Tokenizer`` saved in ``artifact`` at ``relative`` (a path the manifest names)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingBackendError("reading the artifact's tokenizer needs the tokenizers package; install it with: "
                                  "pip install tokenizers") from None
    return Tokenizer.from_file(str(artifact.file(relative)))


def text_inputs(processing: Processing, artifact: Artifact, text: str, pair: str | None = None) -> dict[str, Any]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` and ``position_ids`` (batch 1) from the artifact's
    tokenizer; with a ``pair`` (a question's context) also the context, its token mask and character offsets, for
    :func:`decode`."""
    if processing.tokenizer is None:
        raise InputSpecError("the artifact has no tokenizer (its source folder had no tokenizer.json); pass token "
                             "ids with --inputs FILE.npz")
    encoding = load_tokenizer(artifact, processing.tokenizer).encode(text, pair)
    encoded: dict[str, Any] = {"input_ids": np.array([encoding.ids], dtype=np.int64),
                               "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                               "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
    encoded["position_ids"] = position_ids(encoded["attention_mask"])
    if pair is not None:  # where the context's tokens are, and their character offsets in it (for answers)
        encoded.update(context=pair, context_mask=np.array([[i == 1 for i in encoding.sequence_ids]]),
                       context_offsets=np.array([encoding.offsets]))
    return encoded


def text_batch(processing: Processing, artifact: Artifact, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` and ``position_ids`` of several texts with the artifact's
    tokenizer (:func:`encode_texts`)."""
    if processing.tokenizer is None:
        raise InputSpecError("the artifact has no tokenizer (its source folder had no tokenizer.json); pass token "
                             "ids with --inputs FILE.npz")
    return encode_texts(load_tokenizer(artifact, processing.tokenizer), texts, processing.max_length)


def encode_texts(tokenizer: Any, texts: Sequence[str] | Sequence[tuple[str, str]],
                 max_length: int | None) -> dict[str, np.ndarray]:
    """Several texts, or (question, context) pairs, through a ``tokenizers.Tokenizer``: each truncated to
    ``max_length`` (when given), all right-padded to the longest, as sentence-transformers tokenizes a batch, with
    position ids over the real tokens. Pairs also give ``context_mask``: the context's tokens, where an answer span
    may lie."""
    if max_length:
        tokenizer.enable_truncation(max_length)
    pad = tokenizer.padding or {}
    tokenizer.enable_padding(pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]"))
    encodings = tokenizer.encode_batch(list(texts))
    encoded = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
               "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
               "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
    encoded["position_ids"] = position_ids(encoded["attention_mask"])
    if texts and not isinstance(texts[0], str):
        encoded["context_mask"] = np.array([[i == 1 for i in e.sequence_ids] for e in encodings])
    return encoded


def position_ids(mask: np.ndarray) -> np.ndarray:
    """Position ids as transformers derives them from a (left-padded) attention mask: 0, 1, ... over real tokens."""
    return np.where(mask == 0, 0, np.cumsum(mask, axis=-1) - 1).astype(np.int64)


def cosine_similarities(embeddings: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of ``(count, dim)`` embeddings, in float64."""
    unit = embeddings.astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
    return unit @ unit.T


def image_inputs(processing: Processing, path: str | Path) -> dict[str, np.ndarray]:
    """``pixel_values`` (1, 3, height, width): RGB, bilinear resize, 0..1, normalized per channel."""
    if not processing.image_size:
        raise InputSpecError(f"the artifact does not take images; pass {processing.accepted()}")
    from PIL import Image, UnidentifiedImageError
    height, width = processing.image_size
    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputSpecError(f"cannot read image {str(path)!r} ({exc}); pass a PNG or JPEG file") from None
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(processing.image_mean, np.float32)) / np.array(processing.image_std, np.float32)
    # Contiguous CHW: astype would keep the HWC strides, and torch.export records them as a dim order Core ML refuses.
    return {"pixel_values": np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)}


def audio_inputs(processing: Processing, path: str | Path) -> dict[str, np.ndarray]:
    """``input_values`` (1, samples) from a mono or multi-channel 16-bit PCM WAV at the model's rate."""
    return {"input_values": audio_values(processing, wav_samples(processing, path))[None]}


def wav_samples(processing: Processing, path: str | Path) -> np.ndarray:
    """The samples of a mono or multi-channel 16-bit PCM WAV at the model's rate, channels averaged, in -1..1."""
    if processing.sampling_rate is None:
        raise InputSpecError(f"the artifact does not take audio; pass {processing.accepted()}")
    try:
        with wave.open(str(path), "rb") as audio:
            rate, channels, width = audio.getframerate(), audio.getnchannels(), audio.getsampwidth()
            frames = audio.readframes(audio.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise InputSpecError(f"cannot read WAV file {str(path)!r} ({exc}); pass a 16-bit PCM .wav") from None
    if width != 2:
        raise InputSpecError(f"{str(path)!r} has {8 * width}-bit samples; convert it to 16-bit PCM WAV")
    if rate != processing.sampling_rate:
        raise InputSpecError(f"{str(path)!r} is sampled at {rate} Hz, the model expects {processing.sampling_rate} "
                             f"Hz; resample it (e.g. ffmpeg -i IN -ar {processing.sampling_rate} OUT.wav)")
    return np.frombuffer(frames, dtype="<i2").reshape(-1, channels).mean(axis=1) / 32768.0


def audio_values(processing: Processing, samples: np.ndarray) -> np.ndarray:
    """A waveform as the model takes it: float32, zero-mean unit-variance where the processing normalizes."""
    if processing.normalize_audio:
        samples = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    return samples.astype(np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """scipy's softmax in float64 (scores are reported, not fed back)."""
    import scipy.special  # here, not at the top: importing it takes longer than convert's argument checks

    return scipy.special.softmax(logits.astype(np.float64), axis=axis)


def top_classes(logits: np.ndarray, processing: Processing, k: int = 5) -> list[list[dict[str, Any]]]:
    """Per row of ``(batch, classes)`` logits: the ``k`` best classes with softmax scores, best first."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [[{"label": processing.label(int(i)), "index": int(i), "score": float(row[i])} for i in best]
            for row, best in zip(probabilities, order)]


def token_classes(logits: np.ndarray, processing: Processing) -> list[list[str]]:
    """Per row of ``(batch, sequence, classes)`` logits: the best label of every token."""
    return [[processing.label(int(i)) for i in row] for row in logits.argmax(axis=-1)]


def answer_spans(start_logits: np.ndarray, end_logits: np.ndarray, *, max_tokens: int = QA_MAX_ANSWER_TOKENS,
                 allowed: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per row: the span ``start <= end < start + max_tokens`` with the highest start x end probability.

    ``allowed`` (batch, sequence) marks the tokens a span may cover (the context's), as the
    question-answering pipeline masks the question and special tokens.
    """
    return best_spans(softmax(start_logits), softmax(end_logits), max_tokens=max_tokens, allowed=allowed)


def best_spans(start_probabilities: np.ndarray, end_probabilities: np.ndarray, *,
               max_tokens: int = QA_MAX_ANSWER_TOKENS, allowed: np.ndarray | None = None) -> list[dict[str, Any]]:
    """:func:`answer_spans` from the start and end probabilities (batch, sequence) rather than their logits."""
    spans = []
    masks = allowed if allowed is not None else np.ones(start_probabilities.shape, dtype=bool)
    for start, end, mask in zip(start_probabilities, end_probabilities, masks):
        scores = np.triu(np.tril(np.outer(start, end), max_tokens - 1))  # end >= start, end - start < max_tokens
        scores *= np.outer(mask, mask)
        best = int(scores.argmax())
        first, last = divmod(best, scores.shape[1])
        spans.append({"start": first, "end": last, "score": float(scores[first, last])})
    return spans


def detections(logits: np.ndarray, boxes: np.ndarray, processing: Processing, *,
               threshold: float = 0.5) -> list[list[dict[str, Any]]]:
    """DETR outputs -> per image, the queries whose best real class scores above ``threshold``.

    The last class is "no object". Boxes are ``(x0, y0, x1, y1)`` relative to the image (0..1);
    multiply by its width and height for pixels.
    """
    probabilities = softmax(logits)[..., :-1]
    scores, labels = probabilities.max(axis=-1), probabilities.argmax(axis=-1)
    return [[{"label": processing.label(int(label)), "index": int(label), "score": float(score),
              "box": [float(v) for v in box]}
             for score, label, box in zip(s, l, b) if score > threshold]
            for s, l, b in zip(scores, labels, box_corners(boxes))]


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """DETR boxes ``(..., 4)`` as centre x, centre y, width, height -> ``(x0, y0, x1, y1)`` (float64)."""
    center_x, center_y, width, height = np.moveaxis(boxes.astype(np.float64), -1, 0)
    return np.stack([center_x - width / 2, center_y - height / 2, center_x + width / 2, center_y + height / 2], -1)


def semantic_maps(class_queries_logits: np.ndarray, masks_queries_logits: np.ndarray) -> np.ndarray:
    """Mask2Former outputs -> ``(batch, height, width)`` class index per pixel at the masks' resolution.

    Each query's class probabilities (without the null class) weight its sigmoid mask; a pixel
    takes the class with the highest total.
    """
    return mask_class_scores(softmax(class_queries_logits)[..., :-1], sigmoid(masks_queries_logits)).argmax(axis=1)


def mask_class_scores(classes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mask2Former's per-pixel class scores ``(batch, class, *pixels)``: each query's real-class probabilities
    ``(batch, query, class)`` weighting its sigmoid mask ``(batch, query, *pixels)``, summed over the queries."""
    return np.einsum("bqc,bq...->bc...", classes, masks)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function in float64 (Mask2Former's masks)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def ctc_transcripts(logits: np.ndarray, processing: Processing) -> list[str]:
    """Greedy CTC: the best token per frame, repeats merged, blanks dropped, word delimiters as spaces."""
    transcripts = []
    for ids in logits.argmax(axis=-1):
        tokens = [" " if token == processing.word_delimiter else token
                  for token in (processing.label(i) for i in ctc_tokens(ids, processing.blank))]
        transcripts.append(("".join(tokens) if processing.labels else " ".join(tokens)).strip())
    return transcripts


def ctc_tokens(ids: np.ndarray, blank: int | None) -> list[int]:
    """Greedy CTC over one row of per-frame token ids: repeats merged, then blanks (and negative ids, padding) dropped."""
    merged = [int(i) for index, i in enumerate(ids) if index == 0 or i != ids[index - 1]]
    return [i for i in merged if i != blank and i >= 0]


def decode(task: str, outputs: Mapping[str, np.ndarray], processing: Processing, *, top_k: int = 5,
           threshold: float = 0.5, text: Mapping[str, Any] | None = None) -> list[Any]:
    """The meaning of a task head's outputs, one JSON-ready entry per batch row.

    ``text`` is :func:`text_inputs`' result for text the user gave: question answering then
    keeps spans inside the context and adds the ``answer`` string cut from it.

    Raises:
        UsageError: a task with no post-processing (a custom module, a generation decoder).
    """
    if task in CLASSIFICATION_TASKS:
        return top_classes(outputs["logits"], processing, top_k)
    if task == "token-classification":
        return token_classes(outputs["logits"], processing)
    if task == "question-answering":
        spans = answer_spans(outputs["start_logits"], outputs["end_logits"],
                             allowed=text.get("context_mask") if text else None)
        if text and "context" in text:
            for span, offsets in zip(spans, text["context_offsets"]):
                span["answer"] = text["context"][offsets[span["start"]][0]:offsets[span["end"]][1]]
        return spans
    if task == "object-detection":
        return detections(outputs["logits"], outputs["pred_boxes"], processing, threshold=threshold)
    if task == "segmentation":
        return [m.tolist() for m in semantic_maps(outputs["class_queries_logits"], outputs["masks_queries_logits"])]
    if task == "depth-estimation":
        return [{"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean()), "shape": list(d.shape)}
                for d in outputs["predicted_depth"]]
    if task == "ctc":
        return ctc_transcripts(outputs["logits"], processing)
    if task == "sentence-embedding":
        return [row.tolist() for row in outputs["sentence_embedding"]]
    if task.endswith(("-lm", "-lm-with-past")):
        raise UsageError(f"task {task!r} generates text; convert with --task {task.removesuffix('-with-past')}-with-past "
                         "and run edgeexport generate ARTIFACT --prompt ...")
    raise UsageError(f"task {task!r} has no post-processing; read the raw outputs with edgeexport.load(ARTIFACT)")


def describe(task: str, result: Any, processing: Processing) -> str:
    """One line for a person: a row of :func:`decode`'s result."""
    if task in CLASSIFICATION_TASKS:
        return ", ".join(f"{c['label']} {c['score']:.3f}" for c in result)
    if task == "token-classification":
        return " ".join(result)
    if task == "question-answering":
        answer = f"{result['answer']!r}, " if "answer" in result else ""
        return f"answer {answer}tokens {result['start']}..{result['end']} (score {result['score']:.3f})"
    if task == "object-detection":
        boxes = "; ".join(f"{d['label']} {d['score']:.2f} at ({', '.join(f'{v:.2f}' for v in d['box'])})"
                          for d in result)
        return f"{len(result)} objects: {boxes}" if result else "no object above the threshold"
    if task == "segmentation":
        classes, counts = np.unique(np.asarray(result), return_counts=True)
        shares = sorted(zip(counts, classes), reverse=True)
        return f"{len(result)}x{len(result[0])} map: " + ", ".join(f"{processing.label(int(c))} {n / counts.sum():.1%}" for n, c in shares)
    if task == "sentence-embedding":
        return f"embedding of {len(result)} values, norm {float(np.linalg.norm(result)):.4f}"
    if task == "depth-estimation":
        return (f"depth {'x'.join(map(str, result['shape']))}: min {result['min']:.3g}, max {result['max']:.3g}, "
                f"mean {result['mean']:.3g}")
    return repr(result)
