-- squawk-ignore-file changing-column-type, adding-not-nullable-field, constraint-missing-not-valid, adding-foreign-key-constraint, ban-drop-constraint, require-concurrent-index-creation, require-concurrent-index-deletion, prefer-bigint-over-int
-- squawk, why each rule is ignored in this file:
--   changing-column-type: timestamp -> timestamptz has no online path; it
--     rewrites the table once, which the one-time upgrade accepts.
--   adding-not-nullable-field, constraint-missing-not-valid,
--   adding-foreign-key-constraint: the tables are already ACCESS EXCLUSIVE
--     locked by that rewrite in this transaction, and step 1 proved the rows
--     comply, so NOT VALID + VALIDATE would only add a second scan.
--   ban-drop-constraint: the foreign key is dropped and re-added in one
--     statement to gain ON DELETE CASCADE.
--   require-concurrent-index-creation/-deletion: CONCURRENTLY cannot run in
--     a transaction; these indexes are built in it so the upgrade stays
--     atomic, on tables the rewrite already locked. Later index changes on
--     large tables go in their own no-transaction migration.
--   prefer-bigint-over-int: attempts counts claims of one job.
-- 0002 hardening: correct types, constraints, worker lease columns and the
-- indexes the repositories' queries use.
--
-- Written to upgrade both a database built by 0001 and one built by the
-- origin story's schema.sql (adopted with `cira-db baseline`): TIMESTAMP
-- columns, uuid_generate_v4() defaults, nullable status/client_id.
--
-- Runs in one transaction: if any step fails, nothing changes. The timestamp
-- conversion rewrites both tables under an ACCESS EXCLUSIVE lock; that is
-- unavoidable for a type change and acceptable for this one-time upgrade
-- (see docs/migrations.md, "Why some squawk rules are ignored").

-- 1. Stop, with a clear message and no change, when existing rows would
--    violate the new constraints. Fix or delete those rows, then re-run.
DO $$
DECLARE
    problems text[] := ARRAY[]::text[];
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM jobs WHERE status IS NULL;
    IF n > 0 THEN problems := problems || format('%s jobs have a NULL status', n); END IF;
    SELECT count(*) INTO n FROM jobs WHERE client_id IS NULL;
    IF n > 0 THEN problems := problems || format('%s jobs have a NULL client_id', n); END IF;
    SELECT count(*) INTO n FROM jobs WHERE btrim(client_id) = '';
    IF n > 0 THEN problems := problems || format('%s jobs have an empty client_id', n); END IF;
    SELECT count(*) INTO n FROM jobs WHERE btrim(pdf_url) = '';
    IF n > 0 THEN problems := problems || format('%s jobs have an empty pdf_url', n); END IF;
    SELECT count(*) INTO n FROM jobs WHERE created_at IS NULL OR updated_at IS NULL;
    IF n > 0 THEN problems := problems || format('%s jobs have a NULL created_at or updated_at', n); END IF;
    SELECT count(*) INTO n FROM job_results WHERE job_id IS NULL;
    IF n > 0 THEN problems := problems || format('%s job_results have a NULL job_id', n); END IF;
    SELECT count(*) INTO n FROM job_results
        WHERE extracted_data IS NULL OR confidence_score IS NULL OR tokens_used IS NULL
           OR created_at IS NULL;
    IF n > 0 THEN
        problems := problems || format(
            '%s job_results have a NULL extracted_data, confidence_score, tokens_used or created_at', n);
    END IF;
    SELECT count(*) INTO n FROM job_results WHERE confidence_score NOT BETWEEN 0 AND 1;
    IF n > 0 THEN problems := problems || format('%s job_results have a confidence_score outside 0..1', n); END IF;
    SELECT count(*) INTO n FROM job_results WHERE tokens_used < 0;
    IF n > 0 THEN problems := problems || format('%s job_results have a negative tokens_used', n); END IF;
    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION 'cira_db 0002 cannot harden this database: %', array_to_string(problems, '; ')
            USING HINT = 'Fix or delete those rows, then run the migration again; nothing was changed.',
                  ERRCODE = 'check_violation';
    END IF;
END
$$;

-- 2. Timestamps become timestamptz. Existing naive values are read as UTC,
--    which is what NOW() stored on an RDS server (its TimeZone is UTC).
ALTER TABLE jobs
    ALTER COLUMN created_at TYPE timestamptz USING created_at AT TIME ZONE 'UTC',
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at AT TIME ZONE 'UTC',
    ALTER COLUMN completed_at TYPE timestamptz USING completed_at AT TIME ZONE 'UTC';
