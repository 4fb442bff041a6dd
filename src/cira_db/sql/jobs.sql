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
-- job has the same content ('existing') or not ('conflict', no columns). The
-- content is the client and the URL: a schedule or priority is not compared
-- (a retried request gets the job stored the first time). The schedule is
-- %(run_at)s, or now() + %(run_in)s on the server's clock, or NULL (at once).
WITH inserted AS (
    INSERT INTO jobs (id, client_id, pdf_url, priority, run_after)
    VALUES (%(id)s, %(client_id)s, %(pdf_url)s, %(priority)s,
            coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval))
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

-- name: insert_jobs_stamp
-- Create many jobs of one client in one statement (all or nothing), in the
-- order given; the ids come from the caller. run_after (a time, or now() +
-- an interval; NULL for both: at once) and priority apply to every job.
-- No row per job comes back: every column the insert does not set is a
-- constant default or now() (this transaction's time, the same for every
-- row), so the caller builds the jobs from what it sent and this one row:
-- the created_at / updated_at and the run_after the rows were stored with.
WITH inserted AS (
    INSERT INTO jobs (id, client_id, pdf_url, run_after, priority)
    SELECT new.id, %(client_id)s, new.pdf_url,
           coalesce(%(run_after_at)s::timestamptz, now() + %(run_after_in)s::interval),
           coalesce(%(priority)s::smallint, 0)
    FROM unnest(%(ids)b::uuid[], %(pdf_urls)b::text[]) WITH ORDINALITY AS new (id, pdf_url, n)
    ORDER BY new.n
)
SELECT now() AS created_at,
       coalesce(%(run_after_at)s::timestamptz, now() + %(run_after_in)s::interval) AS run_after

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
-- Claim up to %(limit)s queued jobs of any client whose time has come
-- (run_after, or created_at when it has none, not in the future): queued ->
-- processing, attempts + 1, lease until now() + %(lease)s. Higher priority
-- first, then the job that has waited longest, then the id. Rows that
-- another worker holds locked are skipped. The sub-select reads the partial
-- index idx_jobs_claim in its order and locks what it takes (an InitPlan, run
-- once); the UPDATE then finds those ids by the primary key, so a job
-- changed since the statement's snapshot is re-read (EvalPlanQual) before it
-- is updated, as with a join. The rows come back in no particular order: the
-- caller sorts them in claim order (priority DESC, coalesce(run_after,
-- created_at), id). One UPDATE without a CTE or an outer sort costs about a
-- fifth less to plan and run than the CTE form it replaced (docs/jobs.md,
-- "The claim's plan"). claim_next runs claim_job instead (LIMIT 1 in the
-- text, so a prepared claim keeps a generic plan; see there). The limit is
-- a sub-select for the same reason: with a bare bound LIMIT the generic plan
-- is costed for a tenth of the table, so PostgreSQL re-planned every batch
-- claim (0 generic plans in 400); with the sub-select it keeps the generic
-- plan, the same index scan in claim order (tests/test_jobs_repository.py).
UPDATE jobs
SET status = 'processing',
    attempts = jobs.attempts + 1,
    lease_expires_at = now() + %(lease)s::interval,
    updated_at = now()
WHERE jobs.id = ANY (ARRAY(
    SELECT id
    FROM jobs
    WHERE status = 'queued'
      AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT (SELECT %(limit)s::integer)
    FOR UPDATE SKIP LOCKED))
RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
          error_message, attempts, lease_expires_at,
          priority, run_after, progress, cancel_requested_at

-- name: claim_jobs_for_client
-- As claim_jobs, for one client's queue. Reads idx_jobs_claim_client. The
-- rows come back in no particular order (the caller sorts them).
UPDATE jobs
SET status = 'processing',
    attempts = jobs.attempts + 1,
    lease_expires_at = now() + %(lease)s::interval,
    updated_at = now()
WHERE jobs.id = ANY (ARRAY(
    SELECT id
    FROM jobs
    WHERE client_id = %(client_id)s AND status = 'queued'
      AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT (SELECT %(limit)s::integer)
    FOR UPDATE SKIP LOCKED))
RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
          error_message, attempts, lease_expires_at,
          priority, run_after, progress, cancel_requested_at

