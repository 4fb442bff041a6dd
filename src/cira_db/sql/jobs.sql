-- Queries of cira_db.JobRepository (and of the development seeder).
--
-- Each statement is one round trip. Calls that must tell "missing" from
-- "not allowed in this state" read the row in a CTE (`target`) next to the
-- data-modifying CTE and report its status as `outcome`: no rows means not
-- found (or another client's), a status without a row means the move was
-- refused and nothing changed. Every value is a bound %(name)s parameter.
-- `client_id` is NULL in worker calls that serve every client. The worker
-- moves (extend_lease, complete_job, fail_job) also take `attempt`, the
-- `attempts` value of the claim the worker holds (NULL: any claim): a job
-- claimed again since then has a higher `attempts` and is left alone; they
-- report the row's `attempts` as `current_attempts` to tell that case apart.

-- name: insert_job
-- Create one job; with an id that exists already, report whether the stored
-- job has the same content ('existing') or not ('conflict', no columns).
WITH inserted AS (
    INSERT INTO jobs (id, client_id, pdf_url)
    VALUES (%(id)s, %(client_id)s, %(pdf_url)s)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT 'created' AS outcome, inserted.* FROM inserted
UNION ALL
SELECT CASE WHEN same.id IS NULL THEN 'conflict' ELSE 'existing' END,
       same.id, same.client_id, same.status, same.pdf_url, same.created_at, same.updated_at,
       same.completed_at, same.error_message, same.attempts, same.lease_expires_at,
       same.priority, same.run_after, same.progress, same.cancel_requested_at
FROM jobs AS stored
LEFT JOIN jobs AS same
    ON same.id = stored.id AND same.client_id = %(client_id)s AND same.pdf_url = %(pdf_url)s
WHERE stored.id = %(id)s AND NOT EXISTS (SELECT 1 FROM inserted)

-- name: insert_jobs
-- Create many jobs of one client in one statement (all or nothing), in the
-- order given; the ids come from the caller.
INSERT INTO jobs (id, client_id, pdf_url)
SELECT new.id, %(client_id)s, new.pdf_url
FROM unnest(%(ids)s::uuid[], %(pdf_urls)s::text[]) WITH ORDINALITY AS new (id, pdf_url, n)
ORDER BY new.n
RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
          error_message, attempts, lease_expires_at,
          priority, run_after, progress, cancel_requested_at

-- name: get_job
-- One job of one client (primary key lookup).
SELECT id, client_id, status, pdf_url, created_at, updated_at, completed_at,
       error_message, attempts, lease_expires_at,
       priority, run_after, progress, cancel_requested_at
FROM jobs
WHERE id = %(id)s AND client_id = %(client_id)s

-- name: list_jobs
-- A page of a client's jobs, newest first, after a keyset position (NULL for
-- the first page). Uses idx_jobs_client_created.
SELECT id, client_id, status, pdf_url, created_at, updated_at, completed_at,
       error_message, attempts, lease_expires_at,
       priority, run_after, progress, cancel_requested_at
FROM jobs
WHERE client_id = %(client_id)s
  AND (created_at, id) < (
      coalesce(%(after_created_at)s::timestamptz, 'infinity'::timestamptz),
      coalesce(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: list_jobs_by_status
-- As list_jobs, for one status. Uses idx_jobs_client_status_created.
SELECT id, client_id, status, pdf_url, created_at, updated_at, completed_at,
       error_message, attempts, lease_expires_at,
       priority, run_after, progress, cancel_requested_at
FROM jobs
WHERE client_id = %(client_id)s
  AND status = %(status)s::job_status
  AND (created_at, id) < (
      coalesce(%(after_created_at)s::timestamptz, 'infinity'::timestamptz),
      coalesce(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: claim_jobs
-- Claim up to %(limit)s of the oldest queued jobs of any client: queued ->
-- processing, attempts + 1, lease until now() + %(lease)s. Rows that another
-- worker holds locked are skipped. Uses the partial index idx_jobs_queue.
WITH picked AS MATERIALIZED (
    SELECT id
    FROM jobs
    WHERE status = 'queued'
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs
    SET status = 'processing',
        attempts = jobs.attempts + 1,
        lease_expires_at = now() + %(lease)s::interval
    FROM picked
    WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT * FROM claimed ORDER BY created_at, id

-- name: claim_jobs_for_client
-- As claim_jobs, for one client's queue. Uses idx_jobs_client_status_created.
WITH picked AS MATERIALIZED (
    SELECT id
    FROM jobs
    WHERE client_id = %(client_id)s AND status = 'queued'
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs
    SET status = 'processing',
        attempts = jobs.attempts + 1,
        lease_expires_at = now() + %(lease)s::interval
    FROM picked
    WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT * FROM claimed ORDER BY created_at, id

-- name: extend_lease
-- Move a processing job's lease to now() + %(lease)s (of the claim `attempt`, if given).
-- A job whose cancel was asked for ends cancelled instead (lease cleared): the
-- returned row says so and the caller raises JobCancelledError.
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), moved AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NULL
                      THEN 'processing' ELSE 'cancelled' END::job_status,
        lease_expires_at = CASE WHEN jobs.cancel_requested_at IS NULL
                                THEN now() + %(lease)s::interval END
    WHERE id = (SELECT id FROM target) AND status = 'processing'
      AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s::integer)
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT target.status::text AS outcome, target.attempts AS current_attempts, moved.*
FROM target LEFT JOIN moved ON true

-- name: complete_job
-- Finish a processing job: mark it completed and insert its result, both
-- stamped with the same now(), in one statement. A job that is not
-- processing, or was claimed again after the claim `attempt`, is left alone
-- (outcome = its status, no result columns).
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), done AS (
    UPDATE jobs
    SET status = 'completed', completed_at = now(), lease_expires_at = NULL
    WHERE id = (SELECT id FROM target) AND status = 'processing'
      AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s::integer)
    RETURNING id
), result AS (
    INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
    SELECT %(result_id)s, done.id, %(extracted_data)s::jsonb, %(confidence_score)s,
           %(tokens_used)s, now()
    FROM done
    RETURNING id, job_id, extracted_data, confidence_score, tokens_used, created_at
)
SELECT target.status::text AS outcome, target.attempts AS current_attempts, result.*
FROM target LEFT JOIN result ON true

-- name: fail_job
-- A processing job failed (on the claim `attempt`, if given): record why, drop its lease.
-- A job whose cancel was asked for ends cancelled (the error is kept), never failed.
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), failed AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NULL
                      THEN 'failed' ELSE 'cancelled' END::job_status,
        error_message = %(error_message)s, lease_expires_at = NULL
    WHERE id = (SELECT id FROM target) AND status = 'processing'
      AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s::integer)
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT target.status::text AS outcome, target.attempts AS current_attempts, failed.*
FROM target LEFT JOIN failed ON true

-- name: retry_job
-- Put a failed job back in the queue; its error is cleared, attempts kept.
-- Cancelled jobs are final: only a failed job moves.
WITH target AS (
    SELECT id, status
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), queued AS (
    UPDATE jobs
    SET status = 'queued', error_message = NULL, lease_expires_at = NULL,
        cancel_requested_at = NULL
    WHERE id = (SELECT id FROM target) AND status = 'failed'
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT target.status::text AS outcome, queued.*
FROM target LEFT JOIN queued ON true

-- name: release_expired_jobs
-- Processing jobs whose lease ran out go back to the queue, or fail once
-- they have been claimed %(max_attempts)s times. At most %(limit)s per call,
-- oldest lease first; rows another session holds are skipped. Uses
-- idx_jobs_lease_expiry.
WITH expired AS MATERIALIZED (
    SELECT id
    FROM jobs
    WHERE status = 'processing' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), released AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.attempts >= %(max_attempts)s
                      THEN 'failed' ELSE 'queued' END::job_status,
        error_message = CASE WHEN jobs.attempts >= %(max_attempts)s
                             THEN format('lease expired on attempt %%s of %%s; gave up',
                                         jobs.attempts, %(max_attempts)s)
                             ELSE jobs.error_message END,
        lease_expires_at = NULL
    FROM expired
    WHERE jobs.id = expired.id
    RETURNING jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT * FROM released ORDER BY created_at, id

-- name: count_jobs_by_status
-- How many jobs a client has in each status (statuses with none are absent).
-- Index-only on idx_jobs_client_status_created.
SELECT status::text AS status, count(*) AS jobs
FROM jobs
WHERE client_id = %(client_id)s
GROUP BY status

-- name: delete_finished_jobs
-- Retention: delete one batch of completed, failed or cancelled jobs created
-- before %(cutoff)s (their results go with them: ON DELETE CASCADE). Uses
-- idx_jobs_ended_created; rows another session holds are skipped.
WITH doomed AS MATERIALIZED (
    SELECT id
    FROM jobs
    WHERE status IN ('completed', 'failed', 'cancelled') AND created_at < %(cutoff)s
    ORDER BY created_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs
USING doomed
WHERE jobs.id = doomed.id

-- name: copy_jobs
-- Bulk load of complete job rows (development seeding), in COPY text format.
COPY jobs (id, client_id, status, pdf_url, created_at, updated_at, completed_at,
           error_message, attempts, lease_expires_at)
FROM STDIN

-- == cancel ==

-- name: cancel_job
-- Cancel one job of one client: queued -> cancelled at once (lease cleared,
-- completed_at stays NULL); processing -> stays processing with
-- cancel_requested_at = now() (its worker learns it on its next heartbeat or
-- progress report). A job already cancelled, or whose cancel was already
-- asked for, comes back as it is (nothing written). Completed and failed jobs
-- are refused (outcome = their status, no columns).
WITH target AS (
    SELECT id, client_id, status, pdf_url, created_at, updated_at, completed_at,
           error_message, attempts, lease_expires_at,
           priority, run_after, progress, cancel_requested_at
    FROM jobs
    WHERE jobs.id = %(id)s AND jobs.client_id = %(client_id)s
), cancelled AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.status = 'queued'
                      THEN 'cancelled' ELSE jobs.status END::job_status,
        lease_expires_at = CASE WHEN jobs.status = 'queued'
                                THEN NULL ELSE jobs.lease_expires_at END,
        cancel_requested_at = CASE WHEN jobs.status = 'processing'
                                   THEN now() ELSE NULL END
    WHERE id = (SELECT id FROM target)
      AND (jobs.status = 'queued'
           OR (jobs.status = 'processing' AND jobs.cancel_requested_at IS NULL))
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
), settled AS (
    SELECT * FROM cancelled
    UNION ALL
    SELECT * FROM target
    WHERE (target.status = 'cancelled' OR target.cancel_requested_at IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM cancelled)
)
SELECT target.status::text AS outcome, settled.*
FROM target LEFT JOIN settled ON true

-- name: report_progress
-- Store a processing job's progress document (of the claim `attempt`). A job
-- whose cancel was asked for ends cancelled instead (lease cleared, progress
-- left as it was): the returned row says so and the caller raises JobCancelledError.
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), reported AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NULL
                      THEN 'processing' ELSE 'cancelled' END::job_status,
        progress = CASE WHEN jobs.cancel_requested_at IS NULL
                        THEN %(progress)s::jsonb ELSE jobs.progress END,
        lease_expires_at = CASE WHEN jobs.cancel_requested_at IS NULL
                                THEN jobs.lease_expires_at END
    WHERE id = (SELECT id FROM target) AND status = 'processing'
      AND attempts = %(attempt)s::integer
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT target.status::text AS outcome, target.attempts AS current_attempts, reported.*
FROM target LEFT JOIN reported ON true

-- name: queue_stats
-- Queue health of every client, one row. Counts by status read all of jobs
-- (an index-only scan of idx_jobs_client_status_created, or a sequential
-- scan); the queued figures read only the queued rows (idx_jobs_queue), the
-- expired leases only the processing rows (idx_jobs_lease_expiry).
SELECT now() AS measured_at,
       (SELECT coalesce(json_object_agg(status, jobs), '{}')
        FROM (SELECT status::text AS status, count(*) AS jobs
              FROM jobs GROUP BY status) AS counted) AS by_status,
       now() - min(coalesce(queued.run_after, queued.created_at))
           FILTER (WHERE coalesce(queued.run_after, queued.created_at) <= now())
           AS oldest_due_age,
       now() - min(queued.created_at) AS oldest_queued_age,
       count(*) FILTER (WHERE queued.run_after > now()) AS scheduled,
       (SELECT count(*) FROM jobs AS held
        WHERE held.status = 'processing' AND held.lease_expires_at < now()) AS expired_leases
FROM jobs AS queued
WHERE queued.status = 'queued'

-- name: queue_stats_for_client
-- As queue_stats, for one client: index scans of idx_jobs_client_status_created
-- (counts, index-only), idx_jobs_claim_client (queued) and again
-- idx_jobs_client_status_created (processing).
SELECT now() AS measured_at,
       (SELECT coalesce(json_object_agg(status, jobs), '{}')
        FROM (SELECT status::text AS status, count(*) AS jobs
              FROM jobs WHERE client_id = %(client_id)s GROUP BY status) AS counted)
           AS by_status,
       now() - min(coalesce(queued.run_after, queued.created_at))
           FILTER (WHERE coalesce(queued.run_after, queued.created_at) <= now())
           AS oldest_due_age,
       now() - min(queued.created_at) AS oldest_queued_age,
       count(*) FILTER (WHERE queued.run_after > now()) AS scheduled,
       (SELECT count(*) FROM jobs AS held
        WHERE held.client_id = %(client_id)s
          AND held.status = 'processing' AND held.lease_expires_at < now()) AS expired_leases
FROM jobs AS queued
WHERE queued.client_id = %(client_id)s AND queued.status = 'queued'
