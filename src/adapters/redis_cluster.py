"""Redis side of ``usp serve --cluster`` (docs/scale-out.md): key names, the shard hash, leases
with fencing tokens, the atomic commit, and the producer that partitions ticks into shards.

Keys, for a key prefix ``p`` (default ``usp``) and shard ``k`` of ``P``; every key of shard ``k``
carries the Redis Cluster hash tag ``{k}``, so each command and script below touches one slot:

=====================  ======  ===============================================================
key                    type    holds
=====================  ======  ===============================================================
``p:cluster``          hash    ``shards`` (P) and ``config`` (digest of the predictor config)
``p:workers``          zset    live workers, scored by the expiry (Redis server ms) of their
                               heartbeat
``p:ticks:{k}``        stream  the shard's ticks: fields ``asset``, ``timestamp``, ``value``
``p:states:{k}``       hash    field ``asset_key(asset id)`` -> that asset's verified snapshot
                               blob (``meta.receipt``: the entry id of its last applied tick)
``p:offset:{k}``       hash    ``id`` (last applied entry id), ``applied`` (entries applied
                               since the stream began), ``clock`` (the shard's replay clock, ns)
``p:lease:{k}``        string  ``"TOKEN WORKER"``, with a TTL (``PX``)
``p:fence:{k}``        string  the fencing counter (``INCR``: one token per acquisition)
``NAME:{k}``           stream  the predictions of the shard's ticks (``--sink ...?stream=NAME``)
=====================  ======  ===============================================================

The shard of an asset is ``zlib.crc32(UTF-8 id) mod P`` (:func:`shard_of`), of the id as the
tick readers clean it (:class:`~usp.adapters.csv_reader.TickFields`).

Everything here is a thin translation to Redis commands and Lua scripts; the worker loop that
uses it is ``usp.application.cluster``. Every Redis failure raises
:class:`~usp.adapters.sources.BrokerError` naming the URL (without its password).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs
import msgpack
import numpy as np

from ..application.cluster import LeaseLost, ShardEntries, ShardProgress
from ..domain import ConfigError, DomainError, TimestampError
from ..ports.ingestion import MalformedObservationEvent, ObservationBatch, SourceEventCallback
from ..ports.prediction_sink import PredictionRecords
from .csv_reader import TickFields
from .sinks import format_timestamps
from .sources import BrokerError, EndpointError, broker_call, json_fields, redact_url, redis_client

log = logging.getLogger("usp.cluster")

#: Key prefix when the cluster URL names none.
DEFAULT_PREFIX = "usp"
#: Lease time to live (ms) when the cluster URL names none: a dead worker's shards are taken over
#: within about this long.
DEFAULT_LEASE_MS = 5000
#: Shortest lease the URL may ask for (ms).
MIN_LEASE_MS = 100
#: Fields of a prediction entry, in order (``source_id``: the tick's entry id in ``p:ticks:{k}``).
RECORD_FIELDS = ("asset", "timestamp", "prediction", "lower", "upper", "mode", "events", "source_id")
_TICK_FIELDS = ("asset", "timestamp", "value")
_TICK_NAMES = tuple(name.encode() for name in _TICK_FIELDS)
_SOCKET_TIMEOUT_S = 30.0
_PUBLISH_CHUNK = 10_000


def shard_of(asset_id: str, shards: int) -> int:
    """The shard of an asset: ``zlib.crc32(asset_id.encode("utf-8")) % shards`` (stable across
    processes, machines and versions; CRC-32 as in zlib, PNG and gzip)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(asset_id.encode("utf-8", "surrogatepass")) % shards


def _check_name(name: str, what: str) -> str:
    if not name or any(c in name for c in "{} \t\r\n"):
        raise EndpointError(f"the {what} {name!r} must be non-empty, without braces or whitespace "
                            "(braces are the shards' Redis Cluster hash tags)")
    return name


