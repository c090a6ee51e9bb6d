"""``list`` over request–reply: filters, cursors and their edges, bad requests."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.api import ListPage
from contracts.canonical import derive_run_id
from tests.support import BOTH_STORES, WorkerProcess, event, wait_settled
from worker.client import RunsApiError, RunsClient

pytestmark = pytest.mark.integration


async def seed(
    client: RunsClient, n: int, prefix: str = "evt", hour: int = 10, **fields: Any
) -> list[str]:
    """Publish n events a second apart from ``hour``:00:00; their run ids, oldest first."""
    ids = []
    for i in range(n):
        when = f"2026-11-24T{hour:02d}:{i // 60:02d}:{i % 60:02d}.000000+00:00"
        body = event(f"{prefix}-{i:03d}", occurred_at=when, **fields)
        await client.publish_event(body)
        ids.append(derive_run_id("engine-a", f"{prefix}-{i:03d}"))
    await wait_settled(client.js)
    return ids


async def all_pages(client: RunsClient, limit: int, **filters: object) -> list[list[str]]:
    pages, cursor = [], None
    for _ in range(100):  # bounded: never loops forever on a bad cursor
        page = await client.list_page(limit=limit, cursor=cursor, **filters)
        pages.append([item.run_id for item in page.items])
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("too many pages")


@BOTH_STORES
class TestList:
    """Summaries newest first, every filter, cursor edges."""

    async def test_pages(self, worker: WorkerProcess, client: RunsClient) -> None:
        """An exact multiple of the limit ends with a null cursor, not an empty page."""
        ids = await seed(client, 9)
        pages = await all_pages(client, limit=3)
        assert pages == [ids[::-1][0:3], ids[::-1][3:6], ids[::-1][6:9]]
        page = await client.list_page(limit=500)
        assert page.next_cursor is None
        assert set(page.items[0].model_dump()) == {
            "run_id", "created_at_utc", "status", "event_type", "mode", "tool_id", "source",
            "risk_level", "explanation_status", "revision",
        }  # fmt: skip

    async def test_empty(self, worker: WorkerProcess, client: RunsClient) -> None:
        """No runs: an empty page and a null cursor."""
        page = await client.list_page()
        assert (page.items, page.next_cursor) == ([], None)

    async def test_runs_arriving_between_pages(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """Runs stored between two pages neither repeat nor push older runs out."""
        ids = await seed(client, 6)
        first = await client.list_page(limit=4)
        await seed(client, 3, prefix="late", hour=11)  # newer than every page
        rest = await client.list_page(limit=4, cursor=first.next_cursor)
        seen = [i.run_id for i in first.items + rest.items]
        assert seen == ids[::-1]
        assert rest.next_cursor is None

    async def test_filters(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Each filter narrows the result; filters combine with AND."""
        await seed(client, 4, prefix="a", tool_id="saw-1", material_id="maple")
        await seed(client, 3, prefix="b", tool_id="mill-2", status="BLOCKED")
        guarded = await seed(client, 2, prefix="c", decision={"risk_level": "RED"})
        by = client.list_page

        def count(page: ListPage) -> int:
            return len(page.items)

        assert count(await by(limit=500, tool_id="saw-1")) == 4
        assert count(await by(limit=500, tool_id_prefix="mill")) == 3
        assert count(await by(limit=500, status="BLOCKED")) == 3 + 2  # the guard blocks RED
        assert count(await by(limit=500, risk_level="RED")) == 2
        assert count(await by(limit=500, material_id="maple", status="OK")) == 4
        assert count(await by(limit=500, source="engine-a", explanation_status="NONE")) == 4
        assert count(await by(limit=500, explanation_status="PENDING")) == 5  # not OK and GREEN
        assert count(await by(limit=500, event_type="feasibility", mode="rosette")) == 9
        assert count(await by(limit=500, source="engine-b")) == 0
        window = await by(
            limit=500,
            created_from="2026-11-24T10:00:01Z",
            created_to="2026-11-24T12:00:02+02:00",  # = 10:00:02 UTC, inclusive
        )
        assert count(window) == 2 + 2 + 1  # seconds 1 and 2 of a (4 runs), b (3), c (2)
        assert {i.run_id for i in (await by(limit=500, status="BLOCKED")).items} >= set(guarded)

    @pytest.mark.parametrize(
        "body",
        [
            {"limit": 0},
            {"limit": 501},
            {"limit": "10"},
            {"colour": "red"},
            {"status": "MAYBE"},
            {"cursor": "garbage"},
            {"created_from": "yesterday"},
        ],
    )
    async def test_bad_requests(
        self, worker: WorkerProcess, client: RunsClient, body: dict[str, object]
    ) -> None:
        """A bad limit, an unknown filter or a bad cursor is INVALID_REQUEST."""
        with pytest.raises(RunsApiError) as info:
            await client.request("list", body)
        assert info.value.code == "INVALID_REQUEST"

    async def test_cursor_bound_to_filters(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A cursor reused with other filters is refused."""
        await seed(client, 3)
        page = await client.list_page(limit=1, status="OK")
        with pytest.raises(RunsApiError) as info:
            await client.list_page(limit=1, status="BLOCKED", cursor=page.next_cursor)
        assert info.value.code == "INVALID_REQUEST"

    async def test_iter_runs(self, worker: WorkerProcess, client: RunsClient) -> None:
        """The client's iterator walks every page."""
        ids = await seed(client, 7)
        assert [r.run_id async for r in client.iter_runs(page_size=2)] == ids[::-1]
