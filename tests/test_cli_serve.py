"""`usp serve` end to end: the real command in a subprocess (``python -m usp.cli serve``), real
files, a real redis-server (tests/services.py), real signals and ``/metrics`` over HTTP.

One data set serves every test: 50 assets × 500 ticks on a 10 ms grid, in time order (every
asset's tick ``i`` at ``T0 + i·10 ms``), ids including ``EUR/USD`` and non-ASCII ones. The
uninterrupted replay of it (:func:`replayed`) is checked against ``FunctionalPredictor.step`` run
asset by asset, and is the reference every interrupted, restarted or crashed run must reproduce
bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from usp import FunctionalPredictor, PredictorConfig, ProcessState
from usp._cli_serve import EXIT_GRACE_EXPIRED, ServeOptions, ShutdownSignals, serve
from usp.adapters.clocks import ReplayClock
from usp.adapters.sinks import format_timestamp
from usp.adapters.stores import FileStore
from usp.application.asset_registry import asset_prng_key
from usp.domain._config import FIELDS
from usp.ports.state_store import asset_key

from .services import free_port, redis_server, redis_url

__all__ = ["redis_url"]  # the session fixture used below

ROOT = Path(__file__).resolve().parent.parent
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
CONFIG = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                         kernel_a_order=4, enabled_kernels=("A",))
T0, DT = 1_800_000_000_000_000_000, 10_000_000
ASSETS = ("EUR/USD", "btc", "ÄÖÜ €", "a b", *(f"X{i:02d}" for i in range(46)))
TICKS = 500
SHORT = 120  # ticks per asset of the interrupted runs (a prefix of each asset's series)
STARTUP_S = 120.0  # generous: a cold compilation cache on a slow machine


# -- data and reference ----------------------------------------------------------------------------
@attrs.frozen
class Tick:
    asset: str
    ns: int
    value: float


def make_ticks(assets=ASSETS, ticks=TICKS, seed=0) -> list[Tick]:
    """Random walks of different scales, in time order (all assets at each grid time)."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 3, len(assets))
    paths = np.cumsum(rng.standard_normal((len(assets), ticks)), axis=1) * scales[:, None] + 100 * scales[:, None]
    return [Tick(asset, T0 + i * DT, float(paths[a, i])) for i in range(ticks) for a, asset in enumerate(assets)]


def csv_lines(ticks: list[Tick]) -> str:
    return "".join(f"{t.asset},{t.ns},{t.value!r}\n" for t in ticks)


def per_asset(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["asset"], []).append(record)
    return out


def reference_outputs(ticks: list[Tick], config: PredictorConfig = CONFIG) -> dict[str, list[dict]]:
    """``FunctionalPredictor.step`` on a ``ReplayClock``, asset by asset, from each asset's cold
    state (the service's rule: ``asset_prng_key``)."""
    functional = FunctionalPredictor(config, clock=ReplayClock())
    out: dict[str, list[dict]] = {}
    by_asset: dict[str, list[Tick]] = {}
    for tick in ticks:
        by_asset.setdefault(tick.asset, []).append(tick)
    for asset, own in by_asset.items():
        functional.clock = ReplayClock()
        state = functional.init_state(key=asset_prng_key(config.seed, asset))
        rows = out[asset] = []
        for tick in own:
            state, result = functional.step(state, ProcessState(tick.value, tick.ns))
            rows.append({"timestamp": format_timestamp(tick.ns), "prediction": float(result.reference_prediction),
                         "lower": float(result.confidence_lower), "upper": float(result.confidence_upper),
                         "mode": result.mode, "events": [e.name for e in result.telemetry.events]})
    return out


def write_config(path: Path, snapshots: Path, **extra) -> Path:
    """``CONFIG`` (and ``extra``) as TOML, snapshots in a file store under ``snapshots``."""
    values = {**attrs.asdict(CONFIG), "snapshot_path": str(snapshots), **extra}
    defaults = attrs.asdict(PredictorConfig())
    sections: dict[str, list[str]] = {}
    for name, value in values.items():
        if value != defaults[name] or name == "snapshot_path":
            sections.setdefault(FIELDS[name].metadata["section"], []).append(f"{name} = {json.dumps(value)}")
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    return path


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def snapshot_counts(snapshots: Path, assets, config: PredictorConfig = CONFIG) -> dict[str, int]:
    """Accepted ticks (``CoreState.count``) of each asset's newest snapshot (-1: none)."""
    functional = FunctionalPredictor(config, clock=ReplayClock())
    store = FileStore(snapshots)
    counts = {}
    for asset in assets:
        state, restored = functional.load_states(store, asset_key(asset))
        counts[asset] = int(state.count) if restored else -1
    return counts


