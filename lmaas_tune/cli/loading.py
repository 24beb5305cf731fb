"""Opening the backend a command runs on, with a note of what is being loaded."""

from __future__ import annotations

import time

from lmaas_tune.backends.base import Backend
from lmaas_tune.backends.factory import BackendSettings, open_backend
from lmaas_tune.backends.local.models import cache_root, needs_conversion, resolve_model

from .display import Display


def open_with_notes(settings: BackendSettings, display: Display) -> Backend:
    """Load the backend ``settings`` name, telling the user what it loads and how long it took."""
    start = time.perf_counter()
    what = ", ".join(settings.endpoints) if settings.endpoints else settings.model
    display.note(f"loading {what} ({settings.backend} backend)...")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough
    if not settings.endpoints and settings.backend == "local" and needs_conversion(resolve_model(settings.model)):
        display.note(f"first use of {settings.model}: de-quantising its GGUF file once into {cache_root()} (about 20-30 s)")
    backend = open_backend(settings)
    info = backend.info
    display.note(f"loaded {info.model_id}: {info.kind.value} LM, hidden {info.hidden_size}, "
                 f"{info.device}/{info.dtype}, {time.perf_counter() - start:.1f} s")
    if getattr(backend, "compiled", False):
        display.note("--compile: the first calls compile the model's layers (minutes on a CPU); later ones run compiled")
    return backend
