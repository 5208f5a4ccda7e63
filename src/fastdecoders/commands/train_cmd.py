"""``fastdecoders train CONFIG.yaml [--out DIR] [--set KEY=VALUE ...] [--resume]``: distil a student decoder.

Under ``torchrun --nproc_per_node N -m fastdecoders train ...`` every process runs this; process 0 alone prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastdecoders.commands import format_table
from fastdecoders.train.config import load_config
from fastdecoders.train.loop import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML training config (see configs/)")
    parser.add_argument("-o", "--out", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.steps=2000 (repeatable; YAML values)")  # fmt: skip
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                        help="continue the run in --out from its newest checkpoint (or from CHECKPOINT); "
                        "'auto': continue if there is one, else start")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much training time, with a checkpoint and the final model "
                        "(shorthand for --set train.max_minutes=M)")  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    cfg = load_config(args.config, overrides)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    summary = train(cfg, out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        # cli.main prints the result of every process; under torchrun only process 0 should speak
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return {}
    return {
        "checkpoint": summary["model"],
        "steps": summary["steps"],
        "seconds": summary["seconds"],
        "images_per_s": summary["images_per_s"],
        "val": summary["val"],
        "teacher_val": summary["teacher_val"],
    }


def render(result: dict) -> str:
    if not result:
        return ""
    rows = [["student", result["val"]["psnr"], f"{result['val']['ssim']:.4f}"]]
    if result["teacher_val"] is not None:
        rows.append(["teacher", result["teacher_val"]["psnr"], f"{result['teacher_val']['ssim']:.4f}"])
    table = format_table(["validation", "PSNR dB", "SSIM"], rows)
    return (f"{table}\n{result['steps']} steps in {result['seconds'] / 60:.1f} min, "
            f"{result['images_per_s']:.1f} images/s; model: {result['checkpoint']}")  # fmt: skip
