-- DetermineCachedTag: which tags of a repository a complete build pushed, kept up to date by
-- the change to `complete`, so a worker's question is one indexed lookup instead of a scan
-- of the repository's recent builds. Not tied to a build row: a tag stays in the registry
-- after retention deletes the build that pushed it.
CREATE TABLE pushed_tags (
    namespace  TEXT   NOT NULL,
    repository TEXT   NOT NULL,
    tag        TEXT   NOT NULL,
    build_id   TEXT   NOT NULL,
    pushed_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, repository, tag)
);

-- The tags earlier complete builds pushed ("latest" for a build without tags), the newest
-- build's.
INSERT INTO pushed_tags (namespace, repository, tag, build_id, pushed_at)
SELECT DISTINCT ON (namespace, repository, tag) namespace, repository, tag, id, at FROM (
    SELECT b.namespace, b.repository, t.tag, b.id, COALESCE(b.finished_at, b.updated_at) AS at
    FROM builds b, jsonb_array_elements_text(b.tags) AS t(tag) WHERE b.phase = 'complete'
    UNION ALL
    SELECT namespace, repository, 'latest', id, COALESCE(finished_at, updated_at)
    FROM builds WHERE phase = 'complete' AND jsonb_array_length(tags) = 0
) pushed ORDER BY namespace, repository, tag, at DESC;