-- name: claim_job
-- claim_next's statement: claim_jobs with LIMIT 1 written in, the one id
-- compared with `=`. With a bound LIMIT the planner can only guess the
-- row count for a generic plan (a tenth of the table), so claim_jobs is
-- planned afresh on every execution (pg_prepared_statements: custom_plans
-- only); with LIMIT 1 in the text, a prepared claim_job runs the cached
-- generic plan like any other statement (docs/jobs.md, "The claim's plan").
UPDATE jobs
SET status = 'processing',
    attempts = jobs.attempts + 1,
    lease_expires_at = now() + %(lease)s::interval,
    updated_at = now()
WHERE jobs.id = (
    SELECT id
    FROM jobs
    WHERE status = 'queued'
      AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
          error_message, attempts, lease_expires_at,
          priority, run_after, progress, cancel_requested_at

-- name: claim_job_for_client
-- As claim_job, for one client's queue (idx_jobs_claim_client).
UPDATE jobs
SET status = 'processing',
    attempts = jobs.attempts + 1,
    lease_expires_at = now() + %(lease)s::interval,
    updated_at = now()
WHERE jobs.id = (
    SELECT id
    FROM jobs
    WHERE client_id = %(client_id)s AND status = 'queued'
      AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
          error_message, attempts, lease_expires_at,
          priority, run_after, progress, cancel_requested_at

-- name: extend_lease
-- Move a processing job's lease to now() + %(lease)s (of the claim `attempt`, if given).
-- A job whose cancel was asked for ends cancelled instead (lease cleared): the
-- returned row says so and the caller raises JobCancelledError.
-- `IS TRUE`: one jobs_pkey probe, never a walk of idx_jobs_lease_expiry (see complete_job).
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), moved AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NULL
                      THEN 'processing' ELSE 'cancelled' END::job_status,
        lease_expires_at = CASE WHEN jobs.cancel_requested_at IS NULL
                                THEN now() + %(lease)s::interval END,
        updated_at = now()
    WHERE id = (SELECT id FROM target) AND (status = 'processing') IS TRUE
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
-- (outcome = its status, created_at NULL). Only what the server made comes
-- back (the result's created_at): the caller sent every other field (the
-- result id too) and builds the result from them, so the extracted data is
-- not sent back and parsed a second time.
-- `(status = 'processing') IS TRUE` is `status = 'processing'` (status is
-- never NULL) in a form the planner cannot match to the partial index
-- idx_jobs_lease_expiry (WHERE status = 'processing'): with statistics from
-- a moment when few jobs were processing (a freshly filled, analyzed queue)
-- the generic plan otherwise walked that whole index, every processing job
-- and its dead entries, filtering on the id, instead of one jobs_pkey probe.
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), done AS (
    UPDATE jobs
    SET status = 'completed', completed_at = now(), lease_expires_at = NULL,
        updated_at = now()
    WHERE id = (SELECT id FROM target) AND (status = 'processing') IS TRUE
      AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s::integer)
    RETURNING id
), result AS (
    INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
    SELECT %(result_id)s, done.id, %(extracted_data)s::jsonb, %(confidence_score)s,
           %(tokens_used)s, now()
    FROM done
    RETURNING created_at
)
SELECT target.status::text AS outcome, target.attempts AS current_attempts, result.created_at
FROM target LEFT JOIN result ON true

-- name: fail_job
-- A processing job failed (on the claim `attempt`, if given): record why, drop its lease.
-- A job whose cancel was asked for ends cancelled (the error is kept), never failed.
-- `IS TRUE`: one jobs_pkey probe, never a walk of idx_jobs_lease_expiry (see complete_job).
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), failed AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NULL
                      THEN 'failed' ELSE 'cancelled' END::job_status,
        error_message = %(error_message)s, lease_expires_at = NULL,
        updated_at = now()
    WHERE id = (SELECT id FROM target) AND (status = 'processing') IS TRUE
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
        cancel_requested_at = NULL,
        updated_at = now()
    WHERE id = (SELECT id FROM target) AND status = 'failed'
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT target.status::text AS outcome, queued.*
FROM target LEFT JOIN queued ON true

