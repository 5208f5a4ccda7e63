"""Per-chunk routing of causal video decoders, with each decoder's streaming state kept.

A clip's latent frames are cut into chunks of ``config.chunk`` frames; the gate scores each chunk (the mean of its
frames' scores) and the chunk is decoded by the light or the heavy decoder's *stream*. A decoder keeps its stream
across consecutive chunks it decodes, so a run of chunks routed to one decoder is exactly its streaming (= whole-run)
decode. When a decoder resumes after chunks it did not see, it starts a new stream and first re-reads the last
``config.context`` latent frames before the chunk (their pixels are dropped): its causal memory is rebuilt from
that context instead of from the whole past, which is what makes skipping chunks cheap. Reference (tested):
for a run of chunks [a, b) routed to decoder D, the output equals ``D(z[:, :, max(0, a − context):b])``'s last
frames (fp32: within 1e-5, the stream/whole-clip tolerance).
"""

from __future__ import annotations

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space


def chunk_spans(frames: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, frames)) for a in range(0, frames, chunk)]


def chunk_scores(gate: torch.nn.Module, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, C, t, h, w) -> (B, chunks): the mean gate score of each chunk's latent frames."""
    b, _, t = latents.shape[:3]
    per_frame = gate(latents.transpose(1, 2).flatten(0, 1)).view(b, t)
    return torch.stack([per_frame[:, a:e].mean(1) for a, e in chunk_spans(t, chunk)], dim=1)


def _check(sw) -> None:
    cfg = sw.config
    for role, d in (("light", sw.light), ("heavy", sw.heavy)):
        if d is not None and not hasattr(d, "stream"):
            raise FastDecodersError(
                f"switch: per-chunk video routing needs causal streaming decoders, got {role} {type(d).__name__}"
            )
    if cfg.input != "latent":
        raise FastDecodersError("switch: video is routed with the 'latent' gate, got a 'features' gate")
    if cfg.chunk < 1 or cfg.context < 1:
        raise FastDecodersError(f"switch: expected chunk >= 1 and context >= 1 latent frames, got {cfg.chunk} and "
                                f"{cfg.context}")  # fmt: skip


def decode_chunks(sw, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, t, h, w) -> ((B, 3, T, H, W) pixels, (B, chunks) heavy routes, (B, chunks) scores)."""
    _check(sw)
    cfg = sw.config
    b, _, t = latents.shape[:3]
    scores = chunk_scores(sw.gate, latents, cfg.chunk) if b else latents.new_zeros(0, 0)
    routes = scores > cfg.threshold
    clips = []
    for i in range(b):
        z = latents[i : i + 1]
        streams: dict[str, object] = {}
        ends: dict[str, int] = {}
        pieces = []
        for j, (a, e) in enumerate(chunk_spans(t, cfg.chunk)):
            role = "heavy" if routes[i, j] else "light"
            decoder = sw._heavy() if role == "heavy" else sw.light
            if ends.get(role) != a:  # new, or resuming after chunks this decoder did not see
                stream = decoder.stream()
                if a > 0:
                    stream.push(z[:, :, max(0, a - cfg.context) : a])  # rebuild the causal memory; pixels dropped
                streams[role] = stream
            pieces.append(streams[role].push(z[:, :, a:e]))
            ends[role] = e
        clips.append(torch.cat([p.to(pieces[0].dtype) for p in pieces], dim=2))
    if not clips:
        space = get_latent_space(sw.latents_name)
        f, frames = space.spatial_factor, space.pixel_frames(t)
        return latents.new_empty(0, 3, frames, f * latents.shape[3], f * latents.shape[4]), routes.cpu(), scores.cpu()
    return torch.cat(clips), routes.cpu(), scores.cpu()
