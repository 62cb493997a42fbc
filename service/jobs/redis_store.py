"""The job store on Redis, for several replicas behind one load balancer.

Keys (under a prefix, ``diffmamba:`` by default):

* ``rec:{id}`` the record as JSON, expiring ``ttl_s`` after its last write;
* ``res:{id}`` the result bytes, expiring ``ttl_s`` after the job finished;
* ``lease:{id}`` the owner's lease, renewed while the job is queued or running;
* ``cancel:{id}`` a cancel flag that the owner polls;
* ``results`` (sorted set, finish time) and ``sizes`` / ``total`` (bytes): the eviction index;
* channel ``ev:{id}``: every record write is published there for event streams.

Conditional writes (a terminal state is final; a result and its succeeded record land
together; a lapsed lease turns the job failed once) run as Lua scripts, so two replicas never
interleave inside one. The ``redis`` package is an optional extra (``pip install -e
'.[redis]'``), imported only when a ``redis://`` store is configured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from service.jobs.model import FAILED, JobRecord
from service.jobs.store import JobStore

logger = logging.getLogger("service.jobs")

_TERMINAL_LUA = """
local function terminal(raw)
  if not raw then return true end
  local s = cjson.decode(raw)['state']
  return s == 'succeeded' or s == 'failed' or s == 'cancelled'
