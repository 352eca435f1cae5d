"""``usp serve`` follows its config file (``Service(reload=ConfigReload(...))``): a sensitivity
change keeps every asset's state, a structural one restarts them cold and snapshots the new
layout at once, and a bad version or a new kernel set is refused while the service goes on."""

from __future__ import annotations

import os
import threading

import attrs
import numpy as np
import pytest
import usp
from usp.adapters.clocks import ReplayClock
from usp.adapters.stores import MemoryStore
from usp.application.config_file import load_config
from usp.application.reloadable import ConfigFileWatch
from usp.application.service import ConfigReload, Service
from usp.application.snapshot_payload import decode_payload
from usp.ports.state_store import asset_key

from .test_service import ListSink, ListSource, _batches, _identical, _joined, _stream

BASE = """[kernels]
window_size = {window}
kernel_a_order = 4
enabled_kernels = {kernels}

[numerical]
wtmm_buffer_size = 32
wtmm_refresh_steps = 8

[sensitivity]
kurtosis_window = 16
cusum_k = {cusum_k}
"""
SWITCH_AT = 3  # the file changes while batch SWITCH_AT is read; it is adopted after that batch


def _write(path, *, window: int = 32, cusum_k: float = 0.5, kernels: str = '["A"]') -> None:
    staged = path.with_suffix(".tmp")
    staged.write_text(BASE.format(window=window, cusum_k=cusum_k, kernels=kernels))
    os.replace(staged, path)


@pytest.fixture(scope="module")
def batches():
    return _batches(_stream(n_assets=12, n_ticks=60, seed=4), [48])


def _serve(config_path, batches, *, change=None, store=None, every_s: float = 1e-6):
    """Serve ``batches`` with reload on; ``change()`` rewrites the file when batch SWITCH_AT is read."""
    clock = ReplayClock()

    def build(config):
        return usp.FunctionalPredictor(config, clock=clock)

    source = ListSource(batches, on_event=lambda served: change() if change and served == SWITCH_AT else None)
    sink = ListSink()
    reload = ConfigReload(ConfigFileWatch(config_path), build, every_s)
    service = Service(build(load_config(config_path)), source, [sink], store=store, reload=reload)
    summary = service.run(threading.Event())
    return service, summary, sink, reload


def _plain(config, batches, store):
    service = Service(usp.FunctionalPredictor(config, clock=ReplayClock()), ListSource(batches), [ListSink()],
                      store=store)
    service.run(threading.Event())
    return service


def test_a_sensitivity_change_keeps_every_state(tmp_path, batches):
    path = tmp_path / "config.toml"
    _write(path)
    service, summary, sink, reload = _serve(path, batches, change=lambda: _write(path, cusum_k=0.8))
    assert summary.reloads == 1 and reload.watch.reload_error is None
    assert service.functional.config.cusum_k == 0.8

    # reference: the first SWITCH_AT + 1 batches under the old config, the rest under the new one,
    # the states carried across by a snapshot (which restores bit-identically)
    store = MemoryStore()
    new = load_config(path)
    first = _plain(attrs.evolve(new, cusum_k=0.5), batches[:SWITCH_AT + 1], store)
    second = Service(usp.FunctionalPredictor(new, clock=first.functional.clock), ListSource(batches[SWITCH_AT + 1:]),
                     [ref_sink := ListSink()], store=store)
    second.run(threading.Event())
    assert second.states.restored == len(service.states)
    for asset in service.states.assets:
        assert _identical(service.states.state_of(asset), second.states.state_of(asset)), asset
    tail = _joined(sink.visible[SWITCH_AT + 1:])
    expected = _joined(ref_sink.visible)
    assert tail[0] == expected[0] and np.array_equal(tail[2], expected[2], equal_nan=True)


def test_a_structural_change_restarts_cold_and_snapshots_the_new_layout(tmp_path, batches):
    path = tmp_path / "config.toml"
    _write(path)
    store = MemoryStore()
    service, summary, sink, _ = _serve(path, batches, change=lambda: _write(path, window=64), store=store)
    assert summary.reloads == 1 and service.functional.config.window_size == 64
    assert summary.snapshots >= 1
    for asset in service.states.assets:
        payload = decode_payload(service.functional.config, store.load(asset_key(asset)))
        assert payload["config"]["window_size"] == 64
    # after the switch every asset runs as a fresh service with the new config would run it
    fresh = Service(usp.FunctionalPredictor(service.functional.config, clock=ReplayClock()),
                    ListSource(batches[SWITCH_AT + 1:]), [ref_sink := ListSink()])
    fresh.run(threading.Event())
    tail, expected = _joined(sink.visible[SWITCH_AT + 1:]), _joined(ref_sink.visible)
    assert tail[0] == expected[0] and np.array_equal(tail[2], expected[2], equal_nan=True)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda path: path.write_text("[sensitivity]\ncusum_k = -1\n"), "cusum_k"),
    (lambda path: path.write_text("not toml = = ="), "TOML"),
    (lambda path: _write(path, kernels='["A", "N"]'), "enabled_kernels"),
])
def test_a_bad_version_or_a_new_kernel_set_is_refused_and_serving_goes_on(tmp_path, batches, change, reason):
    path = tmp_path / "config.toml"
    _write(path)
    service, summary, _, reload = _serve(path, batches, change=lambda: change(path))
    assert summary.reloads == 0 and reason in (reload.watch.reload_error or "")
    assert summary.ticks == sum(len(b) for b in batches)
    assert service.functional.config.window_size == 32 and service.functional.config.enabled_kernels == ("A",)


def test_reload_needs_a_positive_interval(tmp_path):
    path = tmp_path / "config.toml"
    _write(path)
    with pytest.raises(ValueError, match="every_s"):
        ConfigReload(ConfigFileWatch(path), lambda config: None, 0.0)


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "ticks.csv", "--reload-every", "1"], "give --config FILE"),
    (["--cluster", "redis://127.0.0.1:1/0", "--shards", "2", "--sink", "redis://127.0.0.1:1/0?stream=o",
      "--config", "config.toml", "--reload-every", "1"], "not available with --cluster"),
])
def test_reload_flag_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    from usp.cli import main

    (tmp_path / "ticks.csv").write_text("a,1800000000000000000,1.0\n")
    _write(tmp_path / "config.toml")
    monkeypatch.chdir(tmp_path)
    assert main(["serve", *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("usp: error:")]
    assert len(lines) == 1 and message in lines[0]


def test_usp_serve_reload_every_follows_the_config(tmp_path, monkeypatch, capfd):
    from usp.cli import main

    rows = [f"a{i % 3},{1_800_000_000_000_000_000 + i * 10_000_000},{1.0 + 0.01 * (i % 7)}" for i in range(90)]
    (tmp_path / "ticks.csv").write_text("\n".join(rows) + "\n")
    _write(tmp_path / "config.toml")
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--source", "ticks.csv", "--sink", "out.jsonl", "--config", "config.toml",
                 "--reload-every", "0.5"]) == 0
    err = capfd.readouterr().err
    assert "config.toml reloaded when changed, checked every 0.5 s" in err
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == len(rows)
