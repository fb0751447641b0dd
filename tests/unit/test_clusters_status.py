"""Clusters.status: concurrent asks for one cluster share one collection; a waiter that gives up
does not cancel it for the others; the next ask after it finished collects afresh."""

from __future__ import annotations

import asyncio
import json

from bot.clusters import Clusters, StatusReport
from bot.config import load_settings


class Counting(Clusters):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.collections = 0
        self.release = asyncio.Event()

    async def _collect(self, name: str, expected_back: frozenset[str]) -> StatusReport:
        self.collections += 1
        await self.release.wait()
        return StatusReport(facts=name, diagnosis=self.collections)  # type: ignore[arg-type]


async def test_concurrent_asks_share_one_collection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "kc").write_text("x")
    settings = load_settings(environ={
        "ETCDBOT_SLACK_BOT_TOKEN": "xoxb-1", "ETCDBOT_SLACK_APP_TOKEN": "xapp-1",
        "ETCDBOT_CLUSTERS": json.dumps([{"name": "lab", "kubeconfig": str(tmp_path / "kc")}])})
    clusters = Counting(settings)
    asks = [asyncio.ensure_future(clusters.status("lab")) for _ in range(20)]
    await asyncio.sleep(0)
    asks[0].cancel()
    clusters.release.set()
    reports = await asyncio.gather(*asks[1:])
    assert clusters.collections == 1 and {r.diagnosis for r in reports} == {1}
    assert (await clusters.status("lab")).diagnosis == 2