-- name: release_expired_jobs
-- Processing jobs whose lease ran out: a job with a pending cancel request
-- ends cancelled; one claimed %(max_attempts)s times or more fails for good
-- (error_message says so and keeps the last error reported, if any); any
-- other goes back to the queue, at once in its old place when %(backoff)s is
-- NULL, else not before now() + least(%(backoff_max)s, %(backoff)s *
-- 2^(attempts - 1)) (the exponent capped at 20). At most %(limit)s per call,
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
    SET status = CASE WHEN jobs.cancel_requested_at IS NOT NULL THEN 'cancelled'
                      WHEN jobs.attempts >= %(max_attempts)s THEN 'failed'
                      ELSE 'queued' END::job_status,
        error_message = CASE WHEN jobs.cancel_requested_at IS NULL
                              AND jobs.attempts >= %(max_attempts)s
                             THEN format('lease expired on attempt %%s of %%s; gave up',
                                         jobs.attempts, %(max_attempts)s)
                                  || coalesce(' (last error: ' || jobs.error_message || ')', '')
                             ELSE jobs.error_message END,
        run_after = CASE WHEN jobs.cancel_requested_at IS NULL
                          AND jobs.attempts < %(max_attempts)s
                          AND %(backoff)s::interval IS NOT NULL
                         THEN now() + least(%(backoff_max)s::interval,
                                            %(backoff)s::interval
                                            * power(2, least(greatest(jobs.attempts - 1, 0), 20)))
                         ELSE jobs.run_after END,
        lease_expires_at = NULL,
        updated_at = now()
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
                                   THEN now() ELSE NULL END,
        updated_at = now()
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
-- `IS TRUE`: one jobs_pkey probe, never a walk of idx_jobs_lease_expiry (see complete_job).
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
                                THEN jobs.lease_expires_at END,
        updated_at = now()
    WHERE id = (SELECT id FROM target) AND (status = 'processing') IS TRUE
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
-- scan); the queued figures read only the queued rows (idx_jobs_claim), the
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

-- == sched ==

