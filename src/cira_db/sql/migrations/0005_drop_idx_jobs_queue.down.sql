-- cira_db: no-transaction
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
-- squawk: this file runs statement by statement outside a transaction (the
-- header line above); the lint config assumes one for every file.
-- Undo 0005: idx_jobs_queue of 0002 is built again, concurrently (SHARE
-- UPDATE EXCLUSIVE on jobs: reads and writes go on). Re-runnable: an INVALID
-- idx_jobs_queue left by a failed build is renamed and dropped first, and
-- CREATE ... IF NOT EXISTS skips an index that was built completely.

DO $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM pg_index AS i
        JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'jobs'::regclass
          AND NOT i.indisvalid
          AND c.relname = 'idx_jobs_queue'
    ) THEN
        ALTER INDEX idx_jobs_queue RENAME TO idx_jobs_queue_invalid;
    END IF;
END
$$;
DROP INDEX CONCURRENTLY IF EXISTS idx_jobs_queue_invalid;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_jobs_queue
    ON jobs (created_at, id)
    WHERE status = 'queued';
