"""What a benchmark ran on, in words, and a device-aware clock barrier."""

from __future__ import annotations

import os
import platform

import torch


def describe_machine(device: str) -> str:
    """CPU model and cores (and the GPU, for a CUDA device), torch version and thread count."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    words = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        words = f"{torch.cuda.get_device_name(torch.device(device))}; host {words}"
    return words


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times measure it (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
