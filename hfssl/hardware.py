"""What this machine computes fast, for the `auto` values of `mixed_precision` and `torch_compile`, and the
precision `accelerate launch` asked for.

bf16 pays only where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs with
AMX or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4). Elsewhere autocast converts every
operand and a step gets slower, not faster. torch.compile on a CPU writes C++ kernels and needs a C++
compiler ($CXX, else g++; clang++ on macOS); on CUDA it writes Triton kernels (shipped with torch).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

import torch

from hfssl.errors import ConfigError


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


def launcher_precision(recipe: dict, overrides: dict, source: str) -> Optional[str]:
    """The precision `accelerate launch --mixed_precision X` (or its config file) asked for, where it decides.

    Accelerate hands it to the script as ACCELERATE_MIXED_PRECISION, but an Accelerator built with an explicit
    precision ignores it, so without this a launch with fp16 silently trained in fp32. A recipe or command line
    that leaves mixed_precision unset or `auto` takes the launcher's; one that sets another precision is an error,
    since which one was meant cannot be guessed. `no` is also what accelerate launch sets when asked for nothing,
    so it decides nothing."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher not in ("fp16", "bf16"):
        return None
    where = "the command line" if "mixed_precision" in overrides else source
    chosen = overrides.get("mixed_precision", recipe.get("mixed_precision"))
    chosen = "no" if chosen is False else chosen  # YAML reads a bare `no` as false
    if chosen is None or str(chosen).lower() == "auto":
        return launcher
    if str(chosen).lower() != launcher:
        raise ConfigError(f"mixed_precision: {where} sets {chosen}, but accelerate launch asks for {launcher} "
                          f"(its --mixed_precision or config file). Make them agree: launch with --mixed_precision "
                          f"{chosen}, or pass --mixed_precision {launcher} to the script.")
    return None
