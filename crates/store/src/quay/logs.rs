//! Build logs in Quay's build-log Redis (`BUILDLOGS_REDIS`; quay-integration.md section 11):
//! each build's list `builds/<uuid>/logs` of JSON entries in Quay's shape, written with
//! RPUSH and then EXPIRE (7 days) in one round trip per batch, so Quay's log viewer, API
//! and log archiver read them unchanged; and `builds/<uuid>/status`, the progress Quay's
//! build view shows (current and total Dockerfile steps).
//!
//! Quay has nowhere to remember which worker lines were stored (a re-sent line after a
//! reconnect must be stored once): buildman keeps the attempt and last sequence number of
//! each build in `builds/<uuid>/buildman-sequence` beside the log, with the log's
//! time-to-live, and a Lua script checks and appends atomically.

use std::collections::HashMap;
use std::time::Duration;

use buildman_core::config::BuildLogsRedisConfig;
use buildman_core::{LogEntry, LogType};
use buildman_quay::buildlogs::{LOGS_TTL, PyDateTime, logs_key, python_json, status_key};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{LogPage, Result, StoreError};

/// Checks each build's worker lines against its stored attempt and sequence and appends
/// the new ones. KEYS: per build, its log list and its sequence key. ARGV: the TTL in
/// seconds, then per build its attempt, its line count and that many (sequence, entry)
/// pairs. Returns each line's index in its log, -1 for a line stored already.
const APPEND_WORKER_LINES: &str = r#"
local ttl = tonumber(ARGV[1])
local out = {}
local a = 2
for b = 1, #KEYS / 2 do
  local logs, seqkey = KEYS[2 * b - 1], KEYS[2 * b]
  local attempt, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local last = nil
  local stored = redis.call('GET', seqkey)
  if stored then
    local sep = string.find(stored, '\n', 1, true)
    if sep and string.sub(stored, 1, sep - 1) == attempt then
      last = tonumber(string.sub(stored, sep + 1))
    end
  end
  local pushed = false
  for _ = 1, n do
    local seq, entry = tonumber(ARGV[a]), ARGV[a + 1]
    a = a + 2
    if last == nil or seq > last then
      out[#out + 1] = redis.call('RPUSH', logs, entry) - 1
      last = seq
      pushed = true
    else
      out[#out + 1] = -1
    end
  end
  if pushed then
    redis.call('EXPIRE', logs, ttl)
    redis.call('SET', seqkey, attempt .. '\n' .. last, 'EX', ttl)
  end
end
return out
"#;

/// The build-log Redis.
#[derive(Clone)]
pub struct BuildLogs {
    conn: ConnectionManager,
    append_worker_lines: Script,
}

/// One build's worker lines in a batch: the attempt, each line's place in the batch, its
/// sequence number and entry.
pub(super) struct BuildLines<'a> {
    pub uuid: String,
    pub attempt: Option<&'a str>,
    pub lines: Vec<(usize, i32, &'a LogEntry)>,
}

impl BuildLogs {
    /// Connects; fails when Redis does not answer.
    pub async fn connect(config: &BuildLogsRedisConfig) -> Result<Self> {
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!(
                "build-log Redis (BUILDLOGS_REDIS) at {}:{}: {e}",
                config.host, config.port
            ))
        };
        let client = client(config).map_err(|e| unavailable(&e))?;
        // Quay's client: 1 s to connect, 2 s per call.
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, settings)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Self {
            conn,
            append_worker_lines: Script::new(APPEND_WORKER_LINES),
        })
    }

    /// Appends entries to a build's log; the log's new length.
    pub async fn append(&self, uuid: &str, entries: &[LogEntry]) -> Result<u64> {
        let key = logs_key(uuid);
        if entries.is_empty() {
            return self.len(&key).await;
        }
        let now = local_now();
        let encoded: Vec<String> = entries.iter().map(|e| quay_entry(e, now)).collect();
        let mut pipe = redis::pipe();
        pipe.rpush(&key, encoded).expire(&key, ttl_secs()).ignore();
        let (len,): (u64,) = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(len)
    }

    /// Appends worker lines of several builds in one script call; per line of the batch
    /// (`count` lines), its index in its log or `None` when it was stored already.
    pub(super) async fn append_worker_lines(
        &self,
        builds: &[BuildLines<'_>],
        count: usize,
    ) -> Result<Vec<Option<u64>>> {
        let now = local_now();
        let mut call = self.append_worker_lines.prepare_invoke();
        call.arg(ttl_secs());
        for build in builds {
            call.key(logs_key(&build.uuid))
                .key(sequence_key(&build.uuid))
                .arg(build.attempt.unwrap_or(""))
                .arg(build.lines.len());
            for (_, sequence, entry) in &build.lines {
                call.arg(*sequence).arg(quay_entry(entry, now));
            }
        }
        let indices: Vec<i64> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        let mut placed = vec![None; count];
        let order = builds
            .iter()
            .flat_map(|b| b.lines.iter().map(|(at, ..)| *at));
        for (at, index) in order.zip(indices) {
            placed[at] = u64::try_from(index).ok();
        }
        self.record_progress(builds).await;
        Ok(placed)
    }

    /// Sets `builds/<uuid>/status` to the last Dockerfile step each build logged, as Quay's
    /// build view shows progress. Best effort: the log itself is stored.
    async fn record_progress(&self, builds: &[BuildLines<'_>]) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for build in builds {
            let step = (build.lines.iter().rev())
                .filter(|(_, _, e)| e.kind == Some(LogType::Command))
                .find_map(|(_, _, e)| step_of(&e.message));
            if let Some((current, total)) = step {
                let status = serde_json::json!({
                    "total_commands": total, "current_command": current,
                    "push_completion": 0.0, "pull_completion": 0.0,
                });
                pipe.set_ex(
                    status_key(&build.uuid),
                    status.to_string(),
                    LOGS_TTL.as_secs(),
                )
                .ignore();
                any = true;
            }
        }
        if any {
            let done: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "could not update builds' status in the build-log Redis");
            }
        }
    }

    /// Entries from `start` (at most `limit`, no more than `max_bytes` of them as stored
    /// but always the first), with the log's length.
    pub async fn read(
        &self,
        uuid: &str,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<LogPage> {
        let key = logs_key(uuid);
        if limit == 0 {
            let total = self.len(&key).await?;
            return Ok(LogPage {
                start,
                total,
                entries: Vec::new(),
            });
        }
        let first = i64::try_from(start).unwrap_or(i64::MAX);
        let last = first.saturating_add(i64::from(limit) - 1);
        let (total, raw): (u64, Vec<String>) = redis::pipe()
            .llen(&key)
            .lrange(&key, first as isize, last as isize)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        let mut entries = Vec::with_capacity(raw.len());
        let mut bytes = 0u64;
        for (i, text) in raw.iter().enumerate() {
            bytes = bytes.saturating_add(text.len() as u64);
            if i > 0 && bytes > max_bytes {
                break;
            }
            let entry: LogEntry = serde_json::from_str(text).map_err(|e| {
                StoreError::Corrupt(format!("{key}[{}]: not a log entry: {e}", start + i as u64))
            })?;
            entries.push(entry);
        }
        Ok(LogPage {
            start,
            total,
            entries,
        })
    }

    /// Answers when Redis does.
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn len(&self, key: &str) -> Result<u64> {
        redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)
    }
}

