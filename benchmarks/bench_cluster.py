"""Scale-out benchmark: end-to-end ticks/s of ``usp serve --cluster`` with 1, 2 and 4 workers on
this machine, and the commit latency of each micro-batch.

For each worker count a fresh cluster (its own key prefix) on a throw-away redis-server (the test
suite's, tests/services.py): the workers are separate processes, each built exactly as ``usp serve
--cluster`` builds one (``composition.build_cluster_worker``), with the commit of every
micro-batch timed (encoding its states and the atomic script: what ``usp_cluster_commit_seconds``
observes). Once the workers hold their shares of the shards, a warm-up (``--warm-up`` ticks per
asset, enough for the roughness reads) is published and drained, so that compilation is excluded
as in a long-running cluster; then the
timed ticks are published (``ShardedTickProducer``) and the clock runs from the start of that
publication to the moment every shard's committed offset holds its last entry. Config: the
default one; all assets ticking on one 10 ms grid, in time order.

The machine's CPU count bounds what more workers can give: on 2 cores, 2 workers (and Redis)
already share them, and 4 workers only add contention.

Prints a table and writes ``benchmarks/results/cluster.json``.

    .venv/bin/python benchmarks/bench_cluster.py [--assets 200] [--ticks 500] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the throw-away redis-server of the test suite
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))

T0, DT = 1_800_000_000_000_000_000, 10_000_000


class CommitRecorder:
    """A ``ClusterObserver`` that notes every commit ``(wall time, seconds, ticks)`` and passes
    everything on to the worker's own observer (the Prometheus metrics, if any)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.commits: list[tuple[float, float, int]] = []

    def committed(self, shard: int, seconds: float, ticks: int) -> None:
        self.commits.append((time.time(), seconds, ticks))
        if self.inner is not None:
            self.inner.committed(shard, seconds, ticks)

    def __getattr__(self, name: str) -> Any:  # owned, renewed, lost, backlog
        return getattr(self.inner, name) if self.inner is not None else (lambda *args: None)


def worker_main(url: str, shards: int, stream: str, max_batch: int, record: Path) -> None:
    """One worker process: ``build_cluster_worker`` as ``usp serve --cluster`` calls it, until SIGTERM."""
    from usp import PredictorConfig
    from usp.composition import build_cluster_worker

    assembly = build_cluster_worker(PredictorConfig(), cluster=url, shards=shards,
                                    sink=f"{url.split('?')[0]}?stream={stream}", max_batch=max_batch)
    recorder = CommitRecorder(assembly.worker.observer)
    assembly.worker.observer = recorder
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summary = assembly.run(stop)
    finally:
        assembly.close()
    record.write_text(json.dumps({"commits": recorder.commits, "ticks": summary.ticks, "worker": summary.worker}))