end
"""

# KEYS: rec, channel. ARGV: record json, ttl seconds.
_UPDATE = _TERMINAL_LUA + """
if terminal(redis.call('GET', KEYS[1])) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: rec, channel, lease. ARGV: failed record json, ttl seconds.
_LEASE_LAPSED = _TERMINAL_LUA + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if terminal(redis.call('GET', KEYS[1])) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: rec, channel, res, results zset, sizes hash, total.
# ARGV: record json, ttl, data, size, now, cap, prefix, job id.
# Expired index entries are dropped first (their keys expired by TTL), then the oldest results
# (record and bytes) until the new one fits.
_FINISH = _TERMINAL_LUA + """
if terminal(redis.call('GET', KEYS[1])) then return 0 end
local ttl, size, now, cap = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local prefix, id = ARGV[7], ARGV[8]
local function forget(victim)
  local bytes = tonumber(redis.call('HGET', KEYS[5], victim) or '0')
  redis.call('HDEL', KEYS[5], victim)
  redis.call('ZREM', KEYS[4], victim)
  redis.call('DECRBY', KEYS[6], bytes)
end
for _, victim in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', tostring(now - ttl))) do
  forget(victim)
end
local evicted = {}
while tonumber(redis.call('GET', KEYS[6]) or '0') + size > cap do
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1])
  redis.call('DEL', prefix .. 'res:' .. oldest[1], prefix .. 'rec:' .. oldest[1])
  table.insert(evicted, oldest[1])
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ttl)
redis.call('ZADD', KEYS[4], now, id)
redis.call('HSET', KEYS[5], id, size)
redis.call('INCRBY', KEYS[6], size)
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('PUBLISH', KEYS[2], ARGV[1])
table.insert(evicted, 1, 'ok')
return evicted
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ModuleNotFoundError as exc:  # the optional extra is missing
        raise RuntimeError("DIFFMAMBA_JOB_STORE is a redis:// URL but the redis package is not"
                           " installed: pip install -e '.[redis]'") from exc
    return aioredis


class RedisJobStore(JobStore):
    def __init__(self, url: str, *, ttl_s: float, max_bytes: int, poll_s: float = 0.25,
                 prefix: str = "diffmamba:") -> None:
        super().__init__(ttl_s, max_bytes, poll_s)
        self.url, self.prefix = url, prefix
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}

    def _key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}:{job_id}" if job_id else f"{self.prefix}{kind}"

    @property
    def _ttl(self) -> int:
        return max(1, round(self.ttl_s))

    async def start(self) -> None:
        aioredis = _import_redis()
        from redis.exceptions import RedisError

        self.outage_errors = (RedisError, OSError)
        self._redis = aioredis.from_url(self.url, decode_responses=False)
        try:
            await self._redis.ping()
        except RedisError as exc:  # commands reconnect later; jobs answer 503 meanwhile
            logger.error("job store: redis at %s unreachable for now: %s",
                         self.url.split("@")[-1], exc)
        self._scripts = {name: self._redis.register_script(src) for name, src in
                         (("update", _UPDATE), ("lapsed", _LEASE_LAPSED), ("finish", _FINISH))}
        logger.info("job store: redis at %s", self.url.split("@")[-1])

    async def sweep(self) -> None:
        """Keys expire by themselves (EX); the eviction index is trimmed in ``finish``."""

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @staticmethod
    def _dump(record: JobRecord) -> bytes:
        return json.dumps(record.to_dict()).encode()

    async def create(self, record: JobRecord, lease_s: float) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("rec", record.id), self._dump(record), ex=self._ttl)
            pipe.set(self._key("lease", record.id), record.owner, px=int(lease_s * 1000))
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.get(self._key("rec", job_id))
        if raw is None:
            return None
        record = JobRecord.from_dict(json.loads(raw))
        if record.terminal or await self._redis.exists(self._key("lease", job_id)):
            return record
        # Nobody renews this job any more: its replica died or hung past the lease.
        record.state, record.finished_at = FAILED, time.time()
        record.error = {"error": "replica_lost",
                        "detail": "the replica running the job stopped renewing its lease"
                                  " (it crashed or was killed); submit the job again"}
        done = await self._scripts["lapsed"](
            keys=[self._key("rec", job_id), self._key("ev", job_id), self._key("lease", job_id)],
            args=[self._dump(record), self._ttl])
        if done:
            logger.warning("job %s: lease of replica %s lapsed, marked failed", job_id,
                           record.owner)
            return record
        return await self.get(job_id)  # renewed or finished meanwhile: read it again

    async def update(self, record: JobRecord) -> bool:
        return bool(await self._scripts["update"](
            keys=[self._key("rec", record.id), self._key("ev", record.id)],
            args=[self._dump(record), self._ttl]))

    async def finish(self, record: JobRecord, data: bytes) -> bool:
        self.check_size(data)
        record.result_bytes = len(data)
        out = await self._scripts["finish"](
            keys=[self._key("rec", record.id), self._key("ev", record.id),
                  self._key("res", record.id), self._key("results"), self._key("sizes"),
                  self._key("total")],
            args=[self._dump(record), self._ttl, data, len(data), time.time(), self.max_bytes,
                  self.prefix, record.id])
        if not out:
            return False
        evicted = [v.decode() for v in out[1:]]
        if evicted:
            logger.info("job store: evicted %d result(s) to stay under %d bytes: %s",
                        len(evicted), self.max_bytes, ", ".join(evicted))
        return True

    async def get_result(self, job_id: str) -> bytes | None:
        return await self._redis.get(self._key("res", job_id))

    async def request_cancel(self, job_id: str) -> None:
        await self._redis.set(self._key("cancel", job_id), b"1", ex=self._ttl)

    async def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        flags = await self._redis.mget([self._key("cancel", i) for i in ids])
        return {i for i, flag in zip(ids, flags, strict=True) if flag is not None}

    async def renew_leases(self, job_ids: Iterable[str], owner: str, lease_s: float) -> None:
        ids = list(job_ids)
        if not ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.set(self._key("lease", job_id), owner, px=int(lease_s * 1000))
                pipe.expire(self._key("rec", job_id), self._ttl)
            await pipe.execute()

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """Published writes as they happen; a read every ``poll_s`` besides, which also turns
        a job with a lapsed lease failed while someone is watching it."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._key("ev", job_id))
            seen: dict | None = None
            while True:
                record = await self.get(job_id)
                if record is None:
                    return
                while True:
                    if record.to_dict() != seen:
                        seen = record.to_dict()
                        yield record
                    if record.terminal:
                        return
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=self.poll_s)
                    if message is None:
                        break  # quiet for a while: read the record (and its lease) again
                    record = JobRecord.from_dict(json.loads(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
                await pubsub.aclose()
