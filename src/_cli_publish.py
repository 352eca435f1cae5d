"""``usp publish DATA --to redis://HOST:PORT/DB --shards P``: ticks of a file into the shard
streams of a ``usp serve --cluster`` cluster (docs/scale-out.md).

The file is read by the file source of ``usp serve`` (``.csv`` lines ``asset,timestamp,value``
with an optional header, or ``.jsonl`` records), so exactly the ticks ``usp serve --source DATA``
would apply are published, in file order, each to the stream of its asset's shard
(``usp.adapters.redis_cluster.ShardedTickProducer``). A record that cannot be read is skipped,
logged and counted, as ``usp serve`` does. The summary goes to stderr; stdout stays empty.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from .adapters.redis_cluster import ShardedTickProducer
from .adapters.sources import FileSource
from .ports.ingestion import MalformedObservationEvent

#: Ticks read from the file per publishing call.
CHUNK_TICKS = 50_000

log = logging.getLogger("usp.ingestion")


def publish(data: Path, to: str, shards: int) -> int:
    """Publish every tick of ``data`` to the cluster at ``to`` with ``shards`` shards; returns 0.

    Raises:
        OSError: the file cannot be read.  EndpointError: a bad URL or file suffix.
        ConfigError: the cluster has another shard count.  BrokerError: Redis failed.
    """
    skipped: list[MalformedObservationEvent] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("usp: warning: %(message)s"))
    log.addHandler(handler)
    began = time.perf_counter()
    try:
        source = FileSource(data, on_event=skipped.append)
        try:
            with ShardedTickProducer(to, shards) as producer:
                ticks, assets, used = 0, set[str](), set[int]()
                while (batch := source.read(CHUNK_TICKS, 0.0)) is not None:
                    if not len(batch):
                        continue
                    homes = producer.publish(batch.assets, batch.timestamps_ns, batch.values)
                    ticks += len(batch)
                    assets.update(batch.assets)
                    used.update(homes.tolist())
                name = producer.name
        finally:
            source.close()
    finally:
        log.removeHandler(handler)
    seconds = time.perf_counter() - began
    rate = ticks / seconds if seconds > 0 else 0.0
    print(f"usp: published {ticks} ticks of {len(assets)} assets from {data} to {name} ({len(used)} of {shards} "
          f"shards) in {seconds:.2f} s ({rate:,.0f} ticks/s); {len(skipped)} malformed records skipped",
          file=sys.stderr)
    return 0


__all__ = ["CHUNK_TICKS", "publish"]
