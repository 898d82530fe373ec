"""Peak memory of a block of code: CUDA max-allocated, or the process's peak RSS on CPU.

On Linux the kernel keeps the peak resident set size (``VmHWM``) and lets a process reset it by
writing ``5`` to ``/proc/self/clear_refs``; the peak of a block is then ``VmHWM`` after it minus
``VmRSS`` before it. Freed heap memory is handed back (``malloc_trim``) first, so that memory cached
by an earlier measurement does not hide this one's allocations, and :func:`exact_rss_accounting`
makes glibc map every allocation of 256 KiB or more on its own (``mallopt(M_MMAP_THRESHOLD)``), so
that it leaves the resident set as soon as it is freed: RSS then follows live tensor memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


_M_MMAP_THRESHOLD = -3


def exact_rss_accounting(threshold: int = 256 * 1024) -> bool:
    """Ask glibc to ``mmap`` every allocation of ``threshold`` bytes or more (True if it agreed).

    This fixes the threshold for the rest of the process (glibc otherwise raises it as large blocks
    are freed, after which freed tensors stay resident). Large allocations then cost fresh page
    faults, the same for every variant measured.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def rss_supported() -> bool:
    """True where the peak RSS can be reset and read (Linux)."""
    if _status_kb("VmHWM") is None:
        return False
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager; after the block, ``mb`` is the block's peak memory above its start, in MiB.

    ``device``: a CUDA device measures ``torch.cuda.max_memory_allocated``; otherwise the process's RSS
    (``mb`` stays None where that cannot be read).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mb: float | None = None
        self._start = 0

    def __enter__(self) -> PeakMemory:
        _trim()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif rss_supported():
            self._start = _status_kb("VmRSS") or 0
        else:
            self._start = -1
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._start >= 0:
            peak = _status_kb("VmHWM")
            self.mb = None if peak is None else (peak - self._start) / 1024
