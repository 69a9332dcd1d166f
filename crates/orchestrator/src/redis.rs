//! The Redis orchestrator: what is alive, shared by every manager of a deployment, in Quay's
//! key layout so Quay's tooling can read the same Redis.
//!
//! # Layout (below `prefix`, Quay's ORCHESTRATOR_PREFIX)
//!
//! - `<prefix><key>`: the value. With a TTL it lives a day longer than asked, so its value can
//!   still be read when its deadline passes (Quay does the same).
//! - `<prefix><key>/expiring`: the shadow, an empty string whose own expiry *is* the deadline.
//! - `<prefix><key>/expired`: a copy of the value left for a while after an expiry was claimed,
//!   as Quay leaves it, for people and tools looking after the fact.
//! - `<prefix>deadlines`: a sorted set, trait key -> deadline (Redis clock, ms). It marks the
//!   keys this backend gave a deadline and lets the sweep find the overdue ones without
//!   scanning. Reserved: never a trait key.
//! - `<prefix>slots`: a sorted set, slot id -> end of its slot TTL (Redis clock, ms). Reserved
//!   too.
//! - channel `<prefix>orchestrator_events`: `{"event": 1|2|3|4, "key": <full key>, "value": ...}`
//!   for create, set, delete and expire, as Quay publishes them.
//!
//! # Expiry, exactly once
//!
//! A key is *due* when it is in the deadline set and its shadow is gone. Claiming a due key
//! (copy to `/expired`, delete, drop from the deadline set, publish event 4) is one Lua
//! function that every script runs first for the keys it touches, so claims, takes and
//! compare-and-sets on one key are serialised by Redis and exactly one caller gets the value.
//! That caller, and only it, hands `KeyChange { Expire, .. }` to its own watchers: the manager
//! acts on an expiry (it finishes the job), so it must happen on one manager only. Event 4 on
//! the channel is for Quay's tools; managers ignore it.
//!
//! Three paths claim, and races between them are harmless:
//! - the shadow's keyspace notification (`__keyspace@<db>__:<prefix>*/expiring`, enabled with
//!   the `K` and `x` flags of `notify-keyspace-events`, merged into what is set already unless
//!   `skip_keyspace_event_setup`), received by every manager; the first claim wins;
//! - the sweep, every `sweep_interval`, at start, whenever a watcher is added and after every
//!   reconnection: it takes the overdue members of the deadline set and claims them.
//!   Keyspace notifications are fire-and-forget (a manager that is down or disconnected when a
//!   shadow expires never hears of it; with every manager down, nobody does); the sweep is
//!   what makes expiry durable. With no notifications at all an expiry is seen at most
//!   `sweep_interval` late. (A key overdue by more than the extra day is gone for good: the
//!   store's own leases are the backstop then.)
//! - any access to the key (`get`, `create`, `compare_and_set`, `take`, `list`), so results
//!   never depend on when a notification arrives (as in the memory backend).
//!
//! The first two claim a key only on a manager with a live watcher of expiries below a prefix
//! that covers it: a claimed expiry that no watcher receives is lost, an unclaimed one waits
//! for a manager that watches (a manager registers its watcher when it starts, which also
//! triggers a sweep).
//!
//! # Watchers
//!
//! Create, set and delete events reach the watchers of every manager, this one included,
//! through the channel subscription, in the order Redis applied the changes. They are
//! informational: a manager that is disconnected from the channel misses them. Expire events
//! are delivered directly, on the claiming manager only, so an expiry racing a very short TTL
//! can reach a watcher before the key's create event does.
//!
//! Delivery waits for room in a watcher's bounded channel: a claimed expiry cannot be given
//! back, so the call, the sweep or the subscription task that claimed it waits, and the
//! subscription task holds back the messages after it (Redis buffers them, up to its
//! `client-output-buffer-limit` for pub/sub, past which it drops the connection: the task
//! reconnects and sweeps). Meanwhile the sweep still claims what falls due, for watchers that
//! have room.
//!
//! # Slots
//!
//! Each slot is a member of `<prefix>slots` (its slot id) whose score is when its slot TTL
//! runs out (`slot_ttl`, long: a slot is released by the manager that took it, the TTL only
//! frees the slots of a manager that died). Acquiring drops slots past their TTL first, all in
//! one script, so the limit holds across managers.
//!
//! # Outages
//!
//! Every call fails with [`OrchestratorError::Unavailable`] naming the Redis address and the
//! operation, after at most [`CALL_TIMEOUT`]. The connection manager reconnects on the next
//! call; the subscription task reconnects with backoff, logs, re-applies the keyspace setup (a
//! restarted Redis has lost it) and sweeps. Needs Redis 5 or later (scripts that write after
//! `TIME`), without cluster mode (the sweep touches keys it reads from the deadline set).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{
    Client, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Msg,
    RedisConnectionInfo, Script, ScriptInvocation,
};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;

