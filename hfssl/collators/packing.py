"""Padding-free text batches: the examples of a micro-batch packed into rows without padding between them.

A padded batch of line-by-line text spends FLOPs on padding (B x longest tokens, most of them
padding when lengths vary). Packing puts whole examples one after another into rows of `capacity`
tokens (first-fit decreasing: the rows end nearly full), with position ids restarting at every example
and, per token, the id of its example: `hfssl.attention.packed_attention` turns those into a
block-diagonal mask (sdpa, eager) or cu_seqlens (flash_attention_2), so no token attends across
examples. Only row ends are padded.

Packing is a layout change applied AFTER masking: the collator draws its masks on the padded (B, T) grid
exactly as without packing, then `pack` moves every real token to its packed slot. So a packed batch
holds the same tokens, masks and labels as the padded one, and the same loss (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PackedLayout:
    """How a collator packs: rows of `capacity` tokens (>= the longest example), position ids starting at
    `position_offset` (RoBERTa family: padding_idx + 1), row width rounded up to `multiple_of`, number of
    rows rounded up to `rows_multiple_of` with empty rows (fewer distinct batch shapes for a GPU's kernels)."""

    capacity: int
    position_offset: int = 0
    multiple_of: int = 8
    rows_multiple_of: int = 1


def first_fit_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Examples (indices into `lengths`) of each row: longest first, each into the first row it fits.

    Deterministic (stable sort), so a batch packs the same way on resume. Every length must be <= capacity."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"An example of {n} tokens does not fit a packed row of {capacity}.")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return rows


def pack(tensors: dict[str, torch.Tensor], lengths: torch.Tensor, layout: PackedLayout, pad_values: dict[str, int]) -> dict:
    """Move the real tokens of padded (B, T) tensors into packed (R, W) rows.

    Args:
        tensors: {name: (B, T)} padded tensors (input_ids, labels, token_type_ids, ...).
        lengths: (B,) real tokens per example (the first lengths[b] of row b).
        pad_values: {name: value} for row-end padding (default 0).
    Returns:
        the packed tensors (R, W), plus
        position_ids (R, W) long: position_offset + index within the example (position_offset at padding);
        sequence_ids (R, W) long: the example's index in the batch, -1 at padding;
        cu_seqlens (S + 1,) int32: boundaries of the segments (examples, then each row's padding) of the
            flattened (R * W) batch, for flash_attention_2;
        sequence_starts (B,) long: each example's first token in the flattened batch, in batch order
            (sequence classification reads the first token).
    """
    lens = lengths.tolist()
    rows = first_fit_rows(lens, layout.capacity)
    rows += [[] for _ in range(-len(rows) % layout.rows_multiple_of)]  # empty rows: padding only
    fill = [sum(lens[i] for i in row) for row in rows]
    W = -(-max(fill) // layout.multiple_of) * layout.multiple_of
    R, B = len(rows), len(lens)
    src_row = np.concatenate([np.full(n, b) for b, n in enumerate(lens)])  # (N,) for every real token, in (b, t) order
    src_col = np.concatenate([np.arange(n) for n in lens])
    start = np.zeros(B, dtype=np.int64)  # flat packed position of each example's first token
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            start[i] = r * W + offset
            offset += lens[i]
    dst = start[src_row] + src_col  # (N,) flat packed slot of every real token
    out = {}
    for name, x in tensors.items():
        flat = torch.full((R * W,), pad_values.get(name, 0), dtype=x.dtype)
        flat[dst] = x[src_row, src_col]
        out[name] = flat.view(R, W)
    position = torch.full((R * W,), layout.position_offset, dtype=torch.long)
    position[dst] = torch.from_numpy(src_col + layout.position_offset)
    sequence = torch.full((R * W,), -1, dtype=torch.long)
    sequence[dst] = torch.from_numpy(src_row)
    bounds = [0]
    for r, row in enumerate(rows):
        for i in row:
            bounds.append(bounds[-1] + lens[i])
        if fill[r] < W:
            bounds.append((r + 1) * W)
    out.update(position_ids=position.view(R, W), sequence_ids=sequence.view(R, W),
               cu_seqlens=torch.tensor(bounds, dtype=torch.int32), sequence_starts=torch.from_numpy(start))
    return out
