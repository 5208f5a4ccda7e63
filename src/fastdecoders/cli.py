"""``fastdecoders`` command line: one verb per subcommand; each verb module has ``add_arguments`` and ``run``.

``run(args)`` returns a JSON-ready dict (printed as one JSON document with ``--json``) or raises
``FastDecodersError`` (printed as one line on stderr, exit code 2). Human-readable output goes to stdout without
``--json``; logs and progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from fastdecoders.errors import FastDecodersError

# verb -> (module with add_arguments/run/render, one-line help); the one place the verbs are listed
VERBS: dict[str, tuple[str, str]] = {
    "list": ("fastdecoders.commands.list_cmd", "decoders, latent spaces and which weights are found locally"),
    "decode": ("fastdecoders.commands.decode_cmd", "decode a latents file to PNGs (or an MP4 for video)"),
    "encode": ("fastdecoders.commands.encode_cmd", "encode folders of photos/videos to latents shards"),
    "roundtrip": ("fastdecoders.commands.roundtrip_cmd", "encode photos, decode them, report PSNR/SSIM and a grid"),
    "convert": ("fastdecoders.commands.convert_cmd", "convert weights to our safetensors or a diffusers folder"),
    "bench": ("fastdecoders.commands.bench_cmd", "latency and memory against the decoder being replaced"),
    "export": ("fastdecoders.commands.export_cmd", "export a decoder to ONNX, verified against PyTorch on the spot"),
    "eval": ("fastdecoders.commands.eval_cmd", "quality on real images/videos: PSNR, SSIM, LPIPS, FID, flicker"),
    "train": ("fastdecoders.commands.train_cmd", "distil a student decoder from a teacher (YAML config)"),
    "prune": ("fastdecoders.commands.prune_cmd", "independence-aware channel pruning of an existing decoder"),
    "switch": ("fastdecoders.commands.switch_cmd", "fit a light/heavy decoder switch (a gate routing each item)"),
    "preview": ("fastdecoders.commands.preview_cmd", "fit a linear latent->RGB preview for a VAE (preview fit)"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where it says something: not for None/False defaults, not where the help text
    already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``verb``'s module is imported (the others stay unloaded, so the CLI starts fast)."""
    parser = argparse.ArgumentParser(prog="fastdecoders", description="Fast drop-in decoders for latent diffusion.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (module_name, help_text) in VERBS.items():
        verb_parser = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )
        verb_parser.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
        verb_parser.set_defaults(module=module_name)
        if name == verb:
            _module(module_name).add_arguments(verb_parser)
    return parser


def _module(name: str) -> Any:
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in VERBS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse usage errors exit 2 already; keep --help's 0
        return int(e.code or 0)
    module = _module(args.module)
    try:
        result = module.run(args)
    except FastDecodersError as e:
        print(f"fastdecoders {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        # a file-system refusal that no check above turned into a FastDecodersError: still one line, never "missing"
        # for a permission problem (the OS's own reason and the path it named)
        where = f": {e.filename}" if e.filename else ""
        print(f"fastdecoders {args.verb}: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastdecoders {args.verb}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(module.render(result) if hasattr(module, "render") else json.dumps(result, indent=2, default=str))
    # a verb that ran to its end but with failed items (batch jobs) says so: 1; see docs/scale.md
    return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0


if __name__ == "__main__":
    sys.exit(main())
