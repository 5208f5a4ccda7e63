"""Dynamic switch: a light decoder for most items, the heavy one where a tiny gate predicts the light one falls short.

>>> sw = fastdecoders.switch(light, heavy, gate, budget=0.2, calibration=held_back_latents)
>>> images = sw(latents)                       # heavy-routed items are heavy's own output, the rest light's
>>> sw.save_pretrained("switch.safetensors")   # load_decoder / every CLI verb / use(pipe, ...) take the file

See docs/switch.md.
"""

from fastdecoders.switching.core import PIPELINE_VAE, SwitchConfig, SwitchDecoder
from fastdecoders.switching.gate import Gate, GateConfig

__all__ = ["PIPELINE_VAE", "Gate", "GateConfig", "SwitchConfig", "SwitchDecoder"]
