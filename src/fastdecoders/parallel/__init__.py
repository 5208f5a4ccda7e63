"""Exact patch-parallel decoding of one large image or clip across the ranks of a torch.distributed process group.

``parallel_decode(decoder, latents, dst=0)`` under ``torchrun`` (gloo on CPU, NCCL on GPU); see ``decode.py`` for the
modes and ``layers.py`` for how GroupNorm/attention decoders are split. CLI: ``fastdecoders decode ... --parallel``.
"""

from fastdecoders.parallel.comm import Bands, split_rows
from fastdecoders.parallel.decode import MODES, choose_mode, init_process_group, parallel_decode, parallel_decode_frames
from fastdecoders.parallel.layers import band_layers, unsupported

__all__ = ["MODES", "Bands", "band_layers", "choose_mode", "init_process_group", "parallel_decode",
           "parallel_decode_frames", "split_rows", "unsupported"]  # fmt: skip
