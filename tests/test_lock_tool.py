"""tools/lock.py: the sections of requirements.lock and requirements.in, and the environment check."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("usp_lock_tool", ROOT / "tools" / "lock.py")
assert _spec is not None and _spec.loader is not None
lock = importlib.util.module_from_spec(_spec)
sys.modules["usp_lock_tool"] = lock
_spec.loader.exec_module(lock)

TEXT = """# header
numpy==2.4.6
Jax==0.10.2

# [bench]
river==0.26.1
stats_forecast==2.0.1
"""


def test_parse_lock_splits_core_and_groups() -> None:
    pins = lock.parse_lock(TEXT)
    assert list(pins) == ["core", "bench"]
    assert pins["core"] == {"numpy": "2.4.6", "jax": "0.10.2"}
    assert pins["bench"] == {"river": "0.26.1", "stats-forecast": "2.0.1"}


@pytest.mark.parametrize(("text", "message"), [
    ("numpy>=2\n", "not an exact pin"),
    ("numpy==2.4.6\n# [bench]\nnumpy==2.4.6\n", r"numpy is pinned twice \(already in \[core\]\)"),
    ("a==1\n# [bench]\nb==1\n# [bench]\nc==1\n", r"group \[bench\] appears twice"),
    ("a==1\n# [core]\nb==1\n", r"group \[core\] appears twice"),
])
def test_parse_lock_refuses_malformed_files(text: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        lock.parse_lock(text)


def test_check_core_must_match_and_groups_are_optional_but_exact() -> None:
    pins = lock.parse_lock(TEXT)
    core = {"numpy": "2.4.6", "jax": "0.10.2", "pip": "26.0", "usp": "0.1.0"}
    assert lock.check(pins, core) == []
    assert lock.check(pins, core, ["bench"]) == ["missing: river==0.26.1 (group [bench])",
                                                  "missing: stats-forecast==2.0.1 (group [bench])"]
    with_bench = {**core, "river": "0.26.1", "stats-forecast": "2.0.1"}
    assert lock.check(pins, with_bench) == lock.check(pins, with_bench, ["bench"]) == []
    assert lock.check(pins, {**core, "river": "0.25.0"}) == [
        "version drift: river is 0.25.0, the lock says 0.26.1 (group [bench])"]
    assert lock.check(pins, {"numpy": "2.4.6"}) == ["missing: jax==0.10.2"]
    assert lock.check(pins, {**core, "jax": "0.11"}) == ["version drift: jax is 0.11, the lock says 0.10.2"]
    assert lock.check(pins, {**core, "requests": "2.0"}) == ["not in the lock: requests==2.0"]
    assert lock.check(pins, core, ["gpu"]) == ["no group [gpu] in the lock"]


def test_render_round_trips_the_real_lock() -> None:
    text = lock.LOCK.read_text()
    names = {lock.canonical(m.group(1)): m.group(1)
             for m in (lock.PIN.match(line) for line in text.splitlines()) if m is not None}
    assert lock.render(lock.parse_lock(text), names) == text


def test_the_real_lock_pins_every_requirement_in_its_own_group() -> None:
    pins = lock.read_lock()
    assert set(pins) == {"core", "bench"}
    assert {"jax", "numpy", "pandas", "scipy", "pytest"} <= set(pins["core"])
    assert {"statsforecast", "river", "statsmodels", "arch"} <= set(pins["bench"])
    for group in pins:
        for line in lock.requirements(group):
            name = lock.canonical(re.split(r"[\[<>=!~;\s]", line, maxsplit=1)[0])
            assert name in pins[group], f"{name} of requirements.in [{group}] is not pinned in that group"


def test_this_environment_matches_the_lock() -> None:
    """What `make` verifies: every core pin installed exactly, the bench group exact if present."""
    assert lock.check(lock.read_lock(), lock.installed_versions()) == []


def test_install_refuses_an_unknown_group_before_installing_anything() -> None:
    with pytest.raises(SystemExit, match=r"no optional group nope in requirements.lock \(groups: bench\)"):
        lock.install(["nope"])
    with pytest.raises(SystemExit, match="no optional group core"):
        lock.install(["core"])
    with pytest.raises(SystemExit, match="has no group"):
        lock.requirements("nope")


def test_freeze_writes_a_group_as_what_is_installed_beyond_the_core(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {n: v for n, v in lock.installed_versions().items() if n not in lock.ALWAYS_ALLOWED}
    core = {n: v for n, v in installed.items() if n != "pytest"}
    path = tmp_path / "requirements.lock"
    path.write_text(lock.render({"core": core, "extra": {"pytest": "0.0"}}, {}))
    monkeypatch.setattr(lock, "LOCK", path)
    with pytest.raises(SystemExit, match=r"the group\(s\) extra are installed here"):
        lock.freeze()  # the core must be frozen without the group's packages
    lock.freeze("extra")
    pins = lock.read_lock(path)
    assert pins["core"] == core and pins["extra"] == {"pytest": installed["pytest"]}
    path.write_text(lock.render({"core": {**core, "numpy": "0.0"}, "extra": {}}, {}))
    with pytest.raises(SystemExit, match=r"core pins changed in this environment \(numpy\)"):
        lock.freeze("extra")
