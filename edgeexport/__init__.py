"""edgeexport: export PyTorch models to ONNX, OpenVINO, CoreML and TensorRT and prove them right.

Importing this package does not import torch or any backend; :func:`convert` needs torch,
:func:`load` (running an artifact) does not.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

__version__ = importlib.metadata.version("edgeexport")
__all__ = ["__version__", "check_parity", "convert", "load"]


def convert(*args: Any, **kwargs: Any) -> Any:
    """See :func:`edgeexport.conversion.convert`."""
    from edgeexport.conversion import convert as _convert

    return _convert(*args, **kwargs)


def check_parity(*args: Any, **kwargs: Any) -> Any:
    """See :func:`edgeexport.validation.parity.check_parity`."""
    from edgeexport.validation.parity import check_parity as _check_parity

    return _check_parity(*args, **kwargs)


def load(*args: Any, **kwargs: Any) -> Any:
    """See :func:`edgeexport.runner.load`."""
    from edgeexport.runner import load as _load

    return _load(*args, **kwargs)
