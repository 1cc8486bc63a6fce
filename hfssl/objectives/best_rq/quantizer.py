"""BEST-RQ's random-projection quantizer (Chiu et al., 2022, section 3.1): frozen, seeded, saved with the model.

For an input frame x (the stacked, normalized log-mel frame the encoder sees, dimension D) and each of N
codebooks n: z = normalize(x @ A_n) with A_n a (D, d) Xavier-initialized random matrix, and the label is the
nearest of the V l2-normalized random codewords c_{n,v} ~ N(0, I) (normalized): argmin_v ||z - c_{n,v}||.
Between unit vectors the nearest codeword by L2 distance is the one with the largest cosine
(||z - c||^2 = 2 - 2 z.c), which is how it is computed. Nothing here is ever trained.

The draws come from a CPU generator seeded with the run's `quantizer_seed`, so a seed gives the same
quantizer on every machine running the same torch version; the tensors themselves are saved as
`best_rq_quantizer.safetensors` (in output_dir before training, and with the final model), so labels stay
reproducible across versions and a continued run can reuse them.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

QUANTIZER_FILE = "best_rq_quantizer.safetensors"
FORMAT = "hfssl-best-rq-quantizer-1"


@dataclass
class RandomProjectionQuantizer:
    """``projections`` (N, D, d) and ``codebooks`` (N, V, d) float32 (codewords of unit norm)."""

    projections: torch.Tensor
    codebooks: torch.Tensor

    @classmethod
    def create(cls, input_dim: int, codebook_dim: int, codebook_size: int, num_codebooks: int, seed: int) -> "RandomProjectionQuantizer":
        """Draw a quantizer: Xavier-uniform projections (bound sqrt(6 / (D + d))), standard-normal codewords
        normalized to unit length, from a CPU generator seeded with `seed` (projections first)."""
        g = torch.Generator().manual_seed(int(seed))
        bound = math.sqrt(6.0 / (input_dim + codebook_dim))
        projections = (torch.rand(num_codebooks, input_dim, codebook_dim, generator=g) * 2 - 1) * bound
        codebooks = F.normalize(torch.randn(num_codebooks, codebook_size, codebook_dim, generator=g), dim=-1)
        return cls(projections, codebooks)

    @property
    def num_codebooks(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.projections.shape[1])

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Labels of frames.

        Args:
            features: (..., D) float frames; computed in float32, ``chunk`` frames at a time (the (frames, N, V)
                scores are the largest intermediate).
        Returns:
            (..., N) int64 codeword indices, on the features' device.
        """
        if features.shape[-1] != self.input_dim:
            raise ValueError(f"the quantizer takes {self.input_dim}-dim frames, got {features.shape[-1]}")
        lead = features.shape[:-1]
        x = features.reshape(-1, self.input_dim).float()
        a, c = self.projections.to(x.device), self.codebooks.to(x.device)
        out = []
        for i in range(0, x.shape[0], chunk):
            z = F.normalize(torch.einsum("td,nde->tne", x[i : i + chunk], a), dim=-1)  # (t, N, d)
            out.append(torch.einsum("tne,nve->tnv", z, c).argmax(-1))  # (t, N): largest cosine = nearest
        labels = torch.cat(out) if out else torch.zeros(0, self.num_codebooks, dtype=torch.long, device=x.device)
        return labels.reshape(*lead, self.num_codebooks)

    def fingerprint(self) -> str:
        """Short hash of the tensors: identifies the labels this quantizer gives."""
        h = hashlib.sha1()
        for t in (self.projections, self.codebooks):
            h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write atomically (temp file + rename) as safetensors with string metadata."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        meta = {"format": FORMAT, "sha1": self.fingerprint(), **{k: str(v) for k, v in (metadata or {}).items()}}
        tmp = path + ".tmp"
        save_file({"projections": self.projections.contiguous(), "codebooks": self.codebooks.contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RandomProjectionQuantizer":
        """A saved quantizer (a file, or a folder holding best_rq_quantizer.safetensors)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, QUANTIZER_FILE)
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an hfssl BEST-RQ quantizer (expected format '{FORMAT}').")
        state = load_file(path)
        return cls(state["projections"].float(), state["codebooks"].float())
