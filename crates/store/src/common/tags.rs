//! The tags complete builds pushed, per repository: DetermineCachedTag's answer in one
//! indexed lookup. A build's change to `complete` records its tags in the same transaction.

use buildman_core::BuildId;
use buildman_core::build::effective_tags;
use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use super::{Backend, Conn};
use crate::Result;

/// Records that build `build` of `namespace/repository`, requested with `tags`, pushed its
/// tags at `now` (unix milliseconds); a later build's push of a tag replaces an earlier's.
pub(super) async fn record<B>(
    conn: &mut Conn<B>,
    build: BuildId,
    namespace: &str,
    repository: &str,
    tags: &[String],
    now: i64,
) -> Result<()>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
{
    let build = build.to_string();
    for tag in effective_tags(tags) {
        sqlx::query(
            "INSERT INTO pushed_tags (namespace, repository, tag, build_id, pushed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, repository, tag) \
             DO UPDATE SET build_id = excluded.build_id, pushed_at = excluded.pushed_at",
        )
        .bind(namespace)
        .bind(repository)
        .bind(tag.as_str())
        .bind(build.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The first of `tags` that a complete build of `namespace/repository` pushed.
pub(super) async fn first_pushed<'e, B, E>(
    conn: E,
    namespace: &str,
    repository: &str,
    tags: &[String],
) -> Result<Option<String>>
where
    B: Backend,
    E: Executor<'e, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> String: sqlx::Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    usize: sqlx::ColumnIndex<<B::Db as Database>::Row>,
{
    if tags.is_empty() {
        return Ok(None);
    }
    let placeholders: Vec<String> = (3..tags.len() + 3).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT tag FROM pushed_tags WHERE namespace = $1 AND repository = $2 AND tag IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql)
        .bind(namespace)
        .bind(repository);
    for tag in tags {
        query = query.bind(tag.as_str());
    }
    let pushed = query.fetch_all(conn).await?;
    Ok(tags.iter().find(|t| pushed.contains(t)).cloned())
}