ALTER TABLE job_results
    ALTER COLUMN created_at TYPE timestamptz USING created_at AT TIME ZONE 'UTC';

-- 3. Defaults that need no extension, and NOT NULL where the model needs it.
ALTER TABLE jobs
    ALTER COLUMN id SET DEFAULT gen_random_uuid(),
    ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN client_id SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL;
ALTER TABLE job_results
    ALTER COLUMN id SET DEFAULT gen_random_uuid(),
    ALTER COLUMN job_id SET NOT NULL,
    ALTER COLUMN extracted_data SET NOT NULL,
    ALTER COLUMN confidence_score SET NOT NULL,
    ALTER COLUMN tokens_used SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL;

-- 4. Worker lease columns: how often a job was claimed, and until when the
--    current claim holds.
ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz;
-- Jobs that were processing when the database was adopted get a lease that
-- ends now, so release_expired() puts them back in the queue instead of
-- leaving them in processing for ever.
UPDATE jobs SET lease_expires_at = now()
WHERE status = 'processing' AND lease_expires_at IS NULL;

-- 5. CHECK constraints. Step 1 proved the rows comply (and step 4 gave every
--    processing job a lease), so they are added valid in one step.
ALTER TABLE jobs
    ADD CONSTRAINT jobs_client_id_not_empty CHECK (btrim(client_id) <> ''),
    ADD CONSTRAINT jobs_pdf_url_not_empty CHECK (btrim(pdf_url) <> ''),
    ADD CONSTRAINT jobs_attempts_non_negative CHECK (attempts >= 0),
    ADD CONSTRAINT jobs_lease_only_while_processing
        CHECK ((status = 'processing') = (lease_expires_at IS NOT NULL));
ALTER TABLE job_results
    ADD CONSTRAINT job_results_confidence_range CHECK (confidence_score BETWEEN 0 AND 1),
    ADD CONSTRAINT job_results_tokens_non_negative CHECK (tokens_used >= 0);

-- 6. A job's result goes with the job: ON DELETE CASCADE, so retention can
--    delete finished jobs in one statement.
ALTER TABLE job_results
    DROP CONSTRAINT IF EXISTS job_results_job_id_fkey,
    ADD CONSTRAINT job_results_job_id_fkey
        FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;

-- 7. Indexes. The story's four are replaced, each for a reason:
--    * idx_jobs_status (status): four distinct values; the partial queue
--      index and the per-client status index below serve every query that
--      filters on status, with far fewer pages read.
--    * idx_jobs_created_at (created_at): dropped on purpose. With it present
--      the planner was seen to claim jobs by walking created_at past every
--      finished row (docs/performance.md); the queue index is partial instead.
--    * idx_jobs_client_id (client_id): a prefix of idx_jobs_client_created.
--    * idx_job_results_job_id (job_id): duplicates the index behind the
--      UNIQUE constraint job_results_job_id_key.
DROP INDEX IF EXISTS idx_jobs_status;
DROP INDEX IF EXISTS idx_jobs_created_at;
DROP INDEX IF EXISTS idx_jobs_client_id;
DROP INDEX IF EXISTS idx_job_results_job_id;

-- claim_next: the oldest queued job, and only queued rows are in the index.
CREATE INDEX IF NOT EXISTS idx_jobs_queue ON jobs (created_at, id) WHERE status = 'queued';
-- list: a client's jobs, newest first, keyset on (created_at, id).
CREATE INDEX IF NOT EXISTS idx_jobs_client_created ON jobs (client_id, created_at DESC, id DESC);
-- list filtered by status, count_by_status (index-only), claim per client.
CREATE INDEX IF NOT EXISTS idx_jobs_client_status_created
    ON jobs (client_id, status, created_at DESC, id DESC);
-- release_expired: only jobs under a lease are in the index.
CREATE INDEX IF NOT EXISTS idx_jobs_lease_expiry
    ON jobs (lease_expires_at) WHERE status = 'processing';
-- retention: finished jobs by age.
CREATE INDEX IF NOT EXISTS idx_jobs_finished_created
    ON jobs (created_at) WHERE status IN ('completed', 'failed');
-- usage: a client's completed jobs in a time range.
CREATE INDEX IF NOT EXISTS idx_jobs_client_completed
    ON jobs (client_id, completed_at) WHERE status = 'completed';
