"""Measure the dynamic switch (docs/switch.md): quality against the fraction routed heavy for the learned gates
(latent and light-feature inputs), random routing and the oracle, and the compute per item against all-heavy.

    FASTDECODERS_WEIGHTS=../shared/weights/taesd python benchmarks/switch_curve.py \\
        --light weights/switch-taef2/pruned.safetensors --heavy taef2 --out runs/switch-curve

Gate training and calibration: ``--fit-images`` (default bsds500/test, which neither the light student nor the gate
is evaluated on); evaluation: ``--eval-images`` (default kodak24), photos the gate never saw. Every photo is a
centre crop resized to ``--size``, encoded by the latent space's tiny encoder. Decoder outputs are cached per
light/heavy/folder in OUT/cache (reruns only retrain the gates). Writes OUT/switch_curve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fastdecoders.bench.flops import count_flops
from fastdecoders.bench.timing import time_fn
from fastdecoders.switching.calibrate import threshold_for_budget
from fastdecoders.switching.core import SwitchConfig, SwitchDecoder, default_feature_point, light_head, light_tail
from fastdecoders.switching.fit import (
    Collected,
    collect,
    encode_photos,
    load_photos,
    spearman,
    split_holdout,
    train_gate,
)
from fastdecoders.weights import load_decoder


def cached_collect(args, light, heavy, folder: str, point: str, tag: str) -> Collected:
    stem = Path(args.light).stem + (f"-{Path(args.from_checkpoint).stem}" if args.from_checkpoint else "")
    key = f"{stem}-{args.heavy.replace('/', '_')}-{Path(folder).name}-{args.size}-{args.limit}"
    path = Path(args.out) / "cache" / f"{key}.pt"
    if path.is_file():
        return Collected(**torch.load(path, weights_only=True))
    photos, _ = load_photos(folder, args.size, args.limit)
    z = encode_photos(photos, light.latent_space_name)
    data = collect(light, heavy, z, photos, point, batch_size=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vars(data), path)
    return data


def routed_mean(mask: torch.Tensor, light: torch.Tensor, heavy: torch.Tensor) -> float:
    return float(torch.where(mask, heavy, light).double().mean())


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[scores.argsort(descending=True)[:k]] = True
    return mask


def curves(ev: Collected, scores: dict[str, torch.Tensor], seeds: int = 200) -> dict:
    """Mean PSNR / SSIM at k = 0..N items heavy, for each router (top-k by score) and random routing (mean of
    ``seeds`` random choices)."""
    n = ev.deficit.numel()
    out: dict = {"fraction": [k / n for k in range(n + 1)]}
    metrics = (("psnr", ev.light_psnr, ev.heavy_psnr), ("ssim", ev.light_ssim, ev.heavy_ssim))
    for name, s in scores.items():
        out[name] = {m: [routed_mean(top_k_mask(s, k), lo, hi) for k in range(n + 1)] for m, lo, hi in metrics}
    gen = torch.Generator().manual_seed(0)
    perms = [torch.randperm(n, generator=gen) for _ in range(seeds)]
    out["random"] = {}
    for m, lo, hi in metrics:
        vals = []
        for k in range(n + 1):
            ms = []
            for p in perms:
                mask = torch.zeros(n, dtype=torch.bool)
                mask[p[:k]] = True
                ms.append(routed_mean(mask, lo, hi))
            vals.append(statistics.fmean(ms))
        out["random"][m] = vals
    return out


def median_ms(fn, runs: int) -> float:
    """Median ms of ``runs`` timed calls after one warm-up (CPU: the clock needs no device sync)."""
    return time_fn(fn, warmup=1, runs=runs).ms_median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--light", required=True)
    ap.add_argument("--heavy", default="taef2")
    ap.add_argument("--from-checkpoint", default=None,
                    help="a training checkpoint (OUT/checkpoints/step_N.pt) of --light's architecture: its EMA "
                    "weights are the light decoder")  # fmt: skip
    ap.add_argument("--fit-images", default="../shared/data/images/bsds500/test")
    ap.add_argument("--eval-images", default="../shared/data/images/kodak24")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="at most this many photos per folder")
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3, help="timed decodes per measurement (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/switch-curve")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    light, heavy = load_decoder(args.light), load_decoder(args.heavy)
    if args.from_checkpoint:  # e.g. the distillation in progress (weights/switch-taef2/run/checkpoints)
        state = torch.load(args.from_checkpoint, map_location="cpu", weights_only=True)
        light.load_state_dict(state["ema"] if state.get("ema") else state["student"])
        print(f"light: EMA weights of {args.from_checkpoint} (step {state['step']})", flush=True)
    point = default_feature_point(light)
    fit = cached_collect(args, light, heavy, args.fit_images, point, "fit")
    ev = cached_collect(args, light, heavy, args.eval_images, point, "eval")
    fit_idx, held_idx = split_holdout(fit.deficit.numel(), 0.2)

    items = {"fit": int(fit_idx.numel()), "held_back": int(held_idx.numel()), "eval": int(ev.deficit.numel())}
    result: dict = {"light": args.light, "from_checkpoint": args.from_checkpoint, "heavy": args.heavy,
                    "size": args.size, "fit_images": args.fit_images, "eval_images": args.eval_images, "items": items,
                    "budget": args.budget}  # fmt: skip
    # oracle: routes by the true deficit against heavy (what the gate learns); oracle-gain: by the true PSNR gain
    # against the photo (needs labels: the upper bound of any router)
    scores, switches = {"oracle": ev.deficit, "oracle-gain": ev.heavy_psnr - ev.light_psnr}, {}
    for kind in ("latent", "features"):
        inputs, ev_inputs = (fit.features, ev.features) if kind == "features" else (fit.latents, ev.latents)
        gate = train_gate(inputs[fit_idx], fit.deficit[fit_idx], kind, args.epochs)
        thr = threshold_for_budget(gate(inputs[held_idx]), args.budget)
        s = gate(ev_inputs)
        scores[f"gate-{kind}"] = s
        gc = gate.config
        cfg = SwitchConfig(args.light, args.heavy, kind, thr, point if kind == "features" else None, gc.in_channels,
                           gc.width, gc.hidden)  # fmt: skip
        switches[kind] = SwitchDecoder(cfg, light, heavy, gate).eval()
        mask = s > thr
        result[f"gate-{kind}"] = {
            "threshold_db": thr, "held_back_heavy_fraction": float((gate(inputs[held_idx]) > thr).double().mean()),
            "eval_heavy_fraction": float(mask.double().mean()), "spearman_eval": spearman(s, ev.deficit),
            "spearman_held_back": spearman(gate(inputs[held_idx]), fit.deficit[held_idx]),
            "eval_psnr_calibrated": routed_mean(mask, ev.light_psnr, ev.heavy_psnr),
            "eval_ssim_calibrated": routed_mean(mask, ev.light_ssim, ev.heavy_ssim),
        }  # fmt: skip
    # the same latent gate trained on the PSNR gain against the photo (heavy − light, dB): not label-free (it needs
    # the photos the latents were encoded from), but it ranks photos the way the mean PSNR counts them
    gain_gate = train_gate(fit.latents[fit_idx], (fit.heavy_psnr - fit.light_psnr)[fit_idx].float(), "latent",
                           args.epochs)  # fmt: skip
    scores["gate-latent-gain"] = gain_gate(ev.latents)
    result["gate-latent-gain"] = {
        "spearman_eval_vs_gain": spearman(scores["gate-latent-gain"], ev.heavy_psnr - ev.light_psnr),
        "spearman_held_back_vs_gain": spearman(gain_gate(fit.latents[held_idx]),
                                               (fit.heavy_psnr - fit.light_psnr)[held_idx]),
    }  # fmt: skip
    cv = curves(ev, scores)
    result["curves"] = cv
    n = ev.deficit.numel()
    lo, hi = float(ev.light_psnr.double().mean()), float(ev.heavy_psnr.double().mean())
    result["psnr"] = {"light": lo, "heavy": hi, "gap": hi - lo}
    result["ssim"] = {"light": float(ev.light_ssim.mean()), "heavy": float(ev.heavy_ssim.mean())}
    k20 = int(args.budget * n + 1e-9)
    slo, shi = result["ssim"]["light"], result["ssim"]["heavy"]
    result["at_budget"] = {name: {"k": k20, "fraction": k20 / n, "psnr": cv[name]["psnr"][k20],
                                  "gap_recovered": (cv[name]["psnr"][k20] - lo) / (hi - lo),
                                  "ssim": cv[name]["ssim"][k20],
                                  "ssim_gap_recovered": (cv[name]["ssim"][k20] - slo) / (shi - slo)}
                           for name in ("oracle-gain", "oracle", "gate-latent", "gate-features", "gate-latent-gain",
                                        "random")}  # fmt: skip

    # Compute per item: FLOPs of every part, and CPU time (one thread, median of runs) in this one run.

    z1 = ev.latents[:1]
    f1 = light_head(light, z1, point)
    sw_l, sw_f = switches["latent"], switches["features"]
    flops = {"light": count_flops(lambda: light(z1)), "heavy": count_flops(lambda: heavy(z1)),
             "gate-latent": count_flops(lambda: sw_l.gate(z1)), "gate-features": count_flops(lambda: sw_f.gate(f1)),
             "light-head": count_flops(lambda: light_head(light, z1, point))}  # fmt: skip
    with torch.no_grad():
        ms = {"light": median_ms(lambda: light(z1), args.runs), "heavy": median_ms(lambda: heavy(z1), args.runs),
              "gate-latent": median_ms(lambda: sw_l.gate(z1), args.runs),
              "gate-features": median_ms(lambda: sw_f.gate(f1), args.runs),
              "light-head": median_ms(lambda: light_head(light, z1, point), args.runs),
              "light-tail": median_ms(lambda: light_tail(light, f1, point), args.runs)}  # fmt: skip
        # the whole eval set through each calibrated switch and through the heavy decoder, item by item
        batch_ms = {}
        for kind, sw in switches.items():
            t0 = time.perf_counter()
            heavy_items = 0
            for i in range(n):
                sw(ev.latents[i : i + 1])
                heavy_items += int(sw.last_routes.sum())
            batch_ms[f"switch-{kind}"] = {"ms_per_item": (time.perf_counter() - t0) * 1e3 / n,
                                          "heavy_fraction": heavy_items / n}  # fmt: skip
        t0 = time.perf_counter()
        for i in range(n):
            heavy(ev.latents[i : i + 1])
        batch_ms["all-heavy"] = {"ms_per_item": (time.perf_counter() - t0) * 1e3 / n, "heavy_fraction": 1.0}
    result["flops"], result["ms"], result["eval_set_ms"] = flops, ms, batch_ms

    def cost(kind: str, f: float, table: dict) -> float:
        if kind == "features":
            return table["light-head"] + table["gate-features"] + (1 - f) * (table["light"] - table["light-head"]) \
                + f * table["heavy"]
        return table["gate-latent"] + (1 - f) * table["light"] + f * table["heavy"]

    f20 = k20 / n
    result["compute_at_budget"] = {
        kind: {"flops_per_item": cost(kind, f20, flops),
               "flops_ratio_vs_heavy": flops["heavy"] / cost(kind, f20, flops),
               "ms_per_item": cost(kind, f20, ms), "speedup_vs_heavy": ms["heavy"] / cost(kind, f20, ms)}
        for kind in ("latent", "features")
    }  # fmt: skip
    for kind in ("latent", "features"):
        result["compute_at_budget"][kind]["measured_speedup_eval_set"] = (
            batch_ms["all-heavy"]["ms_per_item"] / batch_ms[f"switch-{kind}"]["ms_per_item"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "switch_curve.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, out / "switch_curve.png", cost, flops)
    (out / "switch_curve.md").write_text(table(result))
    print(table(result))


def plot(result: dict, path: Path, cost, flops: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cv = result["curves"]
    fig, (a, c, b) = plt.subplots(1, 3, figsize=(16, 4.2))
    styles = {"oracle-gain": "k:", "oracle": "k--", "gate-latent": "C0-", "gate-features": "C1-",
              "gate-latent-gain": "C2-", "random": "C7:"}
    for name, style in styles.items():
        a.plot(cv["fraction"], cv[name]["psnr"], style, label=name)
        c.plot(cv["fraction"], cv[name]["ssim"], style, label=name)
    c.axvline(result["budget"], color="C3", lw=0.8)
    c.set_xlabel("fraction of items routed heavy")
    c.set_ylabel("mean SSIM vs photo")
    a.axvline(result["budget"], color="C3", lw=0.8)
    a.set_xlabel("fraction of items routed heavy")
    a.set_ylabel("mean PSNR vs photo (dB)")
    a.set_title(f"{Path(result['light']).stem} / {result['heavy']} on {Path(result['eval_images']).name}")
    a.legend()
    fr = cv["fraction"]
    for kind, style in (("latent", "C0-"), ("features", "C1-")):
        b.plot(fr, [flops["heavy"] / cost(kind, f, flops) for f in fr], style, label=f"switch, {kind} gate")
    b.axhline(3, color="C3", lw=0.8)
    b.axvline(result["budget"], color="C3", lw=0.8)
    b.set_xlabel("fraction of items routed heavy")
    b.set_ylabel("FLOPs of all-heavy / FLOPs of switch")
    b.set_yscale("log")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(result: dict) -> str:
    p, s = result["psnr"], result["ssim"]
    lines = [f"light {result['light']} vs heavy {result['heavy']}, {result['items']['eval']} eval photos at "
             f"{result['size']}²: PSNR light {p['light']:.2f} / heavy {p['heavy']:.2f} dB (gap {p['gap']:.2f}); "
             f"SSIM {s['light']:.4f} / {s['heavy']:.4f}", "",
             "| router | heavy fraction | mean PSNR dB | PSNR gap recovered | mean SSIM | SSIM gap recovered |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["at_budget"].items():
        lines.append(f"| {name} | {r['fraction']:.3f} | {r['psnr']:.2f} | {100 * r['gap_recovered']:.1f}% | "
                     f"{r['ssim']:.4f} | {100 * r['ssim_gap_recovered']:.1f}% |")
    lines += ["", "| gate | calibrated threshold dB | held-back heavy | eval heavy | eval PSNR | eval SSIM | "
              "Spearman (eval) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind in ("latent", "features"):
        g = result[f"gate-{kind}"]
        lines.append(f"| {kind} | {g['threshold_db']:.2f} | {g['held_back_heavy_fraction']:.3f} | "
                     f"{g['eval_heavy_fraction']:.3f} | {g['eval_psnr_calibrated']:.2f} | "
                     f"{g['eval_ssim_calibrated']:.4f} | {g['spearman_eval']:.3f} |")  # fmt: skip
    g = result["gate-latent-gain"]
    lines += ["", f"latent gate trained on the PSNR gain (needs the photos): Spearman vs the true gain "
              f"{g['spearman_held_back_vs_gain']:.3f} held back, {g['spearman_eval_vs_gain']:.3f} eval"]
    f, ms = result["flops"], result["ms"]
    lines += ["", "| part | GFLOPs / item | ms / item (1 thread, median) |", "|---|---|---|"]
    for k in ("light", "heavy", "light-head", "gate-latent", "gate-features"):
        lines.append(f"| {k} | {f[k] / 1e9:.4f} | {ms[k]:.1f} |")
    lines += ["", f"| switch at {result['budget']:.0%} heavy | GFLOPs / item | FLOP ratio vs heavy | ms / item | "
              "speed-up vs heavy | measured on the eval set, item by item |", "|---|---|---|---|---|---|"]
    for kind, c in result["compute_at_budget"].items():
        lines.append(f"| {kind} gate | {c['flops_per_item'] / 1e9:.3f} | {c['flops_ratio_vs_heavy']:.2f}× | "
                     f"{c['ms_per_item']:.1f} | {c['speedup_vs_heavy']:.2f}× | {c['measured_speedup_eval_set']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
