"""Benchmark of the randomized-smoothing noise and the certify hot loop's layout; last line: one JSON object.

    flock /tmp/abcrown_bench.lock python tools/bench_noise.py [--threads 1] [--reps 7] [--models cnn_7layer,resnet18_nr]
        [--batch 200] [--n 2000] [--part noise,layout,alloc]

Every figure is the median over ``--reps`` interleaved repetitions (one round times
each option once, the order rotating per round); ``*_spread`` is ``[min, max]``.

The process runs with :func:`abcrown_plugins.tuning.tune_allocator`, as the CLI does.

``noise`` (per sample of 3x32x32, ``--threads`` intra-op threads): generating
the noisy inputs of ``--n`` samples with

- ``randn``: one ``torch.randn`` per 1000 samples plus ``x + noise * sigma`` (the
  code before the noise stream);
- ``normal_buffer``: ``normal_`` into one reused buffer, then the in-place formula;
- ``stream_b{B}``: :func:`abcrown_plugins.smoothing.noise_batches` with ``reuse=True`` at
  forward batch B (the chunked stream the certifier uses);
- ``box_muller_f32``: float32 Box-Muller from ``torch.rand`` (not reproducing
  ``randn``'s values: measured only, never used);

and the certify loop of ``--n`` samples on ``--loop-model`` (cnn_7layer) at batch ``--batch``:
``serial`` (the stream, then each forward) against ``prefetch`` (the next noise
chunk generated in a background thread while the forward runs; same noise).

``layout``: one forward of a batch of noisy inputs in NCHW against
``channels_last`` (model and input), per model; whether the argmaxes are equal.

``alloc``: run in a child process without and with
:func:`abcrown_plugins.tuning.tune_allocator`: the certify forward per sample at
batch 200 and 1000.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from queue import Queue

import torch

from abcrown_plugins.models import build
from abcrown_plugins.smoothing import NOISE_CHUNK, noise_batches, noise_chunks
from abcrown_plugins.tuning import tune_allocator

SIGMA = 0.25
SHAPE = (3, 32, 32)


def interleaved(options: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """Seconds of every option per round; one warm-up call each first."""
    for fn in options.values():
        fn()
    names = list(options)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            options[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def summary(times: dict[str, list[float]], per: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, ts in times.items():
        out[f"{k}_us"] = 1e6 * statistics.median(ts) / per
        out[f"{k}_us_spread"] = [1e6 * min(ts) / per, 1e6 * max(ts) / per]
    return out


def model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(arch, 3, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


def _randn(x, n):
    g = torch.Generator().manual_seed(1)
    left = n
    while left > 0:
        b = min(NOISE_CHUNK, left)
        _ = x.unsqueeze(0) + torch.randn((b, *x.shape), generator=g) * SIGMA
        left -= b


def _normal_buffer(x, n):
    g = torch.Generator().manual_seed(1)
    buf = torch.empty((NOISE_CHUNK, *x.shape))
    left = n
    while left > 0:
        b = min(NOISE_CHUNK, left)
        buf[:b].normal_(generator=g).mul_(SIGMA).add_(x)
        left -= b


def _stream(x, n, batch):
    for _ in noise_batches(x, n, SIGMA, batch, torch.Generator().manual_seed(1), reuse=True):
        pass


def _box_muller(x, n):
    g = torch.Generator().manual_seed(1)
    half = NOISE_CHUNK * math.prod(x.shape) // 2
    u1, u2, out = torch.empty(half), torch.empty(half), torch.empty(2 * half)
    left = n
    while left > 0:
        u1.uniform_(generator=g).clamp_(min=1e-7).log_().mul_(-2 * SIGMA * SIGMA).sqrt_()
        u2.uniform_(generator=g).mul_(2 * math.pi)
        torch.mul(u1, torch.cos(u2), out=out[:half])
        torch.mul(u1, torch.sin(u2), out=out[half:])
        out.view(NOISE_CHUNK, *x.shape).add_(x)
        left -= NOISE_CHUNK


def _prefetched_chunks(shape, n, g):
    """The chunks of noise_chunks, each generated in a background thread one chunk ahead (same values)."""
    q: Queue = Queue(maxsize=1)
    bufs = [torch.empty((min(NOISE_CHUNK, n), *shape)) for _ in range(2)]

    def produce():
        left, i = n, 0
        while left > 0:
            k = min(NOISE_CHUNK, left)
            c = bufs[i % 2][:k]
            c.normal_(generator=g)
            q.put(c)
            left -= k
            i += 1
        q.put(None)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    while (c := q.get()) is not None:
        yield c
    t.join()


def _certify_loop(net, x, n, batch, prefetch):
    g = torch.Generator().manual_seed(1)
    chunks = _prefetched_chunks(x.shape, n, g) if prefetch else noise_chunks(x.shape, n, g)
    out = torch.empty((batch, *x.shape))
    with torch.no_grad():
        for chunk in chunks:  # batch divides NOISE_CHUNK here
            for s in range(0, chunk.shape[0], batch):
                b = min(batch, chunk.shape[0] - s)
                torch.mul(chunk[s:s + b], SIGMA, out=out[:b])
                net(out[:b].add_(x)).argmax(1)


def bench_noise(args) -> dict:
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    n = args.n
    opts = {"randn": lambda: _randn(x, n), "normal_buffer": lambda: _normal_buffer(x, n),
            "stream_b100": lambda: _stream(x, n, 100), "stream_b1000": lambda: _stream(x, n, 1000),
            "box_muller_f32": lambda: _box_muller(x, n)}
    res = summary(interleaved(opts, args.reps), n)
    net = model(args.loop_model)
    loop = interleaved({"serial": lambda: _certify_loop(net, x, n, args.batch, False),
                        "prefetch": lambda: _certify_loop(net, x, n, args.batch, True)}, args.reps)
    res.update({f"certify_{k}": v for k, v in summary(loop, n).items()})
    # the prefetched stream is the same stream
    a = torch.cat([c.clone() for c in _prefetched_chunks(SHAPE, 2500, torch.Generator().manual_seed(3))])
    b = torch.cat([c.clone() for c in noise_chunks(SHAPE, 2500, torch.Generator().manual_seed(3))])
    res["prefetch_same_noise"] = bool(torch.equal(a, b))
    return res


def bench_layout(args) -> dict:
    out: dict[str, object] = {}
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    for arch in args.models.split(","):
        net = model(arch)
        cl = model(arch).to(memory_format=torch.channels_last)
        batch = next(noise_batches(x, args.batch, SIGMA, args.batch, torch.Generator().manual_seed(2)))
        batch_cl = batch.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            same = bool(torch.equal(net(batch).argmax(1), cl(batch_cl).argmax(1)))
            diff = float((net(batch) - cl(batch_cl)).abs().max())
            times = interleaved({"nchw": lambda: net(batch), "channels_last": lambda: cl(batch_cl),
                                 "channels_last_model_only": lambda: cl(batch)}, args.reps)
        s = summary(times, args.batch)
        out[arch] = {**s, "same_argmax": same, "max_abs_logit_diff": diff,
                     "ratio": statistics.median(times["channels_last"]) / statistics.median(times["nchw"])}
    return out


_CHILD = """
import json, statistics, sys, time, torch
from abcrown_plugins.tuning import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "1" else False
torch.set_num_threads(int(sys.argv[2]))
from abcrown_plugins.models import build
torch.manual_seed(0)
net = build("cnn_7layer", 3, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
res = {"tuned": tuned}
with torch.no_grad():
    for b in (200, 1000):
        x = torch.rand(b, 3, 32, 32)
        net(x)
        ts = []
        for _ in range(int(sys.argv[3])):
            t0 = time.perf_counter(); net(x).argmax(1); ts.append(time.perf_counter() - t0)
        res[f"b{b}_us"] = [1e6 * t / b for t in ts]
print(json.dumps(res))
"""


def bench_alloc(args) -> dict:
    """Child processes alternating untuned / tuned, so host load drifts over both alike."""
    runs: dict[str, dict[str, list[float]]] = {"default": {}, "tuned": {}}
    tuned_ok = None
    for r in range(args.alloc_rounds):
        for flag in (("0", "1") if r % 2 == 0 else ("1", "0")):
            out = subprocess.run([sys.executable, "-c", _CHILD, flag, str(args.threads), str(args.reps)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got = json.loads(out)
            name = "tuned" if flag == "1" else "default"
            if flag == "1":
                tuned_ok = got["tuned"]
            for k, v in got.items():
                if k.endswith("_us"):
                    runs[name].setdefault(k, []).extend(v)
    res: dict[str, object] = {"tune_allocator_applied": tuned_ok}
    for name, d in runs.items():
        for k, v in d.items():
            res[f"{name}_{k}"] = statistics.median(v)
            res[f"{name}_{k}_spread"] = [min(v), max(v)]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--models", default="cnn_7layer,resnet18_nr")
    p.add_argument("--part", default="noise,layout,alloc")
    p.add_argument("--alloc-rounds", type=int, default=4)
    p.add_argument("--loop-model", default="cnn_7layer", help="model of the serial/prefetch certify loop")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()  # as the CLI does; the alloc part compares both in child processes
    parts = args.part.split(",")
    res: dict[str, object] = {"threads": args.threads, "reps": args.reps, "torch": torch.__version__}
    if "noise" in parts:
        res["noise"] = bench_noise(args)
        print("noise", json.dumps(res["noise"]), file=sys.stderr)
    if "layout" in parts:
        res["layout"] = bench_layout(args)
        print("layout", json.dumps(res["layout"]), file=sys.stderr)
    if "alloc" in parts:
        res["alloc"] = bench_alloc(args)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
