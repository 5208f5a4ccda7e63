"""Distillation training (``fastdecoders train CONFIG.yaml``): a student decoder learns to replace a teacher.

* ``config``: typed dataclasses that a YAML file maps onto, ``--set`` overrides, validation;
* ``teachers``: the teacher (TAE encoder/decoder pair or a diffusers VAE) and the latent-space checks;
* ``data``: images/videos, the fixed validation split, the sharded latent cache, random crops and flips;
* ``losses`` / ``perceptual``: pixel, distillation, perceptual (LPIPS or EfficientNet-Lite0), patch-GAN, temporal;
* ``features``: feature alignment of named student/teacher modules (hooks, 1x1 projections); loss weights may change
  between ``loss.phases`` (see ``config.LossConfig``);
* ``loop``: the training loop (EMA, warm-up + cosine, bf16 autocast, DDP, exact resume); ``card``: the model card.

>>> from fastdecoders.train import load_config, train
>>> result = train(load_config("configs/tiny.yaml"), "runs/tiny")
"""

from fastdecoders.train.config import TrainConfig, config_from_dict, load_config
from fastdecoders.train.loop import train

__all__ = ["TrainConfig", "config_from_dict", "load_config", "train"]
