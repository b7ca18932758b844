"""Runtimes, one module per backend, each defining ``RUNNER`` (a :class:`~edgeexport.runner.Runner`).

The manifest names the runtime module that runs an artifact (``manifest.runtime``); this
package holds nothing but those modules (:mod:`edgeexport.runner` finds and loads them).
Nothing here imports torch.
"""
