-- squawk-ignore-file prefer-text-field, prefer-timestamp-tz, prefer-bigint-over-int, require-concurrent-index-creation
-- squawk: the story's column types are kept on purpose so that databases made
-- by its schema.sql and by this file are the same (0002 fixes the timestamps);
-- the indexes are built on tables created empty in the same transaction.
-- 0001 initial schema: the origin story's schema (story 1.3), made re-runnable.
--
-- It matches the tables, columns, enum, indexes and trigger of the story's
-- schema.sql, so a database created by that file can be adopted with
-- `cira-db baseline` and then brought forward by 0002 exactly like a fresh
-- one. Differences from the story's file, both harmless to adopted databases:
--   * gen_random_uuid() (built in since PostgreSQL 13) replaces
--     uuid_generate_v4(), so no uuid-ossp extension is needed;
--   * every statement is guarded (IF NOT EXISTS, DO blocks), so a re-run
--     over a half-created schema completes instead of failing.
-- Hardening (timestamptz, NOT NULL, CHECKs, lease columns, indexes) is 0002.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'job_status') THEN
        CREATE TYPE job_status AS ENUM ('queued', 'processing', 'completed', 'failed');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS jobs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id VARCHAR(50),
    status job_status DEFAULT 'queued',
    pdf_url VARCHAR(2048) NOT NULL,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    completed_at TIMESTAMP,
    error_message TEXT
);

CREATE TABLE IF NOT EXISTS job_results (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id UUID UNIQUE REFERENCES jobs (id),
    extracted_data JSONB,
    confidence_score DECIMAL(3, 2),
    tokens_used INTEGER,
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS idx_jobs_created_at ON jobs (created_at);
CREATE INDEX IF NOT EXISTS idx_jobs_client_id ON jobs (client_id);
CREATE INDEX IF NOT EXISTS idx_job_results_job_id ON job_results (job_id);

CREATE OR REPLACE FUNCTION update_updated_at()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS trigger_jobs_updated_at ON jobs;
CREATE TRIGGER trigger_jobs_updated_at
    BEFORE UPDATE ON jobs
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at();
