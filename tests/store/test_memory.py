"""`MemoryStore` against the store conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.store import MemoryStore, Store, open_store
from tests.store.conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        store = MemoryStore()
        yield store
        await store.close()


async def test_open_store_memory_url() -> None:
    store = await open_store("memory://")
    assert isinstance(store, MemoryStore)
    await store.close()
