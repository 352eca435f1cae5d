"""Predictor persistence benchmark: tick latency with non-blocking snapshots, bytes and µs per asset.

1. Tick latency of ``UniversalPredictor`` (default config) over ``--ticks`` ticks per mode after a
   warm-up, in alternating blocks: without snapshots, and with ``save_snapshot_nonblocking``
   requested on every tick (FileStore, fsync on every write; the submit call is part of the
   measured tick). For scale, the cost of a synchronous ``save_snapshot`` is measured too.
2. Snapshot bytes per asset of the real ``CoreState`` (default config).
3. Save/load µs per asset through ``FunctionalPredictor.save_states`` / ``load_states`` (codec and
   store together) for MemoryStore, FileStore (fsync per asset), RedisStore (a real redis-server
   started here, one pipeline per batch) and S3Store (moto's local server: client path, not AWS).

Prints a table and writes ``benchmarks/results/persistence.json``.

    .venv/bin/python benchmarks/bench_persistence.py [--ticks 2000] [--assets 1000] [--file-assets 200]
"""

from __future__ import annotations

import argparse
import gc
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
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))

from services import moto_s3_server, redis_server, s3_client  # noqa: E402
from usp import FunctionalPredictor, PredictorConfig, ProcessState, UniversalPredictor  # noqa: E402
from usp.adapters.clocks import ReplayClock  # noqa: E402
from usp.adapters.stores import FileStore, MemoryStore, RedisStore, S3Store  # noqa: E402
from usp.application.snapshot import encode_snapshot, pytree_to_blocks  # noqa: E402
from usp.application.snapshot_payload import state_to_payload  # noqa: E402

T0, DT = 1_700_000_000_000_000_000, 10_000_000


def latency_stats(ns: list[int]) -> dict:
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {"ticks": len(us), "mean_us": float(us.mean()), "p50_us": float(np.percentile(us, 50)),
            "p99_us": float(np.percentile(us, 99)), "p999_us": float(np.percentile(us, 99.9)),
            "worst_us": float(us.max())}


def bench_ticks(ticks: int, warmup: int, folder: Path, rounds: int = 8) -> dict:
    """Alternate blocks of plain ticks and ticks with a snapshot request, so that both modes see
    the same background load; each snapshot block's last write finishes outside the timings."""
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.standard_normal(warmup + 2 * ticks + 50)) * 0.1
    p = UniversalPredictor(PredictorConfig(), ReplayClock())
    clock = time.perf_counter_ns
    step = iter(enumerate(values))

    def tick() -> None:
        i, value = next(step)
        p.step(ProcessState(float(value), T0 + i * DT))

    for _ in range(warmup):
        tick()
    gc.collect()
    gc.freeze()  # as a long-running service would: startup objects (JAX, boto3, moto) leave the GC's scans
    path = folder / "ticks"
    p.save_snapshot_nonblocking(path).result()  # the writer's threads exist before measuring
    plain, snap, submit, futures = [], [], [], []
    block = ticks // rounds
    for _ in range(rounds):
        for _ in range(block):
            started = clock()
            tick()
            plain.append(clock() - started)
        for _ in range(block):
            started = clock()
            tick()
            before = clock()
            futures.append(p.save_snapshot_nonblocking(path))
            ended = clock()
            snap.append(ended - started)
            submit.append(ended - before)
        futures[-1].result()
    assert p.close(timeout=600)
    writes = list(dict.fromkeys(futures))
    assert all(f.exception() is None for f in writes)
    sync = []
    for _ in range(50):
        started = clock()
        p.save_snapshot(folder / "sync")
        sync.append(clock() - started)
    return {"without_snapshots": latency_stats(plain),
            "with_nonblocking_snapshot_every_tick": latency_stats(snap),
            "submit_call": latency_stats(submit), "snapshots_requested": len(snap),
            "snapshots_written": len(writes), "synchronous_save_snapshot": latency_stats(sync),
            "kernels": list(p.kernel_names),
            "bytes_per_asset": len(encode_snapshot(state_to_payload(p.config, p.kernel_names, p.state))),
            "state_bytes": int(sum(b.nbytes for b in pytree_to_blocks(p.state).values()))}


