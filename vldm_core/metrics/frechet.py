"""The Fréchet distance between Gaussians fitted to two feature sets (FID, FVD):

    d² = |m1 - m2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)

tr((S1 S2)^½) is the sum of the square roots of the eigenvalues of S1 S2. With
S1 = V Λ Vᵀ (``eigh``, float64) and R = V Λ^½, the symmetric PSD matrix
Rᵀ S2 R has the nonzero eigenvalues of R Rᵀ S2 = S1 S2, so the trace stays
real and stable for the rank-deficient covariances of small sets, where
scipy's ``sqrtm`` of the non-symmetric S1 S2 (pytorch-fid's way) can turn
complex. Eigenvalues of S1 within rounding of 0 (below numpy's matrix_rank
tolerance, d ε λmax) are dropped, so noise directions add no spurious
sqrt(ε) terms and Rᵀ S2 R shrinks to S1's rank; rounding's small negative
eigenvalues of Rᵀ S2 R are clipped at 0.
"""

import torch


def _float64(x):
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """d² between N(mean1, cov1) and N(mean2, cov2) (tensors or arrays, any float dtype)."""
    m1, s1, m2, s2 = (_float64(x) for x in (mean1, cov1, mean2, cov2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"means and covariances of one dimension are needed, got {tuple(m1.shape)}, {tuple(s1.shape)}, {tuple(m2.shape)}, {tuple(s2.shape)}")
    values, vectors = torch.linalg.eigh((s1 + s1.T) / 2)
    kept = values > values.max().clamp(min=0) * d * torch.finfo(torch.float64).eps
    root = vectors[:, kept] * values[kept].sqrt()
    product = root.T @ s2 @ root
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    distance = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


class FeatureStats:
    """Mean and covariance of feature vectors added batch by batch (float64, on
    the CPU), so a large set costs one d x d matrix, not its features.

    Batches are combined with Chan et al.'s parallel update of the mean and the
    scatter about it, which, unlike summing raw outer products, loses no
    precision when the features' mean is large next to their spread.
    """

    def __init__(self):
        self.count = 0
        self.mean = None
        self._scatter = None  # sum over vectors of (x - mean)(x - mean)^T

    def update(self, features):
        """Add ``(n, d)`` features; returns ``self``."""
        x = _float64(features)
        if x.ndim != 2:
            raise ValueError(f"features must be (n, d), got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return self
        batch_mean = x.mean(0)
        centered = x - batch_mean
        batch_scatter = centered.T @ centered
        if self.count == 0:
            self.count, self.mean, self._scatter = n, batch_mean, batch_scatter
            return self
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of dimension {x.shape[1]} added to statistics of dimension {self.mean.shape[0]}")
        total = self.count + n
        delta = batch_mean - self.mean
        self._scatter += batch_scatter + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total
        return self

    @property
    def covariance(self):
        """The unbiased estimate (divided by n - 1, as ``numpy.cov``)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, {self.count} were added")
        return self._scatter / (self.count - 1)

    def frechet_distance(self, other: "FeatureStats") -> float:
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance)
