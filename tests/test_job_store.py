"""The job-store contract on both stores (local disk, a real Redis), and what is local-only:
temp-then-rename results and records kept across a restart."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis_server import redis_url  # noqa: F401 (a fixture)

from service.jobs import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    JobStore,
    LocalJobStore,
    ResultTooLargeError,
)

Scenario = Callable[[JobStore], Awaitable[None]]


@pytest.fixture(params=["local", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., JobStore]:
    """A factory of unstarted stores of one kind; each Redis one under its own key prefix."""
    if request.param == "local":
        return lambda **kw: LocalJobStore(tmp_path / "jobs", **kw)
    url = request.getfixturevalue("redis_url")
    from service.jobs.redis_store import RedisJobStore

    return lambda **kw: RedisJobStore(url, prefix=f"test-{uuid.uuid4().hex[:8]}:", **kw)


def run(store: JobStore, scenario: Scenario) -> None:
    async def main() -> None:
        await store.start()
        try:
            await asyncio.wait_for(scenario(store), 30)
        finally:
            await store.close()

    asyncio.run(main())


def job(**kw: Any) -> JobRecord:
    return JobRecord(id=uuid.uuid4().hex, task="derain", params={"seed": 1}, owner="me", **kw)


async def succeed(store: JobStore, data: bytes) -> JobRecord:
    record = job()
    await store.create(record, lease_s=30)
    record.state, record.started_at = RUNNING, time.time()
    assert await store.update(record)
    record.state, record.finished_at = SUCCEEDED, time.time()
    record.media_type, record.headers = "image/png", {"x-seed": "1"}
    assert await store.finish(record, data)
    return record


def test_lifecycle_and_terminal_states_are_final(make_store: Callable[..., JobStore]) -> None:
    async def scenario(store: JobStore) -> None:
        record = job()
        await store.create(record, lease_s=30)
        got = await store.get(record.id)
        assert got is not None and got.state == "queued" and got.owner == "me"
        record.state = RUNNING
        record.progress.passes_done, record.progress.passes_total = 3, 8
        assert await store.update(record)
        got = await store.get(record.id)
        assert got is not None and got.progress.passes_done == 3
        record.state, record.finished_at = FAILED, time.time()
        record.error = {"error": "inference_failed", "detail": "boom"}
        assert await store.update(record)
        # Nothing turns a finished job back: not a late progress write, not a result.
        record.state = RUNNING
        assert not await store.update(record)
        record.state = SUCCEEDED
        assert not await store.finish(record, b"late")
        got = await store.get(record.id)
        assert got is not None and got.state == FAILED and got.error["detail"] == "boom"
        assert await store.get_result(record.id) is None
        assert await store.get(uuid.uuid4().hex) is None
        assert not await store.update(job())  # never created

    run(make_store(ttl_s=60, max_bytes=1000), scenario)


def test_result_round_trip_and_cancel_flags(make_store: Callable[..., JobStore]) -> None:
    async def scenario(store: JobStore) -> None:
        data = bytes(range(256)) * 3
        record = await succeed(store, data)
        assert await store.get_result(record.id) == data
        got = await store.get(record.id)
        assert got is not None and got.state == SUCCEEDED and got.result_bytes == len(data)
        assert got.headers == {"x-seed": "1"} and got.media_type == "image/png"

        other = job()
        await store.create(other, lease_s=30)
        assert await store.cancel_requested([other.id, record.id]) == set()
        await store.request_cancel(other.id)
        assert await store.cancel_requested([other.id, record.id]) == {other.id}

    run(make_store(ttl_s=60, max_bytes=10_000), scenario)


def test_size_cap_evicts_the_oldest_results(make_store: Callable[..., JobStore]) -> None:
    async def scenario(store: JobStore) -> None:
        first = await succeed(store, b"a" * 40)
        second = await succeed(store, b"b" * 40)
        third = await succeed(store, b"c" * 40)  # 120 > 100: the oldest goes
        assert await store.get(first.id) is None and await store.get_result(first.id) is None
        assert await store.get_result(second.id) == b"b" * 40
        assert await store.get_result(third.id) == b"c" * 40
        fourth = await succeed(store, b"d" * 90)  # only room for itself
        assert await store.get(second.id) is None and await store.get(third.id) is None
        assert await store.get_result(fourth.id) == b"d" * 90

        too_big = job()
        await store.create(too_big, lease_s=30)
        too_big.state = SUCCEEDED
        with pytest.raises(ResultTooLargeError, match="over the job store's cap"):
            await store.finish(too_big, b"x" * 101)
        assert await store.get_result(fourth.id) == b"d" * 90  # nothing evicted for it

    run(make_store(ttl_s=60, max_bytes=100), scenario)


def test_finished_jobs_expire_after_the_ttl(make_store: Callable[..., JobStore]) -> None:
    async def scenario(store: JobStore) -> None:
        done = await succeed(store, b"result")
        assert await store.get_result(done.id) == b"result"
        await asyncio.sleep(1.3)
        await store.sweep()
        assert await store.get(done.id) is None
        assert await store.get_result(done.id) is None
        # The expired result no longer counts against the cap: 60 bytes fit next to nothing.
        again = await succeed(store, b"z" * 60)
        assert await store.get_result(again.id) == b"z" * 60

    run(make_store(ttl_s=1.0, max_bytes=100), scenario)


def test_watch_follows_the_job_to_its_end(make_store: Callable[..., JobStore]) -> None:
    async def scenario(store: JobStore) -> None:
        record = job()
        await store.create(record, lease_s=30)
        seen: list[tuple[str, int]] = []

        async def follow() -> None:
            async for r in store.watch(record.id):
                seen.append((r.state, r.progress.passes_done))

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.1)
        record.state = RUNNING
        for done in (1, 2):
            record.progress.passes_done = done
            assert await store.update(record)
            await asyncio.sleep(0.1)
        record.state, record.finished_at = SUCCEEDED, time.time()
        assert await store.finish(record, b"img")
        await asyncio.wait_for(follower, 5)  # ends by itself at the terminal state
        assert seen == [("queued", 0), (RUNNING, 1), (RUNNING, 2), (SUCCEEDED, 2)]

    run(make_store(ttl_s=60, max_bytes=100, poll_s=0.05), scenario)


def test_local_result_is_never_half_written(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes go to a temp file that is renamed into place: a failure leaves no result."""
    store = LocalJobStore(tmp_path, ttl_s=60, max_bytes=10_000)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    async def scenario(store: JobStore) -> None:
        record = job()
        await store.create(record, lease_s=30)
        record.state = SUCCEEDED
        monkeypatch.setattr("service.jobs.local.os.replace", crash)
        with pytest.raises(OSError, match="disk full"):
            await store.finish(record, b"x" * 5000)
        monkeypatch.undo()
        got = await store.get(record.id)
        assert got is not None and got.state == "queued"
        assert await store.get_result(record.id) is None
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{record.id}.json"]

    run(store, scenario)


