"""A leaner CPU forward pass for Llama-architecture causal LMs, run on top of a shared prefix.

On a CPU the matrix products of a pass run near the hardware's peak, especially in bfloat16 with
AMX; what holds the rest of the pass back is the chain of elementwise operators around them (norms,
rotary embedding, activation, residual adds), each one a trip through memory into a freshly
allocated tensor. This module computes what the transformers implementation computes, with fewer
trips:

* k and v come out of one product; the activation, the gating product and the residual adds
  run in place on the products' outputs;
* each RMSNorm is one fused reduction, one scaling and one in-place product with its weight,
  rounded where the transformers one rounds (folding the weight into the next product instead was
  faster but moved bfloat16 logits further from float32 than the model's own layers);
* rotary embedding, attention scores and softmax run in float32, written straight into the layout
  the batched attention products read (a small share of the FLOPs; the scores are never rounded
  to bfloat16), with the query heads that share a key/value head stacked into one product;
* in the last block only each row's readout position goes through ``o_proj`` and the MLP.

It runs the text rows of a shared-prefix pass (:mod:`.prefix_cache`); the prefix's keys and values
come from the model's own forward pass. In float32 it matches the transformers path to rounding; in
bfloat16 it rounds at some other points, and its logits are at least as close to float32 ones as
the model's own bfloat16 layers' (benchmarks/README.md, "Scoring speed"). Anything it does not know (another
architecture, biases, a device other than the CPU) keeps the transformers path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .prefix_cache import KeyValues

_DTYPES = (torch.float32, torch.bfloat16)


def fused_llama_supported(model: Any) -> bool:
    """Whether :class:`FusedLlama` computes what ``model`` computes: a Llama-architecture causal LM
    without biases, with SiLU MLPs, on the CPU, in float32 or bfloat16."""
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama" or not hasattr(inner, "layers"):
        return False
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False) or getattr(cfg, "hidden_act", None) != "silu":
        return False
    if getattr(cfg, "pretraining_tp", 1) != 1 or not hasattr(inner, "rotary_emb"):
        return False
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype in _DTYPES


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm rounded where the transformers one rounds: ``x / rms(x)`` in float32, then to ``x``'s
    dtype, then times ``weight``."""
    x32 = x.float()  # converted once: the norm and the scaling would each convert a copy of their own
    scale = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    scaled = x32 * scale if x32 is x else x32.mul_(scale)  # float32 input: x itself, kept intact
    return scaled.to(x.dtype).mul_(weight)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, out: torch.Tensor) -> None:
    """Rotary embedding, ``x * cos + rotate_half(x) * sin``, written into ``out`` (float32, any strides)."""
    half = x.shape[-1] // 2
    x = x.float()  # once: each mixed-precision operator below would convert its own copy
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])


class _Block:
    def __init__(self, layer: Any) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1 = layer.input_layernorm.weight.detach()
        self.norm2 = layer.post_attention_layernorm.weight.detach()
        self.q = attn.q_proj.weight.detach()  # q apart: one 960-wide q/k/v product ran at half the rate here
        self.kv = torch.cat([attn.k_proj.weight.detach(), attn.v_proj.weight.detach()])
        self.o = attn.o_proj.weight.detach()
        self.gate = mlp.gate_proj.weight.detach()
        self.up = mlp.up_proj.weight.detach()
        self.down = mlp.down_proj.weight.detach()


class FusedLlama:
    """The text rows of a shared-prefix pass, for a model that :func:`fused_llama_supported`.

    It reads the model's own weights (k and v joined into one copy), so build it after any change
    that replaces weight tensors.
    """

    def __init__(self, model: Any) -> None:
        cfg, inner = model.config, model.model
        self._dtype = next(model.parameters()).dtype
        self._heads = int(cfg.num_attention_heads)
        self._kv_heads = int(cfg.num_key_value_heads)
        self._head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self._eps = float(cfg.rms_norm_eps)
        self._rotary = inner.rotary_emb
        with torch.inference_mode():
            self._blocks = [_Block(layer) for layer in inner.layers]
            self._final_norm = inner.norm.weight.detach()

    def prefix(self, kv: KeyValues) -> KeyValues:
        """The prefix's keys/values as this pass reads them (float32); once per population."""
        return [(k.float(), v.float()) for k, v in kv]

    def hidden_at(self, embeds: torch.Tensor, kv: KeyValues, candidates: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
        """Input of the output layer at ``positions[r]`` of each row ``r``: ``[rows, hidden]``.

        ``embeds`` ``[rows, T, hidden]`` continue, right-padded, the prefix of candidate
        ``candidates[r]`` held in ``kv`` (from :meth:`prefix`). Padding sits after each row's text, so
        causal attention keeps it out of every position that is read.
        """
        rows, length, _ = embeds.shape
        width = kv[0][0].shape[2]
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        group = heads // kv_heads
        span = width + length
        cos, sin = self._rotary(embeds.new_zeros(1, dtype=torch.float32), torch.arange(width, width + length)[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, dim], float32
        allowed = torch.ones(length, span, dtype=torch.bool).tril(width)  # all of the prefix, causal after it
        bias = torch.zeros(length, span).masked_fill_(~allowed, float("-inf")).repeat(group, 1)
        row_index = torch.arange(rows)
        x = embeds
        for i, block in enumerate(self._blocks):
            h = rms_norm(x, block.norm1, self._eps)
            q_new = F.linear(h, block.q).view(rows, length, kv_heads, group, dim)
            kv_new = F.linear(h, block.kv).view(rows, length, 2, kv_heads, dim)
            # float32 buffers, the query heads grouped by the key/value head they share
            queries = torch.empty(rows, kv_heads, group, length, dim)
            keys = torch.empty(rows, kv_heads, span, dim)
            values = torch.empty(rows, kv_heads, span, dim)
            rotate(q_new, cos[:, None], sin[:, None], out=queries.permute(0, 3, 1, 2, 4))
            rotate(kv_new[:, :, 0], cos, sin, out=keys[:, :, width:].transpose(1, 2))
            values[:, :, width:] = kv_new[:, :, 1].transpose(1, 2)
            pk, pv = kv[i]
            keys[:, :, :width] = pk[candidates]
            values[:, :, :width] = pv[candidates]
            scores = torch.baddbmm(bias, queries.view(-1, group * length, dim), keys.view(-1, span, dim).transpose(1, 2),
                                   alpha=dim ** -0.5)
            mixed = torch.bmm(torch.softmax(scores, dim=-1), values.view(-1, span, dim))
            attended = torch.empty(rows, length, heads * dim, dtype=self._dtype)
            attended.view(rows, length, kv_heads, group, dim).copy_(
                mixed.view(rows, kv_heads, group, length, dim).permute(0, 3, 1, 2, 4))
            if i == len(self._blocks) - 1:  # only the readout positions are needed from here on
                x, attended = x[row_index, positions], attended[row_index, positions]
            x = F.linear(attended, block.o).add_(x)
            h = rms_norm(x, block.norm2, self._eps)
            gated = F.linear(h, block.up).mul_(F.silu(F.linear(h, block.gate), inplace=True))
            x = F.linear(gated, block.down).add_(x)
        return rms_norm(x, self._final_norm, self._eps)
