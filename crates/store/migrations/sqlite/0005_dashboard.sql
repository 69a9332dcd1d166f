-- What build lists show beside the phase: the attempt (claims so far), the executor of the
-- current attempt, when a worker was first started (the end of the queue wait) and when the
-- build reached its final phase. Earlier builds read as never run.
ALTER TABLE builds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN executor TEXT;
ALTER TABLE builds ADD COLUMN scheduled_at BIGINT;
ALTER TABLE builds ADD COLUMN finished_at BIGINT;

-- find_builds: builds of every repository (or of a namespace, through builds_by_repository),
-- newest first; and of one phase.
CREATE INDEX builds_by_created ON builds (created_at);
CREATE INDEX builds_by_phase_created ON builds (phase, created_at);
