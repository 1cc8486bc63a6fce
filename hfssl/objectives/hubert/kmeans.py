"""Mini-batch k-means for HuBERT's targets (best of several k-means++ inits, empty clusters re-seeded), and cluster-usage statistics."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass
class KMeans:
    """A fitted k-means model: ``centroids`` (K, D) float32 and plain-typed ``metadata``.

    Saved as ``kmeans.pt``: ``{"format": "hfssl-kmeans-1", "centroids": (K, D) tensor, "metadata": dict}``,
    loadable with ``torch.load(weights_only=True)``.
    """

    centroids: torch.Tensor
    metadata: dict = field(default_factory=dict)

    FORMAT = "hfssl-kmeans-1"

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def fingerprint(self) -> str:
        """Short hash of the centroids: identifies the labels this model produces."""
        return hashlib.sha1(self.centroids.detach().cpu().float().numpy().tobytes()).hexdigest()[:16]

    @torch.no_grad()
    def predict(self, features: torch.Tensor, chunk: int = 65536, device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Nearest centroid (squared Euclidean) of each row.

        Args:
            features: (N, D) tensor, any float dtype; computed in float32 on ``device`` (default: its own),
                ``chunk`` rows at a time.
        Returns:
            (N,) int64 tensor on the features' device.
        """
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {tuple(features.shape)}")
        device = torch.device(device) if device is not None else features.device
        c = self.centroids.to(device, torch.float32)
        c2 = (c * c).sum(1)
        out = [_sq_dist(features[i : i + chunk].to(device, torch.float32), c, c2).argmin(1).to(features.device)
               for i in range(0, features.shape[0], chunk)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=features.device)

    @torch.no_grad()
    def inertia(self, features: torch.Tensor, chunk: int = 65536, device: Optional[torch.device | str] = None) -> float:
        """Mean squared distance of the rows of (N, D) ``features`` to their nearest centroid."""
        device = torch.device(device) if device is not None else features.device
        c = self.centroids.to(device, torch.float32)
        c2 = (c * c).sum(1)
        total = sum(float(_sq_dist(features[i : i + chunk].to(device, torch.float32), c, c2).min(1).values.double().sum())
                    for i in range(0, features.shape[0], chunk))
        return total / max(features.shape[0], 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename), so a crash never leaves a half-written kmeans.pt."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        torch.save({"format": self.FORMAT, "centroids": self.centroids.detach().cpu().float().contiguous(),
                    "metadata": dict(self.metadata)}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KMeans":
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "kmeans.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != cls.FORMAT:
            raise ValueError(f"{path} is not an hfssl k-means model (expected format '{cls.FORMAT}').")
        return cls(state["centroids"].float(), dict(state.get("metadata") or {}))


