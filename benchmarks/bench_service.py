"""``usp serve`` throughput benchmark: ticks/s end to end at 1, 100 and 1000 assets.

Two routes, each through the real adapters that ``usp serve`` wires (``composition.build_service``):

* **file → JSON lines**: a CSV file replayed (``asset,timestamp,value``, time order, all assets
  ticking on one 10 ms grid) into a JSON-lines file;
* **Redis → Redis**: the same ticks pre-published to a Redis stream (a real redis-server started
  here, as the test suite does), read through a consumer group and written to another stream.

Each cell is measured on a fresh service after a warm-up pass on the same shapes (so compilation
is excluded, as in a long-running service): the time from ``Service.run`` starting to the last
prediction written to the sink (the sink is wrapped to note when each write returns). The final
snapshot, written after the last prediction, is reported on its own (file store with fsync per
asset under a temporary directory). Snapshots on a schedule are off. Config: the default one,
with ``staleness_ttl_ns`` raised to a day: a Redis source is live, so its ticks are judged by the
wall clock, and pre-published ticks would otherwise all be stale (degraded mode) and a file replay
would not be comparable; ``ticks`` per asset (at least ``2 × wtmm_buffer_size`` so that the
roughness reads are in).

Prints a table and writes ``benchmarks/results/service.json``.

    .venv/bin/python benchmarks/bench_service.py [--ticks 300] [--assets 1 100 1000] [--routes file redis]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the throw-away redis-server of the test suite
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))

import redis  # noqa: E402
from services import redis_server  # noqa: E402
from usp import PredictorConfig  # noqa: E402
from usp.application.service import Service  # noqa: E402
from usp.composition import ServiceAssembly, build_service  # noqa: E402
from usp.ports.prediction_sink import PredictionRecords  # noqa: E402

T0, DT = time.time_ns(), 10_000_000


class TimedSink:
    """Forwards to a real sink and notes when the last rows written were flushed."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.name = sink.name
        self.rows = 0
        self.last_write = 0.0
        self._unflushed = False

    def write(self, records: PredictionRecords) -> None:
        self.sink.write(records)
        self.rows += len(records)
        self._unflushed = True

    def flush(self) -> None:
        self.sink.flush()
        if self._unflushed:
            self._unflushed = False
            self.last_write = time.perf_counter()

    def close(self) -> None:
        self.sink.close()


