"""Deep prompts for a transformers model held in this process, without patching its source.

**Layout.** A deep prompt for a model with ``N`` transformer layers is an array ``[N, L, D]`` (a
population: ``[P, N, L, D]``). Slot 0 is the input-embedding prompt: exactly the shallow prompt of
BBT, spliced in as ``L`` extra input positions right after the leading special token. Slot
``i >= 1`` is *added* to the hidden state entering layer ``i`` (0-based) at those same ``L``
positions, as BBTv2 does; every other position is left alone. A deep prompt whose slots
``1..N-1`` are zero therefore scores exactly as its slot 0 alone does as a shallow prompt.

**Mechanism.** :func:`inject` registers forward pre-hooks (``with_kwargs=True``) on layers
``1..N-1`` of the layer list :func:`find_layers` locates. Each hook adds row ``r``'s prompt to row
``r`` of the hidden states at positions ``[start, start + L)`` *of the current pass*. A pass
that holds no prompt positions (the suffix pass of a causal LM whose prompt prefix was computed
in a separate pass, with cached key/values) uses ``start=None`` and is left untouched, so the
prompt acts exactly once, in whichever pass holds its positions.

:func:`layer_input_std` measures, for the per-layer projection scale of BBTv2 (DESIGN §1), the
3-sigma-clipped std of each slot's tensor on a batch: the input embeddings for slot 0, the hidden
state entering layer ``i`` for slot ``i``, over real (non-padding) positions only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from lmaas_tune.errors import ConfigError

_LAYER_LIST_NAMES = ("layers", "layer", "h", "block", "blocks")


def find_layers(model: Any) -> list[torch.nn.Module]:
    """The model's transformer layers in order: the ``ModuleList`` holding ``num_hidden_layers`` blocks.

    Found by structure, not by model type: among the module lists whose length is the config's
    layer count, the one named like a layer stack (``layers``, ``layer``, ``h``, ``block``) with the
    most parameters (so a list of small per-layer helpers never wins).
    """
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = int(getattr(text_cfg, "num_hidden_layers", 0) or 0)
    found: list[tuple[bool, int, torch.nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            named = name.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES
            size = sum(p.numel() for p in module.parameters())
            found.append((named, size, module))
    if not found:
        raise ConfigError(f"cannot find the {n} transformer layers of this {type(model).__name__}; "
                          f"deep prompts need a model whose layers form one module list")
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return list(found[0][2])


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs["hidden_states"]


def _replace(args: tuple[Any, ...], kwargs: dict[str, Any], h: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


@contextmanager
def pre_hooks(hooks: list[tuple[torch.nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """Forward pre-hooks (``with_kwargs=True``) on the given layers for the block. Layers compiled by
    ``torch.compile`` run eagerly meanwhile: a hook is a new closure on every call, and compiled
    code guarded on it would recompile each time."""
    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer, hook in hooks]
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6; nothing is compiled before
    try:
        with stance("force_eager") if stance is not None else nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def inject(layers: list[torch.nn.Module], prompts: torch.Tensor | None, start: int | None) -> Iterator[None]:
    """Within the block, add ``prompts[r, i]`` to row ``r`` of the hidden state entering ``layers[i]``.

    ``prompts`` is ``[rows, N, L, D]`` (slot 0 is not used here: it is the input-embedding prompt,
    which the caller splices into the embeddings) aligned with the rows of the passes run inside
    the block; ``start`` is the first prompt position in those passes, ``None`` when they hold no
    prompt positions (then nothing is added). ``prompts is None`` does nothing either.
    """
    if prompts is None or start is None or prompts.shape[1] < 2:
        yield
        return
    if prompts.shape[1] != len(layers):
        raise ConfigError(f"a deep prompt has {prompts.shape[1]} layer slots; the model has {len(layers)} layers")
    length = prompts.shape[2]

    def hook_for(slot: torch.Tensor) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            h = _hidden(args, kwargs)
            if h.shape[0] != slot.shape[0]:
                raise ConfigError(f"deep prompt rows ({slot.shape[0]}) do not match the pass's rows ({h.shape[0]})")
            out = h.clone()
            out[:, start:start + length] += slot.to(h.dtype)
            return _replace(args, kwargs, out)

        return hook

    with pre_hooks([(layers[i], hook_for(prompts[:, i])) for i in range(1, len(layers))]):
        yield


def clipped_std(values: torch.Tensor) -> float:
    """Std of ``values`` after dropping those more than 3 standard deviations from their mean."""
    x = values.detach().double().flatten()
    mu, sd = x.mean(), x.std(unbiased=False)
    kept = x[(x - mu).abs() <= 3 * sd]
    return float(kept.std(unbiased=False)) if kept.numel() > 1 else float(sd)


@contextmanager
def capture_layer_inputs(layers: list[torch.nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden state entering each layer (one tensor per layer) during the block."""
    seen: list[torch.Tensor] = []

    def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(_hidden(args, kwargs).detach())

    with pre_hooks([(layer, grab) for layer in layers]):
        yield seen


def layer_input_std(embeds: torch.Tensor, layer_inputs: list[torch.Tensor], mask: torch.Tensor) -> list[float]:
    """Per-slot clipped std (see the module docstring): ``embeds`` and each layer input ``[B, T, D]``
    read at the positions where ``mask [B, T]`` is 1."""
    keep = mask.bool()
    out = [clipped_std(embeds[keep])]
    out += [clipped_std(h[keep]) for h in layer_inputs[1:]]
    return out


def split_deep(prompts: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(deep prompts or None, input-embedding prompts)``: a deep ``[P, N, L, D]`` gives slot 0 as the
    input prompt; a shallow ``[P, L, D]`` (or ``None``) is the input prompt itself."""
    if prompts is None or prompts.ndim == 3:
        return None, prompts
    return prompts, prompts[:, 0]


def layers_if_found(model: Any) -> list[torch.nn.Module]:
    """:func:`find_layers`, or an empty list for a model whose layers cannot be found (no deep prompts then)."""
    try:
        return find_layers(model)
    except ConfigError:
        return []