@attrs.frozen
class ClusterKeys:
    """The key names of one cluster (see the module doc); ``prefix`` as given in the URL."""

    prefix: str = DEFAULT_PREFIX

    @property
    def meta(self) -> str:
        return f"{self.prefix}:cluster"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def ticks(self, shard: int) -> str:
        return f"{self.prefix}:ticks:{{{shard}}}"

    def states(self, shard: int) -> str:
        return f"{self.prefix}:states:{{{shard}}}"

    def offset(self, shard: int) -> str:
        return f"{self.prefix}:offset:{{{shard}}}"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}:lease:{{{shard}}}"

    def fence(self, shard: int) -> str:
        return f"{self.prefix}:fence:{{{shard}}}"

    @staticmethod
    def outputs(stream: str, shard: int) -> str:
        return f"{stream}:{{{shard}}}"


@attrs.frozen
class ClusterEndpoint:
    """A parsed ``--cluster`` / ``--to`` URL: ``redis[s]://[USER:PASSWORD@]HOST[:PORT][/DB]``
    with the optional query keys ``prefix`` (key prefix, default ``usp``) and ``lease_ms``
    (lease TTL in ms, default :data:`DEFAULT_LEASE_MS`, at least :data:`MIN_LEASE_MS`)."""

    url: str
    keys: ClusterKeys
    lease_ms: int

    @property
    def name(self) -> str:
        """The URL without its password, with the prefix."""
        return f"{redact_url(self.url)}?prefix={self.keys.prefix}"

    def same_database(self, url: str) -> bool:
        """Whether ``url`` names the same Redis server and database."""
        return redis_place(self.url) == redis_place(url)


def redis_place(url: str) -> tuple[str | None, int, str]:
    """(host, port, database) a Redis URL names (defaults 6379 and 0)."""
    parts = urlsplit(url)
    return parts.hostname, parts.port or 6379, parts.path.strip("/") or "0"


