-- Which attempt a claim is, and how often a silent worker's retry was given back
-- (BUILDMAN_MAX_SILENT_RETRIES bounds it, so every build ends).
ALTER TABLE queue_items ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_items ADD COLUMN silent_restores INTEGER NOT NULL DEFAULT 0;