use crate::watchers::Watchers;
use crate::{KeyChange, KeyEvent, Orchestrator, OrchestratorError, Result};

/// The longest any one call waits before it reports Redis unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than its TTL a value outlives its shadow (Quay's ONE_DAY).
const GRACE: Duration = Duration::from_secs(24 * 3600);
/// How long the `/expired` copy of a claimed value stays.
const EXPIRED_COPY_TTL: Duration = Duration::from_secs(3600);
/// TTLs are capped here: Redis rejects expiry times that overflow its clock.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Overdue keys claimed per sweep script call, so one call never blocks Redis for long.
const SWEEP_BATCH: usize = 100;
/// Trait keys per `list` script call, for the same reason.
const LIST_BATCH: usize = 200;
/// How often the subscription proves it is alive, to notice a half-open connection.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Limits of the subscription's reconnection backoff.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

const EXPIRING_SUFFIX: &str = "/expiring";
const EXPIRED_SUFFIX: &str = "/expired";
const DEADLINES: &str = "deadlines";
const SLOTS: &str = "slots";
const EVENTS_CHANNEL: &str = "orchestrator_events";

/// Where the Redis orchestrator connects and how it lays out its keys.
#[derive(Clone)]
pub struct RedisOrchestratorConfig {
    /// REDIS_HOST.
    pub host: String,
    /// REDIS_PORT.
    pub port: u16,
    /// REDIS_PASSWORD; `None` for no AUTH.
    pub password: Option<String>,
    /// REDIS_DB.
    pub db: u32,
    /// REDIS_SSL: TLS through rustls, checked against the system's roots or `tls_ca_cert`.
    pub tls: bool,
    /// REDIS_CA_CERT: a PEM file of the CA to trust instead of the system's roots (TLS only).
    pub tls_ca_cert: Option<PathBuf>,
    /// ORCHESTRATOR_PREFIX, put in front of every key and the event channel; end it with `/`
    /// to get Quay's layout (`buildman/production/building/<uuid>`).
    pub prefix: String,
    /// REDIS_SKIP_KEYSPACE_EVENT_SETUP: leave `notify-keyspace-events` alone (for a Redis
    /// whose CONFIG command is off limits; without the flags, the sweep still finds expiries).
    pub skip_keyspace_event_setup: bool,
    /// The slot TTL: how long a worker slot stays taken when the manager that took it never
    /// releases it (a dead manager).
    pub slot_ttl: Duration,
    /// How often overdue keys are looked for, besides keyspace notifications.
    pub sweep_interval: Duration,
}

impl RedisOrchestratorConfig {
    /// A plain-TCP config for db 0 without password, a slot TTL of 3 hours, swept every 5 s.
    pub fn new(host: impl Into<String>, port: u16, prefix: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            password: None,
            db: 0,
            tls: false,
            tls_ca_cert: None,
            prefix: prefix.into(),
            skip_keyspace_event_setup: false,
            slot_ttl: Duration::from_secs(3 * 3600),
            sweep_interval: Duration::from_secs(5),
        }
    }

    /// The address as it appears in errors and logs (never with the password).
    fn address(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.db)
    }
}

