"""The client's half of the model: its tokenizer and its input embedding table, nothing else.

A vLLM server given prompt embeddings applies no tokenizer and no template: the client sends the
embeddings of every position. :class:`ClientModel` reads what that takes from the same model
directory the server loaded (config, tokenizer, and the one embedding tensor out of the
safetensors files; the other weights are never read) and turns templated queries plus a soft
prompt into those rows, exactly as the local backend lays out its inputs (:mod:`..local.encoding`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lmaas_tune.errors import ConfigError, ModelLoadError, VerbalizerError
from lmaas_tune.backends.base import ModelKind, ScoringBatch
from lmaas_tune.backends.local.encoding import EncodedBatch, encode_batch, label_token_ids
from lmaas_tune.backends.local.models import ModelSource, converted_gguf_dir, detect_kind, resolve_model

log = logging.getLogger("lmaas_tune")

#: names the input embedding tensor has in the architectures transformers saves (suffixes)
_EMBEDDING_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
                    "tok_embeddings.weight")


@dataclass(frozen=True)
class ClientModel:
    """Tokenizer and input embedding table of the served model (see the module docstring)."""

    name: str
    directory: Path
    tokenizer: Any
    table: np.ndarray  # [vocab, hidden] float32
    num_layers: int

    @classmethod
    def load(cls, spec: str) -> "ClientModel":
        """From a ``--model`` value: the embedded name, a ``.gguf`` file, a directory or a hub id."""
        source = resolve_model(spec)
        directory = _directory(source)
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(str(directory))
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds (OSError, ValueError, its own)
            said = " ".join(str(exc).split())[:300]
            raise ModelLoadError(f"could not read the config and tokenizer in {directory} ({type(exc).__name__}: "
                                 f"{said}); check that --model is the model directory the server was started on") from exc
        if detect_kind(config) is not ModelKind.CAUSAL:
            raise ConfigError(f"{source.name} is a masked LM; a vLLM server scores the next token of causal LMs only: "
                              f"use --backend local (or an lmaas-tune service) for masked LMs")
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        table = _embedding_table(directory, int(text_cfg.hidden_size))
        return cls(source.name, directory, tokenizer, table, int(getattr(text_cfg, "num_hidden_layers", 0) or 0))

    @property
    def hidden_size(self) -> int:
        return int(self.table.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.table.shape[0])

    @cached_property
    def embedding_std(self) -> float:
        return float(self.table.std())

    def encode(self, batch: ScoringBatch) -> EncodedBatch:
        """Token ids and label ids; every label word must be a single token (see :func:`single_token_labels`)."""
        return encode_batch(self.tokenizer, ModelKind.CAUSAL, batch, single_token_labels(self.tokenizer, batch.label_words))

    def rows(self, enc: EncodedBatch, prompt: np.ndarray | None) -> list[np.ndarray]:
        """Each query's whole input as embeddings ``[tokens, hidden]``: leading special token, soft
        prompt, template text (``prompt`` ``[L, hidden]`` or ``None``)."""
        out = []
        for ids in enc.ids:
            head, text = self.table[list(ids[:enc.insert_at])], self.table[list(ids[enc.insert_at:])]
            parts = [head, text] if prompt is None else [head, prompt.astype(np.float32, copy=False), text]
            out.append(np.concatenate(parts, axis=0))
        return out

    def embed_text(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.table[ids].copy()


def single_token_labels(tokenizer: Any, words: tuple[str, ...]) -> tuple[int, ...]:
    """Each label word's one token in its mid-sentence form, or a :class:`VerbalizerError`.

    A vLLM server returns the log-probability of the next token only, so a word that splits into
    several tokens cannot be scored whole, and reading its first piece would score another word.
    """
    for word in words:
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        pieces = [p for p in pieces if tokenizer.decode([p]).strip()] or pieces
        if len(pieces) > 1:
            raise VerbalizerError(
                f"label word {word!r} is {len(pieces)} tokens {tokenizer.convert_ids_to_tokens(pieces)} for this model; "
                f"the vLLM backend scores single-token label words only: choose a word that is one token "
                f"with --label-words")
    return label_token_ids(tokenizer, words)


def _directory(source: ModelSource) -> Path:
    if source.origin in ("embedded", "gguf"):
        return converted_gguf_dir(Path(source.location))
    if source.origin == "directory":
        return Path(source.location)
    from huggingface_hub import snapshot_download  # online only: the config, tokenizer and weight files

    try:
        return Path(snapshot_download(source.location, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise ModelLoadError(f"could not fetch {source.location!r}: {exc}; pass the model's local directory") from exc


def _embedding_table(directory: Path, hidden: int) -> np.ndarray:
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text("utf-8"))["weight_map"]
    else:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{directory} has no .safetensors file; the vLLM backend reads the input embeddings "
                                 f"from one (save the model with safe_serialization=True)")
        weight_map = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                weight_map.update({k: f.name for k in fh.keys()})
    names = [k for k in weight_map if k.endswith(_EMBEDDING_NAMES)]
    for name in sorted(names, key=len):
        with safe_open(str(directory / weight_map[name]), framework="pt") as fh:  # pt: numpy has no bfloat16
            table = fh.get_tensor(name)
        if table.ndim == 2 and table.shape[1] == hidden:
            return np.ascontiguousarray(table.float().numpy())
    raise ModelLoadError(f"found no input embedding table [vocab, {hidden}] in {directory} "
                         f"(looked for tensors named *{', *'.join(_EMBEDDING_NAMES)})")
