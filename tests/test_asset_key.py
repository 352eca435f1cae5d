"""``asset_key``: the store key of an asset id is deterministic, injective (also under case
folding), and always a key every store accepts — so ``EUR/USD`` or ``../etc`` never leave it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp.adapters.stores import KEY_PATTERN, FileStore, MemoryStore, check_key
from usp.ports.state_store import MAX_KEY_LENGTH, SnapshotKeyError, asset_key, seal

ids = st.text(max_size=120) | st.text(st.sampled_from(["\ud800", "\udfff", "a", "A", "^", "/", "é"]), max_size=12)
long_ids = st.text(min_size=60, max_size=400)


@given(ids)
def test_every_key_is_accepted_by_the_store_key_check(asset_id):
    key = asset_key(asset_id)
    assert check_key(key) == key and KEY_PATTERN.fullmatch(key)
    assert key == asset_key(asset_id)


@given(ids | long_ids, ids | long_ids)
def test_distinct_ids_give_distinct_keys_even_case_folded(a, b):
    if a != b:
        assert asset_key(a) != asset_key(b)
        assert asset_key(a).lower() != asset_key(b).lower()


@given(long_ids)
def test_long_ids_get_a_digest_suffixed_key_within_the_limit(asset_id):
    key = asset_key(asset_id)
    assert 1 <= len(key) <= MAX_KEY_LENGTH and check_key(key) == key
    if len(key) == MAX_KEY_LENGTH or key.startswith("asset:"):
        assert key.startswith("asset:") and len(key.rsplit(":", 1)[1]) == 64


def test_examples():
    assert asset_key("EUR/USD") == "asset=EUR^2FUSD"
    assert asset_key("BTC-USD") == "asset=BTC-USD"
    assert asset_key("^GSPC") == "asset=^5EGSPC"
    assert asset_key("aapl") == "asset=^61^61^70^6C"
    assert asset_key("..") == "asset=.."
    assert asset_key("") == "asset="
    assert asset_key("é") == "asset=^C3^A9"
    assert asset_key("\ud800") == "asset=^ED^A0^80"  # a lone surrogate (str allows it) has a key too
    long = asset_key("X" * 300)
    assert len(long) == MAX_KEY_LENGTH and long.startswith("asset:" + "X" * 129 + ":")
    assert asset_key("/" * 100).startswith("asset:" + "^2F" * 43 + ":")
    assert asset_key("A" + "/" * 100).startswith("asset:A" + "^2F" * 42 + ":")  # no partial escape kept


@pytest.mark.parametrize("bad", [None, 7, b"EUR/USD"])
def test_a_non_str_id_is_a_typed_error(bad):
    with pytest.raises(SnapshotKeyError, match="asset id is a str"):
        asset_key(bad)


@pytest.mark.parametrize("asset_id", ["EUR/USD", "../../etc/passwd", "/abs", "a\\b", "\x00", ".hidden", "x" * 500,
                                      "Zürich", "a b"])
def test_hostile_ids_stay_inside_a_file_store(tmp_path, asset_id):
    root = tmp_path / "store"
    store = FileStore(root)
    key = asset_key(asset_id)
    store.save(key, seal(b"state"))
    assert store.load(key) == seal(b"state")
    assert [p.name for p in root.iterdir()] == [key]
    assert {p.parent for p in root.rglob("*.snap")} == {root / key}
    memory = MemoryStore()
    memory.save(key, seal(b"state"))
    assert memory.load(key) == seal(b"state")
