"""TensorRT helpers, below both sides of the TensorRT target (the exporter and the runtime import
them; they import neither, nor the pipeline).

``preflight`` checks an ONNX graph against what TensorRT's ONNX parser supports (``ops.json``)
and runs anywhere; ``plan`` derives and stores the build plan (shape profile, precision,
workspace, calibration data) and the engine's device fingerprint; ``build`` turns an
artifact's ONNX into an engine on a machine with an NVIDIA GPU and ``tensorrt``; ``cuda``
holds the device buffers the runner and the int8 calibrator share. Only ``build`` and
``cuda`` import ``tensorrt``/``cuda-python``, and only when called. Nothing here imports torch:
naming the PyTorch module of a preflight finding is the exporter's side
(:mod:`edgeexport.exporters.tensorrt`).
"""

from __future__ import annotations
