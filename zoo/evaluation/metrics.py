"""Sample-quality metrics on feature vectors (numpy; no TensorFlow).

FID (Heusel et al., 2017), KID (Binkowski et al., 2018, unbiased MMD^2 with the cubic
polynomial kernel), k-NN precision/recall (Kynkaanniemi et al., 2019) and class-histogram
checks against mode collapse. (The likelihood models compute their own bits/dim in their
`eval_batch`.)
"""

from __future__ import annotations

import numpy as np

from zoo.errors import DataError


def _check_pair(a: np.ndarray, b: np.ndarray, what: str, min_n: int = 2) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DataError(
            f"{what}: need two [N, D] feature arrays of equal D, got {a.shape} and {b.shape}"
        )
    if min(len(a), len(b)) < min_n:
        raise DataError(f"{what}: need at least {min_n} samples per set, got {len(a)} and {len(b)}")


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    tr(sqrt(S1 S2)) is computed as tr(sqrt(S1^1/2 S2 S1^1/2)) with symmetric eigendecompositions
    (real and stable, unlike scipy's sqrtm of the non-symmetric product).
    """
    _check_pair(a, b, "FID")
    a, b = a.astype("float64"), b.astype("float64")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r1 = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0.0, None)).sum()
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(value, 0.0)


def kid(
    a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 500, seed: int = 0
) -> float:
    """Kernel inception distance: mean unbiased MMD^2 over random subsets, k(x,y)=(x.y/d+1)^3."""
    _check_pair(a, b, "KID")
    a, b = a.astype("float64"), b.astype("float64")
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = m * (m - 1)
        vals.append(
            (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        )
    return float(np.mean(vals))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(d, 0.0, None))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN manifold precision (fake inside real balls) and recall (real inside fake balls)."""
    _check_pair(real, fake, "precision/recall", min_n=k + 1)
    real, fake = real.astype("float64"), fake.astype("float64")

    def radii(x: np.ndarray) -> np.ndarray:
        # k-th neighbour excluding the point itself (column 0 of the sorted row is 0).
        return np.sort(_pairwise(x, x), axis=1)[:, k]

    def coverage(support: np.ndarray, queries: np.ndarray) -> float:
        return float(np.mean((_pairwise(queries, support) <= radii(support)[None, :]).any(axis=1)))

    return coverage(real, fake), coverage(fake, real)


def class_histogram(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of predictions in each class."""
    return np.bincount(pred.astype(np.int64), minlength=num_classes)[:num_classes] / max(
        len(pred), 1
    )


def histogram_checks(
    pred: np.ndarray, ref_labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    """Mode-collapse checks of predicted classes of generated samples vs the data's labels.

    entropy in bits (log2 K when balanced), largest class share, classes covered (share >= 1%),
    and total-variation distance to the held-out label histogram (0 = same histogram).
    """
    p = class_histogram(pred, num_classes)
    q = class_histogram(ref_labels, num_classes)
    nz = p[p > 0]
    return {
        "class_entropy_bits": float(-(nz * np.log2(nz)).sum()) + 0.0,  # no -0.0
        "class_max_share": float(p.max()),
        "classes_covered": float((p >= 0.01).sum()),
        "class_tv": float(0.5 * np.abs(p - q).sum()),
    }
