-- Queries of cira_db.JobResultRepository (and of the development seeder).
-- Results are written by JobRepository.complete (jobs.sql, complete_job), in
-- the same statement that marks the job completed. Every value is a bound
-- %(name)s parameter.

-- name: get_result_for_job
-- The result of one job, only if the job belongs to the client.
SELECT r.id, r.job_id, r.extracted_data, r.confidence_score, r.tokens_used, r.created_at
FROM job_results AS r
JOIN jobs AS j ON j.id = r.job_id
WHERE r.job_id = %(job_id)s AND j.client_id = %(client_id)s

-- name: usage_by_client
-- Cost tracking: a client's completed jobs with completed_at in
-- [since, until) (NULL leaves that side open), their tokens and mean
-- confidence (rounded to 4 places; NULL when there are none). Uses the
-- partial index idx_jobs_client_completed.
SELECT count(*) AS jobs,
       coalesce(sum(r.tokens_used), 0)::bigint AS tokens_used,
       round(avg(r.confidence_score), 4) AS mean_confidence
FROM jobs AS j
JOIN job_results AS r ON r.job_id = j.id
WHERE j.client_id = %(client_id)s
  AND j.status = 'completed'
  AND j.completed_at >= coalesce(%(since)s::timestamptz, '-infinity'::timestamptz)
  AND j.completed_at < coalesce(%(until)s::timestamptz, 'infinity'::timestamptz)

-- name: copy_job_results
-- Bulk load of result rows (development seeding), in COPY text format.
COPY job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
FROM STDIN
