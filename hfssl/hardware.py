"""What this machine computes fast, for the `auto` values of `mixed_precision` and `torch_compile`.

bf16 pays only where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs with
AMX or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4). Elsewhere autocast converts every
operand and a step gets slower, not faster. torch.compile on a CPU writes C++ kernels and needs a C++
compiler ($CXX, else g++; clang++ on macOS); on CUDA it writes Triton kernels (shipped with torch).
"""

from __future__ import annotations

import os
import shutil
import sys

import torch


def _cpu_bf16() -> tuple[bool, str]:
    amx, avx512 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    if amx or avx512:
        return True, f"this CPU multiplies bf16 natively ({'AMX' if amx else 'AVX512-BF16'})"
    return False, "this CPU has neither AMX nor AVX512-BF16: bf16 would be emulated, slower than fp32"


def native_bf16() -> tuple[bool, str]:
    """(whether the device the loop will use computes bf16 natively, why)."""
    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"{torch.cuda.get_device_name()} {'computes' if ok else 'does not compute'} bf16 natively"
    if torch.backends.mps.is_available():
        return False, "Apple GPU (mps): hfssl has not measured bf16 there"
    return _cpu_bf16()


def cpp_compiler() -> str | None:
    """Path of the C++ compiler torch.compile (inductor) builds CPU kernels with: $CXX, else g++
    (clang++ on macOS); None when it is not installed."""
    return shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))


def can_compile() -> tuple[bool, str]:
    """(whether torch.compile can build kernels for the loop's device here, why)."""
    if torch.cuda.is_available():
        return True, "CUDA (Triton kernels)"
    if torch.backends.mps.is_available():
        return False, "Apple GPU (mps): torch.compile support there is experimental"
    compiler = cpp_compiler()
    if compiler:
        return True, f"CPU kernels built with {compiler}"
    return False, "no C++ compiler for CPU kernels (install g++, or point CXX at one)"