def series(assets: int, ticks: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(asset ids, timestamps_ns [ticks], values [ticks, assets])``: random walks in time order."""
    rng = np.random.default_rng(seed)
    names = [f"A{i:04d}" for i in range(assets)]
    values = 100.0 + np.cumsum(rng.standard_normal((ticks, assets)), axis=0)
    return names, T0 + DT * np.arange(ticks, dtype=np.int64), values


def write_csv(path: Path, names: list[str], stamps: np.ndarray, values: np.ndarray) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for t, stamp in enumerate(stamps.tolist()):
            handle.write("".join(f"{name},{stamp},{value!r}\n" for name, value in zip(names, values[t].tolist(),
                                                                                     strict=True)))


def publish(client: redis.Redis, stream: str, names: list[str], stamps: np.ndarray, values: np.ndarray) -> None:
    pipe = client.pipeline(transaction=False)
    for t, stamp in enumerate(stamps.tolist()):
        for name, value in zip(names, values[t].tolist(), strict=True):
            pipe.xadd(stream, {"asset": name, "timestamp": str(stamp), "value": repr(value)})
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.execute()


def timed_run(assembly: ServiceAssembly, total: int, max_batch: int) -> dict:
    """Run ``assembly`` with its sink timed until ``total`` rows are written (the source ends, or,
    for a live source, the run is stopped once they are); returns the figures."""
    timed = TimedSink(assembly.sinks[0])
    assembly.service = Service(assembly.functional, assembly.source, [timed], store=assembly.store,
                               telemetry=assembly.telemetry, snapshot_every_s=None, max_batch=max_batch,
                               hash_interval_steps=assembly.functional.config.telemetry_hash_interval_steps)
    stop = threading.Event()
    outcome: dict = {}

    def work() -> None:
        outcome["summary"] = assembly.run(stop)
        outcome["ended"] = time.perf_counter()

    began = time.perf_counter()
    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive() and timed.rows < total:
        time.sleep(0.002)
    stop.set()
    worker.join()
    assembly.close()
    summary = outcome["summary"]
    seconds = timed.last_write - began
    return {"ticks": summary.ticks, "seconds": seconds, "ticks_per_s": summary.ticks / seconds,
            "us_per_tick": 1e6 * seconds / summary.ticks, "batches": summary.batches,
            "final_snapshot_s": outcome["ended"] - timed.last_write,
            "dropped_telemetry": assembly.telemetry.dropped_total()}


def bench_file(config: PredictorConfig, assets: int, ticks: int, folder: Path, max_batch: int) -> dict:
    names, stamps, values = series(assets, ticks)
    data = folder / f"ticks-{assets}.csv"
    write_csv(data, names, stamps, values)
    result = {}
    for attempt in ("warm-up", "timed"):
        out = folder / f"out-{assets}-{attempt}.jsonl"
        run_config = _with_store(config, folder / f"snapshots-{assets}-{attempt}")
        assembly = build_service(run_config, source=str(data), sinks=[str(out)], max_batch=max_batch)
        result = timed_run(assembly, assets * ticks, max_batch)
    return result


def bench_redis(config: PredictorConfig, assets: int, ticks: int, folder: Path, url: str, max_batch: int) -> dict:
    names, stamps, values = series(assets, ticks)
    client = redis.Redis.from_url(url)
    result = {}
    for attempt in ("warm-up", "timed"):
        stream, out = f"ticks-{assets}-{attempt}", f"out-{assets}-{attempt}"
        client.delete(stream, out)
        publish(client, stream, names, stamps, values)
        run_config = _with_store(config, folder / f"redis-snapshots-{assets}-{attempt}")
        assembly = build_service(run_config, source=f"{url}?stream={stream}&group=bench", sinks=[f"{url}?stream={out}"],
                                 max_batch=max_batch)
        result = timed_run(assembly, assets * ticks, max_batch)
        assert client.xlen(out) == assets * ticks
    return result


def _with_store(config: PredictorConfig, path: Path) -> PredictorConfig:
    import attrs

    return attrs.evolve(config, snapshot_path=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300, help="ticks per asset (default 300)")
    parser.add_argument("--assets", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--routes", nargs="+", choices=["file", "redis"], default=["file", "redis"])
    parser.add_argument("--max-batch", type=int, default=4096)
    args = parser.parse_args()
    config = PredictorConfig(staleness_ttl_ns=86_400 * 10**9)
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
                     "config": {"ticks_per_asset": args.ticks, "max_batch": args.max_batch,
                                "kernels": list(config.enabled_kernels), "jax_platform": config.jax_platform},
                     "cells": []}
    with tempfile.TemporaryDirectory(prefix="usp-bench-service-") as root, redis_server() as url:
        for route in args.routes:
            for assets in args.assets:
                folder = Path(root) / f"{route}-{assets}"
                folder.mkdir()
                cell = (bench_file(config, assets, args.ticks, folder, args.max_batch) if route == "file"
                        else bench_redis(config, assets, args.ticks, folder, url, args.max_batch))
                cell = {"route": "file → JSON lines" if route == "file" else "Redis → Redis", "assets": assets,
                        **cell}
                results["cells"].append(cell)
                print(f"  {cell['route']:<18} {assets:>5} assets: {cell['ticks_per_s']:>9,.0f} ticks/s", flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"\n{'route':<18} {'assets':>6} {'ticks':>8} {'seconds':>8} {'ticks/s':>10} {'µs/tick':>8} "
          f"{'batches':>8} {'final snapshot s':>17}")
    for cell in results["cells"]:
        print(f"{cell['route']:<18} {cell['assets']:>6} {cell['ticks']:>8} {cell['seconds']:>8.2f} "
              f"{cell['ticks_per_s']:>10,.0f} {cell['us_per_tick']:>8.1f} {cell['batches']:>8} "
              f"{cell['final_snapshot_s']:>17.2f}")
    print(f"load average {results['machine']['load_average_at_start'][0]:.2f} → "
          f"{results['machine']['load_average_at_end'][0]:.2f} on {os.cpu_count()} CPUs")
    out = ROOT / "benchmarks" / "results" / "service.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
