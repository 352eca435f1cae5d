"""Snapshot persistence benchmark: bytes per asset, codec cost, save/load µs per asset per store.

Stores: FileStore (fsync on every save, on the local disk), RedisStore against a real redis-server
started here (1000 assets, one pipeline per batch) and S3Store against moto's S3 HTTP server
(a local Python mock: its figures measure the client path and moto, not AWS latency).
Prints a table and writes ``benchmarks/results/snapshot.json``.

    .venv/bin/python benchmarks/bench_snapshot.py [--assets 1000] [--file-assets 200] [--s3-assets 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the throw-away servers of the test suite

from services import moto_s3_server, redis_server, s3_client  # noqa: E402
from usp.adapters.stores import FileStore, RedisStore, S3Store  # noqa: E402
from usp.application.snapshot import (  # noqa: E402
    blocks_to_pytree,
    decode_snapshot,
    encode_snapshot,
    pytree_to_blocks,
)


def representative_state(seed: int) -> dict:
    """A state shaped like the predictor's: 256-tick windows, a 252-tick kurtosis buffer, kernels."""
    rng = np.random.default_rng(seed)
    return {
        "global": {
            "signal": rng.standard_normal(256), "residuals": rng.standard_normal(256),
            "kurtosis_buffer": rng.standard_normal(252), "weights": np.full(4, 0.25),
            "sinkhorn_f": rng.standard_normal(4), "sinkhorn_g": rng.standard_normal(4),
            "cusum": rng.random(2), "ema_variance": np.float64(1.3), "h_adaptive": np.float64(5.0),
            "tick": np.int64(seed), "head": np.int32(seed % 256), "grace": np.int32(0),
            "flags": np.zeros(4, bool), "rng": rng.integers(0, 2**32, 2, dtype=np.uint32),
        },
        "kernels": {
            "A": {"coef": rng.standard_normal(16), "cov": rng.standard_normal((16, 16))},
            "B": {"hidden": rng.standard_normal(32), "w": rng.standard_normal((32, 8))},
            "C": {"jump": rng.standard_normal(8), "path": rng.standard_normal(64)},
            "D": {"logsig": rng.standard_normal(14), "window": rng.standard_normal((64, 2))},
        },
    }


def snapshot_blob(seed: int, state: dict | None = None) -> bytes:
    """State → blocks → verified MessagePack bytes (what a predictor's save does before the store)."""
    state = state if state is not None else representative_state(seed)
    return encode_snapshot({
        "schema_version": "1.0", "timestamp": time.time_ns(),
        "config": {"window": 256, "kurtosis_window": 252, "enabled_kernels": ["A", "B", "C", "D"],
                   "epsilon": 1e-3, "cusum_h": 5.0, "seed": seed},
        "global": pytree_to_blocks(state["global"]),
        "telemetry": {"kurtosis": 3.1, "dgm_entropy": 0.7, "adaptive_threshold": 5.0},
        "flags": dict.fromkeys(("degraded_inference", "emergency", "regime_change", "mode_collapse"), False),
        "kernels": {k: pytree_to_blocks(v) for k, v in state["kernels"].items()},
    })


def per_asset_us(function, count: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def bench_codec(rows: dict) -> None:
    state = representative_state(1)
    blob = snapshot_blob(1, state)

    def restore() -> None:
        decoded = decode_snapshot(blob, expected_schema="1.0")
        blocks_to_pytree(state["global"], decoded["global"])
        for name, block in state["kernels"].items():
            blocks_to_pytree(block, decoded["kernels"][name])

    rows["bytes_per_asset"] = len(blob)
    rows["codec"] = {
        "encode_us": per_asset_us(lambda: [snapshot_blob(1, state) for _ in range(200)], 200),
        "decode_us": per_asset_us(lambda: [decode_snapshot(blob, expected_schema="1.0") for _ in range(200)],
                                  200),
        "decode_restore_us": per_asset_us(lambda: [restore() for _ in range(200)], 200),
    }


def bench_store(store, blobs: dict[str, bytes], single_key: str) -> dict:
    count = len(blobs)
    save = per_asset_us(lambda: store.save_many(blobs), count)
    loaded = {}
    load = per_asset_us(lambda: loaded.update(store.load_many(list(blobs))), count)
    assert all(loaded[k] == v for k, v in blobs.items()), "round trip failed"
    one = blobs[single_key]
    return {"assets": count, "save_us": save, "load_us": load,
            "single_save_us": per_asset_us(lambda: [store.save(single_key, one) for _ in range(20)], 20),
            "single_load_us": per_asset_us(lambda: [store.load(single_key) for _ in range(20)], 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=1000, help="assets in the Redis batch")
    parser.add_argument("--file-assets", type=int, default=200, help="assets in the file-store batch")
    parser.add_argument("--s3-assets", type=int, default=200, help="assets in the S3 batch")
    args = parser.parse_args()

    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform()}, "stores": {}}
    bench_codec(results)
    count = max(args.assets, args.file_assets, args.s3_assets)
    blobs = {f"ASSET{i:05d}": snapshot_blob(i) for i in range(count)}
    subset = lambda n: dict(list(blobs.items())[:n])  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="usp-bench-", dir=ROOT / "benchmarks") as root:
        results["stores"]["file"] = bench_store(FileStore(root), subset(args.file_assets), "ASSET00000")
    with redis_server() as url:
        results["stores"]["redis"] = bench_store(RedisStore(url), subset(args.assets), "ASSET00000")
    with moto_s3_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="usp-bench")
        results["stores"]["s3"] = bench_store(S3Store("usp-bench", client=client), subset(args.s3_assets),
                                              "ASSET00000")

    codec = results["codec"]
    print(f"snapshot bytes per asset: {results['bytes_per_asset']}")
    print(f"codec µs/asset: blocks+encode {codec['encode_us']:.1f}  decode {codec['decode_us']:.1f}  "
          f"decode+restore pytrees {codec['decode_restore_us']:.1f}")
    print(f"{'store':<6} {'assets':>6} {'save µs/asset':>14} {'load µs/asset':>14} "
          f"{'1 save µs':>10} {'1 load µs':>10}")
    for name, row in results["stores"].items():
        print(f"{name:<6} {row['assets']:>6} {row['save_us']:>14.1f} {row['load_us']:>14.1f} "
              f"{row['single_save_us']:>10.1f} {row['single_load_us']:>10.1f}")
    out = ROOT / "benchmarks" / "results" / "snapshot.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
