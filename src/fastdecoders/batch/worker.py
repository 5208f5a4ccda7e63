"""The decoder side of a batch job, shared by both engines: a unit's latents in, one uint8 output (or an error) per
item out."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space, to_01
from fastdecoders.weights import load_decoder


@dataclass(frozen=True)
class DecoderArgs:
    """What a worker needs to load its decoder (picklable: Ray ships it to the actors)."""

    decoder: str
    latents: str | None = None
    weights_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    #: the shards hold raw VAE latents (scale/shift are applied before decoding).
    raw: bool = False
    #: torch threads per worker (None: torch's default).
    threads: int | None = None


@dataclass
class Decoded:
    """Per item of a unit: the output, uint8 (H, W, 3) image or (T, H, W, 3) video, or the error; and the batch's
    decode seconds divided among its items."""

    arrays: list[np.ndarray | None]
    errors: list[str | None]
    seconds: float


class DecodeWorker:
    """Loads the decoder once; ``decode(latents)`` turns a unit's (n, ...) latents into per-item outputs."""

    def __init__(self, args: DecoderArgs):
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        self.args = args
        self.decoder = load_decoder(args.decoder, latents=args.latents, weights_dir=args.weights_dir,
                                    device=args.device, dtype=getattr(torch, args.dtype))  # fmt: skip
        self.space = get_latent_space(self.decoder.latent_space_name)
        self.name = getattr(self.decoder, "registry_name", None) or args.decoder

    def decode(self, latents: torch.Tensor) -> Decoded:
        """(n, C, h, w) image latents or (n, t, C, h, w) / (n, C, t, h, w) clip latents, diffusion space (raw with
        ``DecoderArgs.raw``). Items holding NaN/inf fail alone; a decoder error fails the unit's items."""
        start = time.perf_counter()
        n = len(latents)
        errors: list[str | None] = [None] * n
        arrays: list[np.ndarray | None] = [None] * n
        finite = torch.isfinite(latents.float().flatten(1)).all(1).tolist()
        for i, ok in enumerate(finite):
            if not ok:
                errors[i] = "latents hold NaN or inf"
        keep = [i for i, ok in enumerate(finite) if ok]
        if keep:
            try:
                images = self._decode(latents[keep])
            except FastDecodersError as e:
                images, message = None, str(e)
            except (RuntimeError, ValueError) as e:  # shapes the decoder cannot take: one line per item
                images, message = None, f"decoder failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            for j, i in enumerate(keep):
                if images is None:
                    errors[i] = message
                elif not np.isfinite(images[j]).all():
                    errors[i] = "decoded image holds NaN or inf"
                else:
                    arrays[i] = _to_uint8(images[j])
        return Decoded(arrays, errors, (time.perf_counter() - start) / max(n, 1))

    @torch.inference_mode()
    def _decode(self, z: torch.Tensor) -> np.ndarray:
        """-> float32 numpy in [0, 1]-ish (unclamped): (n, 3, H, W) images or (n, T, 3, H, W) clips."""
        space, decoder = self.space, self.decoder
        if z.ndim not in (4, 5):
            raise FastDecodersError(
                f"expected (C, h, w) or clip latents per item, got items of shape {tuple(z.shape[1:])}"
            )
        z = z.to(self.args.device, getattr(torch, self.args.dtype))
        if z.ndim == 4:
            if decoder.latent_ndim == 5:
                raise FastDecodersError(f"{self.name} decodes clips; got image latents of shape {tuple(z.shape[1:])}")
            space.check_latents(z, what="shard item")
            x = decoder(space.to_diffusion(z) if self.args.raw else z)
            return to_01(x).float().cpu().numpy()
        # clips: find the channel axis (NCTHW or frames-first NTCHW)
        if z.shape[1] == space.channels:
            ncthw = z
        elif z.shape[2] == space.channels:
            ncthw = z.permute(0, 2, 1, 3, 4)
        else:
            raise FastDecodersError(f"clip latents need {space.channels} channels on axis 1 or 2 of each item, "
                                    f"got items of shape {tuple(z.shape[1:])}")  # fmt: skip
        if self.args.raw:
            ncthw = space.to_diffusion(ncthw)
        if decoder.latent_ndim == 5:
            video = decoder(ncthw)  # (n, 3, T, H, W)
            return to_01(video.permute(0, 2, 1, 3, 4)).float().cpu().numpy()
        frames = ncthw.permute(0, 2, 1, 3, 4)  # (n, t, C, h, w): an image decoder, frame by frame per clip
        # one clip's frames per call (the decode protocol: SVD-style decoders get num_frames, image decoders ignore it)
        clips = [decoder.decode_latents(clip, num_frames=len(clip)) for clip in frames]
        return to_01(torch.stack(clips)).float().cpu().numpy()


def _to_uint8(image01: np.ndarray) -> np.ndarray:
    """(3, H, W) or (T, 3, H, W) float in [0, 1] -> (H, W, 3) / (T, H, W, 3) uint8, rounded like io.to_uint8."""
    array = np.clip(image01, 0, 1) * 255
    array = np.round(array).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(array, -3, -1))
