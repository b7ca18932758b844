"""ONNX helpers below the ONNX target and everything that reads its graphs: the capture strategies
(:mod:`~edgeexport.onnxtools.capture`; divergence localization re-runs them) and the graph passes
between capture and save (:mod:`~edgeexport.onnxtools.passes`). The OpenVINO and TensorRT exporters
start from the same capture."""
