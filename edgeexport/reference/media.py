"""Bundled photographs and speech: the realistic images and audio of golden cases, evaluation sets and calibration.

Twelve public-domain or CC0 photographs from scikit-image's bundled data, scaled to 224 px on the long side
(``data/images``), and nine English sentences of :mod:`edgeexport.reference.sentences` spoken by espeak-ng at 16 kHz
(``data/speech``); ``data/*/LICENSES.md`` name each file's source and licence. Each file belongs to exactly one
split (:data:`PHOTOGRAPHS`, :data:`SPEECH`), so golden cases, task-agreement evaluation and int8 calibration never
share one; a clip's sentence is in the same split of the sentences.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
MEDIA_SPLITS = ("golden", "evaluation", "calibration")

PHOTOGRAPHS: dict[str, tuple[str, ...]] = {
    "golden": ("astronaut", "coffee", "camera"),
    "evaluation": ("chelsea", "hubble_deep_field", "retina", "clock_motion", "grass", "gravel"),
    "calibration": ("rocket", "brick", "cell"),
}

# Clip name -> the sentence spoken (espeak-ng 1.51, voice en-us, 260 words a minute, resampled to 16 kHz).
SPEECH: dict[str, dict[str, str]] = {
    "golden": {"stadium": "Fans filled the stadium long before kick-off.",
               "spring": "Spring brought warmer days and longer evenings."},
    "evaluation": {"browser": "The browser blocks tracking cookies by default.",
                   "cars": "Electric cars need fewer repairs than petrol cars.",
                   "tea": "Tea and biscuits were served at four o'clock.",
                   "wind": "A cold wind blew from the north all night.",
                   "boxer": "The boxer retired after twenty years in the ring."},
    "calibration": {"eggs": "Fry the eggs in butter over a low heat.",
                    "goalkeeper": "Our goalkeeper saved a penalty in the second half."},
}


def photographs(split: str) -> list[Path]:
    """The JPEG files of one split (``golden``, ``evaluation``, ``calibration``)."""
    return [DATA / "images" / f"{name}.jpg" for name in PHOTOGRAPHS[_checked(split)]]


def speech(split: str) -> list[Path]:
    """The 16 kHz mono 16-bit WAV files of one split."""
    return [DATA / "speech" / f"{name}.wav" for name in SPEECH[_checked(split)]]


def _checked(split: str) -> str:
    if split not in MEDIA_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(MEDIA_SPLITS)}")
    return split
