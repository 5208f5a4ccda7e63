"""Stable Video Diffusion decoded by TAE-temporal: a tiny decoder with attention across frames, like SVD's own.

    python examples/svd_temporal.py --tiny -o out/svd_temporal              # offline: a folder of PNG frames
    python examples/svd_temporal.py --model stabilityai/stable-video-diffusion-img2vid-xt \\
        --image first_frame.png --decoder runs/tae-temporal-svd/model.safetensors -o out/svd_temporal.mp4

The same run as svd_framewise.py with a temporal decoder. SVD's pipeline passes ``num_frames`` to ``vae.decode``
only when ``vae.forward`` accepts it; the adapter's does, so the decoder sees each ``decode_chunk_size`` chunk as one
clip. Leave ``--chunk`` unset to decode all frames as one clip (the most temporal context). ``tae-temporal-svd`` has
no released weights: fine-tune one from TAESD (``fastdecoders train``) and pass its file.
"""

from __future__ import annotations

from svd_framewise import parse_args, run, tiny_or_named


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, default_decoder="tae-temporal-svd")
    args.out = args.out.replace("svd_framewise", "svd_temporal")
    return run(args, tiny_or_named(args))


if __name__ == "__main__":
    import sys

    from fastdecoders.integrations.pipelines import run_example

    sys.exit(run_example(main, "svd_temporal.py"))
