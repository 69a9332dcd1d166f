//! Which AMI a worker instance boots: COREOS_AMI, or the one the Fedora CoreOS stream
//! (COREOS_STREAM_URL, COREOS_CHANNEL) lists for EC2_REGION, looked up at most once an hour.

use std::time::{Duration, Instant};

use buildman_core::config::Ec2Config;
use tokio::sync::Mutex;

use crate::{ExecutorError, Result};

/// How long a looked-up AMI is used before the stream is read again (Quay's cache).
pub const CACHE_FOR: Duration = Duration::from_secs(3600);
/// How long reading the stream may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest stream file read (Fedora's are ~100 KiB).
const MAX_STREAM_BYTES: usize = 4 << 20;
/// The architecture whose image is looked up (Quay's).
const ARCHITECTURE: &str = "x86_64";

/// Where the AMI comes from.
pub enum AmiSource {
    /// COREOS_AMI.
    Fixed(String),
    /// Looked up in a stream file.
    Stream(StreamLookup),
}

/// A Fedora CoreOS stream file and the last AMI read from it.
pub struct StreamLookup {
    url: String,
    region: String,
    http: reqwest::Client,
    cached: Mutex<Option<(Instant, String)>>,
}

impl AmiSource {
    /// The source `config` names (the configuration check makes sure it names one).
    pub fn new(config: &Ec2Config) -> Result<AmiSource> {
        if let Some(ami) = &config.coreos_ami {
            return Ok(AmiSource::Fixed(ami.clone()));
        }
        let Some(base) = &config.coreos_stream_url else {
            return Err(ExecutorError::Failed(
                "no COREOS_AMI and no COREOS_STREAM_URL to look it up: set COREOS_AMI".into(),
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .build()
            .map_err(|e| {
                ExecutorError::Failed(format!("HTTP client for COREOS_STREAM_URL: {e}"))
            })?;
        Ok(AmiSource::Stream(StreamLookup {
            url: format!(
                "{}/{}.json",
                base.trim_end_matches('/'),
                config.coreos_channel
            ),
            region: config.ec2_region.clone(),
            http,
            cached: Mutex::default(),
        }))
    }

    /// The AMI to boot now.
    pub async fn ami(&self) -> Result<String> {
        match self {
            AmiSource::Fixed(ami) => Ok(ami.clone()),
            AmiSource::Stream(stream) => stream.ami().await,
        }
    }
}

impl StreamLookup {
    /// The cached AMI, or a fresh lookup (one at a time: the lock is held across it).
    async fn ami(&self) -> Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some((at, ami)) = cached.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return Ok(ami.clone());
        }
        let ami = self.lookup().await.map_err(|why| {
            ExecutorError::Failed(format!(
                "looking up the Fedora CoreOS AMI for {} in {}: {why}; set COREOS_AMI to the AMI to boot",
                self.region, self.url
            ))
        })?;
        tracing::info!(url = %self.url, region = %self.region, ami, "Fedora CoreOS AMI looked up");
        *cached = Some((Instant::now(), ami.clone()));
        Ok(ami)
    }

    async fn lookup(&self) -> std::result::Result<String, String> {
        let mut response = (self.http.get(&self.url).send().await)
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_STREAM_BYTES {
                return Err(format!("the stream is over {MAX_STREAM_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let stream: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not a stream file: {e}"))?;
        let regions = &stream["architectures"][ARCHITECTURE]["images"]["aws"]["regions"];
        regions[&self.region]["image"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the stream lists no {ARCHITECTURE} image for the region"))
    }
}
