#!/usr/bin/env python3
"""ranker-mlp FP32 vs INT8 (dynamic quantisation) with onnxruntime in Python.

    .tools/venv/bin/python training/bench_quant.py [--models models] [--version v1]
        [--batch 200] [--seconds 3] [--threads 1]

Same inputs for both models: the fixed validation rows in
models/parity/<version>/bench_features.f32 (written by train.py). Prints JSON with
rows/s for each model and their ratio, the max/mean absolute score difference, and
how well the INT8 model preserves the FP32 ordering within each batch (Spearman
correlation, pairwise order agreement, top-10 overlap).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import platform
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


def pair_agreement(a, b) -> float:
    """Share of pairs (i<j) with a strict FP32 order that INT8 orders the same way."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    m = da != 0
    return float((da[m] == db[m]).mean()) if m.any() else 1.0


def topk_overlap(a, b, k=10) -> float:
    return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k])) / k


def throughput(sess, batches, seconds: float) -> float:
    for b in batches[:3]:
        sess.run(["score"], {"features": b})  # warm-up
    rows = 0
    t0 = time.perf_counter()
    while True:
        for b in batches:
            sess.run(["score"], {"features": b})
            rows += len(b)
        el = time.perf_counter() - t0
        if el >= seconds:
            return rows / el


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="models")
    p.add_argument("--version", default="v1")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating FP32/INT8 rounds; the median is reported")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    fp32 = os.path.join(a.models, "ranker-mlp", a.version, "model.onnx")
    int8 = os.path.join(a.models, "ranker-mlp-int8", a.version, "model.onnx")
    feats = os.path.join(a.models, "parity", a.version, "bench_features.f32")
    for f in (fp32, int8, feats):
        if not os.path.exists(f):
            print(f"missing {f}: run training/train.py first", file=sys.stderr)
            return 1
    X = np.fromfile(feats, dtype="<f4").reshape(-1, 14)
    nb = len(X) // a.batch
    if nb == 0:
        print(f"need at least {a.batch} rows, have {len(X)}", file=sys.stderr)
        return 1
    batches = [np.ascontiguousarray(X[k * a.batch:(k + 1) * a.batch]) for k in range(nb)]

    s32, s8 = session(fp32, a.threads), session(int8, a.threads)
    y32 = np.concatenate([s32.run(["score"], {"features": b})[0] for b in batches])
    y8 = np.concatenate([s8.run(["score"], {"features": b})[0] for b in batches])
    diff = np.abs(y32.astype(np.float64) - y8.astype(np.float64))
    sp, pa, tk = [], [], []
    for k in range(nb):
        a32, a8 = y32[k * a.batch:(k + 1) * a.batch], y8[k * a.batch:(k + 1) * a.batch]
        sp.append(spearman(a32, a8))
        pa.append(pair_agreement(a32, a8))
        tk.append(topk_overlap(a32, a8))

    r32, r8 = [], []
    for _ in range(a.rounds):
        r32.append(throughput(s32, batches, a.seconds))
        r8.append(throughput(s8, batches, a.seconds))
    m32, m8 = float(np.median(r32)), float(np.median(r8))

    print(json.dumps({
        "model": "ranker-mlp",
        "version": a.version,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": a.threads,
        "batch": a.batch,
        "batches": nb,
        "rows": nb * a.batch,
        "fp32": {"rows_per_s": round(m32, 1), "rounds": [round(x, 1) for x in r32], "bytes": os.path.getsize(fp32)},
        "int8": {"rows_per_s": round(m8, 1), "rounds": [round(x, 1) for x in r8], "bytes": os.path.getsize(int8)},
        "speedup_int8_over_fp32": round(m8 / m32, 3),
        "size_ratio_int8_over_fp32": round(os.path.getsize(int8) / os.path.getsize(fp32), 3),
        "score_abs_diff": {"max": float(diff.max()), "mean": float(diff.mean()), "p99": float(np.quantile(diff, 0.99))},
        "rank_agreement": {
            "spearman_mean": round(float(np.mean(sp)), 6),
            "spearman_min": round(float(np.min(sp)), 6),
            "pairwise_order_agreement": round(float(np.mean(pa)), 6),
            "top10_overlap_mean": round(float(np.mean(tk)), 4),
        },
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
