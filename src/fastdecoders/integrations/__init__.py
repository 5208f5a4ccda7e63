"""Bridges to other libraries. Each submodule imports its library lazily, so importing fastdecoders never needs them.

* ``fastdecoders.integrations.diffusers``: ``use(pipe, decoder)`` puts a fastdecoders decoder into a diffusers pipeline
  (also reachable as ``fastdecoders.use``).
"""
