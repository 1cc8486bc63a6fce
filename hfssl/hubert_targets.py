"""HuBERT training targets: MFCC features, mini-batch k-means, frame alignment, iteration-2 features.

HuBERT (Hsu et al., 2021) predicts, for masked frames, the k-means cluster of a frame-level feature:
iteration 1 clusters 39-dim MFCCs (100 clusters), iteration 2 clusters the hidden states of an
intermediate layer of the iteration-1 model (500 clusters). This module holds the pieces that do not
depend on the training loop; `hfssl.objectives.hubert` wires them together.

Frame geometry. A frame sequence is described by ``(window, hop)`` in samples: frame ``j`` covers
samples ``[j * hop, j * hop + window)`` and its centre time is ``j * hop + window / 2``.

* MFCC: window 25 ms, hop 10 ms (400 / 160 samples at 16 kHz, 100 Hz), no padding (Kaldi's
  ``snip_edges``): ``1 + (N - 400) // 160`` frames.
* The conv feature encoder of wav2vec2/HuBERT: window = its receptive field, hop = the product of its
  strides (400 / 320 at 16 kHz for base, 50 Hz); the frame count is the exact per-layer
  ``hfssl.data.audio.geometry.num_frames`` (which can differ from ``1 + (N - window) // hop``).

Alignment rule (`label_frame_index`): model frame ``i`` takes the label of the label frame whose
centre is nearest to its own centre, ties going to the later frame, clipped to the existing label
frames; the number of aligned labels is always the model's ``num_frames``. For HuBERT base and 100 Hz
MFCCs this is exactly label frame ``2 * i``; for labels computed by a model with the same encoder
geometry it is the identity.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from hfssl.data.audio.geometry import num_frames, receptive_field

__all__ = [
    "MFCC_DIM",
    "mfcc_geometry",
    "conv_geometry",
    "mfcc_features",
    "KMeans",
    "fit_kmeans",
    "kmeans_plus_plus",
    "cluster_usage",
    "label_frame_index",
    "align_labels",
    "truncate_encoder",
    "hubert_layer_features",
]

MFCC_DIM = 39
_N_MFCC = 13
_N_MELS = 23  # Kaldi's default number of mel bins (fairseq's HuBERT MFCCs come from Kaldi's defaults)


# ----------------------------------------------------------------------------------- geometry


def mfcc_geometry(sampling_rate: int) -> tuple[int, int]:
    """(window, hop) in samples of the 25 ms / 10 ms MFCC frames: (400, 160) at 16 kHz."""
    return round(0.025 * sampling_rate), round(0.010 * sampling_rate)


def conv_geometry(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """(window, hop) in samples of a conv feature encoder: (receptive field, product of strides)."""
    return receptive_field(conv_kernel, conv_stride), int(np.prod(conv_stride))


# ----------------------------------------------------------------------------------- MFCC


@lru_cache(maxsize=4)
def _mfcc_modules(sampling_rate: int):
    import torchaudio

    window, hop = mfcc_geometry(sampling_rate)
    # n_fft == win_length and center=False keep the frame geometry exact: frame j is samples
    # [j*hop, j*hop + window), as in Kaldi with snip_edges. log_mels: natural log of mel energies as in
    # Kaldi (torchaudio's default is a dB scale with an 80 dB floor).
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=sampling_rate, n_mfcc=_N_MFCC, log_mels=True,
        melkwargs={"n_fft": window, "win_length": window, "hop_length": hop, "n_mels": _N_MELS,
                   "f_min": 20.0, "center": False})
    return mfcc, torchaudio.transforms.ComputeDeltas(win_length=5)


def mfcc_features(wave, sampling_rate: int = 16000) -> torch.Tensor:
    """39-dim MFCC features (13 cepstra incl. c0, deltas, delta-deltas) of one waveform.

    Args:
        wave: (N,) float waveform (np.ndarray or tensor) at ``sampling_rate``. A wave shorter than one
            window is zero-padded to one window, so every file gets at least one frame.
    Returns:
        (T, 39) float32 CPU tensor, T = 1 + (N - window) // hop (100 frames per second).
    """
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    window, _ = mfcc_geometry(sampling_rate)
    if x.numel() < window:
        x = torch.nn.functional.pad(x, (0, window - x.numel()))
    mfcc, deltas = _mfcc_modules(sampling_rate)
    with torch.no_grad():
        c = mfcc(x)  # (13, T)
        d = deltas(c)
        dd = deltas(d)
    return torch.cat([c, d, dd], dim=0).T.contiguous()  # (T, 39)


# ----------------------------------------------------------------------------------- k-means


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
    max_no_improvement: int = 10,
    device: Optional[torch.device | str] = None,
    metadata: Optional[dict] = None,
) -> KMeans:
    """Mini-batch k-means (Sculley 2010) with greedy k-means++ seeding, in torch (GPU when given).

    Seeding runs on a random subset of ``init_size`` points (default ``3 * batch_size``, at least
    ``3 * num_clusters``). Each step draws ``batch_size`` points with replacement, assigns them to the
    nearest centre and moves each centre to the running mean of every point ever assigned to it
    (per-centre learning rate 1 / count), which is scikit-learn's MiniBatchKMeans update applied to the
    batch at once. It stops after ``max_passes`` passes over the data (in expected points drawn) or
    when an exponentially weighted average of the batch inertia has not improved for
    ``max_no_improvement`` steps (scikit-learn's rule; 0 disables early stopping).

    All random draws use a CPU generator seeded with ``seed``: same seed, same data, same device ->
    same centroids.

    Args:
        features: (N, D) points, any float dtype (e.g. float16 to halve host memory). They stay where they are;
            each batch is moved to ``device`` (default: the features' device) and computed in float32.
    Returns:
        ``KMeans`` whose metadata holds the fit settings, steps run, and the final inertia (mean squared
        distance over all N points), merged with ``metadata``.
    """
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if num_clusters < 1 or n < num_clusters:
        raise ValueError(f"k-means with {num_clusters} clusters needs at least that many points; got {n}")
    device = torch.device(device) if device is not None else features.device
    x = features  # stays where it is (e.g. float16 on the CPU); batches move to `device` in float32
    g = torch.Generator().manual_seed(int(seed))
    batch = min(batch_size, n)
    init_n = min(n, init_size or max(3 * batch_size, 3 * num_clusters))
    init_idx = torch.randperm(n, generator=g)[:init_n]
    c = kmeans_plus_plus(x[init_idx.to(x.device)].to(device, torch.float32), num_clusters, g)  # (K, D)
    counts = torch.zeros(num_clusters, dtype=torch.float64, device=device)
    steps = max(1, math.ceil(max_passes * n / batch))
    alpha = min(1.0, 2.0 * batch / (n + 1))
    ewa, best, stale, step = None, math.inf, 0, 0
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


# ----------------------------------------------------------------------------------- alignment


def label_frame_index(num_model_frames: int, model_geometry: tuple[int, int], label_geometry: tuple[int, int],
                      num_label_frames: int) -> np.ndarray:
    """For each model frame, the label frame whose centre is nearest to its centre.

    Model frame i has centre ``i * hop_m + win_m / 2``; label frame j has centre ``j * hop_l + win_l / 2``;
    j = floor((i * hop_m + win_m / 2 - win_l / 2) / hop_l + 1 / 2) (ties to the later frame), clipped to
    [0, num_label_frames - 1]. Integer arithmetic, so no rounding drift on long files.

    Args:
        model_geometry, label_geometry: (window, hop) in samples (`conv_geometry`, `mfcc_geometry`).
    Returns:
        (num_model_frames,) int64 indices into the label frames (empty when there are no label frames).
    """
    (win_m, hop_m), (win_l, hop_l) = model_geometry, label_geometry
    if num_label_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    i = np.arange(num_model_frames, dtype=np.int64)
    # 2 * (centre_m - win_l / 2) = 2 * i * hop_m + win_m - win_l; adding hop_l then floor-dividing by
    # 2 * hop_l rounds half up.
    j = (2 * i * hop_m + win_m - win_l + hop_l) // (2 * hop_l)
    return np.clip(j, 0, num_label_frames - 1)


def align_labels(labels, label_geometry: tuple[int, int], num_samples: int, conv_kernel: Sequence[int],
                 conv_stride: Sequence[int]) -> np.ndarray:
    """Labels of a file at its label frame rate -> one label per model frame (`label_frame_index`).

    Args:
        labels: (T_l,) integer labels of the whole (uncropped) file.
        num_samples: the file's length in samples; the result has ``num_frames(num_samples, ...)`` entries.
    Returns:
        (F,) int64; all -100 (ignored) if there are no label frames.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).reshape(-1)
    f = int(num_frames(int(num_samples), conv_kernel, conv_stride))
    if y.size == 0:
        return np.full(f, -100, dtype=np.int64)
    return y[label_frame_index(f, conv_geometry(conv_kernel, conv_stride), label_geometry, y.size)]


# ----------------------------------------------------------------------------------- iteration-2 features


def truncate_encoder(model, layer: int):
    """Drop the transformer layers above ``layer`` of a HubertModel (in place) and return it.

    ``hidden_states[layer]`` (the output of layer ``layer``; 0 = the encoder input) does not depend on the
    layers above it, so label extraction from layer 6 of a 12-layer model costs half the compute.
    """
    n = model.config.num_hidden_layers
    if not 0 <= layer <= n:
        raise ValueError(f"label_layer {layer} is outside [0, {n}] for a model with {n} transformer layers")
    model.encoder.layers = model.encoder.layers[:layer]
    model.config.num_hidden_layers = layer
    return model


@torch.no_grad()
def hubert_layer_features(model, wave, layer: int, chunk_samples: Optional[int] = None) -> torch.Tensor:
    """Hidden states of transformer layer ``layer`` of a HubertModel for one (already normalized) waveform.

    The model runs in eval mode (no masking, no dropout) on the model's device. Files longer than
    ``chunk_samples`` are cut into chunks that tile the conv frames exactly (each chunk covers whole
    frames, overlapping by ``window - hop`` samples), so the frame count is exactly
    ``num_frames(N)``; only the context (the transformer's, and a group-norm encoder's statistics) is limited
    to the chunk.

    Args:
        wave: (N,) float waveform.
        layer: 0 = the encoder input (after the positional conv), k = the output of transformer layer k.
    Returns:
        (F, H) float32 CPU tensor, F = num_frames(N, conv_kernel, conv_stride) of the model.
    """
    cfg = model.config
    window, hop = conv_geometry(cfg.conv_kernel, cfg.conv_stride)
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    total = int(num_frames(x.numel(), cfg.conv_kernel, cfg.conv_stride))
    if total == 0:
        return torch.zeros(0, cfg.hidden_size)
    per_chunk = total if not chunk_samples else max(1, (chunk_samples - window) // hop + 1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for a in range(0, total, per_chunk):
        b = min(total, a + per_chunk)
        # One chunk: the whole wave (a group-norm encoder normalizes over all samples, trailing ones included).
        piece = (x if per_chunk >= total else x[a * hop : (b - 1) * hop + window]).to(device)
        hidden = model(piece[None], output_hidden_states=True).hidden_states[layer][0]
        out.append(hidden.float().cpu())
    model.train(was_training)
    return torch.cat(out)