def accepted(outputs: list[dict]) -> int:
    """Ticks the core accepted (every tick but the rejected ones moves ``count``)."""
    return sum(1 for o in outputs if not any(e.endswith("RejectedEvent") for e in o["events"]))


# -- the command -----------------------------------------------------------------------------------
class Serving:
    """``usp serve`` in a subprocess; stderr collected line by line on a thread."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None,
                 stdin: int | None = subprocess.DEVNULL) -> None:
        environment = {**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE, **(env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "usp.cli", "serve", *args], cwd=cwd, env=environment,
                                        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for raw in self.process.stderr:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = STARTUP_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no stderr line matching {pattern!r}; exit {self.process.poll()}:\n{self.stderr}")

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def wait_until(condition, timeout: float = 60.0, what: str = "condition", serving: Serving | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if serving is not None and serving.process.poll() is not None:
            raise AssertionError(f"usp serve exited ({serving.process.returncode}) before {what}:\n{serving.stderr}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{serving.stderr}" if serving else ""))


@pytest.fixture
def serving_processes() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for serving in started:
        serving.kill()


def start(processes: list[Serving], *args: str, cwd: Path, **kw) -> Serving:
    serving = Serving(*args, cwd=cwd, **kw)
    processes.append(serving)
    return serving


def assert_same_as(outputs: dict[str, list[dict]], reference: dict[str, list[dict]], exact: bool) -> None:
    """Per asset, the outputs are the reference's (in order), exactly or to 1e-12."""
    assert set(outputs) == set(reference)
    for asset, rows in outputs.items():
        expected = reference[asset]
        assert [r["timestamp"] for r in rows] == [e["timestamp"] for e in expected], asset
        assert [r["mode"] for r in rows] == [e["mode"] for e in expected], asset
        assert [r["events"] for r in rows] == [e["events"] for e in expected], asset
        for key in ("prediction", "lower", "upper"):
            got = np.array([r[key] for r in rows], dtype=np.float64)
            want = np.array([e[key] for e in expected], dtype=np.float64)
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=f"{asset} {key}")
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                           err_msg=f"{asset} {key}")


def assert_prefixes(outputs: dict[str, list[dict]], reference: dict[str, list[dict]]) -> dict[str, int]:
    """Each asset's outputs are a prefix of its reference outputs, bit for bit; returns their lengths."""
    lengths = {}
    for asset, expected in reference.items():
        rows = outputs.get(asset, [])
        assert rows == expected[:len(rows)], asset
        lengths[asset] = len(rows)
    return lengths


# -- the uninterrupted replay ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ticks() -> list[Tick]:
    return make_ticks()


@pytest.fixture(scope="module")
def short(ticks) -> list[Tick]:
    """The first :data:`SHORT` ticks of every asset: the uninterrupted replay's outputs for them
    are the prefixes of :func:`replayed`'s (each output depends only on the ticks before it)."""
    return ticks[:SHORT * len(ASSETS)]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, ticks) -> dict[str, list[dict]]:
    """``usp serve`` over the whole data set from a CSV file to a JSON-lines file (exit 0)."""
    folder = tmp_path_factory.mktemp("replay")
    (folder / "ticks.csv").write_text("asset,timestamp,value\n" + csv_lines(ticks), encoding="utf-8")
    config = write_config(folder / "c.toml", folder / "snapshots")
    done = subprocess.run([sys.executable, "-m", "usp.cli", "serve", "--config", str(config), "--source", "ticks.csv",
                           "--sink", "out.jsonl"], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE}, timeout=STARTUP_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # nothing but a "-" sink's records ever goes to stdout
    summary = re.search(r"usp: served (\d+) ticks of (\d+) assets", done.stderr)
    assert summary and summary.groups() == (str(len(ticks)), str(len(ASSETS))), done.stderr
    records = read_jsonl(folder / "out.jsonl")
    assert [(r["asset"], r["timestamp"]) for r in records] == [(t.asset, format_timestamp(t.ns)) for t in ticks]
    assert all(set(r) == {"asset", "timestamp", "prediction", "lower", "upper", "mode", "events"} for r in records)
    outputs = per_asset(records)
    assert snapshot_counts(folder / "snapshots", ASSETS) == {a: accepted(rows) for a, rows in outputs.items()}
    return {asset: [{k: v for k, v in r.items() if k != "asset"} for r in rows] for asset, rows in outputs.items()}


