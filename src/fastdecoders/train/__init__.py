"""Distillation training (``fastdecoders train CONFIG.yaml``): a student decoder learns to replace a teacher.

* ``config``: the run's typed dataclasses (read, overridden and checked by ``fastdecoders.config``);
* ``teachers``: the teacher (TAE encoder/decoder pair or a diffusers VAE) and the latent-space checks;
* ``data``: images/videos, the fixed validation split, the sharded latent cache, random crops and flips;
* ``losses`` / ``perceptual``: pixel, distillation, perceptual (LPIPS or EfficientNet-Lite0), patch-GAN, temporal;
* ``features``: feature alignment of named student/teacher modules (hooks, 1x1 projections); loss weights may change
  between ``loss.phases`` (see ``config.LossConfig``);
* ``student``: build the student, the checks before any loading, its training call (``decode_latents``), validation;
* ``state``: ``RunState`` (student, EMA, optimizer, schedule, discriminator, step, clock) whose ``state_dict`` is a
  checkpoint; ``checkpoint``: files, RNG states, which checkpoint to resume from;
* ``distributed``: torchrun's process group, collectives, one error line when a peer dies;
* ``loop``: ``train()``, the run top to bottom; ``logs``: CSV/TensorBoard/progress; ``card``: model file, card, summary.

>>> from fastdecoders.train import load_config, train
>>> result = train(load_config("configs/tiny.yaml"), "runs/tiny")
"""

from fastdecoders.train.config import TrainConfig, config_from_dict, load_config
from fastdecoders.train.loop import train

__all__ = ["TrainConfig", "config_from_dict", "load_config", "train"]