def parse_cluster_url(spec: str, flag: str = "--cluster") -> ClusterEndpoint:
    """The cluster a URL names (see :class:`ClusterEndpoint`).

    Raises:
        EndpointError: not a Redis URL, an unknown query key, a bad prefix or lease (named).
    """
    shown = redact_url(spec) if "@" in spec else spec
    where = f"{flag} {shown!r}"
    try:
        parts = urlsplit(spec)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise EndpointError(f"{where}: not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise EndpointError(f"{where}: give redis://HOST:PORT/DB (optionally ?prefix=NAME&lease_ms=N)")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise EndpointError(f"{where}: the database {database!r} is not a number")
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError as exc:
        raise EndpointError(f"{where}: unreadable query ({exc})") from None
    unknown = sorted(set(query) - {"prefix", "lease_ms"})
    if unknown:
        raise EndpointError(f"{where}: unknown parameter {unknown[0]!r} (the cluster URL takes prefix= and lease_ms=)")
    prefix = _check_name(query.get("prefix", DEFAULT_PREFIX), "key prefix")
    lease_text = query.get("lease_ms", str(DEFAULT_LEASE_MS))
    if not lease_text.isdigit() or int(lease_text) < MIN_LEASE_MS:
        raise EndpointError(f"{where}: lease_ms={lease_text!r} must be an integer >= {MIN_LEASE_MS} (milliseconds)")
    url = urlunsplit((parts.scheme, parts.netloc, f"/{database}" if database else "", "", ""))
    return ClusterEndpoint(url, ClusterKeys(prefix), int(lease_text))


def config_digest(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 hex of a JSON-able mapping (sorted keys): what ``p:cluster`` ``config`` holds."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def join_cluster(client: Any, name: str, keys: ClusterKeys, shards: int, digest: str | None) -> None:
    """Record ``shards`` (and the config ``digest``) in ``p:cluster`` if absent; refuse others.

    Raises:
        ConfigError: the cluster was set up with another shard count or another config.
    """
    if shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {shards}")

    def setup() -> list[Any]:
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(keys.meta, "shards", shards)
        if digest is not None:
            pipe.hsetnx(keys.meta, "config", digest)
        pipe.hmget(keys.meta, "shards", "config")
        return pipe.execute()

    stored_shards, stored_digest = broker_call(name, "reading the cluster settings", setup)[-1]
    if stored_shards is None or _text(stored_shards) != str(shards):
        raise ConfigError(f"the cluster at {name} has {_text(stored_shards)} shards (key {keys.meta}); "
                          f"--shards {shards} differs: use --shards {_text(stored_shards)}, or another prefix= "
                          "for a new cluster")
    if digest is not None and stored_digest is not None and _text(stored_digest) != digest:
        raise ConfigError(f"the cluster at {name} runs another predictor config (digest in {keys.meta} "
                          f"field config); every worker must run the same config and kernels")


# -- Lua scripts (each touches the keys of one shard, or one key) ----------------------------------
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local value = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, offset, states, outputs. ARGV: lease value, previous id, new id, applied, clock
# ('' for none), lease ms, the number of states and (field, blob) pairs, then the record field
# names and the records, each a MessagePack array of strings (Redis's bundled cmsgpack).
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is no longer held by this worker')
end
local previous = redis.call('HGET', KEYS[2], 'id') or '0-0'
if previous ~= ARGV[2] then
  return redis.error_reply('FENCED the shard was committed up to ' .. previous .. ' by another owner')
end
local i = 7
local states = tonumber(ARGV[i]); i = i + 1
for _ = 1, states do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2
end
local names = cmsgpack.unpack(ARGV[i])
local records = cmsgpack.unpack(ARGV[i + 1])
local width = #names
for r = 1, #records do
  local row = records[r]
  local entry = {KEYS[4], '*'}
  for f = 1, width do entry[2 * f + 1] = names[f]; entry[2 * f + 2] = row[f] end
  redis.call('XADD', unpack(entry))
end
if ARGV[5] == '' then
  redis.call('HSET', KEYS[2], 'id', ARGV[3], 'applied', ARGV[4])
else
  redis.call('HSET', KEYS[2], 'id', ARGV[3], 'applied', ARGV[4], 'clock', ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return #records
"""
# KEYS: a shard's ticks stream. ARGV: the id after which to read, the most entries. Returns the
# XRANGE reply packed as one MessagePack array of [id, [field, value, ...]].
# KEYS: a shard's ticks stream. ARGV: a MessagePack array of [asset, timestamp, value] strings,
# appended in order.
_PUBLISH = """
local ticks = cmsgpack.unpack(ARGV[1])
for i = 1, #ticks do
  local t = ticks[i]
  redis.call('XADD', KEYS[1], '*', 'asset', t[1], 'timestamp', t[2], 'value', t[3])
end
return #ticks
"""
_READ = """
return cmsgpack.pack(redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2]))
"""


def record_fields(records: PredictionRecords) -> list[list[str]]:
    """Each record's values in :data:`RECORD_FIELDS` order, as the Redis stream sink writes them:
    the timestamp as RFC 3339 UTC, numbers as ``repr`` text (``nan``, ``inf``), events as a JSON
    list, and the tick's entry id."""
    n = len(records.assets)
    if len(records.receipts) != n:
        raise ValueError(f"{len(records.receipts)} receipts for {n} records: every record needs its entry id")
    stamps = format_timestamps(np.asarray(records.timestamps_ns, dtype=np.int64))
    events: dict[tuple[str, ...], str] = {}
    rows = []
    for a, t, p, lo, up, m, e, r in zip(records.assets, stamps, np.asarray(records.prediction).tolist(),
                                        np.asarray(records.lower).tolist(), np.asarray(records.upper).tolist(),
                                        records.modes, records.events, records.receipts, strict=True):
        text = events.get(e)
        if text is None:
            text = events[e] = json.dumps(list(e), ensure_ascii=False)
        rows.append([a, t, repr(p), repr(lo), repr(up), m, text, r])
    return rows


class StagedStates:
    """The states of one shard as a ``StateStore``: ``load_many`` reads the committed snapshots
    (``HMGET p:states:{k}``; keys are ``asset_key`` s), ``save_many`` stages snapshots for the
    next commit (:meth:`take`), which writes them atomically with the outputs and the offset.
    Staged snapshots are read back by ``load`` before the committed ones."""

    def __init__(self, client: Any, name: str, key: str) -> None:
        self._client = client
        self._name = name
        self.key = key
        self._staged: dict[str, bytes] = {}

    def save(self, key: str, blob: bytes) -> None:
        self._staged[key] = bytes(blob)

    def save_many(self, items: Mapping[str, bytes]) -> None:
        self._staged.update((key, bytes(blob)) for key, blob in items.items())

    def load(self, key: str) -> bytes | None:
        return self.load_many([key])[key]

    def load_many(self, keys: Sequence[str] | Any) -> dict[str, bytes | None]:
        keys = list(keys)
        missing = [key for key in keys if key not in self._staged]
        found: list[Any] = []
        if missing:
            found = broker_call(self._name, f"HMGET {self.key}", lambda: self._client.hmget(self.key, missing))
        out: dict[str, bytes | None] = dict(zip(missing, found, strict=True))
        return {key: self._staged.get(key, out.get(key)) for key in keys}

    def take(self) -> dict[str, bytes]:
        """The staged snapshots, forgotten here (they go into a commit)."""
        staged, self._staged = self._staged, {}
        return staged


class RedisShards:
    """The ``ShardBroker`` of ``usp.application.cluster`` over one Redis server.

    Args:
        endpoint: the cluster (URL, keys, lease TTL).
        shards: P, the shard count (checked against ``p:cluster`` by :meth:`join`).
        stream: the output stream name: predictions of shard ``k`` go to ``stream:{k}``.
        on_event: receives a ``MalformedObservationEvent`` for every entry skipped as unreadable.

    Raises:
        BrokerError: Redis cannot be reached.
    """

    def __init__(self, endpoint: ClusterEndpoint, shards: int, stream: str, *,
                 on_event: SourceEventCallback | None = None) -> None:
        if shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {shards}")
        self.endpoint = endpoint
        self.keys = endpoint.keys
        self.shards = int(shards)
        self.lease_ms = endpoint.lease_ms
        self.stream = _check_name(stream, "output stream name")
        self.name = endpoint.name
        self.on_event = on_event
        self._fields = TickFields()
        self._client: Any = redis_client(endpoint.url, socket_timeout_s=_SOCKET_TIMEOUT_S)
        try:
            broker_call(self.name, "connecting", self._client.ping)
            self._scripts = {name: self._client.register_script(source) for name, source in (
                ("heartbeat", _HEARTBEAT), ("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE),
                ("commit", _COMMIT), ("read", _READ))}
        except BaseException:
            self._client.close()
            raise

    def join(self, digest: str | None) -> None:
        """Check (or record) the shard count and config digest of the cluster; see :func:`join_cluster`."""
        join_cluster(self._client, self.name, self.keys, self.shards, digest)

    def _run(self, script: str, what: str, keys: list[str], args: list[Any]) -> Any:
        return broker_call(self.name, what, lambda: self._scripts[script](keys=keys, args=args))

    # -- membership and leases -------------------------------------------------------------
    def heartbeat(self, worker: str) -> list[str]:
        """Register ``worker`` as live for one lease TTL; returns the live workers."""
        live = self._run("heartbeat", "heartbeat", [self.keys.workers], [worker, self.lease_ms])
        return [_text(w) for w in live]

    def leave(self, worker: str) -> None:
        broker_call(self.name, "leaving", lambda: self._client.zrem(self.keys.workers, worker))

    def acquire(self, shard: int, worker: str) -> str | None:
        """The lease value ``"TOKEN WORKER"`` if shard's lease was free (now held for one TTL), else None."""
        value = self._run("acquire", f"acquiring shard {shard}", [self.keys.lease(shard), self.keys.fence(shard)],
                          [worker, self.lease_ms])
        return None if value is None else _text(value)

    def renew(self, shard: int, lease: str) -> bool:
        """Extend the lease by one TTL if it is still ``lease``; False if it was lost."""
        return bool(self._run("renew", f"renewing the lease of shard {shard}", [self.keys.lease(shard)],
                              [lease, self.lease_ms]))

    def release(self, shard: int, lease: str) -> None:
        """Delete the lease if it is still ``lease`` (someone else's is left alone)."""
        self._run("release", f"releasing shard {shard}", [self.keys.lease(shard)], [lease])

    # -- data ------------------------------------------------------------------------------
    def progress(self, shard: int) -> ShardProgress:
        """The shard's committed offset (the start of the stream when never committed)."""
        raw = broker_call(self.name, f"reading the offset of shard {shard}",
                          lambda: self._client.hmget(self.keys.offset(shard), "id", "applied", "clock"))
        entry, applied, clock = (None if v is None else _text(v) for v in raw)
        return ShardProgress(entry or "0-0", int(applied or 0), None if clock in (None, "") else int(clock))

    def states(self, shard: int) -> StagedStates:
        return StagedStates(self._client, self.name, self.keys.states(shard))

    def read(self, shard: int, after: str, count: int) -> ShardEntries:
        """Up to ``count`` entries of ``p:ticks:{k}`` strictly after entry ``after``, as ticks.

        An entry that cannot be read (a missing field, a bad timestamp or value, an asset of
        another shard) is skipped, logged and reported to ``on_event``; it still counts as read
        (the offset moves past it)."""
        stream = self.keys.ticks(shard)
        packed = self._run("read", f"XRANGE {stream}", [stream], [after, count])
        entries = msgpack.unpackb(packed, raw=True, use_list=False) if packed else ()
        assets: list[str] = []
        stamps: list[int] = []
        values: list[float] = []
        receipts: list[str] = []
        for raw_id, flat in entries:
            entry = _text(raw_id)
            record = dict(zip(flat[::2], flat[1::2], strict=True))
            try:
                try:
                    raw = [record[name] for name in _TICK_NAMES]
                except KeyError:
                    found = {_text(k) for k in record}
                    raise DomainError(f"entry without {', '.join(repr(k) for k in _TICK_FIELDS if k not in found)}"
                                      ) from None
                asset, stamp, value = json_fields(self._fields, *(_decode(r, k) for r, k in zip(raw, _TICK_FIELDS,
                                                                                               strict=True)))
                home = shard_of(asset, self.shards)
                if home != shard:
                    raise DomainError(f"asset {asset!r} belongs to shard {home}, not {shard} (published with "
                                      "another shard count or hash?)")
            except (DomainError, TimestampError) as exc:
                self._report(f"{stream}/{entry}", str(exc))
                continue
            assets.append(asset)
            stamps.append(stamp)
            values.append(value)
            receipts.append(entry)
        batch = ObservationBatch(tuple(assets), np.array(stamps, np.int64), np.array(values, np.float64),
                                 tuple(receipts))
        return ShardEntries(batch, tuple(_text(raw_id) for raw_id, _ in entries))

    def _report(self, location: str, reason: str) -> None:
        log.warning("malformed entry skipped at %s: %s", location, reason)
        if self.on_event is not None:
            self.on_event(MalformedObservationEvent(source=self.name, location=location, reason=reason))

    def backlog(self, shard: int, applied: int) -> int:
        """Entries of the shard not applied yet: ``XLEN`` less ``applied`` (exact while the stream
        is not trimmed; see docs/scale-out.md)."""
        length = broker_call(self.name, "XLEN", lambda: self._client.xlen(self.keys.ticks(shard)))
        return max(0, int(length) - applied)

    def commit(self, shard: int, lease: str, previous: str, progress: ShardProgress, states: Mapping[str, bytes],
               records: PredictionRecords) -> None:
        """One atomic script: check the lease is ``lease`` and the offset is ``previous``, then
        write ``states``, append the records to ``stream:{k}``, set the offset to ``progress``
        and extend the lease by one TTL.

        Raises:
            LeaseLost: the lease is no longer ``lease`` (expired, taken over) or the offset moved:
                nothing was written.
            BrokerError: Redis failed (whether the commit happened is then unknown: the offset says).
        """
        import redis

        args: list[Any] = [lease, previous, progress.entry_id, progress.applied,
                           "" if progress.clock_ns is None else progress.clock_ns, self.lease_ms, len(states)]
        for field, blob in states.items():
            args += [field, blob]
        args += [msgpack.packb(list(RECORD_FIELDS)), msgpack.packb(record_fields(records))]
        keys = [self.keys.lease(shard), self.keys.offset(shard), self.keys.states(shard),
                self.keys.outputs(self.stream, shard)]
        try:
            self._scripts["commit"](keys=keys, args=args)
        except redis.ResponseError as exc:
            if str(exc).startswith("FENCED"):
                raise LeaseLost(f"shard {shard}: commit refused: {str(exc).removeprefix('FENCED ')}") from None
            raise _broker_error(self.name, f"committing shard {shard}", exc) from exc
        except redis.RedisError as exc:
            raise _broker_error(self.name, f"committing shard {shard}", exc) from exc

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()


def _broker_error(name: str, what: str, exc: BaseException) -> BrokerError:
    """The ``BrokerError`` that ``broker_call`` raises for ``exc``."""
    cause = " ".join(str(exc).split()) or type(exc).__name__
    return BrokerError(f"Redis {name}: {what} failed: {cause}")


def _decode(raw: bytes, key: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DomainError(f"field {key!r} is not UTF-8 text") from None


class ShardedTickProducer:
    """Publishes ticks to the shard streams of a cluster: each tick to ``p:ticks:{shard_of(asset)}``,
    in the order given (so each asset's ticks keep their order), with fields ``asset``,
    ``timestamp`` (integer UTC ns) and ``value`` (``repr``: read back exactly).

    ``url`` is a cluster URL (:func:`parse_cluster_url`: ``redis://HOST:PORT/DB[?prefix=NAME]``);
    the shard count is recorded in ``p:cluster`` if absent and must match otherwise.

    Raises:
        EndpointError: a bad URL.  ConfigError: another shard count is recorded.
        BrokerError: Redis cannot be reached or refuses a command.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str, shards: int) -> None:
        self.endpoint = parse_cluster_url(url, "cluster URL")
        self.keys = self.endpoint.keys
        self.shards = int(shards)
        self.name = self.endpoint.name
        self._fields = TickFields()
        self._client: Any = redis_client(self.endpoint.url, socket_timeout_s=_SOCKET_TIMEOUT_S)
        try:
            broker_call(self.name, "connecting", self._client.ping)
            join_cluster(self._client, self.name, self.keys, self.shards, None)
            self._publish = self._client.register_script(_PUBLISH)
        except BaseException:
            self._client.close()
            raise

    def publish(self, assets: Sequence[str], timestamps_ns: Sequence[int] | np.ndarray,
                values: Sequence[float] | np.ndarray) -> np.ndarray:
        """``XADD`` one entry per tick, in order (one script call per shard and 10,000 ticks);
        returns the shard of each tick (int64[n]).

        Raises:
            DomainError: an asset id the tick readers refuse (empty, too long, control characters);
                nothing of this call is published then.
            ValueError: columns of different lengths.
        """
        stamps = np.asarray(timestamps_ns, dtype=np.int64)
        numbers = np.asarray(values, dtype=np.float64)
        if not len(assets) == stamps.size == numbers.size:
            raise ValueError(f"{len(assets)} assets, {stamps.size} timestamps and {numbers.size} values")
        clean = [self._fields.asset(a) for a in assets]
        homes = np.fromiter((shard_of(a, self.shards) for a in clean), np.int64, len(clean))
        stamp_texts = [str(t) for t in stamps.tolist()]
        value_texts = [repr(v) for v in numbers.tolist()]
        for shard in np.unique(homes).tolist():
            stream = self.keys.ticks(shard)
            rows = np.flatnonzero(homes == shard).tolist()
            for start in range(0, len(rows), _PUBLISH_CHUNK):
                packed = msgpack.packb([[clean[i], stamp_texts[i], value_texts[i]]
                                        for i in rows[start:start + _PUBLISH_CHUNK]])
                self._append(stream, packed)
        return homes

    def _append(self, stream: str, packed: bytes) -> None:
        broker_call(self.name, f"XADD {stream}", lambda: self._publish(keys=[stream], args=[packed]))

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def __enter__(self) -> ShardedTickProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_LEASE_MS", "DEFAULT_PREFIX", "MIN_LEASE_MS", "RECORD_FIELDS", "ClusterEndpoint", "ClusterKeys",
           "RedisShards", "ShardedTickProducer", "StagedStates", "config_digest", "join_cluster",
           "parse_cluster_url", "record_fields", "redis_place", "shard_of"]
