"""Deep prompts through the local backend and through a real service, on the tiny fixture models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from remote_support import CAUSAL_BATCH, MASKED_BATCH, served

from lmaas_tune.backends.base import Backend, BackendInfo, ModelKind, ScoringBatch
from lmaas_tune.backends.local.backend import LocalBackend
from lmaas_tune.backends.remote.client import RemoteBackend
from lmaas_tune.projection import DeepProjection, DeepProjectionSpec
from lmaas_tune.errors import ConfigError

L = 3


def _batch(backend: LocalBackend) -> ScoringBatch:
    return MASKED_BATCH if backend.info.kind is ModelKind.MASKED else CAUSAL_BATCH


def _deep(backend: LocalBackend, p: int, seed: int = 0, scale: float = 0.5) -> np.ndarray:
    info = backend.info
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((p, info.num_layers, L, info.hidden_size))).astype(np.float32)


def _by_hand(backend: LocalBackend, deep: np.ndarray, batch: ScoringBatch) -> np.ndarray:
    """Logits ``[N, C]`` of one deep prompt, one query at a time, layer by layer with the prompt added by hand."""
    model, enc = backend.model, backend.encode(batch)
    kind = model.config.model_type
    out = []
    with torch.inference_mode():
        prompt = torch.from_numpy(deep)
        for n, ids in enumerate(enc.ids):
            emb = model.get_input_embeddings()(torch.tensor([ids]))
            s = enc.insert_at
            h = torch.cat([emb[:, :s], prompt[None, 0], emb[:, s:]], dim=1)
            positions = torch.arange(h.shape[1])[None]
            if kind == "llama":
                extra = {"position_embeddings": model.model.rotary_emb(h, positions), "position_ids": positions}
                layers, final, head = model.model.layers, model.model.norm, model.lm_head
            elif kind == "gpt2":
                h, extra = h + model.transformer.wpe(positions), {}
                layers, final, head = model.transformer.h, model.transformer.ln_f, model.lm_head
            else:
                h, extra = model.roberta.embeddings(inputs_embeds=h), {}
                layers, final, head = model.roberta.encoder.layer, torch.nn.Identity(), model.lm_head
            for i, layer in enumerate(layers):
                if i > 0:
                    h = h.clone()
                    h[:, s:s + L] = h[:, s:s + L] + prompt[i]
                h = layer(h, **extra)
                h = h[0] if isinstance(h, tuple) else h
            logits = head(final(h))[0, int(enc.readout[n]) + L]
            out.append(logits[list(enc.label_ids)].numpy())
    return np.stack(out)


async def test_deep_scoring_matches_a_hand_built_forward(any_backend: LocalBackend) -> None:
    assert any_backend.info.supports_deep_prompts
    batch = _batch(any_backend)
    deep = _deep(any_backend, 3)
    got = await any_backend.score(deep, batch)
    assert got.shape == (3, len(batch), 2)
    for p in range(3):
        np.testing.assert_allclose(got[p], _by_hand(any_backend, deep[p], batch), rtol=1e-4, atol=1e-4)


async def test_zero_deep_slots_equal_the_shallow_prompt(any_backend: LocalBackend) -> None:
    batch = _batch(any_backend)
    deep = _deep(any_backend, 2)
    deep[:, 1:] = 0
    np.testing.assert_allclose(await any_backend.score(deep, batch), await any_backend.score(deep[:, 0], batch),
                               rtol=0, atol=1e-6)
    shallow_only = await any_backend.score(_deep(any_backend, 2)[:, 0], batch)
    assert not np.allclose(shallow_only, await any_backend.score(_deep(any_backend, 2), batch), atol=1e-3)


async def test_deep_rows_are_independent_and_prefix_sharing_agrees(causal_backend: LocalBackend) -> None:
    batch = CAUSAL_BATCH
    deep = _deep(causal_backend, 4, seed=2)
    together = await causal_backend.score(deep, batch)
    for p in range(4):
        np.testing.assert_allclose(together[p], (await causal_backend.score(deep[p:p + 1], batch))[0], atol=1e-5)
    unshared = LocalBackend(causal_backend.model, causal_backend.tokenizer, ModelKind.CAUSAL,
                            model_id="unshared", share_prefix=False)
    try:
        np.testing.assert_allclose(await unshared.score(deep, batch), together, atol=1e-5)
    finally:
        await unshared.aclose()


async def test_fused_llama_path_scores_deep_prompts_as_the_layers_do(llama_backend: LocalBackend) -> None:
    """Deep prompts enter in the prefix pass (layer pre-hooks); the fused path then runs the texts."""
    fused = LocalBackend(llama_backend.model, llama_backend.tokenizer, ModelKind.CAUSAL, model_id="fused", fused=True)
    assert fused.fused
    deep = _deep(llama_backend, 3, seed=4)
    try:
        got = await fused.score(deep, CAUSAL_BATCH)
    finally:
        await fused.aclose()
    np.testing.assert_allclose(got, await llama_backend.score(deep, CAUSAL_BATCH), atol=1e-5)
    np.testing.assert_allclose(got[1], _by_hand(llama_backend, deep[1], CAUSAL_BATCH), rtol=1e-4, atol=1e-4)


async def test_compiled_layers_score_as_the_eager_ones(llama_dir: Path, llama_backend: LocalBackend) -> None:
    """compile=True compiles the model's body (real torch.compile; the scoring goes through the compiled
    module, counted here by wrapping it, not by dynamo's process-wide counters, which depend on what
    other tests compiled before); shallow prompts, on the shared prefix and without it, score what
    the eager layers score; deep prompts and the hidden-state probe (layer hooks) run those layers
    eagerly and agree too."""
    compiled = LocalBackend.load(str(llama_dir), device="cpu", dtype="float32", compile=True)
    assert compiled.compiled and not llama_backend.compiled
    body = compiled.model.base_model
    compiled_forward = body._compiled_call_impl
    assert compiled_forward is not None  # nn.Module.compile() installed it: calls of the body go there
    calls = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return compiled_forward(*args, **kwargs)

    body._compiled_call_impl = counting
    shallow = _deep(llama_backend, 3, seed=5)[:, 0]
    try:
        np.testing.assert_allclose(await compiled.score(shallow, CAUSAL_BATCH),
                                   await llama_backend.score(shallow, CAUSAL_BATCH), atol=1e-5)
        assert calls  # the scoring ran through the compiled module
        deep = _deep(llama_backend, 2, seed=6)
        np.testing.assert_allclose(await compiled.score(deep, CAUSAL_BATCH),
                                   await llama_backend.score(deep, CAUSAL_BATCH), atol=1e-5)
        np.testing.assert_allclose(await compiled.hidden_state_std(CAUSAL_BATCH),
                                   await llama_backend.hidden_state_std(CAUSAL_BATCH), rtol=1e-5)
        np.testing.assert_allclose(await compiled.score(None, CAUSAL_BATCH),
                                   await llama_backend.score(None, CAUSAL_BATCH), atol=1e-5)
    finally:
        await compiled.aclose()


async def test_hidden_state_std_and_shape_checks(any_backend: LocalBackend) -> None:
    std = await any_backend.hidden_state_std(_batch(any_backend))
    assert len(std) == any_backend.info.num_layers and all(s > 0 and np.isfinite(s) for s in std)
    bad = _deep(any_backend, 1)[:, :1]  # one slot for a two-layer model
    with pytest.raises(ConfigError, match="layer slots"):
        await any_backend.score(bad, _batch(any_backend))


@pytest.mark.parametrize("upload", ["embeddings", "projection"])
async def test_remote_deep_scoring_equals_local(request: pytest.FixtureRequest, upload: str) -> None:
    for name in ("masked", "llama"):
        backend: LocalBackend = request.getfixturevalue(f"{name}_backend")
        info, batch = backend.info, _batch(backend)
        std = await backend.hidden_state_std(batch)
        spec = DeepProjectionSpec.for_model(seed=9, prompt_length=L, hidden_size=info.hidden_size, intrinsic_dim=5,
                                            layer_std=std, alpha=1.0, sigma0=1.0)
        projection = DeepProjection(spec)
        z = np.random.default_rng(1).standard_normal((3, spec.dim))
        local = await backend.score_projected(z, projection, batch)
        async with served(backend) as server, RemoteBackend([server.url], upload=upload) as remote:
            assert remote.info.supports_deep_prompts and remote.upload_mode == upload
            assert await remote.hidden_state_std(batch) == pytest.approx(std, rel=1e-6)
            np.testing.assert_allclose(await remote.score_projected(z, projection, batch), local, rtol=0, atol=1e-5)
            np.testing.assert_allclose(await remote.score(projection(z), batch), local, rtol=0, atol=1e-5)


async def test_a_service_without_deep_prompts_refuses_them(masked_backend: LocalBackend) -> None:
    async with served(ShallowOnly(masked_backend)) as server, RemoteBackend([server.url]) as remote:
        assert not remote.info.supports_deep_prompts
        with pytest.raises(ConfigError, match="deep"):
            await remote.score(_deep(masked_backend, 1), MASKED_BATCH)
        with pytest.raises(ConfigError, match="deep"):
            await remote.hidden_state_std(MASKED_BATCH)


class ShallowOnly(Backend):
    """A real backend that declares no deep prompts (as a backend without layer hooks would)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def info(self) -> BackendInfo:
        return replace(self.inner.info, supports_deep_prompts=False)

    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        return await self.inner.token_lengths(batch)

    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        return await self.inner.score(prompts, batch)
