"""PyTorch side of the convolution ceiling (scripts/bench/ceiling-child.mjs).

Usage: conv_ceiling.py SHAPES_JSON THREADS
SHAPES_JSON holds the TF.js measurement's `shapes` list (NHWC input, HWIO filter, stride, pad,
calls). Each call is timed as torch.nn.functional.conv2d on the same NCHW shapes (median of 7
after 2 warm-ups), plus one 1024^3 matmul; prints one JSON line.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(f, reps=7, warm=2):
    ts = []
    for i in range(warm + reps):
        t0 = time.perf_counter()
        f()
        if i >= warm:
            ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    shapes = json.load(open(sys.argv[1]))
    threads = int(sys.argv[2])
    torch.set_num_threads(threads)
    out = []
    total_ms = 0.0
    with torch.no_grad():
        for s in shapes:
            n, h, w, cin = s["x"]
            k, _, fin, cout = s["filter"]
            x = torch.rand(n, cin, h, w)
            f = torch.rand(cout, fin, k, k)
            ms = median_ms(lambda: F.conv2d(x, f, stride=s["stride"], padding=s["pad"]))
            out.append({"x": s["x"], "filter": s["filter"], "stride": s["stride"], "calls": s["calls"], "ms": round(ms, 3)})
            total_ms += ms * s["calls"]
        a = torch.rand(1024, 1024)
        b = torch.rand(1024, 1024)
        gemm_ms = median_ms(lambda: a @ b)
    print(json.dumps({
        "kind": "conv-ceiling", "framework": "pytorch", "torch": torch.__version__, "threads": threads,
        "shapes": out, "convMs": round(total_ms, 1),
        "gemm": {"n": 1024, "ms": round(gemm_ms, 2), "gflopPerS": round(2 * 1024 ** 3 / 1e9 / (gemm_ms / 1000), 1)},
    }))


if __name__ == "__main__":
    main()