def per_asset_us(function, count: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def bench_store(fp: FunctionalPredictor, states, store, count: int) -> dict:
    import jax

    subset = jax.tree_util.tree_map(lambda leaf: leaf[:count], states)
    keys = [f"ASSET{i:05d}" for i in range(count)]
    save = per_asset_us(lambda: fp.save_states(store, keys, subset), count)
    loaded = {}
    load = per_asset_us(lambda: loaded.update(zip(("states", "restored"),
                                                  fp.load_states(store, keys, subset), strict=True)), count)
    assert loaded["restored"].all()
    single = jax.tree_util.tree_map(lambda leaf: leaf[0], states)
    one_save = per_asset_us(lambda: [fp.save_states(store, "ONE", single) for _ in range(20)], 20)
    one_load = per_asset_us(lambda: [fp.load_states(store, "ONE", single) for _ in range(20)], 20)
    return {"assets": count, "save_us": save, "load_us": load, "single_save_us": one_save,
            "single_load_us": one_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2000, help="measured ticks per mode")
    parser.add_argument("--warmup", type=int, default=300, help="ticks before measuring")
    parser.add_argument("--assets", type=int, default=1000, help="assets in the memory and Redis batches")
    parser.add_argument("--file-assets", type=int, default=200, help="assets in the file and S3 batches")
    args = parser.parse_args()

    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
                     "config": "PredictorConfig() defaults"}
    with tempfile.TemporaryDirectory(prefix="usp-bench-") as root:  # outside the repository
        results["ticks"] = bench_ticks(args.ticks, args.warmup, Path(root))

        fp = FunctionalPredictor(PredictorConfig())
        rng = np.random.default_rng(1)
        n = max(args.assets, args.file_assets)
        states, _ = fp.fit_history(fp.init_state(n), np.cumsum(rng.standard_normal((n, 160)), axis=1) * 0.1)
        stores: dict = {"memory": bench_store(fp, states, MemoryStore(), args.assets),
                        "file": bench_store(fp, states, FileStore(Path(root) / "file"), args.file_assets)}
    with redis_server() as url:
        stores["redis"] = bench_store(fp, states, RedisStore(url), args.assets)
    with moto_s3_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="usp-bench")
        stores["s3"] = bench_store(fp, states, S3Store("usp-bench", client=client), args.file_assets)
    results["stores"] = stores

    t = results["ticks"]
    print(f"snapshot bytes per asset (default config, kernels {'+'.join(t['kernels'])}): "
          f"{t['bytes_per_asset']} (state arrays {t['state_bytes']} B)")
    print(f"{'tick latency µs':<40} {'p50':>8} {'p99':>8} {'p99.9':>8} {'worst':>9}")
    for label, key in (("no snapshots", "without_snapshots"),
                       ("non-blocking snapshot every tick", "with_nonblocking_snapshot_every_tick"),
                       ("  of which the submit call", "submit_call"),
                       ("synchronous save_snapshot (file)", "synchronous_save_snapshot")):
        row = t[key]
        print(f"{label:<40} {row['p50_us']:>8.1f} {row['p99_us']:>8.1f} {row['p999_us']:>8.1f} "
              f"{row['worst_us']:>9.1f}")
    print(f"snapshots requested {t['snapshots_requested']}, written {t['snapshots_written']} (coalesced)")
    print(f"{'store':<7} {'assets':>6} {'save µs/asset':>14} {'load µs/asset':>14} {'1 save µs':>10} "
          f"{'1 load µs':>10}")
    for name, row in stores.items():
        print(f"{name:<7} {row['assets']:>6} {row['save_us']:>14.1f} {row['load_us']:>14.1f} "
              f"{row['single_save_us']:>10.1f} {row['single_load_us']:>10.1f}")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"load average {results['machine']['load_average_at_start'][0]:.2f} → "
          f"{results['machine']['load_average_at_end'][0]:.2f} on {os.cpu_count()} CPUs")
    out = ROOT / "benchmarks" / "results" / "persistence.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
