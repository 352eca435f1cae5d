"""Device memory: the XLA settings applied before JAX starts, the monitor (a no-op on CPU hosts),
its readers and its 85% / 95% levels."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import jax
import pytest
from usp._jax_setup import MEMORY_SETTINGS, apply_memory_settings
from usp.adapters.device_memory import (
    DeviceMemoryMonitor,
    _default_read,
    memory_level,
    parse_nvidia_smi,
    read_jax_devices,
    read_nvidia_smi,
)
from usp.ports.telemetry import DeviceMemoryTelemetry

MIB = 1 << 20
CPU_ONLY = all(device.platform == "cpu" for device in jax.devices())


# -- XLA memory settings ----------------------------------------------------------------------
def test_memory_settings_are_defaults_that_never_override_the_user():
    environ = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "OTHER": "x"}
    applied = apply_memory_settings(environ)
    assert applied == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "XLA_PYTHON_CLIENT_ALLOCATOR": "platform",
                       "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert environ == {**applied, "OTHER": "x"}
    assert apply_memory_settings(environ) == applied  # idempotent
    assert MEMORY_SETTINGS["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.7"  # spec §5


_PROBE = """
import importlib.abc, json, os, sys
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jax" and "jax" not in seen:
            seen["jax"] = {k: os.environ.get(k) for k in %r}
        return None
sys.meta_path.insert(0, Probe())
import usp
print(json.dumps(seen["jax"]))
"""


@pytest.mark.parametrize("user", [{}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25", "XLA_PYTHON_CLIENT_ALLOCATOR": ""}])
def test_importing_usp_sets_them_before_jax_is_imported(user):
    env = {k: v for k, v in os.environ.items() if k not in MEMORY_SETTINGS} | user
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", _PROBE % (tuple(MEMORY_SETTINGS),)], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == MEMORY_SETTINGS | user


# -- levels and readers -------------------------------------------------------------------------
@pytest.mark.parametrize(("used", "total", "level"), [
    (0, 100, 0), (84, 100, 0), (85, 100, 1), (94, 100, 1), (95, 100, 2), (100, 100, 2), (5, 0, 0),
    (849_999, 1_000_000, 0), (850_000, 1_000_000, 1),
])
def test_memory_level(used, total, level):
    assert memory_level(used, total) == level


def test_parse_nvidia_smi_reads_mib_per_gpu():
    assert parse_nvidia_smi("81559, 143771\n0, 143771\n") == [(81559 * MIB, 143771 * MIB), (0, 143771 * MIB)]
    assert parse_nvidia_smi("") == []


@pytest.mark.parametrize("text", ["12", "1, 2, 3", "used, total", "-1, 5", "nan, 5", "[N/A], 80000"])
def test_parse_nvidia_smi_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi(text)


def test_read_nvidia_smi_runs_the_command():
    command = (sys.executable, "-c", "print('1024, 2048'); print('0, 2048')")
    assert read_nvidia_smi(command) == [DeviceMemoryTelemetry("gpu:0", 1024 * MIB, 2048 * MIB),
                                        DeviceMemoryTelemetry("gpu:1", 0, 2048 * MIB)]
    with pytest.raises(OSError, match="exited with 3"):
        read_nvidia_smi((sys.executable, "-c", "import sys; sys.exit(3)"))
    with pytest.raises(FileNotFoundError):
        read_nvidia_smi(("usp-test-no-such-nvidia-smi", "--query-gpu=memory.used,memory.total"))


def test_cpu_devices_keep_no_memory_statistics():
    cpus = jax.devices("cpu")
    readings, missing = read_jax_devices(cpus)
    assert readings == [] and missing == list(cpus)


# -- the monitor --------------------------------------------------------------------------------
@pytest.mark.skipif(not CPU_ONLY, reason="this host has an accelerator")
def test_on_a_cpu_host_the_monitor_is_a_documented_no_op():
    offered: list = []
    monitor = DeviceMemoryMonitor(offered.append, interval_s=0.01)
    threads = set(threading.enumerate())
    assert monitor.active is False
    monitor.start()
    assert set(threading.enumerate()) == threads and monitor._thread is None
    assert monitor.poll() == [] and offered == []
    monitor.stop()
    assert DeviceMemoryMonitor(offered.append, devices=jax.devices("cpu")).active is False


def test_the_monitor_offers_readings_and_logs_level_changes(caplog):
    shares = iter([50, 90, 91, 97, 60])
    readings: list[list[DeviceMemoryTelemetry]] = []

    def read() -> list[DeviceMemoryTelemetry]:
        used = next(shares, 60)
        reading = [DeviceMemoryTelemetry("gpu:0", used * MIB, 100 * MIB)]
        readings.append(reading)
        return reading

    offered: list = []
    got_five = threading.Event()

    def offer(record) -> None:
        offered.append(record)
        if len(offered) >= 5:
            got_five.set()

    monitor = DeviceMemoryMonitor(offer, interval_s=0.001, read=read)
    assert monitor.active
    with caplog.at_level(logging.INFO, logger="usp.device"):
        monitor.start()
        monitor.start()  # already running: no second thread
        assert got_five.wait(10)
        monitor.stop()
    assert not any(t.name == "usp-device-memory" for t in threading.enumerate())
    assert offered[:5] == [r[0] for r in readings[:5]]
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "usp.device"]
    assert levels[:3] == [(logging.WARNING, "device gpu:0 memory elevated: 90.0% in use"),
                          (logging.ERROR, "device gpu:0 memory near saturation: 97.0% in use"),
                          (logging.INFO, "device gpu:0 memory back to normal: 60.0% in use")]
    assert len(levels) == 3  # 60% again and again: no more lines


def test_a_failing_reading_is_logged_once_and_the_monitor_keeps_trying(caplog):
    calls = []

    def read() -> list[DeviceMemoryTelemetry]:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise FileNotFoundError("nvidia-smi not found")
        return [DeviceMemoryTelemetry("gpu:0", 1, 10)]

    offered: list = []
    monitor = DeviceMemoryMonitor(offered.append, read=read, log=False)
    with caplog.at_level(logging.WARNING, logger="usp.device"):
        for _ in range(4):
            monitor.poll()
    assert offered == [DeviceMemoryTelemetry("gpu:0", 1, 10)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "usp.device"]
    assert warnings == ["device memory cannot be read: nvidia-smi not found"]


def test_a_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval_s"):
        DeviceMemoryMonitor(lambda record: None, interval_s=0)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi")
def test_without_statistics_or_nvidia_smi_a_reading_fails_with_a_logged_warning(caplog):
    read = _default_read(jax.devices("cpu"))  # devices with no statistics: nvidia-smi is asked
    with pytest.raises(FileNotFoundError):
        read()
    monitor = DeviceMemoryMonitor(lambda record: None, read=read)
    with caplog.at_level(logging.WARNING, logger="usp.device"):
        assert monitor.poll() == [] and monitor.poll() == []
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "usp.device"] == [
        "device memory cannot be read"]
