"""Bundled photographs and speech: the realistic images and audio of golden cases, evaluation sets and calibration.

Fifteen public-domain or CC0 photographs from scikit-image's bundled data, scaled to 224 px on the long side
(``data/images``; the evaluation split also holds three square crops of each of its nine photographs, so that task
agreement is judged on 36 images), and 40 English sentences of :mod:`edgeexport.reference.sentences` spoken by
espeak-ng at 16 kHz in four English voices (``data/speech``; 36 of them evaluation); ``data/*/LICENSES.md`` name each
file's source and licence. Each photograph and clip belongs to exactly one split (:data:`PHOTOGRAPHS`,
:data:`SPEECH`), so golden cases, task-agreement evaluation and int8 calibration never share one; a clip's sentence
is in the same split of the sentences.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
MEDIA_SPLITS = ("golden", "evaluation", "calibration")

PHOTOGRAPHS: dict[str, tuple[str, ...]] = {
    "golden": ("astronaut", "coffee", "camera"),
    "evaluation": ("chelsea", "chelsea_centre", "chelsea_topleft", "chelsea_bottomright", "hubble_deep_field",
                   "hubble_deep_field_centre", "hubble_deep_field_topleft", "hubble_deep_field_bottomright",
                   "retina", "retina_centre", "retina_topleft", "retina_bottomright", "clock_motion",
                   "clock_motion_centre", "clock_motion_topleft", "clock_motion_bottomright", "grass",
                   "grass_centre", "grass_topleft", "grass_bottomright", "gravel", "gravel_centre", "gravel_topleft",
                   "gravel_bottomright", "coins", "coins_centre", "coins_topleft", "coins_bottomright", "ihc",
                   "ihc_centre", "ihc_topleft", "ihc_bottomright", "text", "text_centre", "text_topleft",
                   "text_bottomright"),
    "calibration": ("rocket", "brick", "cell"),
}

# Clip name -> the sentence spoken (espeak-ng 1.51, resampled to 16 kHz; voices and speeds in data/speech/LICENSES.md).
SPEECH: dict[str, dict[str, str]] = {
    "golden": {"stadium": "Fans filled the stadium long before kick-off.",
               "spring": "Spring brought warmer days and longer evenings."},
    "evaluation": {"browser": "The browser blocks tracking cookies by default.",
                   "cars": "Electric cars need fewer repairs than petrol cars.",
                   "tea": "Tea and biscuits were served at four o'clock.",
                   "wind": "A cold wind blew from the north all night.",
                   "boxer": "The boxer retired after twenty years in the ring.",
                   "summer": "The summer heat wave lasted eleven days and broke the record set in 1976.",
                   "baked": "She baked a chocolate cake for her brother's birthday.",
                   "tennis": "The tennis final went to five sets and lasted four hours.",
                   "company": "The company released a software patch to fix the security flaw.",
                   "strong": "A strong breeze kept the beach cool despite the bright sun.",
                   "flour": "Mix the flour, sugar and butter, then add two eggs.",
                   "injury": "After the injury, she missed the rest of the season.",
                   "back": "You can back up your photos to the cloud automatically.",
                   "meteorologists": "Meteorologists expect a mild winter with less snow than usual.",
                   "roasted": "He roasted the vegetables with olive oil, rosemary and a little lemon.",
                   "referee": "The referee showed a red card after a dangerous tackle.",
                   "developer": "The developer fixed the bug and pushed the change on Friday.",
                   "flood": "Flood warnings remain in place for the river valley until Thursday.",
                   "whisk": "Whisk the egg whites until they form stiff peaks.",
                   "runner": "The runner crossed the finish line with her arms raised.",
                   "keep": "Keep your passwords in a password manager, not on paper.",
                   "noon": "By noon the mist had lifted and the valley was bathed in sunshine.",
                   "grandmother": "Her grandmother's apple pie has a crisp, buttery crust.",
                   "gymnast": "The gymnast landed a perfect vault and earned a record score.",
                   "scientists": "Scientists built a quantum computer with more stable qubits.",
                   "drizzle": "The drizzle never stopped, but it was never heavy either.",
                   "vegetarian": "The new vegetarian cafe has a short but excellent menu.",
                   "played": "She has played hockey for the national team since she was nineteen.",
                   "online": "Online payments are processed in less than a second.",
                   "hikers": "Hikers were told to turn back because of the blizzard on the ridge.",
                   "brown": "Brown the meat first, then add the wine and the stock.",
                   "chess": "The chess champion defended her title in a tense final game.",
                   "rattled": "The wind picked up after dark and rattled the windows until dawn.",
                   "slice": "Slice the onions thinly and cook them slowly until golden.",
                   "striker": "The striker scored twice in the last ten minutes to win the cup.",
                   "update": "The update fixed a bug that drained the phone's battery overnight."},
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
