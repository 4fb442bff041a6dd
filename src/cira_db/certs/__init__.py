"""Certificate bundles shipped with cira_db (data only)."""
