//! Uploaded build archives in Quay's user-file storage (quay-integration.md section 9):
//! which storage location holds them (`USERFILES_LOCATION` in
//! `DISTRIBUTED_STORAGE_CONFIG`), the object's path (`USERFILES_PATH` + file id), and the
//! URL a worker downloads it from, valid 300 s as Quay makes it.
//!
//! Supported drivers: `LocalStorage` (Quay's web tier serves `/userfiles/<id>` without
//! auth) and the S3-compatible ones whose settings are keys (`S3Storage`,
//! `RadosGWStorage`, `RHOCSStorage`, `IBMCloudStorage`, and `GoogleCloudStorage` through
//! Google's S3-compatible XML API with its HMAC keys), presigned with the AWS SDK (SigV4)
//! and static keys, so making a URL needs no network. Any other driver, a missing
//! key pair, and `FEATURE_PROXY_STORAGE` (whose URLs need Quay's own service key) are
//! refused when the config is read, naming what is unsupported.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use serde_yaml_ng::Value;

/// Where GoogleCloudStorage's objects are reached, S3-style.
const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// How long a download URL is good for (Quay's manager asks for 300 s).
pub const URL_LIFETIME: Duration = Duration::from_secs(300);

/// What is wrong with the storage settings, with the key it concerns. Never holds a
/// secret key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserfilesError {
    /// A key is missing or has the wrong shape.
    #[error("{key}: {problem}")]
    Config { key: String, problem: String },
    /// A driver or feature buildman cannot make URLs for.
    #[error("{0}")]
    Unsupported(String),
    /// A file id Quay's web tier would not serve (`[0-9a-zA-Z-]+`).
    #[error("uploaded file id {0:?} is not one Quay makes (letters, digits and '-')")]
    BadFileId(String),
    /// The SDK refused to presign.
    #[error("presigning the download of an uploaded archive: {0}")]
    Presign(String),
}

/// Where uploaded archives are and how workers reach them.
#[derive(Clone, Debug)]
pub struct Userfiles {
    /// `USERFILES_PATH`, default `userfiles/`.
    path: String,
    store: Store,
}

/// The driver of the `USERFILES_LOCATION` location.
#[derive(Clone, Debug)]
enum Store {
    /// Served by Quay's web tier at `<scheme>://<host>/userfiles/<id>`.
    Local {
        base: String,
    },
    S3(S3Location),
}

/// An S3-compatible bucket.
#[derive(Clone)]
struct S3Location {
    bucket: String,
    /// The driver's `storage_path`, the objects' key prefix.
    storage_path: String,
    region: String,
    /// Custom endpoint (RadosGW, IBM, Google, or S3Storage's `endpoint_url`); path-style then.
    endpoint: Option<String>,
    access_key: String,
    secret_key: String,
}

impl std::fmt::Debug for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("storage_path", &self.storage_path)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Userfiles {
    /// Reads the settings from Quay's whole `config.yaml`.
    pub fn from_config(config: &Value) -> Result<Self, UserfilesError> {
        if config.get("FEATURE_PROXY_STORAGE").and_then(Value::as_bool) == Some(true) {
            return Err(UserfilesError::Unsupported(
                "FEATURE_PROXY_STORAGE: proxied storage URLs need Quay's own service key; \
                 buildman cannot make them"
                    .into(),
            ));
        }
        let location =
            optional_string(config, "USERFILES_LOCATION")?.unwrap_or_else(|| "local_us".into());
        let path =
            optional_string(config, "USERFILES_PATH")?.unwrap_or_else(|| "userfiles/".into());
        let key = format!("DISTRIBUTED_STORAGE_CONFIG.{location}");
        let entry = config
            .get("DISTRIBUTED_STORAGE_CONFIG")
            .and_then(|c| c.get(location.as_str()))
            .ok_or_else(|| {
                problem(
                    &key,
                    "missing: USERFILES_LOCATION names no storage location",
                )
            })?;
        let (driver, params) = match entry.as_sequence().map(Vec::as_slice) {
            Some([driver, params]) => (driver.as_str(), params),
            _ => return Err(problem(&key, "expected [DriverName, {settings}]")),
        };
        let store = match driver {
            Some("LocalStorage") => Store::Local {
                base: base_url(config)?,
            },
            Some(
                name @ ("S3Storage" | "RadosGWStorage" | "RHOCSStorage" | "IBMCloudStorage"
                | "GoogleCloudStorage"),
            ) => Store::S3(S3Location::from_params(name, params, &key)?),
            Some(other) => {
                return Err(UserfilesError::Unsupported(format!(
                    "{key}: storage driver {other} is not supported for uploaded archives \
                     (LocalStorage, S3Storage, RadosGWStorage, RHOCSStorage, IBMCloudStorage \
                     and GoogleCloudStorage are)"
                )));
            }
            None => return Err(problem(&format!("{key}[0]"), "expected the driver's name")),
        };
        Ok(Self { path, store })
    }

    /// The storage path of an uploaded file: `USERFILES_PATH` + the id's last component.
    pub fn storage_path(&self, file_id: &str) -> String {
        let base = file_id.rsplit('/').next().unwrap_or(file_id);
        format!("{}{base}", self.path)
    }