impl fmt::Debug for RedisOrchestratorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOrchestratorConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("tls_ca_cert", &self.tls_ca_cert)
            .field("prefix", &self.prefix)
            .field("skip_keyspace_event_setup", &self.skip_keyspace_event_setup)
            .field("slot_ttl", &self.slot_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

/// An [`Orchestrator`] in Redis, shared by every manager that uses the same Redis and prefix;
/// clones share the connection and background tasks, which end with the last clone.
#[derive(Clone)]
pub struct RedisOrchestrator {
    inner: Arc<Handle>,
}

/// Owns the background tasks so that dropping the last orchestrator handle stops them.
struct Handle {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Shared {
    conn: ConnectionManager,
    /// For the dedicated subscription connection.
    client: Client,
    /// `redis://host:port/db`, for messages.
    addr: String,
    prefix: String,
    channel: String,
    deadlines: String,
    slots: String,
    /// `__keyspace@<db>__:<prefix>*/expiring`, glob-escaped.
    keyspace_pattern: String,
    /// What a keyspace notification's channel starts with before the prefixed key.
    keyspace_channel_prefix: String,
    skip_keyspace_event_setup: bool,
    slot_ttl_ms: u64,
    watchers: Mutex<Watchers>,
    /// Wakes the sweep task when a watcher is added.
    sweep_now: Notify,
}

impl RedisOrchestrator {
    /// Connects, enables keyspace notifications (unless told not to), subscribes to them and to
    /// the event channel, and starts the sweep. Fails when Redis cannot be reached.
    pub async fn connect(config: RedisOrchestratorConfig) -> Result<Self> {
        let addr = config.address();
        let unavailable = |what: &str, e: &dyn fmt::Display| {
            OrchestratorError::Unavailable(format!("redis at {addr}: {what}: {e}"))
        };
        let client = client(&config).map_err(|e| unavailable("invalid connection settings", &e))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            // Few, quick retries: while Redis is down a call should fail within a second or
            // so, and the next call starts a new attempt anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let conn = match tokio::time::timeout(
            CALL_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable("connecting failed", &e)),
            Err(_) => return Err(unavailable("connecting failed", &"no answer within 10s")),
        };
        let prefix = config.prefix.clone();
        let keyspace_channel_prefix = format!("__keyspace@{}__:", config.db);
        let shared = Arc::new(Shared {
            conn,
            client,
            addr: addr.clone(),
            channel: format!("{prefix}{EVENTS_CHANNEL}"),
            deadlines: format!("{prefix}{DEADLINES}"),
            slots: format!("{prefix}{SLOTS}"),
            keyspace_pattern: format!(
                "{keyspace_channel_prefix}{}*{EXPIRING_SUFFIX}",
                escape_glob(&prefix)
            ),
            keyspace_channel_prefix,
            prefix,
            skip_keyspace_event_setup: config.skip_keyspace_event_setup,
            slot_ttl_ms: millis(config.slot_ttl),
            watchers: Mutex::new(Watchers::default()),
            sweep_now: Notify::new(),
        });
        // The first subscription is part of connecting: events from here on must be seen.
        let pubsub = shared
            .subscribe()
            .await
            .map_err(|e| unavailable("subscribing to events failed", &e))?;
        let listener = tokio::spawn(Arc::clone(&shared).listen(pubsub));
        let sweeper = tokio::spawn(Arc::clone(&shared).sweep_loop(config.sweep_interval));
        tracing::info!(redis = %addr, prefix = %shared.prefix, "connected to the redis orchestrator");
        Ok(Self {
            inner: Arc::new(Handle {
                shared,
                tasks: vec![listener, sweeper],
            }),
        })
    }

    /// Looks for overdue keys below the watched prefixes once and expires them (the background
    /// sweep does this every `sweep_interval`); returns how many this call claimed.
    pub async fn sweep(&self) -> Result<usize> {
        self.inner.shared.sweep().await
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

/// Builds the client, with TLS when asked for.
fn client(config: &RedisOrchestratorConfig) -> std::result::Result<Client, String> {
    let mut settings = RedisConnectionInfo::default().set_db(i64::from(config.db));
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    if !config.tls {
        let info = ConnectionAddr::Tcp(config.host.clone(), config.port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings);
        return Client::open(info).map_err(|e| e.to_string());
    }
    // redis' rustls client takes the process-wide provider, which the binary installs.
    let addr = ConnectionAddr::TcpTls {
        host: config.host.clone(),
        port: config.port,
        insecure: false,
        tls_params: None,
    };
    let info: ConnectionInfo = addr
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_redis_settings(settings);
    let root_cert = match &config.tls_ca_cert {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let certs = ::redis::TlsCertificates {
        client_tls: None,
        root_cert,
    };
    Client::build_with_tls(info, certs).map_err(|e| e.to_string())
}

/// Milliseconds for Redis: at least 1 (PX 0 is an error), at most [`MAX_TTL`].
fn millis(d: Duration) -> u64 {
    let ms = d.min(MAX_TTL).as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `current` with the flags that deliver keyspace notifications of expiries added (`K`
/// keyspace channel, `x` expired; `A` includes `x`); `None` when nothing is missing. Merging
/// instead of overwriting keeps what other users of the Redis enabled.
fn merged_keyspace_flags(current: &str) -> Option<String> {
    let mut flags = current.to_owned();
    if !flags.contains('K') {
        flags.push('K');
    }
    if !flags.contains('x') && !flags.contains('A') {
        flags.push('x');
    }
    (flags != current).then_some(flags)
}

// -------------------------------------------------------------------------------------------
// Scripts. Every one that touches a key claims it first if it is due, so a key is expired by
// exactly one script run, whichever path (notification, access, sweep) gets there first.

macro_rules! prelude {
    () => {
        r#"
local function int(x) return string.format('%.0f', x) end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Quay's JSON shape; cjson escapes '/', which is valid but unreadable in keys.
local function publish(channel, event, key, value)
  local function enc(s) return (string.gsub(cjson.encode(s), '\\/', '/')) end
  redis.call('PUBLISH', channel,
    '{"event": ' .. event .. ', "key": ' .. enc(key) .. ', "value": ' .. enc(value) .. '}')
end

-- Claims `real` if it is due: it has a deadline (is in the deadline set) and its shadow has
-- expired. Returns its value, or false when it is not due (or already claimed).
local function claim(real, member, deadlines, channel, keep_ms)
  if not redis.call('ZSCORE', deadlines, member) then return false end
  if redis.call('EXISTS', real .. '/expiring') == 1 then return false end
  redis.call('ZREM', deadlines, member)
  local value = redis.call('GET', real)
  if not value then return false end
  redis.call('SET', real .. '/expired', value, 'PX', keep_ms)
  redis.call('DEL', real)
  publish(channel, 4, real, value)
  return value
end

-- Writes a value with its deadline (ttl_ms ~= '') or without one.
local function write(real, member, deadlines, value, ttl_ms, real_px)
  if ttl_ms == '' then
    redis.call('SET', real, value)
    redis.call('DEL', real .. '/expiring')
    redis.call('ZREM', deadlines, member)
  else
    redis.call('SET', real, value, 'PX', real_px)
    redis.call('SET', real .. '/expiring', '', 'PX', ttl_ms)
    redis.call('DEL', real .. '/expired')
    redis.call('ZADD', deadlines, int(now_ms() + tonumber(ttl_ms)), member)
  end
end
"#
    };
}

// Single-key scripts: KEYS = {real, deadlines}, ARGV = {member, channel, keep_ms, ...}.

/// Claims a key named by a keyspace notification. -> value or nil.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        "return claim(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3])"
    ))
});

/// ARGV[4] value, ARGV[5] ttl_ms or '', ARGV[6] px of the value. -> {created 0|1, claimed}.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local claimed = claim(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, claimed} end
write(KEYS[1], ARGV[1], KEYS[2], ARGV[4], ARGV[5], ARGV[6])
publish(ARGV[2], 1, KEYS[1], ARGV[4])
return {1, claimed}
"#
    ))
});