def test_local_store_keeps_finished_jobs_across_a_restart(tmp_path: Path) -> None:
    ids: dict[str, str] = {}

    async def first(store: JobStore) -> None:
        ids["done"] = (await succeed(store, b"kept")).id
        running = job()
        await store.create(running, lease_s=30)
        running.state = RUNNING
        assert await store.update(running)
        ids["running"] = running.id

    async def second(store: JobStore) -> None:
        assert await store.get_result(ids["done"]) == b"kept"
        lost = await store.get(ids["running"])
        assert lost is not None and lost.state == FAILED
        assert lost.error is not None and lost.error["error"] == "server_restarted"

    run(LocalJobStore(tmp_path, ttl_s=60, max_bytes=100), first)
    run(LocalJobStore(tmp_path, ttl_s=60, max_bytes=100), second)
    records = {p.stem: json.loads(p.read_text())["state"] for p in tmp_path.glob("*.json")}
    assert records == {ids["done"]: SUCCEEDED, ids["running"]: FAILED}

    throwaway = LocalJobStore(None, ttl_s=60, max_bytes=100)
    run(throwaway, first)
    assert throwaway.directory is not None and not throwaway.directory.exists()


def test_redis_lapsed_lease_fails_the_job_once(redis_url: str) -> None:  # noqa: F811
    from service.jobs.redis_store import RedisJobStore

    async def scenario(store: JobStore) -> None:
        alive, dead = job(), job()
        await store.create(alive, lease_s=0.3)
        await store.create(dead, lease_s=0.3)
        for _ in range(4):
            await store.renew_leases([alive.id], "me", 0.3)
            await asyncio.sleep(0.15)
        got = await store.get(alive.id)
        assert got is not None and got.state == "queued"
        lost = await store.get(dead.id)
        assert lost is not None and lost.state == FAILED
        assert lost.error is not None and lost.error["error"] == "replica_lost"
        dead.state = RUNNING  # the owner comes back too late: its writes are refused
        assert not await store.update(dead)

    run(RedisJobStore(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}:", ttl_s=60,
                      max_bytes=100), scenario)
