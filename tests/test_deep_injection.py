"""Per-layer prompt injection (backends/deep.py) on tiny real models, against a hand-built forward pass.

The hand-built pass runs each model's own layer modules one by one and adds slot ``i`` of the
deep prompt to the hidden state entering layer ``i`` at the prompt positions, exactly as the
layout in :mod:`lmaas_tune.backends.local.deep` defines it; the hooked model must agree with it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmaas_tune.backends.local.deep import capture_layer_inputs, clipped_std, find_layers, inject

LAYERS, HIDDEN, L, START = 3, 32, 2, 1


def _tiny(kind: str) -> Any:
    torch.manual_seed(3)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=HIDDEN, intermediate_size=64,
                                            num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=1,
                                            max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                                            eos_token_id=2)).eval()
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64,
                                          bos_token_id=0, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0)).eval()
    from transformers import RobertaConfig, RobertaForMaskedLM

    return RobertaForMaskedLM(RobertaConfig(vocab_size=300, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
                                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def _by_hand(kind: str, model: Any, embeds: torch.Tensor, deep: torch.Tensor | None) -> torch.Tensor:
    """The last hidden state, layer by layer, adding ``deep[:, i]`` before layer ``i >= 1`` by hand."""
    t = embeds.shape[1]
    positions = torch.arange(t)[None]
    if kind == "llama":
        body = model.model
        h, extra = embeds, {"position_embeddings": body.rotary_emb(embeds, positions), "position_ids": positions}
        layers, final = body.layers, body.norm
    elif kind == "gpt2":
        body = model.transformer
        h, extra, layers, final = embeds + body.wpe(positions), {}, body.h, body.ln_f
    else:
        body = model.roberta
        h, extra, layers, final = body.embeddings(inputs_embeds=embeds), {}, body.encoder.layer, torch.nn.Identity()
    for i, layer in enumerate(layers):
        if i > 0 and deep is not None:
            h = h.clone()
            h[:, START:START + L] = h[:, START:START + L] + deep[:, i]
        h = layer(h, **extra)
        h = h[0] if isinstance(h, tuple) else h
    return final(h)


def _hooked(model: Any, embeds: torch.Tensor, deep: torch.Tensor | None, start: int | None = START) -> torch.Tensor:
    with inject(find_layers(model), deep, start):
        return model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("kind", ["roberta", "llama", "gpt2"])
def test_injection_matches_a_hand_built_forward(kind: str) -> None:
    model = _tiny(kind)
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]]))
        deep = 0.5 * torch.randn(2, LAYERS, L, HIDDEN, generator=torch.Generator().manual_seed(0))
        plain = _hooked(model, embeds, None)
        torch.testing.assert_close(plain, _by_hand(kind, model, embeds, None), rtol=1e-5, atol=1e-5)
        got = _hooked(model, embeds, deep)
        torch.testing.assert_close(got, _by_hand(kind, model, embeds, deep), rtol=1e-5, atol=1e-5)
        assert (got - plain).abs().max() > 1e-2  # the prompt does act
        # zero slots, no positions in the pass, or no prompt at all: nothing changes
        torch.testing.assert_close(_hooked(model, embeds, torch.zeros_like(deep)), plain, rtol=0, atol=0)
        torch.testing.assert_close(_hooked(model, embeds, deep, start=None), plain, rtol=0, atol=0)
        assert not any(layer._forward_pre_hooks for layer in find_layers(model))  # hooks are removed


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_injection_changes_nothing_before_the_prompt(kind: str) -> None:
    """In a causal LM, positions before the prompt never see it; positions from it on do."""
    model = _tiny(kind)
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9, 10]]))
        deep = torch.randn(1, LAYERS, L, HIDDEN)
        deep[:, 0] = 0
        plain, got = _hooked(model, embeds, None), _hooked(model, embeds, deep)
        torch.testing.assert_close(got[:, :START], plain[:, :START], rtol=0, atol=0)
        assert ((got[:, START:] - plain[:, START:]).abs().amax(-1) > 1e-3).all()


def test_only_the_given_slot_moves_the_hidden_state_entering_its_layer() -> None:
    model = _tiny("roberta")
    layers = find_layers(model)
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9, 10]]))
        deep = torch.zeros(1, LAYERS, L, HIDDEN)
        deep[0, 2] = 1.0
        with capture_layer_inputs(layers) as before:
            model(inputs_embeds=embeds)
        with inject(layers, deep, START), capture_layer_inputs(layers) as after:
            model(inputs_embeds=embeds)
    torch.testing.assert_close(after[0], before[0]) and torch.testing.assert_close(after[1], before[1])
    diff = after[2] - before[2]
    torch.testing.assert_close(diff[:, START:START + L], torch.ones(1, L, HIDDEN))
    assert diff[:, :START].abs().max() == 0 and diff[:, START + L:].abs().max() == 0


def test_find_layers_and_clipped_std() -> None:
    for kind in ("roberta", "llama", "gpt2"):
        assert len(find_layers(_tiny(kind))) == LAYERS
    values = torch.cat([torch.randn(10_000, generator=torch.Generator().manual_seed(1)), torch.tensor([1e4])])
    assert 0.9 < clipped_std(values) < 1.1  # the outlier is clipped away
    assert values.std() > 50
