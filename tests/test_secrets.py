"""``load_credentials``: a ``.env`` file into ``os.environ``, the environment winning."""

from __future__ import annotations

import contextlib
import logging
import os
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp.adapters.secrets import load_credentials
from usp.domain import ConfigError

SECRET = "hunter2-Zq9"  # never to appear in an error message or a log line

#: Every variable name the tests set starts with this, so none can clash with the real environment.
PREFIX = "USP_TEST_SECRET_"


@contextlib.contextmanager
def _isolated(patch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No ``USP_TEST_SECRET_*`` variable inside; on exit the ones loaded are removed (``patch``
    restores what it deleted or set when it is undone)."""
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        patch.delenv(name)
    try:
        yield patch
    finally:
        for name in [n for n in os.environ if n.startswith(PREFIX)]:
            del os.environ[name]


@pytest.fixture
def env(monkeypatch):
    with _isolated(monkeypatch) as patch:
        yield patch


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / ".env"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def _ours() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


# -- the format ------------------------------------------------------------------------------------
def test_reads_assignments_comments_export_and_quotes(env, tmp_path):
    path = _write(tmp_path, "\n".join([
        "# a comment",
        "",
        "   # an indented comment",
        f"{PREFIX}PLAIN=abc",
        f"export {PREFIX}EXPORTED=def",
        f"export\t{PREFIX}TAB_EXPORTED=ghi",
        f"  {PREFIX}SPACED  =   spaced value   ",
        f"{PREFIX}SINGLE='  kept as written \\n $HOME # not a comment '",
        f'{PREFIX}DOUBLE="a\\"b\\\\c\\nd\\te\\rf\\qg # not a comment"  # a comment',
        f"{PREFIX}HASH=pa#ss  # comment after whitespace",
        f"{PREFIX}EMPTY=",
        f"{PREFIX}EMPTY_QUOTED=''",
        f"{PREFIX}ONLY_COMMENT= # nothing but a comment",
        f"{PREFIX}NO_EXPANSION=$HOME/${{USER}}",
        f"{PREFIX}EQUALS=a=b==c",
        f"{PREFIX}UNICODE=clé ✓ 🔑",
        f"{PREFIX}TIGHT_QUOTE='x'#c",
    ]) + "\n")
    names = load_credentials(path)
    expected = {
        "PLAIN": "abc", "EXPORTED": "def", "TAB_EXPORTED": "ghi", "SPACED": "spaced value",
        "SINGLE": "  kept as written \\n $HOME # not a comment ",
        "DOUBLE": 'a"b\\c\nd\te\rf\\qg # not a comment',
        "HASH": "pa#ss", "EMPTY": "", "EMPTY_QUOTED": "", "ONLY_COMMENT": "",
        "NO_EXPANSION": "$HOME/${USER}", "EQUALS": "a=b==c", "UNICODE": "clé ✓ 🔑", "TIGHT_QUOTE": "x",
    }
    assert names == [PREFIX + k for k in expected]  # in file order
    assert _ours() == {PREFIX + k: v for k, v in expected.items()}


def test_a_variable_named_export_is_a_plain_assignment(env, tmp_path):
    env.setenv("export", "")  # so that monkeypatch restores the original state afterwards
    env.delenv("export")
    path = _write(tmp_path, "export=1\n")
    assert load_credentials(path) == ["export"]
    assert os.environ["export"] == "1"  # noqa: SIM112 (the name is the point)


def test_crlf_line_endings_and_a_byte_order_mark(env, tmp_path):
    path = _write(tmp_path, "\ufeff" + f"{PREFIX}A=1\r\n{PREFIX}B='two'\r\n")
    assert load_credentials(path) == [PREFIX + "A", PREFIX + "B"]
    assert _ours() == {PREFIX + "A": "1", PREFIX + "B": "two"}


def test_a_repeated_name_takes_the_later_value(env, tmp_path):
    path = _write(tmp_path, f"{PREFIX}A=first\n{PREFIX}B=b\n{PREFIX}A=second\n")
    assert load_credentials(path) == [PREFIX + "A", PREFIX + "B"]
    assert os.environ[PREFIX + "A"] == "second"


def test_accepts_str_and_pathlike(env, tmp_path):
    path = _write(tmp_path, f"{PREFIX}A=1\n")
    assert load_credentials(str(path)) == [PREFIX + "A"]
    del os.environ[PREFIX + "A"]  # not env.delenv: that would restore the loaded value afterwards
    assert load_credentials(path) == [PREFIX + "A"]


# -- the environment wins --------------------------------------------------------------------------
def test_the_environment_wins_even_when_empty(env, tmp_path):
    env.setenv(PREFIX + "SET", "from the environment")
    env.setenv(PREFIX + "EMPTY", "")
    path = _write(tmp_path, f"{PREFIX}SET=from the file\n{PREFIX}EMPTY=from the file\n{PREFIX}NEW=new\n")
    assert load_credentials(path) == [PREFIX + "NEW"]
    assert _ours() == {PREFIX + "SET": "from the environment", PREFIX + "EMPTY": "", PREFIX + "NEW": "new"}


def test_loading_twice_sets_nothing_the_second_time(env, tmp_path):
    path = _write(tmp_path, f"{PREFIX}A=1\n")
    assert load_credentials(path) == [PREFIX + "A"]
    assert load_credentials(path) == []


def test_a_missing_file_is_no_credentials(env, tmp_path):
    before = dict(os.environ)
    assert load_credentials(tmp_path / "absent.env") == []
    assert dict(os.environ) == before


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("line", "reason"), [
    (SECRET, "no '='"),
    (f"export {SECRET}", "no '='"),
    (f"1{PREFIX}A={SECRET}", "invalid variable name"),
    (f"{PREFIX}-A={SECRET}", "invalid variable name"),
    (f"{PREFIX}A B={SECRET}", "invalid variable name"),
    (f"={SECRET}", "invalid variable name"),
    (f"{PREFIX}É={SECRET}", "invalid variable name"),
    (f"{PREFIX}A='{SECRET}", "no closing single quote"),
    (f'{PREFIX}A="{SECRET}', "no closing double quote"),
    (f'{PREFIX}A="{SECRET}\\"', "no closing double quote"),
    (f"{PREFIX}A='{SECRET}' trailing", "unexpected text after the closing quote"),
    (f'{PREFIX}A="x"{SECRET}', "unexpected text after the closing quote"),
    (f"{PREFIX}A={SECRET}\0", "NUL character"),
])
def test_a_malformed_line_names_file_and_line_never_the_value(env, tmp_path, line, reason):
    path = _write(tmp_path, f"# header\n{PREFIX}GOOD=1\n\n{line}\n{PREFIX}LATER=2\n")
    with pytest.raises(ConfigError, match=reason) as caught:
        load_credentials(path)
    message = str(caught.value)
    assert str(path) in message and "line 4" in message
    assert SECRET not in message
    assert _ours() == {}  # the whole file is parsed before anything is set


def test_a_file_that_is_not_utf8(env, tmp_path):
    path = _write(tmp_path, f"{PREFIX}A=1\n{PREFIX}B=caf".encode() + b"\xe9" + SECRET.encode() + b"\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as caught:
        load_credentials(path)
    assert str(path) in str(caught.value) and "line 2" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert _ours() == {}


def test_a_utf16_file_is_not_utf8(env, tmp_path):
    path = _write(tmp_path, f"{PREFIX}A={SECRET}\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_credentials(path)


def test_a_directory_is_an_error_naming_it(env, tmp_path):
    with pytest.raises(ConfigError, match="cannot be read") as caught:
        load_credentials(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_values_are_never_logged(env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = _write(tmp_path, f"{PREFIX}A={SECRET}\n{PREFIX}B='{SECRET}'\n")
    env.setenv(PREFIX + "B", "preset")
    assert load_credentials(path) == [PREFIX + "A"]
    assert PREFIX + "A" in caplog.text  # names may be logged (at DEBUG) ...
    assert SECRET not in caplog.text  # ... values never
    with pytest.raises(ConfigError):
        load_credentials(_write(tmp_path, f"{PREFIX}C='{SECRET}\n"))
    assert SECRET not in caplog.text


# -- round trip ------------------------------------------------------------------------------------
_names = st.text(string.ascii_uppercase + string.digits + "_", min_size=1, max_size=12).map(PREFIX.__add__)
#: Anything the environment can hold: no NUL, no lone surrogate (the file is UTF-8).
_values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=30)


def _double_quote(value: str) -> str:
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def _render(value: str, style: str) -> str:
    """``value`` as written after the ``=`` in one of the styles that can hold it."""
    line_safe = not any(c in value for c in "\n\r")
    if style == "single" and line_safe and "'" not in value:
        return f"'{value}'"
    if (style == "bare" and line_safe and value == value.strip() and value[:1] not in ("'", '"')
            and " #" not in value and "\t#" not in value):
        return value
    return _double_quote(value)


@given(
    entries=st.dictionaries(_names, st.tuples(_values, st.sampled_from(["bare", "single", "double"]),
                                              st.booleans(), st.booleans()), max_size=8),
    preset=st.dictionaries(_names, _values, max_size=3),
)
def test_round_trip_names_and_values_through_a_file(entries, preset):
    """Written with random quoting, ``export`` and comments, every value comes back exactly,
    except where the environment already held the name: there the environment's value stays."""
    lines = ["# generated"]
    for name, (value, style, export, comment) in entries.items():
        lines.append(f"{'export ' if export else ''}{name}={_render(value, style)}{'  # note' if comment else ''}")
        lines.append("")
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as context, \
            _isolated(context) as patch:
        for name, value in preset.items():
            patch.setenv(name, value)
        path = Path(folder) / ".env"
        path.write_text("\n".join(lines), encoding="utf-8")
        loaded = load_credentials(path)
        assert loaded == [name for name in entries if name not in preset]
        assert _ours() == {**{name: value for name, (value, *_) in entries.items()}, **preset}
