-- Queries of the migration runner (cira_db.migrations.Migrator).
-- They run on the runner's own direct connection, never through a pooler.

-- name: history_table_exists
-- Whether schema_migrations exists in the current search path.
SELECT to_regclass('schema_migrations') IS NOT NULL

-- name: history_columns
-- Column names of schema_migrations, to tell ours from a foreign table.
SELECT column_name
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'schema_migrations'
ORDER BY ordinal_position

-- name: create_history_table
-- The history of applied migrations; one row per applied version.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    execution_ms integer NOT NULL,
    applied_by text NOT NULL
)

-- name: applied_migrations
-- Every recorded migration, oldest first.
SELECT version, name, checksum, applied_at, execution_ms, applied_by
FROM schema_migrations
ORDER BY version

-- name: record_migration
-- Record one applied migration (same transaction as the migration itself).
INSERT INTO schema_migrations (version, name, checksum, execution_ms, applied_by)
VALUES (%(version)s, %(name)s, %(checksum)s, %(execution_ms)s, %(applied_by)s)

-- name: forget_migration
-- Remove the record of a rolled-back migration.
DELETE FROM schema_migrations WHERE version = %(version)s

-- name: try_lock
-- Take the runners' advisory lock without waiting; true when taken.
SELECT pg_try_advisory_lock(%(key)s)

-- name: unlock
-- Release the runners' advisory lock.
SELECT pg_advisory_unlock(%(key)s)

-- name: set_local_timeouts
-- Timeouts for the statements of one migration, for its transaction only.
SELECT set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true)

-- name: set_session_timeouts
-- Timeouts for a no-transaction migration, for this session.
SELECT set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false)

-- name: story_columns
-- Columns of jobs and job_results, for baseline's shape check.
SELECT table_name, column_name, udt_name
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name IN ('jobs', 'job_results')
ORDER BY table_name, ordinal_position

-- name: job_status_labels
-- Labels of the job_status enum, in order; empty when the type is missing.
SELECT e.enumlabel
FROM pg_enum AS e
JOIN pg_type AS t ON t.oid = e.enumtypid
WHERE t.typname = 'job_status' AND t.typnamespace = current_schema()::regnamespace
ORDER BY e.enumsortorder

-- name: story_constraints
-- Keys of jobs and job_results: (table, kind p/u/f, columns, referenced table).
SELECT c.conrelid::regclass::text,
       c.contype::text,
       array_to_string(array_agg(a.attname::text ORDER BY a.attname), ','),
       CASE WHEN c.confrelid = 0 THEN '' ELSE c.confrelid::regclass::text END
FROM pg_constraint AS c
JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.conrelid IN (to_regclass('jobs'), to_regclass('job_results'))
  AND c.contype IN ('p', 'u', 'f')
GROUP BY c.oid, c.conrelid, c.contype, c.confrelid
