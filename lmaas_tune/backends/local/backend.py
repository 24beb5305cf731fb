"""A backend that runs a transformers model in this process.

Soft prompts go in through ``inputs_embeds`` (no model patching). A whole population is scored in
batched passes: rows are (example, candidate) pairs sorted by length, packed under a token budget
and right-padded to the longest row of their pass. Only the label-word rows of the output
embedding are applied: a forward pre-hook on the output layer captures its input and stops the
forward pass before the vocabulary-sized projection. For causal LMs the keys and values of the soft
prompt, and of the template text every query starts with, are computed once per candidate and
shared by all its rows (:mod:`.prefix_cache`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from lmaas_tune.errors import ConfigError, InputTooLongError
from lmaas_tune.backends.base import Backend, BackendInfo, ModelKind, ScoringBatch, check_prompts
from .deep import capture_layer_inputs, inject, layer_input_std, layers_if_found, split_deep
from .encoding import EncodedBatch, encode_batch, label_token_ids
from .fused_llama import FusedLlama, fused_llama_supported
from .models import DEFAULT_MODEL, load_pretrained, resolve_model
from .prefix_cache import KeyValues, cache_for_rows, empty_cache, key_values

log = logging.getLogger("lmaas_tune")

_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


class _Captured(Exception):
    """Raised by the output-layer hook once it holds its input."""


class _Abandoned(Exception):
    """The caller of a scoring call was cancelled; the worker thread stops between passes."""


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} found); "
                          f"use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu or auto")
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX), not by emulation."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 where the hardware does it natively (CUDA with bf16, or a CPU with
    AVX-512 BF16/AMX), float16 on older GPUs, float32 otherwise. On the embedded model bfloat16
    scores ~2-3x faster than float32 on such a CPU and tunes to the same accuracy (docs/method.md, "The local backend and its speed")."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[dtype]


def compile_layers(model: Any, model_id: str) -> bool:
    """Compile ``model``'s transformer body in place (``torch.compile``, shapes dynamic); its output
    layer stays eager, so the label-only readout's hook still stops the pass before it. False (and
    a warning) when the model has no separate body to compile."""
    if not hasattr(torch.compiler, "set_stance"):
        raise ConfigError(f"--compile needs torch 2.6 or newer (this is {torch.__version__}); upgrade torch, "
                          f"or drop --compile")
    body = getattr(model, "base_model", model)
    if body is model:
        log.warning("--compile: %s has no transformer body apart from its output layer; it runs eagerly", model_id)
        return False
    body.compile(dynamic=True)
    return True


class LocalBackend(Backend):
    """Score soft prompts with a transformers model held in this process.

    ``token_budget`` caps the padded tokens of one forward pass (rows x length). ``share_prefix``
    (causal LMs): compute each candidate's soft-prompt keys/values once and run only the texts on
    top of them (see :mod:`.prefix_cache`); off, every row runs its whole sequence. ``fused`` (opt-in):
    run those text rows through :mod:`.fused_llama` where it supports the model (Llama architecture
    on a CPU), else through the model's own forward (docs/method.md, "The local backend and its speed", for what it gains and costs).
    ``compile`` (opt-in): compile the model's own layers with ``torch.compile`` (in place, on
    ``model``; the first calls of each new shape pay the compilation). Passes with layer hooks (deep
    prompts, the hidden-state probe; see :func:`.deep.pre_hooks`) run those layers eagerly.
    """

    def __init__(self, model: Any, tokenizer: Any, kind: ModelKind, *, model_id: str, token_budget: int = 2048,
                 share_prefix: bool = True, fused: bool = False, compile: bool = False) -> None:
        if token_budget < 1:
            raise ConfigError("token_budget must be positive")
        self._model = model
        self._tok = tokenizer
        self._kind = kind
        self._token_budget = token_budget
        self._share_prefix = share_prefix
        # transformers renamed the cache argument (past_key_values -> cache); use what this model takes
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="lmaas-local")
        self._encoded: OrderedDict[str, EncodedBatch] = OrderedDict()
        self._label_ids: dict[tuple[str, ...], tuple[int, ...]] = {}  # tokenised (and warned about) once
        param = next(model.parameters())
        self._device, self._dtype = param.device, param.dtype
        self._in_emb = model.get_input_embeddings()
        self._out_emb = model.get_output_embeddings()
        if self._out_emb is None:
            raise ConfigError(f"{model_id} has no output (LM head) layer; load it with its LM head")
        cfg = model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self._softcap = getattr(text_cfg, "final_logit_softcapping", None)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        weight = self._in_emb.weight.detach()
        self._layers = layers_if_found(model)  # deep prompts go in through pre-hooks on these (see .deep)
        use_fused = fused and share_prefix and kind is ModelKind.CAUSAL and fused_llama_supported(model)
        self._fused = FusedLlama(model) if use_fused else None
        if fused and not use_fused:
            log.warning("fused layers asked for, but they serve only Llama-architecture causal LMs on the CPU in "
                        "float32 or bfloat16 with a shared prefix; %s runs on its own layers", model_id)
        self._compiled = compile and compile_layers(model, model_id)
        limit = int(getattr(text_cfg, "max_position_embeddings", 0) or 0) - _POSITION_OFFSET.get(cfg.model_type, 0)
        tok_limit = getattr(tokenizer, "model_max_length", None) or 0
        if 0 < tok_limit < 1_000_000:
            limit = min(limit, tok_limit) if limit > 0 else tok_limit
        self._info = BackendInfo(
            model_id=model_id,
            kind=kind,
            hidden_size=int(weight.shape[1]),
            num_layers=int(getattr(text_cfg, "num_hidden_layers", 0) or 0),
            embedding_std=float(weight.float().std()),
            max_length=limit if limit > 0 else 1_000_000,
            device=str(self._device),
            dtype=str(self._dtype).replace("torch.", ""),
            supports_deep_prompts=bool(self._layers),
        )

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        kind: ModelKind | str | None = None,
        token_budget: int = 2048,
        share_prefix: bool = True,
        fused: bool = False,
        compile: bool = False,
    ) -> "LocalBackend":
        """Load a model by embedded name, ``.gguf`` path, local directory or hub id."""
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        source = resolve_model(model)
        net, tok, resolved = load_pretrained(source, kind=ModelKind(kind) if kind else None, dtype=dt)
        net.to(dev)
        return cls(net, tok, resolved, model_id=source.name, token_budget=token_budget, share_prefix=share_prefix,
                   fused=fused, compile=compile)

    @property
    def info(self) -> BackendInfo:
        return self._info

    @property
    def model(self) -> Any:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tok

    @property
    def shares_prefix(self) -> bool:
        """Whether prompted scoring runs the soft prompt once per candidate (causal LMs)."""
        return self._share_prefix and self._kind is ModelKind.CAUSAL

    @property
    def fused(self) -> bool:
        """Whether the text rows of a shared-prefix pass run through :mod:`.fused_llama`."""
        return self._fused is not None

    @property
    def compiled(self) -> bool:
        """Whether the model's own layers run compiled (``torch.compile``)."""
        return self._compiled

    def encode(self, batch: ScoringBatch) -> EncodedBatch:
        """Tokenised form of a batch, cached by content hash (a few batches per run)."""
        enc = self._encoded.get(batch.key)
        if enc is None:
            words = batch.label_words
            if words not in self._label_ids:
                self._label_ids[words] = label_token_ids(self._tok, words)
            enc = encode_batch(self._tok, self._kind, batch, self._label_ids[words])
            self._encoded[batch.key] = enc
            while len(self._encoded) > 8:
                self._encoded.popitem(last=False)
        else:
            self._encoded.move_to_end(batch.key)
        return enc

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        enc = await self._run(self.encode, batch)
        return tuple(int(x) for x in enc.lengths)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        """Scores in the worker thread; if this coroutine is cancelled (Ctrl-C), the thread stops
        after its current forward pass instead of finishing the whole population."""
        arr = check_prompts(prompts, self._info)
        abandon = threading.Event()
        try:
            return await self._run(self.score_sync, arr, batch, abandon)
        except asyncio.CancelledError:
            abandon.set()
            raise

    async def hidden_state_std(self, batch: ScoringBatch) -> tuple[float, ...]:
        """See :meth:`Backend.hidden_state_std`; one pass over ``batch`` with the manual template."""
        if not self._info.supports_deep_prompts:
            return await super().hidden_state_std(batch)
        return tuple(await self._run(self._hidden_state_std_sync, batch))

    async def embed_text(self, text: str) -> np.ndarray:
        """See :meth:`Backend.embed_text`: rows of the input embedding table, as float32."""
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            rows = self._in_emb(torch.tensor(ids, dtype=torch.long, device=self._device).reshape(-1))
        return rows.float().cpu().numpy().reshape(len(ids), self._info.hidden_size)

    def _hidden_state_std_sync(self, batch: ScoringBatch) -> list[float]:
        enc = self.encode(batch)
        with torch.inference_mode(), capture_layer_inputs(self._layers) as seen:
            embeds, mask = self._embed_rows([(n, 0) for n in range(len(enc.ids))], enc, skip=0)
            self._head_input(embeds, mask)
            return layer_input_std(embeds, seen, mask)

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise ConfigError("this backend is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the forward pass -------------------------------------------------------------------

    def score_sync(self, prompts: np.ndarray | None, batch: ScoringBatch,
                   abandon: threading.Event | None = None) -> np.ndarray:
        """Blocking form of :meth:`score` (runs in the backend's worker thread)."""
        enc = self.encode(batch)
        n_prompts = 1 if prompts is None else prompts.shape[0]
        plen = 0 if prompts is None else prompts.shape[-2]
        lengths = enc.lengths
        too_long = np.flatnonzero(lengths + plen > self._info.max_length)
        if too_long.size:
            raise InputTooLongError(
                f"{too_long.size} of {len(lengths)} input(s) exceed the model limit of {self._info.max_length} "
                f"tokens with a {plen}-token prompt (longest {int(lengths.max()) + plen}); drop them, "
                f"shorten the texts, or use a shorter prompt"
            )
        with torch.inference_mode():
            prompt_t = None if prompts is None or plen == 0 else torch.from_numpy(prompts).to(self._device, self._dtype)
            deep, prompt_t = split_deep(prompt_t)  # a deep prompt's slot 0 is the input prompt; hooks add the rest
            prefix = None
            if prompt_t is not None and self._shares_prefix(enc):
                with inject(self._layers, deep, enc.insert_at):  # the prefix pass holds the prompt positions
                    prefix = self._prefix_pass(enc, prompt_t)
            elif prompt_t is None and self._shares_prefix(enc) and enc.shared_after_prompt:
                # no soft prompt: the text every query starts with (a template's head, in-context
                # demonstrations) still runs once, as an empty prompt's prefix
                prefix = self._prefix_pass(enc, self._in_emb.weight.new_empty((1, 0, self._info.hidden_size)))
            label_w = self._out_emb.weight[list(enc.label_ids)].float()
            bias = getattr(self._out_emb, "bias", None)
            label_b = bias[list(enc.label_ids)].float() if bias is not None else None
            out = torch.empty(n_prompts, len(lengths), len(enc.label_ids), dtype=torch.float32)
            order = np.argsort(-lengths, kind="stable")
            rows = [(int(n), p) for n in order for p in range(n_prompts)]
            start = 0
            while start < len(rows):
                if abandon is not None and abandon.is_set():
                    raise _Abandoned("scoring abandoned: its caller was cancelled")
                width = int(lengths[rows[start][0]]) + plen  # longest row of this pass
                take = max(1, self._token_budget // width)
                chunk = rows[start:start + take]
                start += take
                if prefix is not None:
                    hidden = self._forward_on_prefix(chunk, enc, prefix, plen)
                else:
                    with inject(self._layers, None if deep is None else deep[[p for _, p in chunk]], enc.insert_at):
                        hidden = self._forward_chunk(chunk, enc, prompt_t, plen)
                logits = hidden.float() @ label_w.T
                if label_b is not None:
                    logits = logits + label_b
                if self._softcap:
                    logits = torch.tanh(logits / self._softcap) * self._softcap
                n_idx = torch.tensor([n for n, _ in chunk])
                p_idx = torch.tensor([p for _, p in chunk])
                out[p_idx, n_idx] = logits.float().cpu()
        return out.numpy()

    def _forward_chunk(
        self, chunk: list[tuple[int, int]], enc: EncodedBatch, prompt_t: torch.Tensor | None, plen: int
    ) -> torch.Tensor:
        """Input of the output layer at each row's readout position: ``[rows, hidden]``."""
        embeds, mask = self._embed_rows(chunk, enc, skip=0)
        if prompt_t is not None:
            s = enc.insert_at
            p_idx = torch.tensor([p for _, p in chunk], device=self._device)
            embeds = torch.cat([embeds[:, :s], prompt_t[p_idx], embeds[:, s:]], dim=1)
            mask = torch.cat([torch.ones((len(chunk), plen), dtype=mask.dtype, device=mask.device), mask], dim=1)
        return self._read_at(embeds, mask, [int(enc.readout[n]) + plen for n, _ in chunk])

    def _embed_rows(self, chunk: list[tuple[int, int]], enc: EncodedBatch, *, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings and attention mask of each row's tokens from ``skip`` on, right-padded."""
        seqs = [enc.ids[n][skip:] for n, _ in chunk]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        return self._in_emb(ids.to(self._device)), mask.to(self._device)

    # -- shared-prefix key/values (causal LMs; see prefix_cache) -------------------------------

    def _shares_prefix(self, enc: EncodedBatch) -> bool:
        """Whether to score a prompt on a shared prefix (every text needs a token after the prompt)."""
        return self.shares_prefix and bool((enc.lengths > enc.insert_at).all())

    def _prefix_pass(self, enc: EncodedBatch, prompt_t: torch.Tensor) -> tuple[KeyValues, int] | None:
        """Keys/values of ``[leading special token] + prompt + [text every query starts with]`` for
        each candidate, in one pass.

        ``None`` (and sharing switched off for this backend) if the model does not take a cache.
        """
        s, n_prompts = enc.insert_at, prompt_t.shape[0]
        end = s + enc.shared_after_prompt

        def embed(ids: tuple[int, ...]) -> torch.Tensor:  # [n_prompts, len(ids), hidden]; ids may be empty
            tokens = torch.tensor([ids], dtype=torch.long, device=self._device)
            return self._in_emb(tokens).expand(n_prompts, -1, -1)

        embeds = torch.cat([embed(enc.ids[0][:s]), prompt_t, embed(enc.ids[0][s:end])], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self._device)
        cache = empty_cache(self._model.config)
        try:
            self._head_input(embeds, mask, cache=cache)
        except (TypeError, ValueError, AttributeError) as exc:
            log.info("%s does not take a key/value cache (%s); scoring without a shared prefix",
                     self._info.model_id, exc)
            self._share_prefix = False
            return None
        kv = key_values(cache)
        return (kv if self._fused is None else self._fused.prefix(kv)), embeds.shape[1]

    def _forward_on_prefix(
        self, chunk: list[tuple[int, int]], enc: EncodedBatch, prefix: tuple[KeyValues, int], plen: int
    ) -> torch.Tensor:
        """As :meth:`_forward_chunk`, running only the text after the soft prompt on its stored prefix."""
        kv, width = prefix
        s = enc.insert_at + enc.shared_after_prompt  # the prefix pass ran everything before this
        embeds, mask = self._embed_rows(chunk, enc, skip=s)
        p_idx = torch.tensor([p for _, p in chunk], device=self._device)
        positions = [int(enc.readout[n]) - s for n, _ in chunk]
        if self._fused is not None:
            return self._fused.hidden_at(embeds, kv, p_idx, torch.tensor(positions))
        mask = torch.cat([torch.ones((len(chunk), width), dtype=mask.dtype, device=mask.device), mask], dim=1)
        return self._read_at(embeds, mask, positions, cache=cache_for_rows(kv, p_idx, self._model.config))

    def _read_at(self, embeds: torch.Tensor, mask: torch.Tensor, positions: list[int], *, cache: Any = None) -> torch.Tensor:
        """Input of the output layer at ``positions[r]`` of each row ``r``: ``[rows, hidden]``."""
        captured = self._head_input(embeds, mask, cache=cache)
        rows = torch.arange(len(positions), device=self._device)
        return captured[rows, torch.tensor(positions, device=self._device)]

    def _head_input(self, embeds: torch.Tensor, mask: torch.Tensor, *, cache: Any = None) -> torch.Tensor:
        """Input of the output layer at every position; with ``cache``, ``embeds`` continue its sequence."""
        holder: dict[str, torch.Tensor] = {}

        def grab(_module: Any, args: tuple[Any, ...]) -> None:
            holder["h"] = args[0]
            raise _Captured

        handle = self._out_emb.register_forward_pre_hook(grab)
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": mask}
        if cache is not None:
            kwargs.update({self._cache_arg: cache, "use_cache": True})
        elif self._kind is ModelKind.CAUSAL:
            kwargs["use_cache"] = False
        try:
            self._model(**kwargs)
        except _Captured:
            pass
        finally:
            handle.remove()
        if "h" not in holder:
            raise RuntimeError("the model's forward pass did not reach its output layer")
        return holder["h"]