    /// The URL a worker downloads an uploaded file from, valid [`URL_LIFETIME`] from `now`.
    pub async fn download_url(
        &self,
        file_id: &str,
        now: SystemTime,
    ) -> Result<String, UserfilesError> {
        let base = file_id.rsplit('/').next().unwrap_or(file_id);
        if base.is_empty() || !base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(UserfilesError::BadFileId(file_id.to_owned()));
        }
        match &self.store {
            Store::Local { base: url } => Ok(format!("{url}/userfiles/{base}")),
            Store::S3(s3) => s3.presign(&self.storage_path(file_id), now).await,
        }
    }
}

impl S3Location {
    /// The settings of one S3-compatible driver (Quay's constructor arguments).
    fn from_params(driver: &str, params: &Value, key: &str) -> Result<Self, UserfilesError> {
        let at = |name: &str| format!("{key}[1].{name}");
        let get = |name: &str| -> Result<Option<String>, UserfilesError> {
            match params.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(problem(&at(name), "expected a string")),
            }
        };
        let need = |name: &str| get(name)?.ok_or_else(|| problem(&at(name), "missing"));
        let s3 = driver == "S3Storage";
        let (bucket, access, secret) = if s3 {
            ("s3_bucket", "s3_access_key", "s3_secret_key")
        } else {
            ("bucket_name", "access_key", "secret_key")
        };
        let (Some(access_key), Some(secret_key)) = (get(access)?, get(secret)?) else {
            return Err(UserfilesError::Unsupported(format!(
                "{key}: {driver} without {access} and {secret} (credentials from the \
                 environment or an instance role) is not supported for uploaded archives yet"
            )));
        };
        let region = get("s3_region")?;
        let endpoint = if driver == "GoogleCloudStorage" {
            // Quay's driver has no host setting: Google's XML API, which takes SigV4 URLs
            // signed with HMAC keys (Quay's boto signs V2 ones; either works).
            Some(GOOGLE_ENDPOINT.to_owned())
        } else if s3 {
            match (&region, get("endpoint_url")?, get("host")?) {
                (Some(_), _, _) => None,
                (None, Some(url), _) => Some(url),
                (None, None, Some(host)) => Some(host_url(&host, get("port")?, true)),
                (None, None, None) => None,
            }
        } else {
            let secure = driver == "IBMCloudStorage"
                || params
                    .get("is_secure")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
            Some(host_url(&need("hostname")?, get("port")?, secure))
        };
        Ok(Self {
            bucket: need(bucket)?,
            storage_path: get("storage_path")?.unwrap_or_default(),
            region: region.unwrap_or_else(|| {
                let google = driver == "GoogleCloudStorage";
                (if google { "auto" } else { "us-east-1" }).into()
            }),
            endpoint,
            access_key,
            secret_key,
        })
    }

    /// The object key: Python's `os.path.join(storage_path, path)` without one leading `/`.
    fn object_key(&self, path: &str) -> String {
        let joined = if path.starts_with('/') || self.storage_path.is_empty() {
            path.to_owned()
        } else if self.storage_path.ends_with('/') {
            format!("{}{path}", self.storage_path)
        } else {
            format!("{}/{path}", self.storage_path)
        };
        joined
            .strip_prefix('/')
            .map(str::to_owned)
            .unwrap_or(joined)
    }

    /// A presigned GET of `path` (no network: the keys are static).
    async fn presign(&self, path: &str, now: SystemTime) -> Result<String, UserfilesError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "DISTRIBUTED_STORAGE_CONFIG",
            ));
        if let Some(endpoint) = &self.endpoint {
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        let client = aws_sdk_s3::Client::from_conf(config.build());
        let presigning = PresigningConfig::builder()
            .start_time(now)
            .expires_in(URL_LIFETIME)
            .build()
            .map_err(|e| UserfilesError::Presign(DisplayErrorContext(e).to_string()))?;
        let request = client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(path));
        let presigned = request
            .presigned(presigning)
            .await
            .map_err(|e| UserfilesError::Presign(DisplayErrorContext(e).to_string()))?;
        Ok(presigned.uri().to_owned())
    }
}

/// `<PREFERRED_URL_SCHEME>://<SERVER_HOSTNAME>`.
fn base_url(config: &Value) -> Result<String, UserfilesError> {
    let host = optional_string(config, "SERVER_HOSTNAME")?.ok_or_else(|| {
        problem(
            "SERVER_HOSTNAME",
            "missing: user-file URLs name Quay's host",
        )
    })?;
    let scheme = optional_string(config, "PREFERRED_URL_SCHEME")?.unwrap_or_else(|| "http".into());
    Ok(format!("{scheme}://{host}"))
}

/// `http(s)://host[:port]`, unless `host` already names its scheme.
fn host_url(host: &str, port: Option<String>, secure: bool) -> String {
    let scheme = if secure { "https" } else { "http" };
    let host = if host.contains("://") {
        host.to_owned()
    } else {
        format!("{scheme}://{host}")
    };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// A top-level string key, if set.
fn optional_string(config: &Value, key: &str) -> Result<Option<String>, UserfilesError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(problem(key, "expected a string")),
    }
}

fn problem(key: &str, problem: &str) -> UserfilesError {
    UserfilesError::Config {
        key: key.to_owned(),
        problem: problem.to_owned(),
    }
}
