"""Invoice totals from the extraction results cira_db keeps for a client."""

from __future__ import annotations

from decimal import Decimal

from cira_db import Database, JobRepository, JobResultRepository, JobStatus

__all__ = ["invoice_total"]


def invoice_total(db: Database, client_id: str) -> Decimal:
    """Sum of the ``total`` field over the client's completed jobs' results."""
    jobs = JobRepository(db)
    results = JobResultRepository(db)
    total = Decimal(0)
    cursor: str | None = None
    while True:
        page = jobs.list(client_id=client_id, status=JobStatus.COMPLETED, cursor=cursor)
        for job in page.items:
            result = results.get_for_job(job.id, client_id=client_id)
            total += Decimal(str(result.extracted_data.get("total", 0)))
        if page.next_cursor is None:
            return total
        cursor = page.next_cursor
