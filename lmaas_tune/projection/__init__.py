"""The seeded random projection from a small vector z to prompt embeddings: p = A z (+ p0).

A :class:`ProjectionSpec` (seed, sizes, distribution, scale) rebuilds the same A anywhere, which
is how a service rebuilds a candidate's prompt from z alone (:mod:`lmaas_tune.wire`).
:mod:`.flat` holds the input-layer projection of BBT, :mod:`.deep` the per-layer one of BBTv2.
"""

from .deep import (
    LAYER_SEED_STRIDE, AnyProjection, AnySpec, DeepProjection, DeepProjectionSpec, build_projection, spec_from_dict,
)
from .flat import DISTRIBUTIONS, Projection, ProjectionSpec

__all__ = [
    "DISTRIBUTIONS", "LAYER_SEED_STRIDE", "AnyProjection", "AnySpec", "DeepProjection", "DeepProjectionSpec",
    "Projection", "ProjectionSpec", "build_projection", "spec_from_dict",
]