/// ARGV[4] expected, ARGV[5] value, ARGV[6] ttl_ms or '', ARGV[7] px. -> {set 0|1, claimed}.
static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local claimed = claim(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3])
if redis.call('GET', KEYS[1]) ~= ARGV[4] then return {0, claimed} end
write(KEYS[1], ARGV[1], KEYS[2], ARGV[5], ARGV[6], ARGV[7])
publish(ARGV[2], 2, KEYS[1], ARGV[5])
return {1, claimed}
"#
    ))
});

/// -> {value or nil, claimed}.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local claimed = claim(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3])
return {redis.call('GET', KEYS[1]), claimed}
"#
    ))
});

/// Deletes the key with its shadow and expired copy (as Quay's delete_key). -> {value, claimed}.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local claimed = claim(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3])
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1], KEYS[1] .. '/expiring', KEYS[1] .. '/expired')
  redis.call('ZREM', KEYS[2], ARGV[1])
  publish(ARGV[2], 3, KEYS[1], value)
end
return {value, claimed}
"#
    ))
});

/// KEYS = {deadlines, real...}, ARGV = {channel, keep_ms, member...}. Values of keys that are
/// not strings (someone else's, below a shared prefix) read as nil.
/// -> {{value or nil...}, {claimed member, value, ...}}.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local values, claimed = {}, {}
for i = 2, #KEYS do
  local real, member = KEYS[i], ARGV[i + 1]
  local expired = claim(real, member, KEYS[1], ARGV[1], ARGV[2])
  if expired then
    claimed[#claimed + 1] = member
    claimed[#claimed + 1] = expired
  end
  local value = false
  if redis.call('TYPE', real)['ok'] == 'string' then value = redis.call('GET', real) end
  values[#values + 1] = value
end
return {values, claimed}
"#
    ))
});