-- name: claim_jobs_fair
-- As claim_jobs, taking turns between clients: every client with queued jobs
-- whose time has come gets its best job (by claim order) before any gets a
-- second, and so on, up to %(limit)s. Within a turn, clients with fewer jobs
-- in progress go first (counted up to 100), so a batch smaller than the number
-- of waiting clients serves next time those it left out. One statement:
--   clients:    the clients that have queued jobs, by a skip scan of
--               idx_jobs_claim_client (one index probe per client);
--   candidates: each client's jobs in progress (idx_jobs_client_status_created)
--               and its next ceil(limit / clients) due jobs in claim order
--               (idx_jobs_claim_client), read without locking;
--   fair:       the candidates ranked by turn (the client's 1st, 2nd, ... job),
--               jobs in progress, then claim order, locked one by one in that
--               order FOR UPDATE SKIP LOCKED (status checked again on the
--               locked row) until %(limit)s are held: only those are locked;
--   rest:       a batch the turns did not fill is filled in plain claim order
--               (idx_jobs_claim), locked the same way.
-- Returned in that order (turns first).
WITH RECURSIVE clients AS (
    (SELECT client_id FROM jobs WHERE status = 'queued' ORDER BY client_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.client_id FROM jobs AS j
            WHERE j.status = 'queued' AND j.client_id > clients.client_id
            ORDER BY j.client_id LIMIT 1)
    FROM clients
    WHERE clients.client_id IS NOT NULL
), candidates AS MATERIALIZED (
    SELECT head.id, head.priority, head.due, busy.in_flight,
           row_number() OVER (PARTITION BY clients.client_id
                              ORDER BY head.priority DESC, head.due, head.id) AS turn
    FROM clients
    CROSS JOIN LATERAL (
        SELECT count(*) AS in_flight
        FROM (SELECT 1 FROM jobs AS p
              WHERE p.client_id = clients.client_id AND p.status = 'processing'
              LIMIT 100) AS capped
    ) AS busy
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, coalesce(j.run_after, j.created_at) AS due
        FROM jobs AS j
        WHERE j.client_id = clients.client_id AND j.status = 'queued'
          AND coalesce(j.run_after, j.created_at) <= now()
        ORDER BY j.priority DESC, coalesce(j.run_after, j.created_at), j.id
        LIMIT (SELECT ceil(%(limit)s::numeric / count(*))::integer
               FROM clients AS c WHERE c.client_id IS NOT NULL)
    ) AS head
    WHERE clients.client_id IS NOT NULL
), fair AS MATERIALIZED (
    SELECT locked.id, ranked.turn, ranked.in_flight, ranked.priority, ranked.due
    FROM (SELECT * FROM candidates
          ORDER BY turn, in_flight, priority DESC, due, id) AS ranked
    CROSS JOIN LATERAL (
        SELECT j.id
        FROM jobs AS j
        WHERE j.id = ranked.id AND j.status = 'queued'
        FOR UPDATE SKIP LOCKED
    ) AS locked
    ORDER BY ranked.turn, ranked.in_flight, ranked.priority DESC, ranked.due, ranked.id
    LIMIT %(limit)s
), rest AS MATERIALIZED (
    SELECT id, priority, coalesce(run_after, created_at) AS due
    FROM jobs
    WHERE status = 'queued'
      AND coalesce(run_after, created_at) <= now()
      AND id NOT IN (SELECT id FROM fair)
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT greatest(%(limit)s - (SELECT count(*) FROM fair), 0)
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id, 0 AS part, turn, in_flight, priority, due FROM fair
    UNION ALL
    SELECT id, 1, 0, 0, priority, due FROM rest
), claimed AS (
    UPDATE jobs
    SET status = 'processing',
        attempts = jobs.attempts + 1,
        lease_expires_at = now() + %(lease)s::interval,
        updated_at = now()
    FROM picked
    WHERE jobs.id = picked.id
    RETURNING picked.part, picked.turn, picked.in_flight, picked.due,
              jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT id, client_id, status, pdf_url, created_at, updated_at, completed_at,
       error_message, attempts, lease_expires_at,
       priority, run_after, progress, cancel_requested_at
FROM claimed ORDER BY part, turn, in_flight, priority DESC, due, id

-- name: fail_job_retry
-- A processing job failed (on the claim `attempt`, if given) and is to be
-- tried again later: back to the queue, not claimed before now() +
-- %(retry_in)s, the error kept, the lease dropped, attempts kept. A job whose
-- cancel was requested ends cancelled instead (never re-queued), error kept.
-- `IS TRUE`: one jobs_pkey probe, never a walk of idx_jobs_lease_expiry (see complete_job).
WITH target AS (
    SELECT id, status, attempts
    FROM jobs
    WHERE id = %(id)s AND (%(client_id)s::text IS NULL OR client_id = %(client_id)s)
), requeued AS (
    UPDATE jobs
    SET status = CASE WHEN cancel_requested_at IS NULL THEN 'queued'
                      ELSE 'cancelled' END::job_status,
        run_after = CASE WHEN cancel_requested_at IS NULL
                         THEN now() + %(retry_in)s::interval ELSE run_after END,
        error_message = %(error_message)s,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE id = (SELECT id FROM target) AND (status = 'processing') IS TRUE
      AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s::integer)
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT target.status::text AS outcome, target.attempts AS current_attempts, requeued.*
FROM target LEFT JOIN requeued ON true

-- == batches ==
-- The batch calls of a worker (complete_many, fail_many, extend_leases) take
-- one array per field, element i being item i. `to_<move>` reads and LOCKS
-- the batch's rows in id order (FOR UPDATE: the current version of each row,
-- and no deadlock between two batches that overlap), `<move>able` keeps the
-- items whose job is processing on the item's claim, and only those change.
-- Every input item comes back as one row, in input order (`n`), with the
-- job's status before the statement as `outcome` (NULL: not found, or
-- another client's) and its `attempts` as `current_attempts`. With
-- `atomic` true, nothing changes unless every item is `<move>able`.

