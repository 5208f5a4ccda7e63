"""Live previews during sampling: linear latent->RGB maps per family (shipped as ``<family>.json`` here) and a
diffusers ``callback_on_step_end`` that decodes each step to a preview (``fastdecoders.preview``). See
docs/previews.md."""

from fastdecoders.previews.callback import Preview, preview
from fastdecoders.previews.linear import LinearPreview, fit_linear, load_linear_preview, shipped_families
from fastdecoders.previews.sinks import PreviewFrame

__all__ = ["LinearPreview", "Preview", "PreviewFrame", "fit_linear", "load_linear_preview", "preview",
           "shipped_families"]  # fmt: skip
