-- cira_db: no-transaction
-- 0005: drop idx_jobs_queue, the queue index of 0002 (created_at, id WHERE
-- status = 'queued'). No statement reads it since 0004: the claims read
-- idx_jobs_claim and idx_jobs_claim_client, and queue_stats reads the queued
-- rows through idx_jobs_claim. Every job created or put back in the queue
-- added an entry to it, and the planner weighed it for every statement that
-- filters on status = 'queued' (a claim plans about 7% faster without it;
-- docs/jobs.md, "The claim's plan").
--
-- DROP INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE on jobs: reads,
-- inserts and updates go on; it waits for the transactions that use the
-- index to end (bounded by lock_timeout). It cannot run in a transaction,
-- hence the header line above. Re-runnable: IF EXISTS. The time on
-- 1,000,000 rows is measured in docs/performance.md.

DROP INDEX CONCURRENTLY IF EXISTS idx_jobs_queue;
