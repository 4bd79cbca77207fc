"""Where an organisation's objects live, as the gateway learnt it.

An upstream answer names objects (``ObjectRef``: a file, a fine-tuning job,
a fine-tuned model); the gateway remembers, per organisation, which account
each came from, in ``routed_objects`` (shared by every replica) and in this
process's ``RouteMemory`` (so a known id costs no database read, and is not
written again). Ids this deployment answered for itself with a 2xx are kept
as local in the memory only (ids are unique: they stay local). Both parts
are bounded; the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Literal, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from openft.store.queries import routes

ObjectKind = Literal["file", "fine_tuning.job", "model"]
Reader = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class ObjectRef(NamedTuple):
    """An object an upstream answer names, or a request names on its path or in its body."""

    id: str
    kind: ObjectKind


class RouteMemory:
    def __init__(self, size: int = 100_000):
        self.size = size
        self._routed: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._local: OrderedDict[tuple[str, str], None] = OrderedDict()

    @staticmethod
    def _keep(entries: OrderedDict[tuple[str, str], str] | OrderedDict[tuple[str, str], None],
              key: tuple[str, str], size: int) -> None:
        entries.move_to_end(key)
        while len(entries) > size:
            entries.popitem(last=False)

    def is_local(self, org_id: str, object_id: str) -> bool:
        return (org_id, object_id) in self._local

    def mark_local(self, org_id: str, object_id: str) -> None:
        self._local[(org_id, object_id)] = None
        self._keep(self._local, (org_id, object_id), self.size)

    def _put(self, org_id: str, object_id: str, account: str) -> None:
        self._routed[(org_id, object_id)] = account
        self._keep(self._routed, (org_id, object_id), self.size)

    async def accounts_of(self, reader: Reader, org_id: str, object_ids: Iterable[str]) -> dict[str, str]:
        """The account of each of ``object_ids`` that ``org_id`` reached through one (others left out)."""
        wanted = list(dict.fromkeys(object_ids))
        found = {i: account for i in wanted if (account := self._routed.get((org_id, i))) is not None}
        missing = [i for i in wanted if i not in found and not self.is_local(org_id, i)]
        if missing:
            async with reader() as db:
                read = await routes.read_routes(db, org_id, missing)
            for object_id, account in read.items():
                self._put(org_id, object_id, account)
            found.update(read)
        return found

    async def remember(self, transaction: Transaction, org_id: str, account: str, refs: Iterable[ObjectRef]) -> None:
        """Record ``refs`` as reached through ``account`` (those already known so cost nothing)."""
        new = [ref for ref in dict.fromkeys(refs) if self._routed.get((org_id, ref.id)) != account][:1000]
        if not new:
            return
        async with transaction() as session:
            await routes.remember_routes(session, org_id, account, [ref.id for ref in new])
        for ref in new:
            self._put(org_id, ref.id, account)
