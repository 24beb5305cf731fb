"""The seeded projection, the losses and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmaas_tune.errors import ConfigError, UnknownNameError
from lmaas_tune.methods.losses import LOSSES, cross_entropy, hinge, neg_accuracy, predictions
from lmaas_tune.projection import Projection, ProjectionSpec
from lmaas_tune.tasks.metrics import METRICS, accuracy, f1

# -- projection ----------------------------------------------------------------------------------


def _spec(seed: int = 42, **kw) -> ProjectionSpec:
    args = dict(seed=seed, prompt_length=5, hidden_size=16, intrinsic_dim=20, embedding_std=0.3)
    args.update(kw)
    return ProjectionSpec.for_model(**args)


def test_projection_is_deterministic_from_its_seed() -> None:
    a, b = Projection(_spec(42)), Projection(_spec(42))
    assert a.matrix.dtype == np.float32 and a.matrix.shape == (20, 5 * 16)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert not np.allclose(a.matrix, Projection(_spec(43)).matrix)
    # the same spec rebuilt from its dict gives the same matrix
    np.testing.assert_array_equal(Projection(ProjectionSpec(**_spec(42).to_dict())).matrix, a.matrix)


def test_projection_is_numpy_pcg64_from_the_seed() -> None:
    # pinned to the documented generator, so a saved (seed, shape) rebuilds A on any machine
    spec = _spec(7)
    expected = np.random.Generator(np.random.PCG64(7)).standard_normal((20, 80), dtype=np.float32) * np.float32(spec.scale)
    np.testing.assert_array_equal(Projection(spec).matrix, expected)


def test_projection_ignores_global_rng() -> None:
    np.random.seed(0)
    a = Projection(_spec(1)).matrix
    np.random.seed(12345)
    np.random.rand(100)
    np.testing.assert_array_equal(Projection(_spec(1)).matrix, a)


@pytest.mark.parametrize(("alpha", "sigma0", "d", "std"), [(1.0, 1.0, 500, 0.05), (0.2, 0.5, 100, 0.3), (2.0, 0.2, 50, 1.0)])
def test_normal_scale_matches_formula(alpha: float, sigma0: float, d: int, std: float) -> None:
    spec = ProjectionSpec.for_model(seed=3, prompt_length=10, hidden_size=64, intrinsic_dim=d,
                                    embedding_std=std, alpha=alpha, sigma0=sigma0)
    assert spec.distribution == "normal"
    assert spec.scale == pytest.approx(alpha * std / (math.sqrt(d) * sigma0), rel=1e-12)
    m = Projection(spec).matrix  # d x 640 entries: >= 32k samples
    assert abs(m.std() / spec.scale - 1) < 0.03
    assert abs(m.mean()) < 0.03 * spec.scale


def test_normal_projection_has_embedding_scale() -> None:
    # A z with z ~ N(0, sigma0^2 I) has the std of the word embeddings (times alpha)
    spec = ProjectionSpec.for_model(seed=0, prompt_length=10, hidden_size=64, intrinsic_dim=200,
                                    embedding_std=0.4, alpha=1.0, sigma0=0.5)
    z = np.random.default_rng(1).normal(0, 0.5, size=(200, 200))
    assert Projection(spec)(z).std() == pytest.approx(0.4, rel=0.05)


def test_uniform_bound() -> None:
    d = 100
    spec = ProjectionSpec.for_model(seed=3, prompt_length=10, hidden_size=64, intrinsic_dim=d,
                                    embedding_std=0.3, distribution="uniform")
    assert spec.scale == pytest.approx(1 / math.sqrt(d))
    m = Projection(spec).matrix
    assert m.min() >= -spec.scale and m.max() <= spec.scale
    assert m.min() < -0.95 * spec.scale and m.max() > 0.95 * spec.scale  # uses the whole range
    assert m.std() == pytest.approx(spec.scale / math.sqrt(3), rel=0.03)


def test_projection_maps_z_to_prompts() -> None:
    spec = _spec(5)
    proj = Projection(spec)
    z = np.random.default_rng(0).standard_normal((3, 20))
    out = proj(z)
    assert out.shape == (3, 5, 16)
    np.testing.assert_allclose(out[1], (z[1].astype(np.float32) @ proj.matrix).reshape(5, 16), rtol=1e-5, atol=1e-6)
    assert proj(z[0]).shape == (1, 5, 16)  # a single z
    np.testing.assert_array_equal(proj(np.zeros(20)), np.zeros((1, 5, 16)))
    base = np.full((5, 16), 0.5, np.float32)
    np.testing.assert_allclose(Projection(spec, base)(z), out + base, rtol=1e-6)
    with pytest.raises(ConfigError, match="dimension"):
        proj(np.zeros((1, 21)))
    with pytest.raises(ConfigError, match="5 x 16"):
        Projection(spec, np.zeros((4, 16), np.float32))


def test_projection_spec_errors() -> None:
    with pytest.raises(ConfigError, match="positive sizes"):
        ProjectionSpec(seed=0, prompt_length=0, hidden_size=4, intrinsic_dim=2)
    with pytest.raises(UnknownNameError, match="Known: normal, uniform"):
        ProjectionSpec(seed=0, prompt_length=1, hidden_size=4, intrinsic_dim=2, distribution="laplace")
    with pytest.raises(ConfigError, match="sigma"):
        _spec(sigma0=0.0)


# -- losses --------------------------------------------------------------------------------------

LOGITS = np.array([
    [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [3.0, -2.0, 1.0], [0.0, 0.0, 0.0]],
    [[-1.0, 4.0, 0.0], [1.5, 1.5, -0.5], [0.0, 0.0, 5.0], [10.0, -10.0, 0.0]],
], dtype=np.float32)
LABELS = np.array([0, 2, 1, 0])


def test_cross_entropy_by_hand() -> None:
    expected = []
    for p in range(2):
        total = 0.0
        for n, y in enumerate(LABELS):
            row = [float(v) for v in LOGITS[p, n]]
            total += -(row[y] - math.log(sum(math.exp(v) for v in row)))
        expected.append(total / len(LABELS))
    out = cross_entropy(LOGITS, LABELS)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-10)
    torch_ce = [torch.nn.functional.cross_entropy(torch.tensor(LOGITS[p]), torch.tensor(LABELS)).item() for p in range(2)]
    np.testing.assert_allclose(out, torch_ce, rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    big = np.array([[[1e4, 0.0], [0.0, 1e4]]], dtype=np.float32)
    out = cross_entropy(big, np.array([0, 0]))
    assert np.isfinite(out).all()
    assert out[0] == pytest.approx(5e3)


def test_hinge_matches_torch_multi_margin_loss() -> None:
    mml = torch.nn.MultiMarginLoss(margin=2.0)
    expected = [mml(torch.tensor(LOGITS[p], dtype=torch.float64), torch.tensor(LABELS)).item() for p in range(2)]
    np.testing.assert_allclose(hinge(LOGITS, LABELS), expected, rtol=1e-6)


def test_hinge_by_hand() -> None:
    # one example, C = 3, y = 0: (max(0, 2 - 2 + 0.5) + max(0, 2 - 2 - 1)) / 3
    out = hinge(np.array([[[2.0, 0.5, -1.0]]]), np.array([0]))
    assert out[0] == pytest.approx(0.5 / 3)
    # far beyond the margin: zero loss
    assert hinge(np.array([[[10.0, 0.0, 0.0]]]), np.array([0]))[0] == 0.0


def test_negative_accuracy() -> None:
    out = neg_accuracy(LOGITS, LABELS)
    # p0 predictions: 0, 2, 0, 0 (tie -> first)  -> 3/4 correct; p1: 1, 0, 2, 0 -> 1/4
    np.testing.assert_allclose(out, [-0.75, -0.25])
    np.testing.assert_array_equal(predictions(LOGITS)[0], [0, 2, 0, 0])


def test_loss_registry() -> None:
    assert LOSSES.get("CE") is cross_entropy and LOSSES.get("cross-entropy") is cross_entropy
    assert LOSSES.get("hinge") is hinge and LOSSES.get("-accuracy") is neg_accuracy
    with pytest.raises(UnknownNameError, match="Known: ce, hinge, acc"):
        LOSSES.get("mse")


def test_lower_loss_is_better() -> None:
    good = np.array([[[0.0, 5.0], [5.0, 0.0]]])
    bad = good[..., ::-1]
    labels = np.array([1, 0])
    for name in ("ce", "hinge", "acc"):
        fn = LOSSES.get(name)
        assert fn(good, labels)[0] < fn(bad, labels)[0], name


# -- metrics -------------------------------------------------------------------------------------


def test_f1_of_the_positive_class() -> None:
    pred = np.array([1, 1, 0, 0, 1, 0])
    gold = np.array([1, 0, 1, 0, 1, 1])
    # tp = 2, fp = 1, fn = 2 -> 2*2 / (4 + 1 + 2)
    assert f1(pred, gold) == pytest.approx(4 / 7)
    assert f1(np.zeros(4, int), np.array([1, 0, 1, 0])) == 0.0  # never predicts Yes
    assert f1(gold, gold) == 1.0
    assert METRICS.get("f1") is f1


def test_accuracy() -> None:
    assert accuracy(np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    assert accuracy(np.array([]), np.array([])) == 0.0
    assert METRICS.get("acc") is accuracy
