"""Accelerator memory monitoring (spec §6): a background thread that reads device memory.

Every ``interval_s`` seconds :class:`DeviceMemoryMonitor` reads, for each non-CPU JAX device,
``device.memory_stats()`` (``bytes_in_use`` of ``bytes_limit``; device label ``platform:id``,
e.g. ``gpu:0``); when JAX gives no statistics for some device (some allocators keep none) it
reads every GPU from ``nvidia-smi --query-gpu=memory.used,memory.total
--format=csv,noheader,nounits`` instead (MiB, one line per GPU; label ``gpu:N`` in
nvidia-smi's order, the physical one: ``CUDA_VISIBLE_DEVICES`` does not apply). Each reading
is offered as a ``DeviceMemoryTelemetry`` record (Prometheus: ``usp_device_memory_used_bytes``
/ ``usp_device_memory_total_bytes``) and, with ``log=True``, logged on the ``usp.device``
logger when its level changes: WARNING at 85% in use, ERROR at 95%, INFO when back under 85%
(see :func:`memory_level`).

On a host whose JAX devices are all CPUs there is nothing to read: ``active`` is False and
``start`` starts no thread (a documented no-op). A reading that fails (no statistics and no
``nvidia-smi``) is logged once as a warning; the monitor keeps trying quietly.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..ports.telemetry import DeviceMemoryTelemetry

__all__ = ["CRITICAL", "ELEVATED", "NVIDIA_SMI", "DeviceMemoryMonitor", "memory_level", "parse_nvidia_smi",
           "read_jax_devices", "read_nvidia_smi"]

#: Shares of memory in use from which the level is elevated (WARNING) and critical (ERROR).
ELEVATED, CRITICAL = 0.85, 0.95
#: The fallback query (values in MiB, one line per GPU, in nvidia-smi's index order).
NVIDIA_SMI: tuple[str, ...] = ("nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits")
MIB = 1024 * 1024

logger = logging.getLogger("usp.device")


def memory_level(used_bytes: int, total_bytes: int) -> int:
    """0 normal, 1 elevated (``used/total >= 0.85``), 2 critical (``>= 0.95``); 0 when the
    total is unknown (``<= 0``)."""
    if total_bytes <= 0:
        return 0
    share = used_bytes / total_bytes
    return 2 if share >= CRITICAL else 1 if share >= ELEVATED else 0


def parse_nvidia_smi(text: str) -> list[tuple[int, int]]:
    """``(used_bytes, total_bytes)`` per GPU from the output of :data:`NVIDIA_SMI` (lines
    ``used, total`` in MiB).

    Raises:
        ValueError: a line that is not two non-negative numbers (the message quotes it).
    """
    readings = []
    for line in text.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        try:
            used, total = (float(field) for field in fields)
        except ValueError:
            raise ValueError(f"unexpected nvidia-smi line {line[:80]!r}: expected 'used, total' in MiB") from None
        if not (used >= 0 and total >= 0):  # NaN too
            raise ValueError(f"unexpected nvidia-smi line {line[:80]!r}: negative or NaN memory")
        readings.append((int(used * MIB), int(total * MIB)))
    return readings


def read_nvidia_smi(command: Sequence[str] = NVIDIA_SMI, timeout_s: float = 5.0) -> list[DeviceMemoryTelemetry]:
    """One reading per GPU from ``nvidia-smi`` (device labels ``gpu:0``, ``gpu:1``, …).

    Raises:
        OSError: ``nvidia-smi`` is missing or exits non-zero.
        subprocess.TimeoutExpired: it takes longer than ``timeout_s``.
        ValueError: its output cannot be read (:func:`parse_nvidia_smi`).
    """
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise OSError(f"{command[0]} exited with {done.returncode}: {done.stderr.strip()[:200]}")
    return [DeviceMemoryTelemetry(f"gpu:{index}", used, total)
            for index, (used, total) in enumerate(parse_nvidia_smi(done.stdout))]


def read_jax_devices(devices: Iterable[Any]) -> tuple[list[DeviceMemoryTelemetry], list[Any]]:
    """Readings from JAX's memory statistics (device labels ``platform:id``, e.g. ``gpu:0``),
    and the devices that gave none."""
    readings, missing = [], []
    for device in devices:
        stats = device.memory_stats()
        if stats and "bytes_in_use" in stats and "bytes_limit" in stats:
            readings.append(DeviceMemoryTelemetry(f"{device.platform}:{device.id}", int(stats["bytes_in_use"]),
                                                  int(stats["bytes_limit"])))
        else:
            missing.append(device)
    return readings, missing


def _default_read(devices: Sequence[Any]) -> Callable[[], list[DeviceMemoryTelemetry]]:
    def read() -> list[DeviceMemoryTelemetry]:
        readings, missing = read_jax_devices(devices)
        return read_nvidia_smi() if missing else readings  # one source for all, never both
    return read


class DeviceMemoryMonitor:
    """Offers a ``DeviceMemoryTelemetry`` record per accelerator every ``interval_s`` seconds.

    Args:
        offer: where readings go (``TelemetryQueue.offer``); called on the monitor's thread.
        interval_s: seconds between readings (> 0); the first is taken at ``start``.
        devices: JAX devices to watch (default ``jax.devices()``); CPU devices are ignored.
        read: how to take one reading of every device (default: JAX's memory statistics, or
            ``nvidia-smi`` when some device has none). Given explicitly, the
            monitor is active whatever the devices.
        log: log level changes on the ``usp.device`` logger (turn off when a
            ``LoggingTelemetry`` sink already receives the records, to avoid twin lines).
    """

    def __init__(self, offer: Callable[[DeviceMemoryTelemetry], None], *, interval_s: float = 5.0,
                 devices: Sequence[Any] | None = None, read: Callable[[], list[DeviceMemoryTelemetry]] | None = None,
                 log: bool = True) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if read is None:
            if devices is None:
                import jax

                devices = jax.devices()
            accelerators = [device for device in devices if device.platform != "cpu"]
            read = _default_read(accelerators) if accelerators else None
        self._offer = offer
        self._read = read
        self.interval_s = float(interval_s)
        self.log = log
        self.active: bool = read is not None
        self._levels: dict[str, int] = {}
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[DeviceMemoryTelemetry]:
        """Take one reading now, offer and (with ``log``) log it; returns the readings (none
        when inactive or when the reading failed, which is logged once)."""
        if self._read is None:
            return []
        try:
            readings = self._read()
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            if not self._failing:
                logger.warning("device memory cannot be read: %s", exc)
            self._failing = True
            return []
        self._failing = False
        for reading in readings:
            self._offer(reading)
            if self.log:
                self._log_level(reading)
        return readings

    def _log_level(self, reading: DeviceMemoryTelemetry) -> None:
        level = memory_level(reading.used_bytes, reading.total_bytes)
        if level == self._levels.get(reading.device, 0):
            return
        self._levels[reading.device] = level
        share = 100.0 * reading.used_bytes / reading.total_bytes
        if level == 2:
            logger.error("device %s memory near saturation: %.1f%% in use", reading.device, share)
        elif level == 1:
            logger.warning("device %s memory elevated: %.1f%% in use", reading.device, share)
        else:
            logger.info("device %s memory back to normal: %.1f%% in use", reading.device, share)

    def _run(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        """Start the monitoring thread (a daemon); a no-op when inactive or already started."""
        if not self.active or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="usp-device-memory", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout_s`` seconds for it (no-op when not started)."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout_s)