def series(assets: int, ticks: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(asset ids, timestamps_ns [ticks], values [ticks, assets])``: random walks in time order."""
    rng = np.random.default_rng(seed)
    names = [f"A{i:04d}" for i in range(assets)]
    values = 100.0 + np.cumsum(rng.standard_normal((ticks, assets)), axis=0)
    return names, T0 + DT * np.arange(ticks, dtype=np.int64), values


def publish(producer: Any, names: list[str], stamps: np.ndarray, values: np.ndarray) -> None:
    producer.publish([n for _ in stamps for n in names], np.repeat(stamps, len(names)), values.reshape(-1))


def committed(client: Any, prefix: str, shards: int) -> int:
    pipe = client.pipeline(transaction=False)
    for k in range(shards):
        pipe.hget(f"{prefix}:offset:{{{k}}}", "applied")
    return sum(int(v or 0) for v in pipe.execute())


def wait_for(client: Any, prefix: str, shards: int, total: int, workers: Sequence[subprocess.Popen],
             timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while committed(client, prefix, shards) < total:
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker exited early")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prefix}: not drained within {timeout_s} s")
        time.sleep(0.01)


def settle(client: Any, prefix: str, shards: int, workers: int, processes: Sequence[subprocess.Popen],
           timeout_s: float = 300.0) -> None:
    """Wait until every shard is leased and ``workers`` distinct workers hold them (the assignment
    of the full live set: nothing moves during the measurement)."""
    deadline = time.monotonic() + timeout_s
    while True:
        holders = [client.get(f"{prefix}:lease:{{{k}}}") for k in range(shards)]
        if None not in holders and len({h.split(b" ", 1)[1] for h in holders}) == min(workers, shards):
            return
        if any(w.poll() is not None for w in processes):
            raise RuntimeError("a worker exited early")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prefix}: the workers did not settle within {timeout_s} s")
        time.sleep(0.05)


def bench(url: str, workers: int, args: argparse.Namespace, folder: Path) -> dict:
    import redis
    from usp import ShardedTickProducer

    client = redis.Redis.from_url(url)
    prefix = f"bench{workers}"
    cluster = f"{url}?prefix={prefix}"
    names, stamps, values = series(args.assets, args.warm_up + args.ticks)
    warm, timed = slice(0, args.warm_up), slice(args.warm_up, None)
    records = [folder / f"{prefix}-{i}.json" for i in range(workers)]
    with ShardedTickProducer(cluster, args.shards) as producer:
        processes = [subprocess.Popen([sys.executable, __file__, "--worker", cluster, "--shards", str(args.shards),
                                       "--max-batch", str(args.max_batch), "--record", str(record)],
                                      stderr=subprocess.DEVNULL) for record in records]
        try:
            settle(client, prefix, args.shards, workers, processes)
            publish(producer, names, stamps[warm], values[warm])
            wait_for(client, prefix, args.shards, args.assets * args.warm_up, processes)
            began, wall = time.perf_counter(), time.time()
            publish(producer, names, stamps[timed], values[timed])
            published = time.perf_counter() - began
            wait_for(client, prefix, args.shards, args.assets * (args.warm_up + args.ticks), processes)
            seconds = time.perf_counter() - began
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(60)
    commits = [c for record in records for c in json.loads(record.read_text())["commits"] if c[0] >= wall]
    latencies = np.array([c[1] for c in commits]) * 1000.0
    ticks = args.assets * args.ticks
    return {"workers": workers, "ticks": ticks, "seconds": seconds, "ticks_per_s": ticks / seconds,
            "publish_s": published, "commits": len(commits),
            "ticks_per_commit": float(np.mean([c[2] for c in commits])) if commits else 0.0,
            "commit_ms_median": float(np.median(latencies)), "commit_ms_p90": float(np.percentile(latencies, 90)),
            "commit_ms_max": float(latencies.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=500, help="timed ticks per asset (default 500)")
    parser.add_argument("--warm-up", type=int, default=200, help="warm-up ticks per asset (default 200)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.shards, "out", args.max_batch, args.record)
        return
    from services import redis_server
    from usp import PredictorConfig

    config = PredictorConfig()
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
                     "config": {"assets": args.assets, "ticks_per_asset": args.ticks, "warm_up_ticks": args.warm_up,
                                "shards": args.shards, "max_batch": args.max_batch,
                                "kernels": list(config.enabled_kernels), "jax_platform": config.jax_platform},
                     "cells": []}
    with tempfile.TemporaryDirectory(prefix="usp-bench-cluster-") as root, redis_server() as url:
        for workers in args.workers:
            cell = bench(url, workers, args, Path(root))
            results["cells"].append(cell)
            print(f"  {workers} worker(s): {cell['ticks_per_s']:>9,.0f} ticks/s, commit median "
                  f"{cell['commit_ms_median']:.1f} ms", flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    base = results["cells"][0]["ticks_per_s"]
    print(f"\n{'workers':>7} {'ticks':>8} {'seconds':>8} {'ticks/s':>9} {'vs 1st':>7} {'commits':>8} "
          f"{'ticks/commit':>13} {'commit median ms':>17} {'commit p90 ms':>14}")
    for cell in results["cells"]:
        print(f"{cell['workers']:>7} {cell['ticks']:>8} {cell['seconds']:>8.2f} {cell['ticks_per_s']:>9,.0f} "
              f"{cell['ticks_per_s'] / base:>6.2f}x {cell['commits']:>8} {cell['ticks_per_commit']:>13.0f} "
              f"{cell['commit_ms_median']:>17.1f} {cell['commit_ms_p90']:>14.1f}")
    print(f"{args.assets} assets in {args.shards} shards, default config; load average "
          f"{results['machine']['load_average_at_start'][0]:.2f} → {results['machine']['load_average_at_end'][0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    out = ROOT / "benchmarks" / "results" / "cluster.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
