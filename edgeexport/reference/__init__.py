"""The reference zoo: PyTorch models with flat named I/O, dynamic-axis specs and input generators."""

from __future__ import annotations

from edgeexport.reference.generation import ReferenceBundle
from edgeexport.reference.loading import load_reference, reference_from_module
from edgeexport.reference.model import ReferenceModel
from edgeexport.reference.specs import PRESETS, SPECS, get_spec
from edgeexport.reference.tasks import TASKS

__all__ = ["PRESETS", "SPECS", "TASKS", "ReferenceBundle", "ReferenceModel", "get_spec", "load_reference", "reference_from_module"]