-- name: complete_jobs
-- Complete a batch of processing jobs and insert their results, one
-- statement. An item whose result row (id result_ids[i]) exists already
-- for its job is reported again as done ('repeated'): a repeat after a lost
-- reply finds its own results (looked up only for items whose job is
-- completed already, so a first try reads no job_results index). Only what
-- the server made comes back (each result's created_at): the caller has the
-- rest of every result row, it sent it, so no jsonb is read back.
WITH input AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(attempts)s::integer[], %(result_ids)b::uuid[],
                %(extracted_data)b::text[], %(confidence_scores)s::numeric[],
                %(tokens_used)s::integer[])
         WITH ORDINALITY AS i (id, attempt, result_id, extracted_data, confidence_score,
                               tokens_used, n)
), to_complete AS MATERIALIZED (
    SELECT jobs.id, jobs.status, jobs.attempts
    FROM jobs
    WHERE jobs.id = ANY (%(ids)b::uuid[])
      AND (%(client_id)s::text IS NULL OR jobs.client_id = %(client_id)s)
    ORDER BY jobs.id
    FOR UPDATE
), completable AS MATERIALIZED (
    SELECT input.*
    FROM input JOIN to_complete ON to_complete.id = input.id
    WHERE to_complete.status = 'processing'
      AND (input.attempt IS NULL OR to_complete.attempts = input.attempt)
), go AS (
    SELECT completable.* FROM completable
    WHERE NOT %(atomic)s::boolean OR (SELECT count(*) FROM completable) = cardinality(%(ids)b::uuid[])
), done AS (
    UPDATE jobs
    SET status = 'completed', completed_at = now(), lease_expires_at = NULL,
        updated_at = now()
    FROM go
    WHERE jobs.id = go.id
    RETURNING jobs.id
), result AS (
    INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
    SELECT go.result_id, go.id, go.extracted_data::jsonb, go.confidence_score, go.tokens_used,
           now()
    FROM go JOIN done ON done.id = go.id
    RETURNING job_id, created_at
), earlier AS (
    SELECT job_results.job_id, job_results.created_at
    FROM input
    JOIN to_complete ON to_complete.id = input.id AND to_complete.status = 'completed'
    JOIN job_results ON job_results.id = input.result_id AND job_results.job_id = input.id
)
SELECT input.n,
       CASE WHEN earlier.job_id IS NOT NULL THEN 'repeated' ELSE to_complete.status::text END AS outcome,
       to_complete.attempts AS current_attempts,
       coalesce(result.created_at, earlier.created_at) AS created_at
FROM input
LEFT JOIN to_complete ON to_complete.id = input.id
LEFT JOIN result ON result.job_id = input.id
LEFT JOIN earlier ON earlier.job_id = input.id
ORDER BY input.n

-- name: complete_jobs_and_claim
-- complete_and_claim's statement: complete_jobs (without `atomic`: each item
-- on its own) and claim_jobs in ONE statement, so a worker's batch costs one
-- commit (one WAL flush the worker waits for) and one round trip instead of
-- two of each. The two moves touch disjoint rows: the completed jobs are
-- processing, the claimed ones queued, and the claim locks with SKIP LOCKED
-- only, so it never waits on a lock. The reply is one result: the items'
-- rows first (n = 1..; outcome, current_attempts, result_created_at), then
-- the claimed jobs (n NULL; the job's columns), which the caller sorts in
-- claim order. Never repeated (the claim may have happened), so it has no
-- 'repeated' check: after a failure the caller runs complete_jobs alone,
-- which has one, with the same result ids.
WITH input AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(attempts)s::integer[], %(result_ids)b::uuid[],
                %(extracted_data)b::text[], %(confidence_scores)s::numeric[],
                %(tokens_used)s::integer[])
         WITH ORDINALITY AS i (id, attempt, result_id, extracted_data, confidence_score,
                               tokens_used, n)
), held AS MATERIALIZED (
    SELECT jobs.id, jobs.status, jobs.attempts
    FROM jobs
    WHERE jobs.id = ANY (%(ids)b::uuid[])
    ORDER BY jobs.id
    FOR UPDATE
), go AS MATERIALIZED (
    SELECT input.*
    FROM input JOIN held ON held.id = input.id
    WHERE held.status = 'processing'
      AND (input.attempt IS NULL OR held.attempts = input.attempt)
), done AS (
    UPDATE jobs
    SET status = 'completed', completed_at = now(), lease_expires_at = NULL,
        updated_at = now()
    FROM go
    WHERE jobs.id = go.id
    RETURNING jobs.id
), result AS (
    INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
    SELECT go.result_id, go.id, go.extracted_data::jsonb, go.confidence_score, go.tokens_used,
           now()
    FROM go JOIN done ON done.id = go.id
    RETURNING job_id, created_at
), claimed AS (
    UPDATE jobs
    SET status = 'processing',
        attempts = jobs.attempts + 1,
        lease_expires_at = now() + %(lease)s::interval,
        updated_at = now()
    WHERE jobs.id = ANY (ARRAY(
        SELECT id
        FROM jobs
        WHERE status = 'queued'
          AND coalesce(run_after, created_at) <= now()
        ORDER BY priority DESC, coalesce(run_after, created_at), id
        LIMIT (SELECT %(limit)s::integer)
        FOR UPDATE SKIP LOCKED))
    RETURNING jobs.*
)
SELECT input.n,
       held.status::text AS outcome,
       held.attempts AS current_attempts,
       result.created_at AS result_created_at,
       NULL::uuid AS id, NULL::text AS client_id, NULL::text AS status, NULL::text AS pdf_url,
       NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
       NULL::timestamptz AS completed_at, NULL::text AS error_message, NULL::integer AS attempts,
       NULL::timestamptz AS lease_expires_at, NULL::smallint AS priority,
       NULL::timestamptz AS run_after, NULL::jsonb AS progress,
       NULL::timestamptz AS cancel_requested_at
