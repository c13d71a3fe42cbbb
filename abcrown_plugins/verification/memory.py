"""Peak memory of a block of code: CUDA allocator peak, or the growth of peak resident memory on CPU.

On CPU the measure is ``VmHWM - VmRSS_before`` (Linux ``/proc/self/status``), after
resetting the high-water mark by writing ``5`` to ``/proc/self/clear_refs``: the most
resident memory the process gained while the block ran, in MiB. It includes every
allocation of the process (torch's CPU allocator, Python objects, other threads), not
only tensors; ``tracemalloc`` would miss torch's allocations. Where ``clear_refs`` cannot
be written the fallback is the growth of ``ru_maxrss`` (0 when an earlier peak was higher);
:attr:`PeakMemory.how` names the method used.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...``; then ``pm.mib`` and ``pm.how``."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.mib = 0.0
        self.how = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.how = "cuda_max_allocated"
            return self
        try:
            _CLEAR.write_text("5")
            base = _status_kb("VmRSS")
            if base is None:
                raise OSError
            self._base, self.how = base, "rss_hwm"
        except OSError:
            self._base, self.how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
        return self

    def __exit__(self, *exc) -> None:
        if self.how == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.mib = max(torch.cuda.max_memory_allocated(self.device) - self._base, 0) / 2**20
        elif self.how == "rss_hwm":
            peak = _status_kb("VmHWM") or self._base
            self.mib = max(peak - self._base, 0) / 1024
        else:
            self.mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base, 0) / 1024
