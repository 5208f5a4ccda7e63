"""Run logs of process 0: a progress bar (stderr), CSV files, TensorBoard, sample grids.

``OUT/train_log.csv`` gets a row every ``log.every`` steps, ``OUT/val_log.csv`` one per validation. On resume,
rows past the checkpoint's step (written by the interrupted run after its last checkpoint) are dropped first, and
TensorBoard purges its events past that step, so the logs read like those of an unbroken run.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

from fastdecoders.io import write_image


def _truncate_csv(path: Path, step: int) -> None:
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


class RunLog:
    """No-op on processes other than 0 (``enabled=False``)."""

    def __init__(self, out: Path, enabled: bool, total_steps: int, start_step: int, tensorboard: bool):
        self.out, self.enabled = out, enabled
        self.bar = None
        self.tb = None
        self.notes: list[str] = []
        if not enabled:
            return
        from tqdm import tqdm

        for name in ("train_log.csv", "val_log.csv"):
            _truncate_csv(out / name, start_step)
        # no bar when stderr is not a terminal (a log file): plain lines every log.every steps instead
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=None, file=sys.stderr)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)
            except ImportError:  # torch's writer needs the tensorboard package
                self.notes.append("TensorBoard logs skipped: pip install tensorboard")

    def _row(self, name: str, values: dict[str, float | int]) -> None:
        """Append a row; a column seen for the first time (a loss term that a later phase turns on) rewrites the
        file with the wider header, earlier rows leaving it empty."""
        path = self.out / name
        header: list[str] = []
        if path.is_file():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
        new_keys = [k for k in values if k not in header]
        if new_keys and header:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            header += new_keys
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header, restval="")
                writer.writeheader()
                writer.writerows(rows)
        elif new_keys:
            header = list(values)
            with path.open("w", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writeheader()
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header, restval="").writerow(values)

    def note(self, step: int, text: str) -> None:
        """A line in the log (stderr) and in the run's notes (model card), e.g. a loss phase change."""
        if not self.enabled:
            return
        line = f"step {step}: {text}"
        self.notes.append(line)
        self._say(line)

    def _say(self, line: str) -> None:
        """A line on stderr that does not break the progress bar."""
        (self.bar.write if self.bar is not None and not self.bar.disable else print)(line, file=sys.stderr)

    def _record(self, kind: str, step: int, values: dict[str, float]) -> None:
        """A row of ``{kind}_log.csv`` and the ``{kind}/...`` TensorBoard scalars."""
        self._row(f"{kind}_log.csv", {"step": step, **{k: round(v, 6) for k, v in values.items()}})
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{kind}/{key}", value, step)

    def step(self, step: int, values: dict[str, float]) -> None:
        """A training row: step, lr, loss terms, images/s."""
        if not self.enabled:
            return
        self._record("train", step, values)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.1f}", refresh=False)
        else:
            print(f"step {step}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                  f"{values['images_per_s']:.1f} images/s", file=sys.stderr)  # fmt: skip

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def val(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._record("val", step, values)
        self._say(f"val @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def grid(self, step: int, grid01: torch.Tensor) -> Path | None:
        """Write a sample grid ((3, H, W) in [0, 1]) as OUT/samples/step_NNNNNNN.png and to TensorBoard."""
        if not self.enabled:
            return None
        path = write_image(grid01, self.out / "samples" / f"step_{step:07d}.png")
        if self.tb is not None:
            self.tb.add_image("samples", grid01.clamp(0, 1), step)
        return path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


class Running:
    """Per-step values (loss terms, grad norm) summed on the device between log points: no sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
            self.counts[name] = self.counts.get(name, 0) + 1

    def loss_sum(self) -> float | None:
        """The summed loss since the last log point (NaN/Inf if any step's was), or None."""
        return float(self.sums["loss"]) if "loss" in self.sums else None

    def means(self) -> dict[str, float]:
        """Means since the last log point; starts a new window."""
        values = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return values
