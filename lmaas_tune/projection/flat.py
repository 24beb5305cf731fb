"""The fixed random projection A: a d-dimensional z becomes an L x D soft prompt, p = A z (+ p0).

A is drawn once per run from numpy's PCG64 generator seeded with the run seed, which gives the same
matrix on every machine and platform. It is stored as ``[d, L*D]`` float32 so that a population
``Z [P, d]`` projects with one matrix product ``Z @ A``.

Scales (DESIGN §1):
  * ``normal``: std = alpha * std(word embeddings) / (sqrt(d) * sigma0), so that A z has the scale
    of real embeddings when z ~ N(0, sigma0^2 I).
  * ``uniform`` (older preset): U(-1/sqrt(d), 1/sqrt(d)), the PyTorch ``Linear`` default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lmaas_tune.errors import ConfigError
from lmaas_tune.registry import Registry


@dataclass(frozen=True)
class ProjectionSpec:
    """Everything that rebuilds A exactly: seed, shape, distribution and scale."""

    seed: int
    prompt_length: int
    hidden_size: int
    intrinsic_dim: int
    distribution: str = "normal"
    scale: float = 1.0  # std (normal) or bound (uniform)

    def __post_init__(self) -> None:
        if self.prompt_length < 1 or self.hidden_size < 1 or self.intrinsic_dim < 1:
            raise ConfigError(
                f"projection needs positive sizes; got L={self.prompt_length}, D={self.hidden_size}, "
                f"d={self.intrinsic_dim}"
            )
        DISTRIBUTIONS.get(self.distribution)

    @classmethod
    def for_model(
        cls,
        *,
        seed: int,
        prompt_length: int,
        hidden_size: int,
        intrinsic_dim: int,
        embedding_std: float,
        alpha: float = 1.0,
        sigma0: float = 1.0,
        distribution: str = "normal",
    ) -> "ProjectionSpec":
        if distribution == "normal":
            if sigma0 <= 0:
                raise ConfigError(f"sigma must be positive; got {sigma0}")
            scale = alpha * embedding_std / (math.sqrt(intrinsic_dim) * sigma0)
        else:
            scale = 1.0 / math.sqrt(intrinsic_dim)
        return cls(seed, prompt_length, hidden_size, intrinsic_dim, distribution, float(scale))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def nbytes(self) -> int:
        return 4 * self.prompt_length * self.hidden_size * self.intrinsic_dim


def _normal(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= np.float32(scale)
    return out


def _uniform(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    out = rng.random(shape, dtype=np.float32)
    out *= np.float32(2 * scale)
    out -= np.float32(scale)
    return out


DISTRIBUTIONS: Registry = Registry("projection distribution")
DISTRIBUTIONS.add("normal", _normal)
DISTRIBUTIONS.add("uniform", _uniform)


class Projection:
    """Maps ``Z [P, d]`` to prompts ``[P, L, D]``; built once per run (L*D*d*4 bytes)."""

    def __init__(self, spec: ProjectionSpec, base_prompt: np.ndarray | None = None) -> None:
        self.spec = spec
        rng = np.random.Generator(np.random.PCG64(spec.seed))
        shape = (spec.intrinsic_dim, spec.prompt_length * spec.hidden_size)
        self.matrix = DISTRIBUTIONS.get(spec.distribution)(rng, shape, spec.scale)
        if base_prompt is not None and base_prompt.shape != (spec.prompt_length, spec.hidden_size):
            raise ConfigError(f"initial prompt must be {spec.prompt_length} x {spec.hidden_size}")
        self.base_prompt = None if base_prompt is None else np.asarray(base_prompt, dtype=np.float32)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        zz = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if zz.shape[1] != self.spec.intrinsic_dim:
            raise ConfigError(f"z has dimension {zz.shape[1]}; the projection expects {self.spec.intrinsic_dim}")
        out = (zz @ self.matrix).reshape(len(zz), self.spec.prompt_length, self.spec.hidden_size)
        if self.base_prompt is not None:
            out = out + self.base_prompt[None]
        return out