def test_a_replay_gives_each_asset_the_outputs_of_functional_step(replayed, ticks):
    """50 assets × 500 ticks from a CSV file: per asset, in input order, what
    ``FunctionalPredictor.step`` on a replay clock gives asset by asset (to 1e-12)."""
    assert_same_as(replayed, reference_outputs(ticks), exact=False)
    assert any(r["mode"] == "inference" for rows in replayed.values() for r in rows)


# -- SIGTERM during a followed file ----------------------------------------------------------------
def trickle(write, ticks: list[Tick], stop: threading.Event, rows: int = 50,
            pause_s: float = 0.02) -> threading.Thread:
    """A thread handing ``ticks`` to ``write`` ``rows`` at a time every ``pause_s`` seconds; once
    ``stop`` is set, the rest at once (the input always ends complete)."""
    def run() -> None:
        pause = pause_s
        for start in range(0, len(ticks), rows):
            write(ticks[start:start + rows])
            if stop.wait(pause):
                pause = 0.0
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def remaining(ticks: list[Tick], done: dict[str, int]) -> list[Tick]:
    """The ticks after each asset's first ``done[asset]`` ticks, in input order."""
    seen = dict.fromkeys(done, 0)
    rest = []
    for tick in ticks:
        seen[tick.asset] += 1
        if seen[tick.asset] > done[tick.asset]:
            rest.append(tick)
    return rest


def prefix_of(replayed: dict[str, list[dict]], ticks: int) -> dict[str, list[dict]]:
    return {asset: rows[:ticks] for asset, rows in replayed.items()}


def test_sigterm_while_following_a_file_loses_and_repeats_nothing(tmp_path, short, replayed, serving_processes):
    """SIGTERM mid-stream: exit 0; every tick read was applied and written exactly once (each
    asset's outputs are a prefix of its input, bit-identical to the uninterrupted replay); the
    final snapshot holds each asset's applied ticks; a restart on the rest continues it bit for
    bit."""
    data, snapshots = tmp_path / "ticks.csv", tmp_path / "snapshots"
    config = write_config(tmp_path / "c.toml", snapshots)
    head = len(short) // 5
    data.write_text(csv_lines(short[:head]))
    serving = start(serving_processes, "--config", str(config), "--source", str(data), "--follow",
                    "--sink", "out.jsonl", "--snapshot-every", "0.3", "--max-batch", "100", cwd=tmp_path)
    wait_until(lambda: len(read_jsonl(tmp_path / "out.jsonl")) == head, what="the first ticks", serving=serving)
    stop_writing = threading.Event()

    def append(part: list[Tick]) -> None:
        with data.open("a", encoding="utf-8") as handle:
            handle.write(csv_lines(part))

    writer = trickle(append, short[head:], stop_writing)
    try:
        wait_until(lambda: len(read_jsonl(tmp_path / "out.jsonl")) > head + 1500, what="outputs", serving=serving)
        serving.signal(signal.SIGTERM)
        assert serving.wait() == 0, serving.stderr
    finally:
        stop_writing.set()
        writer.join()
    assert "stopped by SIGTERM" in serving.stderr
    expected = prefix_of(replayed, SHORT)
    done = assert_prefixes({a: without(rows, "asset") for a, rows in per_asset(read_jsonl(tmp_path / "out.jsonl"))
                            .items()}, expected)
    assert head < sum(done.values()) < len(short)  # stopped mid-stream
    assert snapshot_counts(snapshots, ASSETS) == {a: accepted(expected[a][:n]) for a, n in done.items()}
    # the rest, replayed on top of the final snapshot: together bit-identical to the uninterrupted run
    (tmp_path / "rest.csv").write_text(csv_lines(remaining(short, done)))
    again = subprocess.run([sys.executable, "-m", "usp.cli", "serve", "--config", str(config), "--source", "rest.csv",
                            "--sink", "out.jsonl"], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE}, timeout=STARTUP_S)
    assert again.returncode == 0, again.stderr
    assert f"{len(ASSETS)} assets restored from the store" in again.stderr
    both = per_asset(read_jsonl(tmp_path / "out.jsonl"))
    assert_same_as({a: without(rows, "asset") for a, rows in both.items()}, expected, exact=True)


# -- Redis stream in, Redis stream out -------------------------------------------------------------
def publish(client: redis.Redis, stream: str, ticks: list[Tick]) -> None:
    pipe = client.pipeline(transaction=False)
    for tick in ticks:
        pipe.xadd(stream, {"asset": tick.asset, "timestamp": str(tick.ns), "value": repr(tick.value)})
    pipe.execute()