def _sq_dist(x: torch.Tensor, c: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """(N, K) squared distances between rows of x (N, D) and c (K, D); c2 = (K,) squared norms of c."""
    return ((x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c2[None, :]).clamp_min_(0.0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, n_local_trials: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; greedy variant as in scikit-learn).

    Each new centre is the best (lowest potential) of ``n_local_trials`` candidates drawn with
    probability proportional to the squared distance to the nearest centre so far. Random draws come
    from the CPU ``generator``, so a seed gives the same choice of points on any device.

    Args:
        x: (N, D) float32 points, N >= k.
    Returns:
        (k, D) float32 centres (copies of points of x), on x's device.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {n}")
    trials = n_local_trials or 2 + int(math.log(k))
    x = x.float()
    x2 = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    closest = _sq_dist(x, x[first : first + 1], x2[first : first + 1])[:, 0]  # (N,)
    for _ in range(1, k):
        weights = closest.double().cpu()
        if float(weights.sum()) <= 0:  # all points coincide with centres: any point will do
            weights = torch.ones(n, dtype=torch.float64)
        cand = torch.multinomial(weights, trials, replacement=True, generator=generator).to(x.device)
        d = _sq_dist(x, x[cand], x2[cand])  # (N, trials)
        new_closest = torch.minimum(closest[:, None], d)
        best = int(new_closest.sum(0).argmin())
        centres.append(x[cand[best]])
        closest = new_closest[:, best]
    return torch.stack(centres).clone()


@torch.no_grad()
def fit_kmeans(
    features: torch.Tensor,
    num_clusters: int,
    batch_size: int = 10000,
    max_passes: int = 100,
    seed: int = 0,
    init_size: Optional[int] = None,
    max_no_improvement: int = 100,
    n_init: int = 20,
    init_centroids: Optional[torch.Tensor] = None,
    device: Optional[torch.device | str] = None,
    metadata: Optional[dict] = None,
) -> KMeans:
    """Mini-batch k-means (Sculley 2010) with greedy k-means++ seeding, in torch (GPU when given): the
    algorithm of scikit-learn's MiniBatchKMeans as fairseq's HuBERT recipe configures it
    (examples/hubert/simple_kmeans/learn_kmeans.py: n_init 20, max_iter 100, batch_size 10000,
    max_no_improvement 100), plus re-seeding of clusters that stop receiving points.

    Initialization: ``n_init`` k-means++ draws on a random subset of ``init_size`` points (default
    ``3 * batch_size``, at least ``3 * num_clusters``); the draw with the lowest inertia on that subset is kept
    (scikit-learn's rule for MiniBatchKMeans). ``init_centroids`` (K, D) replaces the draws.
    Steps: each draws ``batch_size`` points with replacement, assigns them to the nearest centre and moves
    each centre to the running mean of every point assigned to it since it was (re)seeded (per-centre
    learning rate 1 / count). Empty clusters: after every pass over the data (in expected points drawn), a
    centre that has received no point since it was (re)seeded is re-seeded at the batch point farthest from
    its nearest centre (the way scikit-learn's KMeans relocates empty clusters). A centre stranded away from
    the data would otherwise stay empty for the whole fit (scikit-learn's MiniBatchKMeans as fairseq runs it,
    reassignment_ratio 0, never moves it). Stops after
    ``max_passes`` passes or when an exponentially weighted average of the batch inertia has not improved
    for ``max_no_improvement`` steps (scikit-learn's rule; 0 disables early stopping).

    All random draws use a CPU generator seeded with ``seed``: same seed, same data, same device ->
    same centroids.

    Args:
        features: (N, D) points, any float dtype (e.g. float16 to halve host memory). They stay where they are;
            each batch is moved to ``device`` (default: the features' device) and computed in float32.
    Returns:
        ``KMeans`` whose metadata holds the fit settings, steps run, the inertia of every initialization
        (``init_inertias``) and the kept one's index, the number of re-seeded clusters, and the final inertia
        (mean squared distance over all N points), merged with ``metadata``.
    """
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if num_clusters < 1 or n < num_clusters:
        raise ValueError(f"k-means with {num_clusters} clusters needs at least that many points; got {n}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    device = torch.device(device) if device is not None else features.device
    x = features  # stays where it is (e.g. float16 on the CPU); batches move to `device` in float32
    g = torch.Generator().manual_seed(int(seed))
    batch = min(batch_size, n)
    init_n = min(n, init_size or max(3 * batch_size, 3 * num_clusters))
    init_idx = torch.randperm(n, generator=g)[:init_n]
    sample = x[init_idx.to(x.device)].to(device, torch.float32)  # (init_n, D)
    if init_centroids is not None:
        if tuple(init_centroids.shape) != (num_clusters, x.shape[1]):
            raise ValueError(f"init_centroids must have shape ({num_clusters}, {x.shape[1]}), got {tuple(init_centroids.shape)}")
        candidates = [init_centroids.to(device, torch.float32).clone()]
    else:
        candidates = [kmeans_plus_plus(sample, num_clusters, g) for _ in range(n_init)]  # each (K, D)
    inertias = [float(_sq_dist(sample, c, (c * c).sum(1)).min(1).values.double().mean()) for c in candidates]
    chosen = int(np.argmin(inertias))
    c = candidates[chosen]
    del candidates
    counts = torch.zeros(num_clusters, dtype=torch.float64, device=device)  # points received since (re)seeding
    steps = max(1, math.ceil(max_passes * n / batch))
    per_pass = max(1, math.ceil(n / batch))
    alpha = min(1.0, 2.0 * batch / (n + 1))
    ewa, best, stale, step, reseeded = None, math.inf, 0, 0, 0
    for step in range(1, steps + 1):
        idx = torch.randint(n, (batch,), generator=g)
        xb = x[idx.to(x.device)].to(device, torch.float32)
        d = _sq_dist(xb, c, (c * c).sum(1))
        dist, assign = d.min(1)
        batch_counts = torch.bincount(assign, minlength=num_clusters).to(torch.float64)
        sums = torch.zeros_like(c, dtype=torch.float64).index_add_(0, assign, xb.double())
        counts += batch_counts
        hit = batch_counts > 0
        # c <- (c * old_count + batch_sum) / new_count, i.e. the running mean of assigned points.
        c[hit] = (c[hit].double() + (sums[hit] - batch_counts[hit, None] * c[hit].double()) / counts[hit, None]).float()
        if step % per_pass == 0:
            empty = (counts == 0).nonzero(as_tuple=True)[0]
            if empty.numel():
                far = dist.topk(min(empty.numel(), batch)).indices  # the batch points worst served by the current centres
                c[empty[: far.numel()]] = xb[far]
                reseeded += int(far.numel())
        inertia = float(dist.double().mean())
        ewa = inertia if ewa is None else ewa * (1 - alpha) + inertia * alpha
        if ewa < best:
            best, stale = ewa, 0
        else:
            stale += 1
            if max_no_improvement and stale >= max_no_improvement:
                break
    model = KMeans(c.cpu(), {})
    model.metadata = {**(metadata or {}), "num_clusters": num_clusters, "dim": int(x.shape[1]), "fit_points": n,
                      "batch_size": batch, "max_passes": max_passes, "steps": step, "seed": int(seed),
                      "n_init": len(inertias), "init_inertias": inertias, "chosen_init": chosen, "reseeded_clusters": reseeded,
                      "max_no_improvement": max_no_improvement,
                      "inertia": model.inertia(x, device=device), "centroids_sha1": model.fingerprint()}
    return model


def cluster_usage(labels, num_clusters: int) -> dict:
    """How evenly labels use the clusters.

    Args:
        labels: (N,) integer array/tensor in [0, num_clusters); negative values (padding) are ignored.
    Returns:
        ``histogram`` (K,) int64 np.ndarray; ``clusters_used`` (count > 0); ``entropy_bits`` of the label
        distribution; ``normalized_entropy`` = entropy / log2(K) (1 = uniform); ``perplexity`` = 2**entropy;
        ``largest_cluster_fraction`` (the accuracy of always predicting the most frequent cluster).
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    y = y[y >= 0].astype(np.int64)
    hist = np.bincount(y, minlength=num_clusters)[:num_clusters]
    total = int(hist.sum())
    p = hist[hist > 0] / max(total, 1)
    entropy = float(-(p * np.log2(p)).sum()) if total else 0.0
    return {"histogram": hist, "clusters_used": int((hist > 0).sum()), "entropy_bits": entropy,
            "normalized_entropy": entropy / math.log2(num_clusters) if num_clusters > 1 else 0.0,
            "perplexity": 2.0 ** entropy, "largest_cluster_fraction": float(hist.max() / total) if total else 0.0}
