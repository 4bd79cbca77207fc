"""``GET /fine_tuning/jobs?metadata[k]=v`` from 10,000 to 1,000,000 jobs.

One organisation holds N jobs, each with ``metadata = {"run": "<n>"}``; five
of them also carry ``{"team": "needle"}``. For each database (SQLite and,
with ``--postgres-url``, PostgreSQL) and each size, it times, on a plain
read connection with openft's own query functions:

* ``filter``: the metadata filter as served (``store.queries.jobs.list_jobs``,
  driven by the ``fine_tuning_job_metadata`` index);
* ``json scan``: the same filter on the JSON column (what openft did before
  the side table), as the before-picture;
* ``page``: the plain first page of the listing (the flat baseline).

Rows are generated inside the database (recursive CTE / generate_series), so
building a million jobs takes seconds. Prints medians in milliseconds and
the 1M/10k ratio of each; flat means a ratio near 1.

    .venv/bin/python bench/metadata_filter.py [--sizes 10000,1000000] \\
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from openft.config import to_async_url
from openft.store.db import create_engine, migrate
from openft.store.queries.jobs import list_jobs
from openft.store.queries.reads import keyset_page, scoped
from openft.store.tables import Job

ORG = "org-bench"
NEEDLES = 5
REPEATS = 30

_FILL = {
    "sqlite": """
        WITH RECURSIVE n(i) AS (SELECT :start UNION ALL SELECT i + 1 FROM n WHERE i < :stop)
        INSERT INTO fine_tuning_jobs (id, org_id, model, training_file, status, method, seed,
            metadata, result_files, created_at, updated_at, attempts)
        SELECT 'ftjob-b' || i, :org, 'm', 'file-x', 'succeeded', '{"type": "supervised"}', i,
            json_object('run', CAST(i AS TEXT)), '[]', :now, :now, 0 FROM n""",
    "postgresql": """
        INSERT INTO fine_tuning_jobs (id, org_id, model, training_file, status, method, seed,
            metadata, result_files, created_at, updated_at, attempts)
        SELECT 'ftjob-b' || i, :org, 'm', 'file-x', 'succeeded', '{"type": "supervised"}', i,
            jsonb_build_object('run', i::text), '[]', now(), now(), 0
        FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS i""",
}


async def grow(engine, start: int, stop: int) -> None:
    """Jobs start..stop (inclusive) with their metadata rows."""
    dialect = engine.dialect.name
    now = "2026-11-25 00:00:00.000000"
    async with engine.begin() as conn:
        await conn.execute(text(_FILL[dialect]), {"start": start, "stop": stop, "org": ORG, "now": now})
        await conn.execute(text(
            "INSERT INTO fine_tuning_job_metadata (job_seq, org_id, key, value) "
            "SELECT seq, org_id, 'run', CAST(seed AS VARCHAR(512)) FROM fine_tuning_jobs WHERE seed BETWEEN :a AND :b"
        ), {"a": start, "b": stop})


async def plant_needles(engine, size: int) -> None:
    """Five jobs spread over the whole range carry team=needle."""
    reset = ("json_object('run', CAST(seed AS TEXT))" if engine.dialect.name == "sqlite"
             else "jsonb_build_object('run', seed::text)")
    async with engine.begin() as conn:
        await conn.execute(text(
            f"UPDATE fine_tuning_jobs SET metadata = {reset} WHERE seq IN "
            "(SELECT job_seq FROM fine_tuning_job_metadata WHERE key = 'team')"))
        await conn.execute(text("DELETE FROM fine_tuning_job_metadata WHERE key = 'team'"))
        for k in range(NEEDLES):
            seed = 1 + k * (size - 1) // (NEEDLES - 1)
            seq = (await conn.execute(text("SELECT seq FROM fine_tuning_jobs WHERE seed = :s"), {"s": seed})).scalar()
            metadata = json.dumps({"run": str(seed), "team": "needle"})
            cast = "json(:m)" if engine.dialect.name == "sqlite" else "CAST(:m AS jsonb)"
            await conn.execute(text(f"UPDATE fine_tuning_jobs SET metadata = {cast} WHERE seq = :q"),
                               {"m": metadata, "q": seq})
            await conn.execute(text(
                "INSERT INTO fine_tuning_job_metadata (job_seq, org_id, key, value) VALUES (:q, :o, 'team', 'needle')"
            ), {"q": seq, "o": ORG})
        await conn.execute(text("ANALYZE"))


async def json_scan(conn) -> list:
    stmt = scoped(Job, org_id=ORG).where(Job.metadata_["team"].as_string() == "needle")
    return list((await keyset_page(conn, stmt, Job, after=None, limit=20)).items)


async def timed(engine, work) -> tuple[float, int]:
    """Median milliseconds of ``work(conn)`` over REPEATS runs, and its row count."""
    samples, rows = [], 0
    async with engine.connect() as conn:
        await work(conn)  # warm caches and statement cache
        for _ in range(REPEATS):
            started = time.perf_counter()
            rows = len(await work(conn))
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), rows


async def bench(url: str, sizes: list[int]) -> dict[int, dict[str, float]]:
    engine = create_engine(to_async_url(url))
    results: dict[int, dict[str, float]] = {}
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO organizations (id, name, created_at) VALUES (:o, 'bench', CURRENT_TIMESTAMP)"
            ), {"o": ORG})
        built = 0
        for size in sizes:
            await grow(engine, built + 1, size)
            built = size
            await plant_needles(engine, size)

            async def served(conn) -> list:
                return list((await list_jobs(conn, ORG, after=None, limit=20, metadata={"team": "needle"})).items)

            async def page(conn) -> list:
                return list((await list_jobs(conn, ORG, after=None, limit=20, metadata=None)).items)

            filter_ms, found = await timed(engine, served)
            scan_ms, scanned = await timed(engine, json_scan)
            page_ms, _ = await timed(engine, page)
            assert found == scanned == NEEDLES, (found, scanned)
            results[size] = {"filter": filter_ms, "json scan": scan_ms, "page": page_ms}
            print(f"  {size:>9,} jobs: filter {filter_ms:.2f} ms, json scan {scan_ms:.2f} ms, page {page_ms:.2f} ms",
                  flush=True)
    finally:
        await engine.dispose()
    return results


def report(name: str, results: dict[int, dict[str, float]]) -> None:
    sizes = sorted(results)
    print(f"\n{name}: median ms of one request's query (limit 20; {NEEDLES} jobs match)")
    print(f"{'jobs':>10} " + " ".join(f"{k:>10}" for k in results[sizes[0]]))
    for size in sizes:
        print(f"{size:>10,} " + " ".join(f"{v:10.2f}" for v in results[size].values()))
    first, last = results[sizes[0]], results[sizes[-1]]
    print(f"{'ratio':>10} " + " ".join(f"{last[k] / first[k]:9.2f}x" for k in first)
          + f"   ({sizes[-1]:,} / {sizes[0]:,} jobs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--postgres-url", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="openft-meta-") as tmp:
        print("SQLite")
        sqlite = asyncio.run(bench(f"sqlite:///{Path(tmp) / 'bench.db'}", sizes))
    postgres = None
    if args.postgres_url:
        import psycopg

        admin = args.postgres_url.replace("postgresql+psycopg://", "postgresql://")
        name = f"openft_bench_{secrets.token_hex(4)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            print("PostgreSQL")
            postgres = asyncio.run(bench(args.postgres_url.rsplit("/", 1)[0] + f"/{name}", sizes))
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    report("SQLite", sqlite)
    if postgres:
        report("PostgreSQL", postgres)


if __name__ == "__main__":
    main()
