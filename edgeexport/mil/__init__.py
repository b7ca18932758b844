"""Core ML's MIL helpers, below both sides of the CoreML target: the coremltools converter fixes
(:mod:`~edgeexport.mil.converter_fixes`, imported by the exporter) and the MIL reference interpreter
(:mod:`~edgeexport.mil.interpreter`, run by the runtime off macOS). Both use coremltools internals."""
