import numpy as np
import pytest
import torch

from vldm_core.metrics.frechet import FeatureStats, frechet_distance


def correlated(n, d, seed, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64) + offset


def stats(x):
    return x.mean(0), torch.cov(x.T)


def test_a_set_has_distance_zero_to_itself_even_with_fewer_vectors_than_dimensions():
    for n in (500, 5):  # 5 vectors in 16 dimensions: a rank-4 covariance
        mean, cov = stats(correlated(n, 16, seed=n))
        assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0, abs=1e-9 * cov.trace().item())


def test_diagonal_gaussians_match_the_closed_form():
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.0])  # one variance 0: a degenerate Gaussian
    expected = ((m1 - m2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    assert frechet_distance(m1, torch.diag(v1), m2, torch.diag(v2)) == pytest.approx(expected.item(), rel=1e-12)


def test_commuting_full_covariances_match_the_closed_form():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    a, b = torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=torch.float64), torch.tensor([6.0, 1, 0.5, 2, 2, 0.1], dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T  # same eigenvectors: tr((S1 S2)^½) = Σ sqrt(a b)
    expected = (a + b - 2 * (a * b).sqrt()).sum()
    assert frechet_distance(torch.zeros(6), s1, torch.zeros(6), s2) == pytest.approx(expected.item(), rel=1e-10)


def test_low_rank_covariances_match_the_closed_form_without_rounding_noise():
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    a, b = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 5.0, 0.5], dtype=torch.float64)
    s1, s2 = q[:, :3] @ torch.diag(a) @ q[:, :3].T, q[:, :3] @ torch.diag(b) @ q[:, :3].T  # rank 3 of 64
    expected = (a + b - 2 * (a * b).sqrt()).sum()
    assert frechet_distance(torch.zeros(64), s1, torch.zeros(64), s2) == pytest.approx(expected.item(), rel=1e-12)


def test_distance_is_symmetric_and_a_translation_adds_the_squared_mean_difference():
    m1, s1 = stats(correlated(200, 8, seed=1))
    m2, s2 = stats(correlated(300, 8, seed=2, offset=0.5))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-10)
    shift = torch.linspace(-3, 3, 8, dtype=torch.float64)
    assert frechet_distance(m1, s1, m1 + shift, s1) == pytest.approx((shift**2).sum().item(), rel=1e-9)


def test_numpy_float32_inputs_are_taken_in_float64():
    x = correlated(100, 4, seed=3).numpy()
    mean, cov = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance(mean.astype(np.float32), cov.astype(np.float32), mean, cov) == pytest.approx(0, abs=1e-4)


def test_streamed_statistics_equal_the_whole_set_s():
    x = correlated(257, 12, seed=4, offset=1e4)  # a mean far from 0 next to the spread
    streamed = FeatureStats()
    for chunk in x.split([1, 100, 0, 56, 100]):
        streamed.update(chunk)
    assert streamed.count == 257
    torch.testing.assert_close(streamed.mean, x.mean(0), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(streamed.covariance, torch.cov(x.T), rtol=1e-9, atol=1e-9)


def test_stats_distance_equals_the_distance_of_their_moments():
    a, b = correlated(120, 5, seed=5), correlated(80, 5, seed=6, offset=2.0)
    sa, sb = FeatureStats().update(a), FeatureStats().update(b)
    assert sa.frechet_distance(sb) == pytest.approx(frechet_distance(*stats(a), *stats(b)), rel=1e-10)


def test_too_few_vectors_or_mixed_dimensions_are_refused():
    one = FeatureStats().update(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        one.covariance
    with pytest.raises(ValueError, match="dimension 4"):
        one.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        FeatureStats().update(torch.zeros(3))