/// Where the last stored worker line of a build's attempt is remembered.
fn sequence_key(uuid: &str) -> String {
    format!("builds/{uuid}/buildman-sequence")
}

fn ttl_secs() -> i64 {
    LOGS_TTL.as_secs() as i64
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("build-log Redis (BUILDLOGS_REDIS): {e}"))
}

/// The manager's local time, as Quay's entries carry it.
fn local_now() -> PyDateTime {
    PyDateTime(chrono::Local::now().naive_local())
}

/// An entry as Quay writes it: keys in Quay's order, `data` always present and holding
/// the time (replacing the domain's own `datetime`).
fn quay_entry(entry: &LogEntry, now: PyDateTime) -> String {
    #[derive(Serialize)]
    struct Quay<'a> {
        message: &'a str,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        kind: Option<LogType>,
        data: Map<String, Value>,
    }
    let mut data = match &entry.data {
        Some(Value::Object(d)) => d.clone(),
        _ => Map::new(),
    };
    data.insert("datetime".into(), Value::String(now.to_string()));
    let quay = Quay {
        message: &entry.message,
        kind: entry.kind,
        data,
    };
    // Strings, numbers and maps of them: nothing here fails to serialize.
    python_json(&quay).unwrap_or_default()
}

/// N and M of the first `Step N/M :` in `text`.
fn step_of(text: &str) -> Option<(u32, u32)> {
    text.match_indices("Step ").find_map(|(at, _)| {
        let rest = &text[at + 5..];
        let (n, rest) = rest.split_once('/')?;
        let (m, rest) = rest.split_once(' ')?;
        rest.starts_with(':').then_some(())?;
        Some((n.parse().ok()?, m.parse().ok()?))
    })
}

/// The redis client for `config`, with TLS when asked for.
fn client(config: &BuildLogsRedisConfig) -> redis::RedisResult<Client> {
    use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
    let mut settings = RedisConnectionInfo::default().set_db(i64::from(config.db));
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let addr = match config.ssl {
        false => ConnectionAddr::Tcp(config.host.clone(), config.port),
        true => ConnectionAddr::TcpTls {
            host: config.host.clone(),
            port: config.port,
            insecure: false,
            tls_params: None,
        },
    };
    Client::open(addr.into_connection_info()?.set_redis_settings(settings))
}

/// Groups a batch's lines by build, in order of first appearance.
pub(super) fn by_build(lines: &[crate::WorkerLine]) -> Vec<BuildLines<'_>> {
    let mut at: HashMap<buildman_core::BuildId, usize> = HashMap::new();
    let mut builds: Vec<BuildLines<'_>> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let slot = *at.entry(line.build).or_insert_with(|| {
            builds.push(BuildLines {
                uuid: line.build.to_string(),
                attempt: line.attempt.as_deref(),
                lines: Vec::new(),
            });
            builds.len() - 1
        });
        builds[slot].lines.push((i, line.sequence, &line.entry));
    }
    builds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_give_progress() {
        assert_eq!(step_of("Step 2/5 : RUN x"), Some((2, 5)));
        assert_eq!(step_of("STEP 2/5: RUN x"), None);
        assert_eq!(step_of("Step 2 : RUN x"), None);
    }

    #[test]
    fn entries_are_in_quays_shape() {
        let now = PyDateTime(
            chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
                .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
                .expect("a time"),
        );
        let step = LogEntry {
            message: "Step 1/2 : FROM x".into(),
            kind: Some(LogType::Command),
            data: None,
        };
        assert_eq!(
            quay_entry(&step, now),
            r#"{"message": "Step 1/2 : FROM x", "type": "command", "data": {"datetime": "2026-01-02 03:04:05.000006"}}"#
        );
    }
}
