"""The cira_db pytest plugin: a real PostgreSQL 16, a fresh migrated database per test."""

pytest_plugins = ["cira_db.testing"]
