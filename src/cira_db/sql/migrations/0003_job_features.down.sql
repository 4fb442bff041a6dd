-- squawk-ignore-file ban-drop-column, ban-drop-constraint
-- squawk: a down migration removes what its up migration added; dropping a
-- column changes the catalog only (no rewrite).
-- Undo 0003. Every row is kept. Cancelled jobs become failed jobs (their
-- error_message says "cancelled" when it was empty), so the previous version
-- of cira_db, which knows no cancelled status, can read and delete them.
-- What goes with the columns: schedules (scheduled jobs become claimable at
-- once), priorities, progress and pending cancel requests.
-- The label 'cancelled' stays in job_status: PostgreSQL cannot drop an enum
-- label without rebuilding the type and rewriting jobs. No row uses it after
-- this file, and 0003 adds it with IF NOT EXISTS, so applying 0003 again works.

UPDATE jobs
SET status = 'failed', error_message = coalesce(error_message, 'cancelled')
WHERE status = 'cancelled';

ALTER TABLE jobs
    DROP CONSTRAINT IF EXISTS jobs_cancel_request_not_queued,
    DROP CONSTRAINT IF EXISTS jobs_progress_small_object,
    DROP CONSTRAINT IF EXISTS jobs_priority_range,
    DROP COLUMN IF EXISTS cancel_requested_at,
    DROP COLUMN IF EXISTS progress,
    DROP COLUMN IF EXISTS priority,
    DROP COLUMN IF EXISTS run_after;
