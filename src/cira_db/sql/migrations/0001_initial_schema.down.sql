-- squawk-ignore-file ban-drop-table, ban-drop-function, ban-drop-type
-- squawk: a down migration removes what its up migration created.
-- Undo 0001: removes the whole schema, data included. Rolling back to 0 is
-- meant for development and tests; production never goes below 1.
DROP TABLE IF EXISTS job_results;
DROP TABLE IF EXISTS jobs;
DROP FUNCTION IF EXISTS update_updated_at();
DROP TYPE IF EXISTS job_status;
