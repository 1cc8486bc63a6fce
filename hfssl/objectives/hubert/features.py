"""HuBERT target features: MFCCs, the layer features of iteration 2, and frame alignment.

HuBERT (Hsu et al., 2021) predicts, for masked frames, the k-means cluster of a frame-level feature:
iteration 1 clusters 39-dim MFCCs (100 clusters), iteration 2 clusters the hidden states of an
intermediate layer of the iteration-1 model (500 clusters). The MFCCs are fairseq's by default
(`kaldi_mfcc_features`: `torchaudio.compliance.kaldi.mfcc`, as examples/hubert/simple_kmeans/dump_mfcc_feature.py);
`mfcc_features` (`torchaudio.transforms.MFCC`) is kept as an option: its coefficients are scaled so
differently (Hann window, no pre-emphasis, DC removal or liftering) that 50-cluster labels of the two agree
only at NMI ~0.65 on the test fixtures. The k-means is in `kmeans.py`; `labels.py`
wires features, k-means and alignment into the labels the training uses.

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

from collections.abc import Sequence
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from hfssl.data.audio.geometry import conv_geometry, label_frame_index, num_frames  # noqa: F401 (re-exported)

MFCC_DIM = 39
_N_MFCC = 13
_N_MELS = 23  # Kaldi's default number of mel bins (fairseq's HuBERT MFCCs come from Kaldi's defaults)


# ----------------------------------------------------------------------------------- geometry


def mfcc_geometry(sampling_rate: int) -> tuple[int, int]:
    """(window, hop) in samples of the 25 ms / 10 ms MFCC frames: (400, 160) at 16 kHz."""
    return round(0.025 * sampling_rate), round(0.010 * sampling_rate)


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


def kaldi_mfcc_features(wave, sampling_rate: int = 16000) -> torch.Tensor:
    """fairseq's HuBERT iteration-1 features: Kaldi MFCCs (13 cepstra incl. c0, Kaldi defaults: 25 ms Povey
    window, 10 ms hop, pre-emphasis 0.97, DC removal, 23 mel bins from 20 Hz, cepstral liftering 22, no energy
    in place of c0) with deltas and delta-deltas (`torchaudio.functional.compute_deltas`, window 5), of the
    waveform as read (floats in [-1, 1], no 16-bit scaling), exactly as dump_mfcc_feature.py computes them.

    Args:
        wave: (N,) float waveform (np.ndarray or tensor) at ``sampling_rate``. A wave shorter than one
            window is zero-padded to one window, so every file gets at least one frame.
    Returns:
        (T, 39) float32 CPU tensor, T = 1 + (N - window) // hop (100 frames per second).
    """
    import torchaudio

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    window, _ = mfcc_geometry(sampling_rate)
    if x.numel() < window:
        x = torch.nn.functional.pad(x, (0, window - x.numel()))
    with torch.no_grad():
        c = torchaudio.compliance.kaldi.mfcc(x[None], sample_frequency=sampling_rate, use_energy=False).T  # (13, T)
        d = torchaudio.functional.compute_deltas(c)
        dd = torchaudio.functional.compute_deltas(d)
    return torch.cat([c, d, dd], dim=0).T.contiguous()  # (T, 39)


def mfcc_features(wave, sampling_rate: int = 16000) -> torch.Tensor:
    """39-dim MFCC features (13 cepstra incl. c0, deltas, delta-deltas) of one waveform, from
    `torchaudio.transforms.MFCC` (the `mfcc_type: torchaudio` option; see `kaldi_mfcc_features` for fairseq's).

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


MFCC_FEATURES = {"kaldi": kaldi_mfcc_features, "torchaudio": mfcc_features}  # the mfcc_type setting -> function


# ----------------------------------------------------------------------------------- alignment


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
    """Drop the transformer layers that ``hidden_states[layer]`` does not need from a HubertModel (in place)
    and return it.

    ``hidden_states[layer]`` (the output of layer ``layer``; 0 = the encoder input) does not depend on the
    layers above it, so label extraction from layer 6 of a 12-layer model costs half the compute. One layer
    is always kept: transformers records ``hidden_states[0]`` when the first layer runs, so an encoder
    without layers would return no hidden states at all.
    """
    n = model.config.num_hidden_layers
    if not 0 <= layer <= n:
        raise ValueError(f"label_layer {layer} is outside [0, {n}] for a model with {n} transformer layers")
    keep = max(layer, 1)
    model.encoder.layers = model.encoder.layers[:keep]
    model.config.num_hidden_layers = keep
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
