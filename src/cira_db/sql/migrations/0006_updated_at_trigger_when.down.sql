-- Undo 0006: the updated_at trigger of 0001 again, with no WHEN condition:
-- the function runs for every updated row. The result is the same updated_at
-- (now()) for every UPDATE; only the cost per row comes back. Same lock as
-- 0006 (SHARE ROW EXCLUSIVE on jobs, in place, never without a trigger).

CREATE OR REPLACE TRIGGER trigger_jobs_updated_at
    BEFORE UPDATE ON jobs
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at();
