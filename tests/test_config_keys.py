"""Every config key is live: each ``PredictorConfig`` key is read by some code under ``src/``, or
is listed in :data:`PENDING` with the open issue whose work will wire it.

"Read" is decided on the syntax tree of every module under ``src/`` except
``src/domain/_config.py`` (field definitions, and validation that checks a value without using
it); a module reads key ``k`` when it contains

* an attribute load ``<anything>.k`` (not an assignment target), or
* the string literal ``"k"`` as the name in ``getattr(x, "k")`` / ``operator.attrgetter("k")``,
  as a subscript ``x["k"]``, or as the key of a mapping's ``x.get("k")``.

Generic readers — the config writer, the TOML loader, ``attrs.asdict``, ``getattr(config, name)``
over a variable, and a key named only inside a tuple of names (``COMPATIBILITY_KEYS``) — read
no particular key, so they do not count. A name shared with an unrelated attribute (``.seed`` of
some other object) would count: keep key names specific.

When a change wires a pending key, this test fails until its :data:`PENDING` entry is removed.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Collection, Mapping
from pathlib import Path

import attrs
import pytest
import usp
from usp.domain import PredictorConfig

SRC = Path(usp.__file__).resolve().parent
#: Relative to ``SRC``: the module that defines (and validates) the keys is not a reader of them.
EXCLUDED = (Path("domain/_config.py"),)
KEYS = tuple(field.name for field in attrs.fields(PredictorConfig))
SECTION = {field.name: field.metadata["section"] for field in attrs.fields(PredictorConfig)}


@attrs.frozen
class Pending:
    """A key that nothing reads yet, and the open issue whose work will read it."""

    issue: int
    work: str


PENDING: dict[str, Pending] = {
}


# -- the reader detector ---------------------------------------------------------------------------
def _literal(node: ast.AST | None, keys: Collection[str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
        return node.value
    return None


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def keys_read_by(tree: ast.AST, keys: Collection[str]) -> set[str]:
    """The keys (of ``keys``) that the module ``tree`` reads, by the rules of this file."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in keys:
            found.add(node.attr)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if key := _literal(node.slice, keys):
                found.add(key)
        elif isinstance(node, ast.Call):
            name, args = _call_name(node.func), node.args
            key = (_literal(args[1], keys) if name == "getattr" and len(args) >= 2 else
                   _literal(args[0], keys) if name in ("attrgetter", "get") and args else None)
            if key:
                found.add(key)
    return found


def readers(root: Path, keys: Collection[str], excluded: Collection[Path] = EXCLUDED) -> dict[str, list[str]]:
    """``{key: [modules under root reading it]}`` for every key some module reads."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative in excluded:
            continue
        for key in keys_read_by(ast.parse(path.read_text(encoding="utf-8"), str(path)), keys):
            found.setdefault(key, []).append(relative.as_posix())
    return found


@functools.cache
def _src_readers() -> dict[str, list[str]]:
    return readers(SRC, KEYS)


def unread_problems(keys: Collection[str], read: Mapping[str, list[str]],
                    pending: Mapping[str, Pending]) -> list[str]:
    """One line per key that nothing reads and that is not pending."""
    return [f"{key}: read by nothing under src/ — wire it, or add it to PENDING naming the issue "
            "that will" for key in keys if key not in read and key not in pending]


def pending_problems(keys: Collection[str], read: Mapping[str, list[str]],
                     pending: Mapping[str, Pending]) -> list[str]:
    """One line per pending entry whose key is read (wired: remove the entry) or unknown."""
    return ([f"{key}: PENDING (issue {entry.issue}) but now read by {', '.join(read[key])} — remove "
             "its PENDING entry" for key, entry in pending.items() if key in read]
            + [f"{key}: PENDING names a key PredictorConfig does not have" for key in pending
               if key not in keys])


# -- the repository --------------------------------------------------------------------------------
def test_every_config_key_is_read_or_pending():
    problems = unread_problems(KEYS, _src_readers(), PENDING)
    assert not problems, "\n".join(problems)


def test_pending_holds_only_unread_known_keys():
    problems = pending_problems(KEYS, _src_readers(), PENDING)
    assert not problems, "\n".join(problems)


def test_every_pending_entry_names_its_issue_and_work():
    for key, entry in PENDING.items():
        assert isinstance(entry.issue, int) and entry.issue > 0, key
        assert len(entry.work.strip()) >= 10, key


def test_a_new_key_that_nothing_reads_fails():
    """The check itself: a key added to the config and read by nothing is reported by name."""
    problems = unread_problems((*KEYS, "usp_dummy_unread_key"), _src_readers(), PENDING)
    assert any(p.startswith("usp_dummy_unread_key: read by nothing") for p in problems)


def test_the_scan_covers_the_package():
    assert (SRC / "domain" / "_config.py").is_file()
    modules = {m for found in _src_readers().values() for m in found}
    assert "domain/_core.py" in modules and "domain/_config.py" not in modules


# -- the detector on small sources -----------------------------------------------------------------
KNOWN = ("alpha", "beta", "gamma", "delta", "eps")


def _read(source: str) -> set[str]:
    return keys_read_by(ast.parse(source), KNOWN)


@pytest.mark.parametrize(("source", "expected"), [
    ("x = config.alpha", {"alpha"}),
    ("f(self.config.beta + 1)", {"beta"}),
    ("getattr(config, 'gamma')", {"gamma"}),
    ("getattr(config, 'gamma', None)", {"gamma"}),
    ("operator.attrgetter('delta')(config)", {"delta"}),
    ("payload['config']['eps']", {"eps"}),
    ("sections.get('alpha', 1)", {"alpha"}),
    ("def f(c):\n    return c.alpha if c.beta else 0", {"alpha", "beta"}),
])
def test_what_counts_as_a_read(source, expected):
    assert _read(source) == expected


@pytest.mark.parametrize("source", [
    "config.alpha = 1",                                   # a write
    "del config.alpha",
    "payload['alpha'] = 1",
    "PredictorConfig(alpha=1)",                           # a keyword is a construction
    "attrs.evolve(config, beta=2)",
    "values = attrs.asdict(config)",                      # generic readers
    "for name in names:\n    getattr(config, name)",
    "KEYS = ('alpha', 'beta')",                           # a name in a tuple reads nothing
    "'gamma'",
    "setattr(config, 'delta', 1)",
    "config.alphabet",                                    # other names
    "getattr(config, 'other')",
])
def test_what_does_not_count_as_a_read(source):
    assert _read(source) == set()


def test_readers_walk_every_module_and_skip_the_excluded(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("y = cfg.alpha\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("z = getattr(cfg, 'beta')\nw = cfg.alpha\n")
    (tmp_path / "pkg" / "defs.py").write_text("gamma: int = 0\nok = self.gamma > 0\n")
    found = readers(tmp_path / "pkg", KNOWN, excluded=(Path("defs.py"),))
    assert found == {"alpha": ["a.py", "sub/b.py"], "beta": ["sub/b.py"]}
    pending = {"beta": Pending(1, "some planned work"), "delta": Pending(2, "some planned work"),
               "zeta": Pending(3, "some planned work")}
    assert unread_problems(KNOWN, found, pending) == [
        "gamma: read by nothing under src/ — wire it, or add it to PENDING naming the issue that will",
        "eps: read by nothing under src/ — wire it, or add it to PENDING naming the issue that will",
    ]
    assert pending_problems(KNOWN, found, pending) == [
        "beta: PENDING (issue 1) but now read by sub/b.py — remove its PENDING entry",
        "zeta: PENDING names a key PredictorConfig does not have",
    ]
