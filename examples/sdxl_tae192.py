"""SDXL text-to-image, decoded by TAE-192 (the seed paper's image decoder) instead of SDXL's VAE.

    python examples/sdxl_tae192.py --tiny -o out/sdxl.png                   # offline, tiny random pipeline
    python examples/sdxl_tae192.py --tiny --decoder taesdxl --weights-dir ../shared/weights/taesd -o out/sdxl.png
    python examples/sdxl_tae192.py --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --decoder runs/tae192-sdxl/model.safetensors --prompt "a lighthouse at dusk" -o out/sdxl.png

TAE-192 has no released weights: train one (``fastdecoders train``) and pass its file, or try ``--decoder taesdxl``
(the 64-channel TAESDXL, whose weights are published). With ``--tiny`` a decoder without weights on the weights
path gets random weights of its tiny test config, whose output is flat (a black PNG, said on stderr): the run shows
that the swap works; the second command decodes the tiny pipeline's latents with the real TAESDXL weights and gives
a visible (noise-like: the tiny UNet is random) picture. The pipeline itself is untouched: ``fastdecoders.use`` swaps
``pipe.vae`` for an adapter for the duration of the ``with`` block and puts the original back afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import fastdecoders
from fastdecoders.integrations.pipelines import from_pretrained, run_example
from fastdecoders.io import write_image
from fastdecoders.registry import get_spec, is_registered
from fastdecoders.weights import find_weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="SDXL pipeline: hub id or local folder")
    source.add_argument("--tiny", action="store_true", help="tiny random pipeline and decoder, offline")
    parser.add_argument("--decoder", default="tae192-sdxl", help="registry name, weights file/folder or hub id")
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (64 with --tiny)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights-dir", help="folder with upstream-named weights files")
    parser.add_argument("-o", "--out", default="out/sdxl_tae192.png")
    return parser.parse_args(argv)


def tiny_decoder(name: str, weights_dir: str | None) -> tuple[object, str | None]:
    """``--tiny``'s decoder and a note: real weights when a path is given or the registered decoder's weights file is
    on the weights path (a visible picture), else random weights of its tiny test config (a flat, black one)."""
    if not is_registered(name):
        return name, None
    spec = get_spec(name)
    if spec.weights and find_weights(spec.weights, weights_dir):
        return fastdecoders.load_decoder(name, weights_dir=weights_dir), None
    note = (f"{name}: no weights on the weights path, so --tiny decodes with random weights of its tiny test "
            f"config; a random TAE emits a near-constant output, hence a black image. The run shows the swap works; "
            f"for a visible picture pass --decoder taesdxl --weights-dir DIR (DIR holding "
            f"taesdxl_decoder.safetensors)")  # fmt: skip
    return fastdecoders.build_decoder(name, tiny=True), note


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    note = None
    if args.tiny:
        from fastdecoders.testing.tiny_pipelines import tiny_pipeline

        torch.manual_seed(args.seed)
        pipe, call = tiny_pipeline("sdxl")
        decoder, note = tiny_decoder(args.decoder, args.weights_dir)
        size, steps = 64, 1
    else:
        from diffusers import StableDiffusionXLPipeline

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe = from_pretrained(StableDiffusionXLPipeline, args.model, dtype=dtype).to(device)
        call, decoder, size, steps = {"prompt": args.prompt}, args.decoder, args.size, args.steps

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    with fastdecoders.use(pipe, decoder, weights_dir=args.weights_dir) as swap:
        # output_type "pt": (B, 3, H, W) in [0, 1], post-processed by the pipeline exactly as for its own VAE
        images = pipe(**call, height=size, width=size, num_inference_steps=steps, generator=generator,
                      output_type="pt").images  # fmt: skip
    path = write_image(images[0], args.out)
    result = {"decoder": repr(swap), "output": str(path), "size": list(images.shape[-2:]),
              "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    if args.tiny and note:
        result["note"] = note
        print(f"note: {note}", file=sys.stderr)
    print(result)
    return result


if __name__ == "__main__":
    sys.exit(run_example(main, "sdxl_tae192.py"))
