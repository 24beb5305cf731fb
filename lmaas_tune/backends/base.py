"""The Backend seam: score soft prompts on a batch of templated inputs.

A backend turns ``prompts`` (P candidate soft prompts, each L x D input embeddings) and a
:class:`ScoringBatch` (N templated inputs plus C label words) into label-word logits of shape
``[P, N, C]``. Everything the optimiser knows about the model flows through this seam, so the
same tuner runs against a model in this process or one behind an HTTP service.

Contract every implementation honours (one test suite checks it for each):

* ``prompts is None`` scores the manual template alone (no soft-prompt positions); the result
  has ``P == 1``. An array of shape ``[P, 0, D]`` is equivalent.
* Otherwise the soft prompt is placed right after the model's leading special token (if it has
  one) and before the template text, as L extra input positions whose embeddings are the given
  vectors. A zero prompt is therefore L zero-vector positions, *not* the absence of a prompt.
* Masked LMs are read at the mask position; causal LMs at the last real token of the input,
  whatever the padding or the other inputs in the same pass.
* Only the first sub-token of each label word is read, in its mid-sentence (leading space) form.
* Row ``p`` of the result depends only on ``prompts[p]`` and the batch, never on other rows, on
  how the work was split, or on what else the backend is serving.
* ``score`` is a coroutine and must not block the event loop.

Deep prompts (``info.supports_deep_prompts``): ``prompts`` may also be ``[P, N, L, D]`` with
``N = info.num_layers``. Slot 0 is placed as the shallow prompt above; slot ``i >= 1`` is added to
the hidden state entering layer ``i`` at those ``L`` positions (see :mod:`.deep`). Slots
``1..N-1`` all zero score exactly as slot 0 alone.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lmaas_tune.projection import DeepProjection
    from lmaas_tune.projection import Projection


class ModelKind(str, Enum):
    """How a model is read: at a mask token, or at the next token after the input."""

    MASKED = "masked"
    CAUSAL = "causal"


@dataclass(frozen=True)
class Query:
    """One templated input: the text before the label slot and the text after it.

    For causal LMs ``suffix`` is always empty: the label is the next token.
    """

    prefix: str
    suffix: str = ""


@dataclass(frozen=True)
class ScoringBatch:
    """The unit a backend scores: templated inputs and the label words to read."""

    queries: tuple[Query, ...]
    label_words: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "queries", tuple(self.queries))
        object.__setattr__(self, "label_words", tuple(self.label_words))

    @cached_property
    def key(self) -> str:
        """Content hash: equal batches have equal keys on every machine."""
        payload = json.dumps(
            {"q": [[q.prefix, q.suffix] for q in self.queries], "w": list(self.label_words)},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, indices: list[int] | range) -> "ScoringBatch":
        return ScoringBatch(tuple(self.queries[i] for i in indices), self.label_words)


@dataclass(frozen=True)
class BackendInfo:
    """What a backend says about itself."""

    model_id: str
    kind: ModelKind
    hidden_size: int
    num_layers: int
    embedding_std: float
    max_length: int
    device: str = "cpu"
    dtype: str = "float32"
    #: how many score() calls may usefully run at once
    max_concurrency: int = 1
    #: how many prompts one score() call may carry (None: no limit)
    max_prompts_per_call: int | None = None
    supports_deep_prompts: bool = False
    supports_projection: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """Scores soft prompts on templated inputs. See the module docstring for the contract.

    Backends are async context managers: ``async with backend: ...`` releases what they hold.
    """

    @property
    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Static facts about the model behind this backend."""

    @abc.abstractmethod
    async def score(self, prompts: np.ndarray | None, batch: ScoringBatch) -> np.ndarray:
        """Label-word logits ``[P, N, C]`` (float32) for prompts ``[P, L, D]`` on ``batch``."""

    async def score_projected(
        self, z: np.ndarray, projection: "Projection | DeepProjection", batch: ScoringBatch, *,
        prompts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits for the prompts ``projection(z)`` (``z`` is ``[P, d]``); otherwise as :meth:`score`.

        ``prompts``, when given, must equal ``projection(z)`` (the caller's own projection, passed
        so it is not computed twice). A backend that can rebuild the projection elsewhere (a
        server, from ``projection.spec``) may send ``z`` instead of the prompts; by default the
        prompts are scored here.
        """
        return await self.score(projection(z) if prompts is None else prompts, batch)

    async def hidden_state_std(self, batch: ScoringBatch) -> tuple[float, ...]:
        """Deep-prompt backends: per layer slot, the 3-sigma-clipped std of the tensor its prompt is
        added to (input embeddings for slot 0, the hidden state entering layer i for slot i), over
        the real tokens of ``batch`` with the manual template. BBTv2 scales its projections with it."""
        from lmaas_tune.errors import ConfigError

        raise ConfigError(f"{self.info.model_id} on this backend does not take deep prompts")

    async def embed_text(self, text: str) -> np.ndarray:
        """The model's input embeddings of ``text``'s tokens (no special tokens), ``[tokens, hidden]``
        float32: what an initial prompt p0 made from real words is (``--prompt-init``)."""
        from lmaas_tune.errors import ConfigError

        raise ConfigError(f"{self.info.model_id} on this backend cannot embed text for --prompt-init; "
                          f"use the local backend or an lmaas-tune service, or leave --prompt-init out")

    @abc.abstractmethod
    async def token_lengths(self, batch: ScoringBatch) -> tuple[int, ...]:
        """Tokens each query occupies without a soft prompt (special tokens included)."""

    async def aclose(self) -> None:
        """Release resources. Idempotent."""

    async def __aenter__(self) -> "Backend":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def check_prompts(prompts: np.ndarray | None, info: BackendInfo) -> np.ndarray | None:
    """Validate a prompt array against a backend's hidden size; ``None`` or L=0 means no prompt.

    Deep prompts ``[P, N, L, D]`` pass when the backend takes them and ``N`` is its layer count.
    """
    from lmaas_tune.errors import ConfigError

    if prompts is None:
        return None
    arr = np.asarray(prompts, dtype=np.float32)
    if arr.ndim == 4 and not info.supports_deep_prompts:
        raise ConfigError(f"{info.model_id} on this backend does not take deep (per-layer) prompts")
    if arr.ndim == 4 and arr.shape[1] != info.num_layers:
        raise ConfigError(f"a deep prompt has {arr.shape[1]} layer slots; {info.model_id} has {info.num_layers} layers")
    if arr.ndim not in (3, 4):
        raise ConfigError(f"prompts must have shape [P, L, D] (or [P, layers, L, D]); got {arr.shape}")
    if arr.shape[-1] != info.hidden_size:
        raise ConfigError(
            f"prompt hidden size {arr.shape[-1]} does not match the model's {info.hidden_size} "
            f"({info.model_id}); rebuild the projection for this model"
        )
    if arr.shape[0] < 1:
        raise ConfigError("prompts must hold at least one candidate")
    return arr
