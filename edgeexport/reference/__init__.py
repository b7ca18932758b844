"""The reference side (needs torch and transformers): PyTorch models with flat named I/O, their
input generators, and loading them from the zoo (:mod:`edgeexport.zoo`), a folder, a hub id or a module."""

from __future__ import annotations

from edgeexport.reference.decoders_with_past import ReferenceBundle
from edgeexport.reference.loading import load_reference, rebuild_reference, reference_from_module
from edgeexport.reference.model import ReferenceModel

__all__ = ["ReferenceBundle", "ReferenceModel", "load_reference", "rebuild_reference", "reference_from_module"]