FROM input
LEFT JOIN held ON held.id = input.id
LEFT JOIN result ON result.job_id = input.id
UNION ALL
SELECT NULL, NULL, NULL, NULL,
       id, client_id, status::text, pdf_url, created_at, updated_at, completed_at,
       error_message, attempts, lease_expires_at,
       priority, run_after, progress, cancel_requested_at
FROM claimed
ORDER BY n

-- name: complete_jobs_and_claim_for_client
-- As complete_jobs_and_claim, for one client: items of other clients'
-- jobs are not found, and the claim reads that client's queue only
-- (idx_jobs_claim_client).
WITH input AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(attempts)s::integer[], %(result_ids)b::uuid[],
                %(extracted_data)b::text[], %(confidence_scores)s::numeric[],
                %(tokens_used)s::integer[])
         WITH ORDINALITY AS i (id, attempt, result_id, extracted_data, confidence_score,
                               tokens_used, n)
), held AS MATERIALIZED (
    SELECT jobs.id, jobs.status, jobs.attempts
    FROM jobs
    WHERE jobs.id = ANY (%(ids)b::uuid[]) AND jobs.client_id = %(client_id)s
    ORDER BY jobs.id
    FOR UPDATE
), go AS MATERIALIZED (
    SELECT input.*
    FROM input JOIN held ON held.id = input.id
    WHERE held.status = 'processing'
      AND (input.attempt IS NULL OR held.attempts = input.attempt)
), done AS (
    UPDATE jobs
    SET status = 'completed', completed_at = now(), lease_expires_at = NULL,
        updated_at = now()
    FROM go
    WHERE jobs.id = go.id
    RETURNING jobs.id
), result AS (
    INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
    SELECT go.result_id, go.id, go.extracted_data::jsonb, go.confidence_score, go.tokens_used,
           now()
    FROM go JOIN done ON done.id = go.id
    RETURNING job_id, created_at
), claimed AS (
    UPDATE jobs
    SET status = 'processing',
        attempts = jobs.attempts + 1,
        lease_expires_at = now() + %(lease)s::interval,
        updated_at = now()
    WHERE jobs.id = ANY (ARRAY(
        SELECT id
        FROM jobs
        WHERE client_id = %(client_id)s AND status = 'queued'
          AND coalesce(run_after, created_at) <= now()
        ORDER BY priority DESC, coalesce(run_after, created_at), id
        LIMIT (SELECT %(limit)s::integer)
        FOR UPDATE SKIP LOCKED))
    RETURNING jobs.*
)
SELECT input.n,
       held.status::text AS outcome,
       held.attempts AS current_attempts,
       result.created_at AS result_created_at,
       NULL::uuid AS id, NULL::text AS client_id, NULL::text AS status, NULL::text AS pdf_url,
       NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
       NULL::timestamptz AS completed_at, NULL::text AS error_message, NULL::integer AS attempts,
       NULL::timestamptz AS lease_expires_at, NULL::smallint AS priority,
       NULL::timestamptz AS run_after, NULL::jsonb AS progress,
       NULL::timestamptz AS cancel_requested_at
