"""A long-lived α,β-CROWN process: start once, verify many instances (run by α,β-CROWN's interpreter).

Started as ``ABCROWN_PYTHON .../worker.py`` with α,β-CROWN's ``complete_verifier``
as the working directory. It imports only the standard library and α,β-CROWN,
so it runs in α,β-CROWN's environment whether or not this package is installed
there. Starting α,β-CROWN (its imports, JIT) costs about ten seconds on a CPU;
a worker pays it once instead of once per instance.

Protocol: one JSON request per line on stdin, ``{"args": [...], "log": PATH}``
(``args`` are ``abcrown.py``'s command-line arguments for one instance); one
reply per line on the original stdout, :data:`MARK` followed by JSON
``{"ok", "error", "seconds", "peak_rss_mib", "peak_gpu_mib"}``. File
descriptors 1 and 2 point at the instance's log while it runs and at
``/dev/null`` otherwise, so α,β-CROWN's output never reaches the protocol.
``peak_rss_mib`` is this process's peak resident memory during the instance
(the Linux high-water mark, reset before it starts); ``peak_gpu_mib`` the
CUDA allocator's peak when α,β-CROWN ran on a GPU. EOF on stdin ends the worker.
"""

import json
import os
import sys
import time
import traceback

MARK = "@@abcrown_plugins.worker@@ "


def _status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    sys.path.insert(0, os.getcwd())
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    sink = os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    import abcrown  # noqa: E402  (α,β-CROWN's module, from the working directory)
    import torch

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        gpu = torch.cuda.is_available()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        _reset_peak()
        start = time.perf_counter()
        error = None
        try:
            abcrown.ABCROWN(args=list(request["args"])).main()
        except BaseException as e:  # noqa: BLE001 - α,β-CROWN's failure is the instance's result, not the worker's
            traceback.print_exc()
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        seconds = time.perf_counter() - start
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        peak = _status_kb("VmHWM")
        reply = {"ok": error is None, "error": error, "seconds": seconds,
                 "peak_rss_mib": peak / 1024 if peak is not None else None,
                 "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None}
        protocol.write(MARK + json.dumps(reply) + "\n")
    protocol.close()


if __name__ == "__main__":
    main()
