"""What a run ran on, beyond the code: the installed packages and the hardware's numeric paths.

The same seed and settings can give different numbers in two environments (a NumPy or Pillow
release that resizes an image differently, a CPU whose kernels take another vector path, another
GPU driver). The settings hash (identity.py) leaves these out on purpose, so that such rows still
pool; each row instead records a fingerprint, and the leaderboard says when one pool mixes several.

    env            short hash of the two below: equal means the same environment
    env_packages   short hash of every installed distribution's `name==version`; the full list
                   lands once per hash in <results>/environments/<env_packages>.txt, so two rows'
                   lists can be diffed
    env_hardware   the CPU's vector path as torch dispatches to it (AVX2, AVX512...) and the
                   vector extensions the CPU reports, or the GPU's name, driver and CUDA version
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

HASH_CHARS = 10
ENV_DIR = "environments"
# The extensions that change which CPU kernels run (and so the last bits of a float).
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
             "amx_tile", "neon", "asimd", "sve")


def packages() -> list[str]:
    """`name==version` of every installed distribution, names normalised (PEP 503), sorted."""
    seen = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen[re.sub(r"[-_.]+", "-", name).lower()] = dist.version
    return [f"{n}=={v}" for n, v in sorted(seen.items())]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    found = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            found |= set(line.split(":", 1)[1].split())
    return [f for f in CPU_FLAGS if f in found]


def _gpu_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split()
        return out[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    """e.g. `cpu AVX512 (avx2 fma f16c avx512f avx512_vnni)` or `NVIDIA H200, driver 570.1, CUDA 12.8`."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, driver {_gpu_driver()}, CUDA {torch.version.cuda}"
    return f"cpu {torch.backends.cpu.get_cpu_capability()} ({' '.join(_cpu_flags())})"


def fingerprint(device: torch.device) -> tuple[dict[str, str], list[str]]:
    """The row's three fingerprint columns, and the package list `env_packages` hashes."""
    pkgs = packages()
    pkg_hash, hw = _short("\n".join(pkgs)), hardware(device)
    return {"env": _short(f"{pkg_hash}\n{hw}"), "env_packages": pkg_hash, "env_hardware": hw}, pkgs


def save_package_list(results_dir: Path, pkg_hash: str, pkgs: list[str]) -> Path:
    """<results>/environments/<hash>.txt, written once (atomically) per distinct package set."""
    path = Path(results_dir) / ENV_DIR / f"{pkg_hash}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{p}\n" for p in pkgs))
        os.replace(tmp, path)
    return path
