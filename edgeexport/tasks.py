"""Task heads: which transformers auto class builds a task and which outputs it exports."""

from __future__ import annotations

from dataclasses import dataclass

from edgeexport.errors import UsageError


@dataclass(frozen=True)
class TaskHead:
    """A task's model class and its flat, named outputs (``logits`` get top-k agreement checks).

    ``modality`` is empty for tasks of any modality (feature extraction): the model's spec says.
    ``optional`` outputs are exported where the model returns them (a base model's pooler).
    ``fp32_heads`` are regression outputs whose numbers the user reads (depth in metres): under fp16 their last
    contraction and the ops after it compute in fp32 (:func:`edgeexport.mixed_precision.head_ops`).
    """

    auto_class: str
    outputs: tuple[str, ...]
    logits: tuple[str, ...]
    modality: str
    optional: tuple[str, ...] = ()
    fp32_heads: tuple[str, ...] = ()


TASKS: dict[str, TaskHead] = {
    "causal-lm": TaskHead("AutoModelForCausalLM", ("logits",), ("logits",), "text"),
    "sequence-classification": TaskHead("AutoModelForSequenceClassification", ("logits",), ("logits",), "text"),
    "token-classification": TaskHead("AutoModelForTokenClassification", ("logits",), ("logits",), "text"),
    "question-answering": TaskHead(
        "AutoModelForQuestionAnswering", ("start_logits", "end_logits"), ("start_logits", "end_logits"), "text"),
    "seq2seq-lm": TaskHead("AutoModelForSeq2SeqLM", ("logits",), ("logits",), "text2text"),
    "image-classification": TaskHead("AutoModelForImageClassification", ("logits",), ("logits",), "vision"),
    "object-detection": TaskHead("AutoModelForObjectDetection", ("logits", "pred_boxes"), ("logits",), "vision"),
    "segmentation": TaskHead(
        "AutoModelForUniversalSegmentation", ("class_queries_logits", "masks_queries_logits"),
        ("class_queries_logits",), "vision"),
    "depth-estimation": TaskHead("AutoModelForDepthEstimation", ("predicted_depth",), (), "vision",
                                 fp32_heads=("predicted_depth",)),
    "ctc": TaskHead("AutoModelForCTC", ("logits",), ("logits",), "audio"),
    "audio-classification": TaskHead("AutoModelForAudioClassification", ("logits",), ("logits",), "audio"),
    # A base model with no head: its hidden states (and pooled output where it has a pooler).
    "feature-extraction": TaskHead("AutoModel", ("last_hidden_state",), (), "", optional=("pooler_output",)),
    # A sentence-transformers folder (modules.json): the transformer, its pooling and normalization in one graph
    # (edgeexport.reference.sentence_embedding).
    "sentence-embedding": TaskHead("AutoModel", ("sentence_embedding",), (), "text"),
    # Generation variants: the decoder with its KV cache as inputs and outputs (edgeexport.generation_spec);
    # edgeexport.reference.decoders_with_past adds the cache names to these outputs.
    "causal-lm-with-past": TaskHead("AutoModelForCausalLM", ("logits",), ("logits",), "text"),
    "seq2seq-lm-with-past": TaskHead("AutoModelForSeq2SeqLM", ("logits",), ("logits",), "text2text"),
}

# Generation variant -> the task it is a variant of; a model with the base task supports the variant.
WITH_PAST: dict[str, str] = {"causal-lm-with-past": "causal-lm", "seq2seq-lm-with-past": "seq2seq-lm"}

# Suffix of a transformers architecture class name -> task, for save_pretrained folders.
ARCHITECTURE_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForConditionalGeneration", "seq2seq-lm"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForUniversalSegmentation", "segmentation"),
    ("ForDepthEstimation", "depth-estimation"),
    ("ForCTC", "ctc"),
    ("ForAudioClassification", "audio-classification"),
)


def task_head(task: str) -> TaskHead:
    """The :class:`TaskHead` of ``task``; unknown tasks raise a :class:`UsageError` listing the known ones."""
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[task]


def fp32_heads(task: str) -> tuple[str, ...]:
    """The outputs of ``task`` whose heads keep fp32 compute under fp16 (none for a task outside :data:`TASKS`)."""
    return TASKS[task].fp32_heads if task in TASKS else ()


def supported_tasks(tasks: tuple[str, ...]) -> list[str]:
    """A model's tasks followed by the generation variants of those tasks."""
    return [*tasks, *(variant for variant, base in WITH_PAST.items() if base in tasks)]


def task_from_architecture(architecture: str, main_input_name: str) -> str | None:
    """Guess the task of a transformers class name such as ``BertForTokenClassification``; a base model
    (``BertModel``: a ``...Model`` class with no head) is ``feature-extraction``."""
    for suffix, task in ARCHITECTURE_SUFFIXES:
        if architecture.endswith(suffix):
            if task == "sequence-classification" and main_input_name == "input_values":
                return "audio-classification"
            return task
    if architecture.endswith("Model") and not architecture.endswith("PreTrainedModel"):
        return "feature-extraction"
    return None


# The model input that tells a base model's modality (feature extraction has no modality of its own).
MODALITY_BY_MAIN_INPUT = {"input_ids": "text", "pixel_values": "vision", "input_values": "audio"}