/// KEYS = {deadlines}, ARGV = {channel, keep_ms, prefix, batch, offset, watched prefix...}.
/// Claims overdue members below a watched prefix, skips the others (left for a manager that
/// watches them); a member whose shadow still lives (clock rounding) gets its deadline from
/// the shadow. Skipped members stay first among the overdue, hence the caller's offset.
/// -> {members examined, members skipped, {claimed member, value, ...}}.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now), 'LIMIT', ARGV[5], ARGV[4])
local skipped, claimed = 0, {}
for _, member in ipairs(due) do
  local watched = false
  for i = 6, #ARGV do
    if string.sub(member, 1, #ARGV[i]) == ARGV[i] then
      watched = true
      break
    end
  end
  local real = ARGV[3] .. member
  local left = redis.call('PTTL', real .. '/expiring')
  if left > 0 then
    redis.call('ZADD', KEYS[1], int(now + left), member)
  elseif not watched then
    skipped = skipped + 1
  else
    local value = claim(real, member, KEYS[1], ARGV[1], ARGV[2])
    redis.call('ZREM', KEYS[1], member)
    if value then
      claimed[#claimed + 1] = member
      claimed[#claimed + 1] = value
    end
  end
end
return {#due, skipped, claimed}
"#
    ))
});

/// KEYS = {slots}, ARGV = {slot, limit, slot_ttl_ms}. Re-acquiring renews the slot TTL. -> 0|1.
static ACQUIRE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local expires = int(now + tonumber(ARGV[3]))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], expires, ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], expires, ARGV[1])
return 1
"#
    ))
});

/// KEYS = {slots}. -> how many slots are within their slot TTL.
static SLOTS_TAKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        "return redis.call('ZCOUNT', KEYS[1], '(' .. int(now_ms()), '+inf')"
    ))
});

// -------------------------------------------------------------------------------------------

