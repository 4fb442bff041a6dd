-- squawk-ignore-file prefer-bigint-over-smallint
-- squawk: priority is a small documented range (-100..100), not a counter.
-- 0003 job features, part 1 of 2: the columns and the status label that
-- cancel, retry later, scheduling, priority and progress need.
--
-- Safe on a live, large jobs table: every statement changes the catalog only.
--   * ADD VALUE appends a label to job_status (no table lock; PostgreSQL 12+
--     allows it in a transaction, the label is usable once this commits).
--   * The new columns are nullable or have a constant default, so no row is
--     rewritten (PostgreSQL 11+ stores the default in the catalog).
--   * The CHECKs are added NOT VALID: no scan now; 0004 validates them under
--     a SHARE UPDATE EXCLUSIVE lock that lets reads and writes go on.
-- The ALTER TABLE takes ACCESS EXCLUSIVE on jobs until this transaction
-- commits (milliseconds, measured on 1,000,000 rows in docs/performance.md);
-- lock_timeout (CIRA_DB_MIGRATION_LOCK_TIMEOUT) bounds how long it waits.
--
-- Columns (existing rows and today's calls keep today's behaviour):
--   run_after           timestamptz NULL: not claimed before this time; NULL
--                       means "as soon as possible" (ordered by created_at).
--   priority            smallint NOT NULL DEFAULT 0, -100..100: higher first.
--   progress            jsonb NULL: a JSON object of at most 4096 bytes (as text).
--   cancel_requested_at timestamptz NULL: when a cancel was asked for; never
--                       set on a queued job (a queued job is cancelled at once,
--                       and a job with a pending cancel never goes back to the queue).
-- The claim key is coalesce(run_after, created_at): 0004 indexes it.

ALTER TYPE job_status ADD VALUE IF NOT EXISTS 'cancelled' AFTER 'failed';

ALTER TABLE jobs
    ADD COLUMN run_after timestamptz,
    ADD COLUMN priority smallint NOT NULL DEFAULT 0,
    ADD COLUMN progress jsonb,
    ADD COLUMN cancel_requested_at timestamptz,
    ADD CONSTRAINT jobs_priority_range CHECK (priority BETWEEN -100 AND 100) NOT VALID,
    ADD CONSTRAINT jobs_progress_small_object
        CHECK (progress IS NULL
               OR (jsonb_typeof(progress) = 'object' AND octet_length(progress::text) <= 4096))
        NOT VALID,
    ADD CONSTRAINT jobs_cancel_request_not_queued
        CHECK (cancel_requested_at IS NULL OR status <> 'queued') NOT VALID;
