"""The per-layer projections of deep Black-Box Tuning (BBTv2): one A_i per layer slot.

A deep candidate is one flat vector of ``N * d`` numbers, layer slot ``i`` owning
``z[i*d:(i+1)*d]``; slot ``i``'s prompt is ``A_i z_i`` (``L x D``), and the whole candidate is the
deep prompt ``[N, L, D]`` (layout: :mod:`lmaas_tune.backends.local.deep`).

Each ``A_i`` is a :class:`~lmaas_tune.projection.flat.Projection` with its own seed and scale:
seed ``seed + (i + 1) * 2**64`` (distinct from every plain BBT projection and from every other
slot, for seeds below ``2**64``), scale from the slot's measured hidden-state std (DESIGN §1):
``alpha * std_i / (sqrt(d) * sigma0)`` for the normal distribution, ``1/sqrt(d)`` for uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmaas_tune.errors import ConfigError
from .flat import DISTRIBUTIONS, Projection, ProjectionSpec

LAYER_SEED_STRIDE = 2**64


@dataclass(frozen=True)
class DeepProjectionSpec:
    """Everything that rebuilds the per-layer matrices: one seed, the sizes, one scale per slot."""

    seed: int
    prompt_length: int
    hidden_size: int
    intrinsic_dim: int
    distribution: str
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not 0 <= self.seed < LAYER_SEED_STRIDE:
            raise ConfigError(f"a deep projection needs a seed in [0, 2**64); got {self.seed}")
        if not self.scales:
            raise ConfigError("a deep projection needs at least one layer")
        if not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ConfigError(f"deep projection scales must be positive finite numbers; got {self.scales}")
        DISTRIBUTIONS.get(self.distribution)

    @classmethod
    def for_model(cls, *, seed: int, prompt_length: int, hidden_size: int, intrinsic_dim: int,
                  layer_std: list[float] | tuple[float, ...], alpha: float, sigma0: float,
                  distribution: str = "normal") -> "DeepProjectionSpec":
        if distribution == "normal":
            scales = tuple(alpha * s / (math.sqrt(intrinsic_dim) * sigma0) for s in layer_std)
        else:
            scales = tuple(1.0 / math.sqrt(intrinsic_dim) for _ in layer_std)
        return cls(seed, prompt_length, hidden_size, intrinsic_dim, distribution, scales)

    @property
    def layers(self) -> int:
        return len(self.scales)

    @property
    def dim(self) -> int:
        """Length of a flat candidate: ``layers * intrinsic_dim``."""
        return self.layers * self.intrinsic_dim

    @property
    def nbytes(self) -> int:
        return self.layers * 4 * self.prompt_length * self.hidden_size * self.intrinsic_dim

    def layer(self, i: int) -> ProjectionSpec:
        """Slot ``i``'s projection."""
        return ProjectionSpec(self.seed + (i + 1) * LAYER_SEED_STRIDE, self.prompt_length, self.hidden_size,
                              self.intrinsic_dim, self.distribution, self.scales[i])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "deep", "seed": self.seed, "prompt_length": self.prompt_length,
                "hidden_size": self.hidden_size, "intrinsic_dim": self.intrinsic_dim,
                "distribution": self.distribution, "scales": list(self.scales)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeepProjectionSpec":
        return cls(int(d["seed"]), int(d["prompt_length"]), int(d["hidden_size"]), int(d["intrinsic_dim"]),
                   str(d["distribution"]), tuple(float(s) for s in d["scales"]))


class DeepProjection:
    """Maps flat candidates ``Z [P, N*d]`` (or ``[P, N, d]``) to deep prompts ``[P, N, L, D]``."""

    def __init__(self, spec: DeepProjectionSpec) -> None:
        self.spec = spec
        self.layers = [Projection(spec.layer(i)) for i in range(spec.layers)]
        self.base_prompt: np.ndarray | None = None  # the remote backend's upload check reads this

    def __call__(self, z: np.ndarray) -> np.ndarray:
        s = self.spec
        zz = np.asarray(z, dtype=np.float32)
        zz = zz.reshape(1, -1) if zz.ndim == 1 else zz.reshape(len(zz), -1)
        if zz.shape[1] != s.dim:
            raise ConfigError(f"a deep candidate has {zz.shape[1]} numbers; the projection expects "
                              f"{s.layers} layers x {s.intrinsic_dim} = {s.dim}")
        blocks = zz.reshape(len(zz), s.layers, s.intrinsic_dim)
        return np.stack([proj(blocks[:, i]) for i, proj in enumerate(self.layers)], axis=1)


def spec_from_dict(d: dict[str, Any]) -> ProjectionSpec | DeepProjectionSpec:
    """A stored projection spec of either kind (deep ones carry ``"kind": "deep"``)."""
    if d.get("kind") == "deep":
        return DeepProjectionSpec.from_dict(d)
    return ProjectionSpec(**d)


def build_projection(spec: ProjectionSpec | DeepProjectionSpec, base: np.ndarray | None = None) -> Projection | DeepProjection:
    """The projection ``spec`` describes; a plain one offset by the initial prompt ``base`` (p0)."""
    if isinstance(spec, DeepProjectionSpec):
        if base is not None:
            raise ConfigError("a deep projection takes no initial prompt")
        return DeepProjection(spec)
    return Projection(spec, base)


#: a projection spec or projection of either kind, as the fit loop and the run directory handle them
AnySpec = ProjectionSpec | DeepProjectionSpec
AnyProjection = Projection | DeepProjection
