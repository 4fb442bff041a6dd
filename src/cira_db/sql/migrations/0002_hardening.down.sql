-- squawk-ignore-file ban-drop-column, ban-drop-constraint, ban-drop-not-null, changing-column-type, prefer-timestamp-tz, adding-foreign-key-constraint, constraint-missing-not-valid, require-concurrent-index-creation, require-concurrent-index-deletion
-- squawk: a down migration restores the story's schema, which is exactly what
-- these rules warn about; it runs in one transaction like the up migration.
-- Undo 0002. Every row is kept; what goes is what 0002 added: the lease
-- columns (attempts, lease_expires_at), the CHECKs, NOT NULLs, the cascade,
-- and the new indexes. Timestamps go back to TIMESTAMP holding UTC.

DROP INDEX IF EXISTS idx_jobs_client_completed;
DROP INDEX IF EXISTS idx_jobs_finished_created;
DROP INDEX IF EXISTS idx_jobs_lease_expiry;
DROP INDEX IF EXISTS idx_jobs_client_status_created;
DROP INDEX IF EXISTS idx_jobs_client_created;
DROP INDEX IF EXISTS idx_jobs_queue;

CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS idx_jobs_created_at ON jobs (created_at);
CREATE INDEX IF NOT EXISTS idx_jobs_client_id ON jobs (client_id);
CREATE INDEX IF NOT EXISTS idx_job_results_job_id ON job_results (job_id);

ALTER TABLE job_results
    DROP CONSTRAINT IF EXISTS job_results_job_id_fkey,
    ADD CONSTRAINT job_results_job_id_fkey FOREIGN KEY (job_id) REFERENCES jobs (id);

ALTER TABLE job_results
    DROP CONSTRAINT IF EXISTS job_results_confidence_range,
    DROP CONSTRAINT IF EXISTS job_results_tokens_non_negative;
ALTER TABLE jobs
    DROP CONSTRAINT IF EXISTS jobs_client_id_not_empty,
    DROP CONSTRAINT IF EXISTS jobs_pdf_url_not_empty,
    DROP CONSTRAINT IF EXISTS jobs_attempts_non_negative,
    DROP CONSTRAINT IF EXISTS jobs_lease_only_while_processing;

ALTER TABLE jobs
    DROP COLUMN IF EXISTS lease_expires_at,
    DROP COLUMN IF EXISTS attempts;

ALTER TABLE job_results
    ALTER COLUMN job_id DROP NOT NULL,
    ALTER COLUMN extracted_data DROP NOT NULL,
    ALTER COLUMN confidence_score DROP NOT NULL,
    ALTER COLUMN tokens_used DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE jobs
    ALTER COLUMN status DROP NOT NULL,
    ALTER COLUMN client_id DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL,
    ALTER COLUMN updated_at DROP NOT NULL;

ALTER TABLE jobs
    ALTER COLUMN created_at TYPE timestamp USING created_at AT TIME ZONE 'UTC',
    ALTER COLUMN updated_at TYPE timestamp USING updated_at AT TIME ZONE 'UTC',
    ALTER COLUMN completed_at TYPE timestamp USING completed_at AT TIME ZONE 'UTC';
ALTER TABLE job_results
    ALTER COLUMN created_at TYPE timestamp USING created_at AT TIME ZONE 'UTC';
