"""Test and demo support, not part of the decoding API: ``tiny_pipelines`` builds offline random diffusers pipelines
with the real latent geometry (the tests, the examples' ``--tiny`` mode and ``bench --pipeline --tiny`` use them)."""