def stream_outputs(client: redis.Redis, stream: str) -> list[dict]:
    """The records of a Redis stream sink, in stream order."""
    out = []
    for _, fields in client.xrange(stream):
        record = {k.decode(): v.decode() for k, v in fields.items()}
        out.append({"asset": record["asset"], "timestamp": record["timestamp"],
                    "prediction": float(record["prediction"]), "lower": float(record["lower"]),
                    "upper": float(record["upper"]), "mode": record["mode"], "events": json.loads(record["events"]),
                    "source_id": record.get("source_id")})
    return out


def without(rows: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def test_a_redis_stream_in_and_out_stops_and_resumes_exactly_once(tmp_path, short, replayed, redis_url,
                                                                   serving_processes):
    """Redis stream → Redis stream while ticks are being published: SIGTERM exits 0 with every
    entry read applied, written once and acknowledged (nothing pending); a restart reads on from
    there, and the two runs together are the uninterrupted replay, bit for bit, each entry once."""
    client = redis.Redis.from_url(redis_url)
    client.delete("ticks:graceful", "out:graceful")
    snapshots = tmp_path / "snapshots"
    config = write_config(tmp_path / "c.toml", snapshots)
    args = ("--config", str(config), "--source", f"{redis_url}?stream=ticks:graceful&group=g",
            "--sink", f"{redis_url}?stream=out:graceful", "--snapshot-every", "0.2", "--max-batch", "100")
    head = len(short) // 5
    publish(client, "ticks:graceful", short[:head])
    first = start(serving_processes, *args, cwd=tmp_path)
    wait_until(lambda: client.xlen("out:graceful") == head, what="the first ticks", serving=first)
    stop_publishing = threading.Event()
    publisher = trickle(lambda part: publish(client, "ticks:graceful", part), short[head:], stop_publishing)
    try:
        wait_until(lambda: client.xlen("out:graceful") >= head + 1500, what="outputs", serving=first)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.stderr
    finally:
        stop_publishing.set()
        publisher.join()
    expected = prefix_of(replayed, SHORT)
    outputs = stream_outputs(client, "out:graceful")
    done = assert_prefixes({a: without(rows, "asset", "source_id") for a, rows in per_asset(outputs).items()},
                           expected)
    assert head + 1500 <= sum(done.values()) < len(short)
    assert client.xpending("ticks:graceful", "g")["pending"] == 0  # all acknowledged after the final snapshot
    assert snapshot_counts(snapshots, ASSETS) == {a: accepted(expected[a][:n]) for a, n in done.items()}
    second = start(serving_processes, *args, cwd=tmp_path)
    wait_until(lambda: client.xlen("out:graceful") >= len(short), what="the rest", serving=second)
    second.signal(signal.SIGINT)
    assert second.wait() == 0, second.stderr
    outputs = stream_outputs(client, "out:graceful")
    assert len(outputs) == len(short)
    assert len({r["source_id"] for r in outputs}) == len(short)  # each entry once
    assert_same_as({a: without(rows, "asset", "source_id") for a, rows in per_asset(outputs).items()}, expected,
                   exact=True)
    assert client.xpending("ticks:graceful", "g")["pending"] == 0


def test_after_kill_9_a_restart_restores_the_snapshot_and_applies_every_tick(tmp_path, short, replayed, redis_url,
                                                                           serving_processes):
    """Crash recovery: SIGKILL mid-run (Redis source, snapshots every 0.2 s, ticks still being
    published); the restart restores the last snapshot and Redis redelivers what was not
    acknowledged. Redelivered ticks an asset's snapshot already holds (entry id at or before the
    one it recorded) are skipped, the others applied: every tick is applied to the state exactly
    once (the final snapshot holds the uninterrupted run's tick counts) and every output is the
    uninterrupted run's, bit for bit. Outputs are at least once: only ticks applied after their
    asset's last snapshot before the crash may be output twice; those it held, exactly once."""
    client = redis.Redis.from_url(redis_url)
    client.delete("ticks:crash", "out:crash")
    snapshots = tmp_path / "snapshots"
    config = write_config(tmp_path / "c.toml", snapshots)
    args = ("--config", str(config), "--source", f"{redis_url}?stream=ticks:crash&group=g",
            "--sink", f"{redis_url}?stream=out:crash", "--snapshot-every", "0.2", "--max-batch", "100")
    head = len(short) // 5
    publish(client, "ticks:crash", short[:head])
    first = start(serving_processes, *args, cwd=tmp_path)
    wait_until(lambda: client.xlen("out:crash") == head, what="the first ticks", serving=first)
    stop_publishing = threading.Event()
    publisher = trickle(lambda part: publish(client, "ticks:crash", part), short[head:], stop_publishing)
    try:
        wait_until(lambda: client.xlen("out:crash") >= head + 1000 and any(snapshots.glob("*/*.snap")),
                   what="outputs", serving=first)
        wait_until(lambda: client.xlen("out:crash") >= head + 1500, what="more outputs", serving=first)
        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    finally:
        stop_publishing.set()
        publisher.join()
    assert client.xlen("out:crash") < len(short)
    assert client.xpending("ticks:crash", "g")["pending"] > 0  # read, not acknowledged: to be redelivered
    saved = sum(1 for asset in ASSETS if any((snapshots / asset_key(asset)).glob("*.snap")))
    assert saved > 0
    held = snapshot_counts(snapshots, ASSETS)  # accepted ticks in each asset's snapshot at the crash
    second = start(serving_processes, *args, cwd=tmp_path)
    wanted = {(t.asset, format_timestamp(t.ns)) for t in short}
    wait_until(lambda: {(r["asset"], r["timestamp"]) for r in stream_outputs(client, "out:crash")} == wanted,
               what="every tick", serving=second)
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.stderr
    restored = re.search(r"(\d+) assets restored from the store", second.stderr)
    assert restored and int(restored.group(1)) == saved, second.stderr  # (a crash may cut a first snapshot short)
    expected = prefix_of(replayed, SHORT)
    reference = {(asset, row["timestamp"]): row for asset, rows in expected.items() for row in rows}
    outputs = stream_outputs(client, "out:crash")
    for record in outputs:
        got = without([record], "asset", "source_id")[0]
        assert got == reference[(record["asset"], record["timestamp"])], record
    times = {}
    for record in outputs:
        times.setdefault(record["asset"], []).append(record["timestamp"])
    for asset, rows in expected.items():  # what the snapshot held at the crash: output exactly once
        in_snapshot = next(k for k in range(len(rows) + 1) if accepted(rows[:k]) >= max(held[asset], 0))
        assert all(times[asset].count(row["timestamp"]) == 1 for row in rows[:in_snapshot]), asset
    assert snapshot_counts(snapshots, ASSETS) == {a: accepted(rows) for a, rows in expected.items()}
    assert client.xpending("ticks:crash", "g")["pending"] == 0


# -- /metrics over HTTP ----------------------------------------------------------------------------
def scrape(port: int) -> dict[str, float]:
    """``{sample name with labels: value}`` of ``/metrics``, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_are_served_over_http_while_serving(tmp_path, serving_processes):
    """``--metrics-port 0`` binds a free port (printed on stderr); ``usp_ticks_total`` counts the
    ticks applied, the asset gauges the assets seen."""
    few = make_ticks(assets=("a", "b", "c"), ticks=120, seed=3)
    (tmp_path / "ticks.jsonl").write_text("".join(json.dumps({"asset": t.asset, "timestamp": t.ns, "value": t.value})
                                                  + "\n" for t in few))
    config = write_config(tmp_path / "c.toml", tmp_path / "snapshots")
    serving = start(serving_processes, "--config", str(config), "--source", "ticks.jsonl", "--follow",
                    "--sink", "out.csv", "--metrics-port", "0", "--metrics-asset", "b", cwd=tmp_path)
    port = int(serving.wait_for_line(r"metrics on http://localhost:(\d+)/metrics").group(1))
    wait_until(lambda: scrape(port).get("usp_ticks_total") == len(few), what="usp_ticks_total", serving=serving)
    samples = scrape(port)
    assert sum(v for k, v in samples.items() if k.startswith("usp_assets{mode=")) == 3
    assert samples["usp_telemetry_dropped_total"] == 0
    assert samples["usp_batch_seconds_count"] >= 1
    assert any(k.startswith("usp_asset_kernel_weight{asset=b,") for k in samples)
    serving.signal(signal.SIGTERM)
    assert serving.wait() == 0, serving.stderr
    with pytest.raises(OSError):
        scrape(port)  # the endpoint closes with the process
    assert (tmp_path / "out.csv").read_text().count("\n") == len(few) + 1  # the header and one row per tick


def test_the_shutdown_metrics_are_published_before_the_endpoint_closes(tmp_path):
    """In process: after SIGTERM the service stops gracefully; while ``/metrics`` still serves,
    the three metrics of spec §11 hold that shutdown."""
    few = make_ticks(assets=("a", "b"), ticks=80, seed=4)
    data = tmp_path / "ticks.csv"
    data.write_text(csv_lines(few))
    out = tmp_path / "out.jsonl"
    config = attrs.evolve(CONFIG, snapshot_path=str(tmp_path / "snapshots"))
    scraped: dict[str, float] = {}

    def stop_when_done() -> None:
        deadline = time.monotonic() + STARTUP_S
        while len(read_jsonl(out)) < len(few) and time.monotonic() < deadline:
            time.sleep(0.02)
        if isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), ShutdownSignals):
            os.kill(os.getpid(), signal.SIGTERM)  # (only ever to the service's own handler)

    killer = threading.Thread(target=stop_when_done, daemon=True)
    killer.start()
    options = ServeOptions(source=str(data), sinks=(str(out),), follow=True, metrics_port=0)
    code = serve(options, config, on_finished=lambda assembly: scraped.update(scrape(assembly.metrics_port)))
    killer.join(5)
    assert code == 0
    assert scraped["predictor_graceful_shutdowns_total"] == 1
    assert scraped["predictor_shutdown_duration_seconds_count"] == 1
    assert 0 <= scraped["predictor_shutdown_duration_seconds_sum"] < 25
    assert scraped["predictor_shutdown_residual_observations_count"] == 1
    assert scraped["predictor_shutdown_residual_observations_sum"] == 0
    assert scraped["usp_ticks_total"] == len(few)
    assert scraped["usp_snapshot_writes_total"] >= 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# -- a shutdown that cannot finish -----------------------------------------------------------------
def _stuck(tmp_path: Path, serving_processes, ticks, *flags: str) -> Serving:
    """A service whose sink is a FIFO nobody reads: its writes block once the pipe is full, so a
    graceful shutdown cannot finish."""
    (tmp_path / "ticks.csv").write_text(csv_lines(ticks[:5000]))
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read
    serving = start(serving_processes, "--config", str(write_config(tmp_path / "c.toml", tmp_path / "snapshots")),
                    "--source", "ticks.csv", "--sink", str(fifo), *flags, cwd=tmp_path)
    serving.reader_fd = reader  # type: ignore[attr-defined]
    serving.wait_for_line(r"usp: serving")
    time.sleep(0.5)  # the pipe (64 KiB) fills within the first micro-batch
    return serving


def test_a_second_signal_exits_at_once_with_a_nonzero_code(tmp_path, ticks, serving_processes):
    serving = _stuck(tmp_path, serving_processes, ticks)
    try:
        serving.signal(signal.SIGTERM)
        serving.wait_for_line(r"SIGTERM: stopping intake", timeout=10)
        began = time.monotonic()
        serving.signal(signal.SIGTERM)
        assert serving.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - began < 5
    finally:
        os.close(serving.reader_fd)  # type: ignore[attr-defined]
    assert "SIGTERM again: exiting at once" in serving.stderr
    assert not list((tmp_path / "snapshots").glob("*/*.snap"))  # no snapshot, and no partial one


def test_a_shutdown_longer_than_the_grace_period_exits_124(tmp_path, ticks, serving_processes):
    serving = _stuck(tmp_path, serving_processes, ticks, "--grace-seconds", "1")
    try:
        began = time.monotonic()
        serving.signal(signal.SIGINT)
        assert serving.wait(timeout=20) == EXIT_GRACE_EXPIRED
        assert 0.9 < time.monotonic() - began < 10
    finally:
        os.close(serving.reader_fd)  # type: ignore[attr-defined]
    assert "took longer than 1 s" in serving.stderr
    assert not list((tmp_path / "snapshots").glob("*/*.snap"))


# -- flags and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--source", "ticks.txt"], "not a known endpoint"),
    (["--source", "redis://127.0.0.1:1/0?stream=s"], "no consumer group"),
    (["--source", "-", "--follow"], "--follow tails a growing file"),
    (["--source", "ticks.csv", "--sink", "ticks.csv"], "is also the source"),
    (["--source", "ticks.csv", "--sink", "o.jsonl", "--sink", "o.jsonl"], "given twice"),
    (["--source", "ticks.csv", "--sink", "bad.toml.csv", "--config", "bad.toml.csv"], "is the config file"),
    (["--source", "ticks.csv", "--config", "bad.toml"], "sigma_bnd"),
    (["--source", "missing.csv"], "missing.csv"),
    (["--source", "ticks.csv", "--sink", "nodir/o.jsonl"], "nodir"),
    (["--source", "redis://127.0.0.1:1/0?stream=s&group=g"], "127.0.0.1:1"),
])
def test_bad_flags_specs_and_configs_are_one_line_errors(tmp_path, monkeypatch, capsys, args, message):
    """Exit 2 and one ``usp: error:`` line naming the problem; nothing on stdout, no traceback."""
    from usp.cli import main

    (tmp_path / "ticks.csv").write_text("a,1800000000000000000,1.0\n")
    (tmp_path / "bad.toml").write_text("[core]\nsigma_bnd = 3.0\n")
    (tmp_path / "bad.toml.csv").write_text("")
    monkeypatch.chdir(tmp_path)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    assert main(["serve", *args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("usp: error:")]
    assert len(lines) == 1 and message in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert {number: signal.getsignal(number) for number in handlers} == handlers  # handed back


@pytest.mark.parametrize("args", [["--metrics-port", "70000"], ["--snapshot-every", "0"],
                                  ["--grace-seconds", "-1"], ["--max-batch", "0"], []])
def test_flag_values_are_checked_by_the_parser(args):
    from usp.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", *args] if not args else ["serve", "--source", "x.csv", *args])
    assert exited.value.code == 2


# -- deployment ------------------------------------------------------------------------------------
def test_run_predictor_sh_execs_usp_serve_with_the_specified_environment(tmp_path, serving_processes):
    """deployment/run_predictor.sh sets spec §7's environment and execs ``usp serve`` (the same
    process: a container's SIGTERM reaches the service itself)."""
    few = make_ticks(assets=("a",), ticks=40, seed=5)
    (tmp_path / "ticks.csv").write_text(csv_lines(few))
    config = write_config(tmp_path / "c.toml", tmp_path / "snapshots")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "JAX_COMPILATION_CACHE_DIR": CACHE}
    for name in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR", "TF_FORCE_GPU_ALLOW_GROWTH",
                 "JAX_ENABLE_X64"):
        env.pop(name, None)
    process = subprocess.Popen([str(ROOT / "deployment" / "run_predictor.sh"), "--config", str(config),
                                "--source", "ticks.csv", "--follow", "--sink", "out.jsonl"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(read_jsonl(tmp_path / "out.jsonl")) == len(few) or process.poll() is not None,
                   timeout=STARTUP_S, what="outputs")
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{process.pid}/environ").read_text().split("\0") if "=" in item)
        command = Path(f"/proc/{process.pid}/cmdline").read_text().split("\0")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.decode()
    assert "usp.cli" in command or any(part.endswith("/usp") for part in command), command
    assert "serve" in command
    assert environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.7"
    assert environ["XLA_PYTHON_CLIENT_ALLOCATOR"] == "platform"
    assert environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert environ["JAX_ENABLE_X64"] == "true"
    assert environ["JAX_COMPILATION_CACHE_DIR"] == CACHE
    assert b"stopped by SIGTERM" in stderr


# -- composition -----------------------------------------------------------------------------------
def test_build_service_picks_the_clock_and_the_snapshot_period_from_the_source(tmp_path):
    """A replayed file runs on a replay clock with the final snapshot only; a followed file is
    live: the wall clock and a snapshot every LIVE_SNAPSHOT_EVERY_S; an explicit period wins."""
    from usp.adapters.clocks import SystemClock
    from usp.composition import LIVE_SNAPSHOT_EVERY_S, build_service

    (tmp_path / "ticks.csv").write_text(csv_lines(make_ticks(assets=("a",), ticks=3)))
    config = attrs.evolve(CONFIG, snapshot_path=str(tmp_path / "snapshots"), telemetry_buffer_maxlen=7)
    cases = [({}, ReplayClock, None), ({"follow": True}, SystemClock, LIVE_SNAPSHOT_EVERY_S),
             ({"follow": True, "snapshot_every_s": 2.5}, SystemClock, 2.5)]
    for flags, clock, period in cases:
        assembly = build_service(config, source=str(tmp_path / "ticks.csv"), sinks=[str(tmp_path / "o.jsonl")],
                                 **flags)
        try:
            assert isinstance(assembly.functional.clock, clock) and assembly.live is (clock is SystemClock)
            assert assembly.snapshot_every_s == period and assembly.service.snapshot_every_s == period
            assert assembly.telemetry.maxlen == 7 and assembly.telemetry.names == ("logging",)
            assert assembly.prometheus is None and assembly.metrics_port is None
            assert isinstance(assembly.store, FileStore) and assembly.monitor.active is False  # (a CPU host)
        finally:
            assembly.close()


def test_a_build_that_fails_closes_what_it_had_opened(tmp_path):
    """A bad source after a metrics endpoint and a sink were opened: the error propagates, the
    port is free again and the sink's file is closed (nothing written to it)."""
    from usp.adapters.endpoints import EndpointError
    from usp.composition import build_service

    port = free_port()
    with pytest.raises(OSError):
        build_service(CONFIG, source=str(tmp_path / "missing.csv"), sinks=[str(tmp_path / "o.jsonl")],
                      metrics_port=port)
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", port))  # the endpoint was closed
    assert (tmp_path / "o.jsonl").read_bytes() == b""
    with pytest.raises(EndpointError):
        build_service(CONFIG, source=str(tmp_path / "o.jsonl"), sinks=[str(tmp_path / "o.jsonl")])


def test_stdin_to_stdout_keeps_stdout_for_the_records(tmp_path):
    """``--source - --sink -``: ticks piped in, JSON lines out on stdout and nothing else; the
    start line, the log and the summary on stderr; exit 0 at the end of stdin."""
    few = make_ticks(assets=("a", "b"), ticks=70, seed=6)
    lines = [f"{t.asset},{t.ns},{t.value!r}" if i % 2 else json.dumps({"asset": t.asset, "timestamp": t.ns,
                                                                        "value": t.value})
             for i, t in enumerate(few)]
    done = subprocess.run([sys.executable, "-m", "usp.cli", "serve", "--config",
                           str(write_config(tmp_path / "c.toml", tmp_path / "snapshots", staleness_ttl_ns=10**18)),
                           "--source", "-"], input=("\n".join([*lines, "a,not-a-time,1.0"]) + "\n").encode(),
                          cwd=tmp_path, capture_output=True, env={**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE},
                          timeout=STARTUP_S)
    assert done.returncode == 0, done.stderr.decode()
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [(r["asset"], r["timestamp"]) for r in records] == [(t.asset, format_timestamp(t.ns)) for t in few]
    stderr = done.stderr.decode()
    assert "usp: serving - -> " in stderr and "usp: served 140 ticks of 2 assets" in stderr
    assert "not-a-time" in stderr or "line 141" in stderr  # the unreadable line is reported, not fatal


def test_shutdown_signals_stop_then_exit_on_a_second_signal_or_when_the_grace_period_ends():
    """The handler itself, with the process exit recorded instead of taken: the first signal
    sets the stop event and arms the watchdog; a second one exits 128 + N; the watchdog 124."""
    stop, codes = threading.Event(), []
    signals = ShutdownSignals(stop, 30.0, exit=codes.append)
    signals.handle(signal.SIGINT)
    assert stop.is_set() and signals.signal == signal.SIGINT and codes == []
    signals.handle(signal.SIGTERM)
    assert codes == [128 + signal.SIGTERM]
    signals.restore()  # cancels the watchdog
    stop, codes = threading.Event(), []
    signals = ShutdownSignals(stop, 0.2, exit=codes.append)
    signals.handle(signal.SIGTERM)
    wait_until(lambda: codes == [EXIT_GRACE_EXPIRED], timeout=5, what="the watchdog")
    signals.restore()


def test_a_sink_that_fails_while_serving_ends_the_command_with_one_error_line(tmp_path, serving_processes):
    """The Redis server of the sink goes away mid-run: exit 2, one ``usp: error:`` line naming
    the endpoint (the service's own error, from its worker thread), no traceback."""
    few = make_ticks(assets=("a", "b"), ticks=200, seed=7)
    data = tmp_path / "ticks.csv"
    data.write_text(csv_lines(few[:100]))
    config = write_config(tmp_path / "c.toml", tmp_path / "snapshots")
    with redis_server() as url:
        serving = start(serving_processes, "--config", str(config), "--source", str(data), "--follow",
                        "--sink", f"{url}?stream=out", cwd=tmp_path)
        client = redis.Redis.from_url(url)
        wait_until(lambda: client.xlen("out") == 100, what="outputs", serving=serving)
        client.close()
    with data.open("a") as handle:  # the server is gone: the next write fails
        handle.write(csv_lines(few[100:]))
    assert serving.wait() == 2, serving.stderr
    errors = [line for line in serving.lines if line.startswith("usp: error:")]
    assert len(errors) == 1 and url.split("//")[1].split("/")[0] in errors[0], serving.stderr
    assert "Traceback" not in serving.stderr
