-- Retention: a build that ended for good has its uploaded context deleted once (this marks
-- it done), and may itself be deleted after BUILDMAN_BUILD_RETENTION. The index serves the
-- retention passes (final phases by age) and the metrics' count of live builds by phase.
ALTER TABLE builds ADD COLUMN context_pruned BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX builds_by_phase ON builds (phase, updated_at);