impl Shared {
    fn real(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn unavailable(&self, what: &str, e: &dyn fmt::Display) -> OrchestratorError {
        OrchestratorError::Unavailable(format!("redis at {}: {what} failed: {e}", self.addr))
    }

    /// Runs a script, turning every failure (including a silent server) into `Unavailable`.
    async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, script.invoke_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.unavailable(&what(), &e)),
            Err(_) => Err(self.unavailable(&what(), &"no answer within 10s")),
        }
    }

    /// Runs a plain command, with the same error handling as [`Shared::invoke`].
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.unavailable(&what(), &e)),
            Err(_) => Err(self.unavailable(&what(), &"no answer within 10s")),
        }
    }

    /// A single-key invocation with the arguments every such script starts with.
    fn key_script<'a>(&self, script: &'a Script, key: &str) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.real(key))
            .key(&self.deadlines)
            .arg(key)
            .arg(&self.channel)
            .arg(millis(EXPIRED_COPY_TTL));
        inv
    }

    /// Appends a write's TTL arguments: the shadow's and the value's lifetime in ms.
    fn ttl_args(inv: &mut ScriptInvocation<'_>, ttl: Option<Duration>) {
        match ttl {
            Some(ttl) => {
                let ms = millis(ttl);
                inv.arg(ms).arg(ms.saturating_add(millis(GRACE)));
            }
            None => {
                inv.arg("").arg("");
            }
        }
    }

    /// The watchers; never held across an await.
    fn watchers(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a change to the watchers that want it, waiting for room in their channels.
    async fn deliver(&self, event: KeyEvent, key: &str, value: &str) {
        let senders = self.watchers().senders(event, key);
        for tx in senders {
            let change = KeyChange {
                event,
                key: key.to_owned(),
                value: value.to_owned(),
            };
            // A closed watcher wants nothing any more; it is pruned with the next change.
            let _ = tx.send(change).await;
        }
    }

    /// Announces an expiry this process claimed (and so must act on) to its own watchers.
    async fn claimed(&self, key: &str, value: Option<String>) {
        if let Some(value) = value {
            tracing::debug!(key, "claimed an expired key");
            self.deliver(KeyEvent::Expire, key, &value).await;
        }
    }

    /// Announces the expiries a script claimed, given as `[key, value, key, value, ...]`;
    /// returns how many.
    async fn claimed_pairs(&self, pairs: &[String]) -> usize {
        let mut count = 0;
        for pair in pairs.chunks_exact(2) {
            if let [key, value] = pair {
                self.deliver(KeyEvent::Expire, key, value).await;
                count += 1;
            }
        }
        count
    }

    /// Claims and announces every overdue key below a watched prefix, a batch per script run.
    async fn sweep(&self) -> Result<usize> {
        // Expiries found by sweep (or notification) are claimed only for a live watcher of
        // them: a claimed expiry nobody receives is lost, while an unclaimed one waits for a
        // manager that watches it.
        let prefixes = self.watchers().prefixes(KeyEvent::Expire);
        if prefixes.is_empty() {
            return Ok(0);
        }
        let mut total = 0;
        let mut offset = 0;
        loop {
            let mut inv = SWEEP.prepare_invoke();
            inv.key(&self.deadlines)
                .arg(&self.channel)
                .arg(millis(EXPIRED_COPY_TTL))
                .arg(&self.prefix)
                .arg(SWEEP_BATCH)
                .arg(offset)
                .arg(&prefixes);
            let (examined, skipped, claimed): (usize, usize, Vec<String>) = self
                .invoke(&inv, || "sweeping overdue keys".to_owned())
                .await?;
            total += self.claimed_pairs(&claimed).await;
            if examined < SWEEP_BATCH {
                return Ok(total);
            }
            offset += skipped;
        }
    }

    /// Sweeps every `interval`, starting now, and whenever a watcher is added (it may be the
    /// first to follow keys that are overdue); logs an outage once, and its end.
    async fn sweep_loop(self: Arc<Self>, interval: Duration) {
        let mut failing = false;
        loop {
            match self.sweep().await {
                Ok(n) => {
                    if failing {
                        tracing::info!(redis = %self.addr, "sweep: redis reachable again");
                    }
                    failing = false;
                    if n > 0 {
                        tracing::info!(count = n, "sweep expired keys no notification had claimed");
                    }
                }
                Err(e) if failing => tracing::debug!(error = %e, "sweep failed"),
                Err(e) => {
                    failing = true;
                    tracing::warn!(error = %e, "sweep failed; retrying every {interval:?}");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.sweep_now.notified() => {}
            }
        }
    }

    /// Adds the keyspace flags this backend needs to `notify-keyspace-events`.
    async fn enable_keyspace_events(&self) -> Result<()> {
        let mut get = ::redis::cmd("CONFIG");
        get.arg("GET").arg("notify-keyspace-events");
        let reply: Vec<String> = self
            .query(&get, || "CONFIG GET notify-keyspace-events".to_owned())
            .await?;
        let current = reply.get(1).map(String::as_str).unwrap_or_default();
        let Some(flags) = merged_keyspace_flags(current) else {
            return Ok(());
        };
        let mut set = ::redis::cmd("CONFIG");
        set.arg("SET").arg("notify-keyspace-events").arg(&flags);
        self.query::<()>(&set, || {
            format!("CONFIG SET notify-keyspace-events {flags}")
        })
        .await?;
        tracing::info!(redis = %self.addr, flags, "enabled keyspace notifications of expiries");
        Ok(())
    }

    /// Opens the subscription connection: keyspace notifications of shadows and the event
    /// channel. Then re-applies the keyspace setup, which a restarted Redis has lost (what
    /// expires in between is left to the sweep that follows every subscription).
    async fn subscribe(&self) -> std::result::Result<PubSub, String> {
        let setup = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            pubsub.psubscribe(&self.keyspace_pattern).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(CALL_TIMEOUT, setup).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer within 10s".to_owned()),
        };
        if !self.skip_keyspace_event_setup
            && let Err(e) = self.enable_keyspace_events().await
        {
            // Not fatal: without notifications the sweep still finds every expiry, later.
            tracing::warn!(
                error = %e,
                "could not enable keyspace notifications; expiries are found by the sweep \
                 only. Set notify-keyspace-events to include Kx, or REDIS_SKIP_KEYSPACE_EVENT_SETUP"
            );
        }
        Ok(pubsub)
    }

    /// Follows the subscription for ever, reconnecting with backoff when it is lost.
    async fn listen(self: Arc<Self>, mut pubsub: PubSub) {
        loop {
            let why = self.follow(pubsub).await;
            let mut backoff = MIN_BACKOFF;
            tracing::warn!(redis = %self.addr, reason = %why, "lost the event subscription; reconnecting");
            pubsub = loop {
                tokio::time::sleep(backoff).await;
                match self.subscribe().await {
                    Ok(pubsub) => break pubsub,
                    Err(e) => {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        tracing::warn!(
                            redis = %self.addr, error = %e,
                            "could not resubscribe to events; retrying in {backoff:?}"
                        );
                    }
                }
            };
            tracing::info!(redis = %self.addr, "resubscribed to events");
            // Shadows that expired while nobody here listened: claim them now, not at the
            // next sweep.
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "sweep after resubscribing failed");
            }
        }
    }

    /// Handles messages until the connection is lost; returns why it was.
    async fn follow(&self, pubsub: PubSub) -> String {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(&msg).await,
                    None => return "the connection closed".to_owned(),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        Duration::from_secs(5),
                        sink.ping::<::redis::Value>(),
                    );
                    match pong.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("ping failed: {e}"),
                        Err(_) => return "no answer to ping within 5s".to_owned(),
                    }
                }
            }
        }
    }

    async fn on_message(&self, msg: &Msg) {
        if msg.from_pattern() {
            self.on_keyspace_event(msg).await;
        } else {
            self.on_published_event(msg.get_payload_bytes()).await;
        }
    }

    /// A shadow expired: try to claim its key (other managers try too; one wins).
    async fn on_keyspace_event(&self, msg: &Msg) {
        if msg.get_payload_bytes() != b"expired" {
            return;
        }
        let Some(key) = msg
            .get_channel_name()
            .strip_prefix(&self.keyspace_channel_prefix)
            .and_then(|k| k.strip_prefix(&self.prefix))
            .and_then(|k| k.strip_suffix(EXPIRING_SUFFIX))
        else {
            return;
        };
        if !self.watchers().wants(KeyEvent::Expire, key) {
            return;
        }
        let inv = self.key_script(&CLAIM, key);
        match self
            .invoke(&inv, || format!("claiming expired {key}"))
            .await
        {
            Ok(value) => self.claimed(key, value).await,
            // The sweep claims it later.
            Err(e) => tracing::warn!(error = %e, "could not claim an expired key"),
        }
    }

    /// A create, set or delete published by any manager (this one included). Expiries are
    /// not taken from here: the manager that claimed one has delivered it already.
    async fn on_published_event(&self, payload: &[u8]) {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(payload) else {
            tracing::debug!("ignoring an unreadable orchestrator event");
            return;
        };
        let kind = match event.get("event").and_then(serde_json::Value::as_u64) {
            Some(1) => KeyEvent::Create,
            Some(2) => KeyEvent::Set,
            Some(3) => KeyEvent::Delete,
            _ => return,
        };
        let Some(key) = event
            .get("key")
            .and_then(serde_json::Value::as_str)
            .and_then(|k| k.strip_prefix(&self.prefix))
        else {
            return;
        };
        let value = event
            .get("value")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        self.deliver(kind, key, value).await;
    }

    /// Every trait key below `prefix` (not shadows, expired copies or reserved keys).
    async fn scan(&self, prefix: &str) -> Result<Vec<String>> {
        let pattern = format!("{}*", escape_glob(&self.real(prefix)));
        let mut keys = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = ::redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) = self
                .query(&cmd, || format!("listing keys below {prefix}"))
                .await?;
            for real in batch {
                let Some(key) = real.strip_prefix(&self.prefix) else {
                    continue;
                };
                if key.ends_with(EXPIRING_SUFFIX)
                    || key.ends_with(EXPIRED_SUFFIX)
                    || key == DEADLINES
                    || key == SLOTS
                {
                    continue;
                }
                keys.insert(key.to_owned());
            }
            if next == 0 {
                return Ok(keys.into_iter().collect());
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl Orchestrator for RedisOrchestrator {
    fn is_process_local(&self) -> bool {
        false
    }

    async fn create(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<bool> {
        let s = self.shared();
        let mut inv = s.key_script(&CREATE, key);
        inv.arg(value);
        Shared::ttl_args(&mut inv, ttl);
        let (created, claimed): (i64, Option<String>) =
            s.invoke(&inv, || format!("create {key}")).await?;
        s.claimed(key, claimed).await;
        Ok(created == 1)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let s = self.shared();
        let mut inv = s.key_script(&COMPARE_AND_SET, key);
        inv.arg(expected).arg(value);
        Shared::ttl_args(&mut inv, ttl);
        let (set, claimed): (i64, Option<String>) =
            s.invoke(&inv, || format!("compare-and-set {key}")).await?;
        s.claimed(key, claimed).await;
        Ok(set == 1)
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        let s = self.shared();
        let inv = s.key_script(&GET, key);
        let (value, claimed): (Option<String>, Option<String>) =
            s.invoke(&inv, || format!("get {key}")).await?;
        s.claimed(key, claimed).await;
        Ok(value)
    }

    async fn take(&self, key: &str) -> Result<Option<String>> {
        let s = self.shared();
        let inv = s.key_script(&TAKE, key);
        let (value, claimed): (Option<String>, Option<String>) =
            s.invoke(&inv, || format!("take {key}")).await?;
        s.claimed(key, claimed).await;
        Ok(value)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let s = self.shared();
        let keys = s.scan(prefix).await?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LIST_BATCH) {
            let mut inv = LIST.prepare_invoke();
            inv.key(&s.deadlines)
                .arg(&s.channel)
                .arg(millis(EXPIRED_COPY_TTL));
            for key in chunk {
                inv.key(s.real(key)).arg(key);
            }
            let (values, claimed): (Vec<Option<String>>, Vec<String>) =
                s.invoke(&inv, || format!("list {prefix}")).await?;
            s.claimed_pairs(&claimed).await;
            for (key, value) in chunk.iter().zip(values) {
                if let Some(value) = value {
                    out.push((key.clone(), value));
                }
            }
        }
        Ok(out)
    }

    async fn acquire_slot(&self, slot: &str, limit: u32) -> Result<bool> {
        let s = self.shared();
        let mut inv = ACQUIRE_SLOT.prepare_invoke();
        inv.key(&s.slots).arg(slot).arg(limit).arg(s.slot_ttl_ms);
        let acquired: i64 = s
            .invoke(&inv, || format!("acquire worker slot {slot}"))
            .await?;
        Ok(acquired == 1)
    }

    async fn release_slot(&self, slot: &str) -> Result<()> {
        let s = self.shared();
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg(&s.slots).arg(slot);
        s.query::<i64>(&cmd, || format!("release worker slot {slot}"))
            .await?;
        Ok(())
    }

    async fn slots_taken(&self) -> Result<u32> {
        let s = self.shared();
        let mut inv = SLOTS_TAKEN.prepare_invoke();
        inv.key(&s.slots);
        let taken: i64 = s.invoke(&inv, || "count worker slots".to_owned()).await?;
        Ok(u32::try_from(taken).unwrap_or(u32::MAX))
    }

    fn watch(&self, prefix: &str, events: &[KeyEvent]) -> Receiver<KeyChange> {
        let rx = self.shared().watchers().add(prefix, events);
        self.shared().sweep_now.notify_one();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_flags_are_added_to_what_is_set() {
        assert_eq!(merged_keyspace_flags("").as_deref(), Some("Kx"));
        assert_eq!(merged_keyspace_flags("Ex").as_deref(), Some("ExK"));
        assert_eq!(merged_keyspace_flags("KA").as_deref(), None);
        assert_eq!(merged_keyspace_flags("xK").as_deref(), None);
        assert_eq!(merged_keyspace_flags("Kg").as_deref(), Some("Kgx"));
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("buildman/prod/"), "buildman/prod/");
        assert_eq!(escape_glob(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }

    #[test]
    fn ttls_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(5)), 5000);
        assert_eq!(millis(Duration::MAX), millis(MAX_TTL));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut config = RedisOrchestratorConfig::new("redis", 6379, "buildman/");
        config.password = Some("hunter2".to_owned());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
