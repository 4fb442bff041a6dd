"""invoices.invoice_total against a real database from cira_db's plugin."""

from __future__ import annotations

from decimal import Decimal

from invoices import invoice_total

from cira_db import Database
from cira_db.testing import CiraDbFactory


def test_totals_only_the_clients_completed_jobs(
    cira_db: Database, cira_db_factory: CiraDbFactory
) -> None:
    cira_db_factory.completed_job(client_id="acme", extracted_data={"total": "12.50"})
    cira_db_factory.completed_job(client_id="acme", extracted_data={"total": 7})
    cira_db_factory.completed_job(client_id="other", extracted_data={"total": 1000})
    cira_db_factory.job(client_id="acme", status="failed")
    assert invoice_total(cira_db, "acme") == Decimal("19.50")


def test_a_client_without_jobs_owes_nothing(cira_db: Database) -> None:
    assert invoice_total(cira_db, "nobody") == 0
