"""Benchmarks: latency, memory and FLOPs of decoders against the VAE they replace (``fastdecoders bench``)."""
