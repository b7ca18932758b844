"""Exporters, one module per target, each defining ``EXPORTER`` (an :class:`~edgeexport.exporter.Exporter`).

A target is found by its module name; this package holds nothing but those modules
(:mod:`edgeexport.exporter` finds them). Every module imports without torch.
"""