FROM input
LEFT JOIN held ON held.id = input.id
LEFT JOIN result ON result.job_id = input.id
UNION ALL
SELECT NULL, NULL, NULL, NULL,
       id, client_id, status::text, pdf_url, created_at, updated_at, completed_at,
       error_message, attempts, lease_expires_at,
       priority, run_after, progress, cancel_requested_at
FROM claimed
ORDER BY n

-- name: fail_jobs
-- Fail a batch of processing jobs, one statement: each keeps its
-- error_message and loses its lease; with a retry_in it goes back to the
-- queue, claimable from now() + retry_in (attempts kept); a job whose
-- cancel was requested ends cancelled instead, never re-queued.
WITH input AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(attempts)s::integer[], %(error_messages)b::text[],
                %(retry_ins)s::interval[])
         WITH ORDINALITY AS i (id, attempt, error_message, retry_in, n)
), to_fail AS MATERIALIZED (
    SELECT jobs.id, jobs.status, jobs.attempts
    FROM jobs
    WHERE jobs.id = ANY (%(ids)b::uuid[])
      AND (%(client_id)s::text IS NULL OR jobs.client_id = %(client_id)s)
    ORDER BY jobs.id
    FOR UPDATE
), failable AS MATERIALIZED (
    SELECT input.*
    FROM input JOIN to_fail ON to_fail.id = input.id
    WHERE to_fail.status = 'processing'
      AND (input.attempt IS NULL OR to_fail.attempts = input.attempt)
), go AS (
    SELECT failable.* FROM failable
    WHERE NOT %(atomic)s::boolean OR (SELECT count(*) FROM failable) = cardinality(%(ids)b::uuid[])
), failed AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NOT NULL THEN 'cancelled'
                      WHEN go.retry_in IS NULL THEN 'failed'
                      ELSE 'queued' END::job_status,
        run_after = CASE WHEN jobs.cancel_requested_at IS NULL AND go.retry_in IS NOT NULL
                         THEN now() + go.retry_in ELSE jobs.run_after END,
        error_message = go.error_message,
        lease_expires_at = NULL,
        updated_at = now()
    FROM go
    WHERE jobs.id = go.id
    RETURNING jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT input.n, to_fail.status::text AS outcome, to_fail.attempts AS current_attempts, failed.*
FROM input
LEFT JOIN to_fail ON to_fail.id = input.id
LEFT JOIN failed ON failed.id = input.id
ORDER BY input.n

