"""Aggregation of an evaluation: per decoder, the mean ± 95% interval of every per-input metric, the set metrics
(FID with a bootstrap interval, KID, FVD) against the originals and the teacher, and timings."""

from __future__ import annotations

from typing import Any

import torch

from fastdecoders.eval import metrics
from fastdecoders.eval.runner import CLIP_METRICS, PIXEL_METRICS, Run, Runner

SET_METRICS = ("fid", "kid", "fvd")
ALL_METRICS = PIXEL_METRICS + CLIP_METRICS + SET_METRICS


def set_metrics(
    ours: list[torch.Tensor], ref: list[torch.Tensor], chosen: tuple[str, ...], notes: list[str]
) -> dict[str, Any]:
    """FID (+ bootstrap ci95), KID and FVD between two paired lists of per-input feature dicts."""
    out: dict[str, Any] = {}
    for metric, key in (("fid", "inception"), ("kid", "inception"), ("fvd", "video")):
        if metric not in chosen:
            continue
        a = torch.cat([f[key] for f in ours]) if ours else torch.zeros(0)
        b = torch.cat([f[key] for f in ref]) if ref else torch.zeros(0)
        # KID splits the inputs into two disjoint halves per round: fewer than 10 inputs give subsets of < 5
        count, need, unit = (len(ours), 10, "inputs") if metric == "kid" else (len(a), 2, "feature vectors")
        if count < need or len(b) < 2:
            out[metric] = None
            notes.append(f"{metric} not computed: needs at least {need} {unit}, got {count}")
            continue
        if metric == "kid":
            # rows are paired (input i, frame j of both sets): KID's subsets must not share inputs
            groups = torch.cat([torch.full((len(f[key]),), i) for i, f in enumerate(ours)]).numpy()
            mean, ci = metrics.kid(a, b, groups=groups)
            out["kid"] = {"mean": mean, "ci95": ci}
        else:
            out[metric] = metrics.frechet_distance_features(a, b)
            rounds = 100 if len(a) < a.shape[1] else 10  # past D samples each round is a D×D eigendecomposition
            out[f"{metric}_ci95"] = metrics.bootstrap_frechet_ci95(a, b, rounds=rounds)
    return out


def summary(runner: Runner, run: Run, notes: list[str]) -> dict[str, Any]:
    keys = list(runner.records[run.name])
    records = [runner.records[run.name][k] for k in keys]
    chosen = runner.chosen
    pixel = [m for m in PIXEL_METRICS + CLIP_METRICS if m in chosen]

    def per_input(which: str) -> dict[str, Any]:
        return {m: metrics.mean_ci95([r[1][which][m] for r in records]) for m in pixel}

    def blank() -> dict[str, Any]:  # every metric key is always there (None: not computed), for a stable schema
        return {**{m: None for m in ALL_METRICS}, "fid_ci95": None, "fvd_ci95": None}

    has_orig = bool(records) and records[0][1]["orig"] is not None
    entry: dict[str, Any] = {"role": run.role, "latent_space": run.space.name, "kind": run.kind, "n": len(records)}
    entry.update(blank())
    if has_orig:
        entry.update(per_input("orig"))
        originals = [runner.originals[k] for k in keys]
        entry.update(set_metrics([r[0] for r in records], originals, chosen, notes))
    entry["vs_teacher"] = None
    if run.vs_teacher and records:
        teacher_feats = [runner.records[runner.teacher.name][k][0] for k in keys]
        vs = {**blank(), **per_input("teacher")}
        vs.update(set_metrics([r[0] for r in records], teacher_feats, chosen, notes))
        entry["vs_teacher"] = vs
    ms = [r[1]["ms"] / max(1, r[1]["frames"]) for r in records]
    entry["ms_per_image"] = float(torch.tensor(ms).median()) if ms else None
    if runner.config.kind == "videos" and records:
        entry["ms_per_clip"] = float(torch.tensor([r[1]["ms"] for r in records]).median())
    entry["params"] = sum(p.numel() for p in run.decoder.parameters())
    return entry
