"""SQL resources of cira_db: named queries and migrations (data only)."""