-- name: extend_leases
-- One heartbeat for a batch: each processing job (on the item's claim) gets
-- a lease until now() + %(lease)s, except a job whose cancel was requested,
-- which ends cancelled (lease cleared). Safe to repeat.
WITH input AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(attempts)s::integer[]) WITH ORDINALITY AS i (id, attempt, n)
), to_extend AS MATERIALIZED (
    SELECT jobs.id, jobs.status, jobs.attempts
    FROM jobs
    WHERE jobs.id = ANY (%(ids)b::uuid[])
      AND (%(client_id)s::text IS NULL OR jobs.client_id = %(client_id)s)
    ORDER BY jobs.id
    FOR UPDATE
), extendable AS MATERIALIZED (
    SELECT input.*
    FROM input JOIN to_extend ON to_extend.id = input.id
    WHERE to_extend.status = 'processing'
      AND (input.attempt IS NULL OR to_extend.attempts = input.attempt)
), moved AS (
    UPDATE jobs
    SET status = CASE WHEN jobs.cancel_requested_at IS NULL THEN 'processing'
                      ELSE 'cancelled' END::job_status,
        lease_expires_at = CASE WHEN jobs.cancel_requested_at IS NULL
                                THEN now() + %(lease)s::interval END,
        updated_at = now()
    FROM extendable
    WHERE jobs.id = extendable.id
    RETURNING jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT input.n, to_extend.status::text AS outcome, to_extend.attempts AS current_attempts, moved.*
FROM input
LEFT JOIN to_extend ON to_extend.id = input.id
LEFT JOIN moved ON moved.id = input.id
ORDER BY input.n

-- name: insert_jobs_by_id
-- Create many jobs of one client with caller-chosen ids, all or nothing. An
-- id stored already with the same client and URL is 'existing' (returned as
-- stored, not inserted again); one stored with another client or URL is a
-- 'conflict' (one row: the first such item's n) and nothing is inserted.
-- With %(return_rows)s false only the summary row comes back (outcome
-- 'summary', n = how many jobs the call created or found), no job columns.
WITH new AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(pdf_urls)b::text[]) WITH ORDINALITY AS new (id, pdf_url, n)
), stored AS MATERIALIZED (
    SELECT new.n, jobs.client_id = %(client_id)s AND jobs.pdf_url = new.pdf_url AS same,
           jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
           jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
           jobs.lease_expires_at,
           jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
    FROM new JOIN jobs ON jobs.id = new.id
), clash AS MATERIALIZED (
    SELECT min(stored.n) AS n FROM stored WHERE NOT stored.same
), inserted AS (
    INSERT INTO jobs (id, client_id, pdf_url, run_after, priority)
    SELECT new.id, %(client_id)s, new.pdf_url,
           coalesce(%(run_after_at)s::timestamptz, now() + %(run_after_in)s::interval),
           coalesce(%(priority)s::smallint, 0)
    FROM new
    WHERE (SELECT clash.n FROM clash) IS NULL
      AND NOT EXISTS (SELECT 1 FROM stored WHERE stored.n = new.n)
    ORDER BY new.n
    RETURNING id, client_id, status, pdf_url, created_at, updated_at, completed_at,
              error_message, attempts, lease_expires_at,
              priority, run_after, progress, cancel_requested_at
)
SELECT 'conflict' AS outcome, clash.n,
       NULL::uuid AS id, NULL::text AS client_id, NULL::job_status AS status,
       NULL::text AS pdf_url, NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
       NULL::timestamptz AS completed_at, NULL::text AS error_message,
       NULL::integer AS attempts, NULL::timestamptz AS lease_expires_at,
       NULL::smallint AS priority, NULL::timestamptz AS run_after, NULL::jsonb AS progress,
       NULL::timestamptz AS cancel_requested_at
FROM clash WHERE clash.n IS NOT NULL
UNION ALL
SELECT 'summary', (SELECT count(*) FROM inserted) + (SELECT count(*) FROM stored),
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE NOT %(return_rows)s::boolean AND (SELECT clash.n FROM clash) IS NULL
UNION ALL
SELECT 'created', NULL, inserted.* FROM inserted WHERE %(return_rows)s::boolean
UNION ALL
SELECT 'existing', stored.n, stored.id, stored.client_id, stored.status, stored.pdf_url,
       stored.created_at, stored.updated_at, stored.completed_at, stored.error_message,
       stored.attempts, stored.lease_expires_at,
       stored.priority, stored.run_after, stored.progress, stored.cancel_requested_at
FROM stored WHERE %(return_rows)s::boolean AND (SELECT clash.n FROM clash) IS NULL

-- name: copy_new_jobs
-- Bulk create: new jobs streamed in COPY format straight into jobs (no
-- temporary table, no statement text growing with the rows: nothing that
-- pins an RDS Proxy session). One statement: all or nothing.
COPY jobs (id, client_id, pdf_url, run_after, priority) FROM STDIN

-- name: copied_jobs_stamp
-- Bulk create (create_many returning="jobs"), after copy_new_jobs in the same
-- transaction: the one row the caller needs to build the jobs it copied
-- without reading them back. Every column the COPY does not set is a
-- constant default or now() (this transaction's time: the same for every
-- row), so this is the created_at / updated_at each new row holds, and
-- the run_after as the column stores it (its time zone as any read gives).
SELECT now() AS created_at, %(run_after_at)s::timestamptz AS run_after

-- name: insert_jobs_count
-- As insert_jobs_stamp, returning nothing (returning="ids": the caller has the ids).
INSERT INTO jobs (id, client_id, pdf_url, run_after, priority)
SELECT new.id, %(client_id)s, new.pdf_url,
       coalesce(%(run_after_at)s::timestamptz, now() + %(run_after_in)s::interval),
       coalesce(%(priority)s::smallint, 0)
FROM unnest(%(ids)b::uuid[], %(pdf_urls)b::text[]) WITH ORDINALITY AS new (id, pdf_url, n)
ORDER BY new.n
