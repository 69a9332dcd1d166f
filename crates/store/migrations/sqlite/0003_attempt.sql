-- The claim (queue item state_id) of the build's current attempt: a worker's log line
-- names the attempt its token was issued for, and lines of an earlier attempt are refused.
ALTER TABLE builds ADD COLUMN attempt TEXT;
