"""Batch jobs over many files: ``decode`` of latents shards to images/MP4s and ``encode`` of photos/videos to shards.

Two engines run the same plan of work units (``plan``) through the same worker (``worker``): the embedded engine
(``embedded``, in-process, I/O on background threads) and Ray Data (``ray_engine``, an actor pool of decoders). The
manifest (``manifest``) makes every job resumable; ``job.run_decode_job`` and ``encode.run_encode_job`` are the
Python entry points. See docs/scale.md.
"""
