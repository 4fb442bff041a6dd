-- cira_db: no-transaction
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
-- squawk: this file runs statement by statement outside a transaction (the
-- header line above); the lint config assumes one for every file.
-- 0004 job features, part 2 of 2: validate 0003's CHECKs and build the
-- indexes of the new claim, of fair share and of retention, without blocking
-- reads or writes on jobs.
--
-- Each statement runs on its own and takes SHARE UPDATE EXCLUSIVE on jobs
-- (VALIDATE CONSTRAINT, CREATE/DROP INDEX CONCURRENTLY): reads, inserts and
-- updates go on; only other schema changes and VACUUM wait. Times on
-- 1,000,000 rows are measured in docs/performance.md.
--
-- Re-runnable: if a statement fails (a concurrent build that hits
-- lock_timeout behind a long transaction leaves an INVALID index), run the
-- migration again. The DO block first renames any INVALID index of this file
-- to <name>_invalid (ALTER INDEX RENAME takes only SHARE UPDATE EXCLUSIVE),
-- the next statements drop those concurrently, and CREATE ... IF NOT EXISTS
-- skips only the indexes that were built completely.

-- 1. The CHECKs of 0003: a scan that blocks no reads or writes.
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_priority_range;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_progress_small_object;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_cancel_request_not_queued;

-- 2. Leftovers of a failed concurrent build.
DO $$
DECLARE
    leftover text;
BEGIN
    FOR leftover IN
        SELECT c.relname
        FROM pg_index AS i
        JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'jobs'::regclass
          AND NOT i.indisvalid
          AND c.relname IN ('idx_jobs_claim', 'idx_jobs_claim_client', 'idx_jobs_ended_created')
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', leftover, leftover || '_invalid');
    END LOOP;
END
$$;
DROP INDEX CONCURRENTLY IF EXISTS idx_jobs_claim_invalid;
DROP INDEX CONCURRENTLY IF EXISTS idx_jobs_claim_client_invalid;
DROP INDEX CONCURRENTLY IF EXISTS idx_jobs_ended_created_invalid;

-- 3. The claim: queued jobs, higher priority first, then the one that has
--    waited longest (its schedule, or its creation when it has none). A claim
--    reads this index in order and stops at the first jobs whose key is not
--    in the future.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_jobs_claim
    ON jobs (priority DESC, (coalesce(run_after, created_at)), id)
    WHERE status = 'queued';

-- 4. Fair share: the clients that have queued jobs (a skip scan over the
--    first column), and each client's next jobs in claim order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_jobs_claim_client
    ON jobs (client_id, priority DESC, (coalesce(run_after, created_at)), id)
    WHERE status = 'queued';

-- 5. Retention deletes cancelled jobs too: this index replaces
--    idx_jobs_finished_created (completed, failed), which today's retention
--    query can use no longer than it takes to build this one (its predicate
--    implies this index's).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_jobs_ended_created
    ON jobs (created_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
DROP INDEX CONCURRENTLY IF EXISTS idx_jobs_finished_created;
