//! Uploaded archives' download URLs from Quay's storage config: Quay's web tier URL for
//! local storage, and presigned GETs that really fetch the object from an S3 (moto).

use std::time::SystemTime;

use buildman_quay::userfiles::{Userfiles, UserfilesError};
use buildman_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

const FILE_ID: &str = "0b4a9e5c-8d1e-4a8e-9d64-3c2f1b0a9e77";

fn parse(yaml: &str) -> Result<Userfiles, UserfilesError> {
    Userfiles::from_config(&serde_yaml_ng::from_str(yaml).expect("yaml"))
}

#[tokio::test]
async fn local_storage_gives_quays_userfiles_route() {
    let files = parse(
        "SERVER_HOSTNAME: quay.example:8443\nPREFERRED_URL_SCHEME: https\n\
         DISTRIBUTED_STORAGE_CONFIG:\n  local_us: [LocalStorage, {storage_path: /datastorage/registry}]\n",
    )
    .expect("config");
    let url = files
        .download_url(FILE_ID, SystemTime::now())
        .await
        .expect("url");
    assert_eq!(
        url,
        format!("https://quay.example:8443/userfiles/{FILE_ID}")
    );
    assert_eq!(
        files.storage_path(&format!("../x/{FILE_ID}")),
        format!("userfiles/{FILE_ID}")
    );
    let err = files
        .download_url("a b", SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(err, UserfilesError::BadFileId("a b".into()));
}

#[test]
fn unsupported_or_incomplete_settings_are_named() {
    for (yaml, expected) in [
        (
            "SERVER_HOSTNAME: q\n",
            "DISTRIBUTED_STORAGE_CONFIG.local_us: missing",
        ),
        (
            "SERVER_HOSTNAME: q\nUSERFILES_LOCATION: eu\nDISTRIBUTED_STORAGE_CONFIG:\n  eu: [AzureStorage, {}]\n",
            "storage driver AzureStorage is not supported",
        ),
        (
            "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: [LocalStorage, {}]\n",
            "SERVER_HOSTNAME: missing",
        ),
        (
            "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: [S3Storage, {s3_bucket: b}]\n",
            "S3Storage without s3_access_key and s3_secret_key",
        ),
        (
            "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: [RadosGWStorage, {access_key: a, secret_key: s, bucket_name: b}]\n",
            "DISTRIBUTED_STORAGE_CONFIG.local_us[1].hostname: missing",
        ),
        ("FEATURE_PROXY_STORAGE: true\n", "FEATURE_PROXY_STORAGE"),
        (
            "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: LocalStorage\n",
            "expected [DriverName, {settings}]",
        ),
    ] {
        let err = parse(yaml).unwrap_err().to_string();
        assert!(err.contains(expected), "{yaml}: {err}");
    }
    let err = parse(&format!(
        "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: [S3Storage, {{s3_access_key: a, s3_secret_key: {SECRET_KEY}}}]\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("s3_bucket: missing"), "{err}");
    assert!(!format!("{err} {err:?}").contains(SECRET_KEY));
}

#[tokio::test]
async fn s3_compatible_drivers_give_presigned_urls_that_fetch_the_upload() {
    let s3 = S3Server::start().await;
    let (host, port) = s3
        .endpoint()
        .trim_start_matches("http://")
        .split_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .expect("host:port");
    let body = b"a build context".to_vec();
    s3.client()
        .put_object()
        .bucket(&s3.bucket)
        .key(format!("registry/userfiles/{FILE_ID}"))
        .body(body.clone().into())
        .send()
        .await
        .expect("upload");
    let b = &s3.bucket;
    for settings in [
        format!(
            "[S3Storage, {{s3_bucket: {b}, storage_path: /registry, s3_access_key: {ACCESS_KEY}, s3_secret_key: {SECRET_KEY}, endpoint_url: '{}'}}]",
            s3.endpoint()
        ),
        format!(
            "[RadosGWStorage, {{bucket_name: {b}, storage_path: /registry/, access_key: {ACCESS_KEY}, secret_key: {SECRET_KEY}, hostname: {host}, port: {port}, is_secure: false}}]"
        ),
    ] {
        let files = parse(&format!(
            "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: {settings}\n"
        ))
        .expect(&settings);
        let url = files
            .download_url(FILE_ID, SystemTime::now())
            .await
            .expect("url");
        assert!(url.contains("X-Amz-Expires=300"), "{url}");
        assert!(!url.contains(SECRET_KEY), "{url}");
        let response = buildman_testkit::http_client()
            .get(&url)
            .send()
            .await
            .expect("download");
        assert!(
            response.status().is_success(),
            "{settings}: {}",
            response.status()
        );
        assert_eq!(
            response.bytes().await.expect("body").to_vec(),
            body,
            "{settings}"
        );
    }
}

#[tokio::test]
async fn google_cloud_storage_gives_a_presigned_url_on_googles_s3_compatible_api() {
    let files = parse(
        "DISTRIBUTED_STORAGE_CONFIG:\n  local_us: [GoogleCloudStorage, {access_key: GOOG1EXAMPLE, \
         secret_key: gsecret, bucket_name: quay-bucket, storage_path: /datastorage/registry}]\n",
    )
    .expect("config");
    let url = files
        .download_url(FILE_ID, SystemTime::now())
        .await
        .expect("url");
    let expected = format!(
        "https://storage.googleapis.com/quay-bucket/datastorage/registry/userfiles/{FILE_ID}?"
    );
    assert!(url.starts_with(&expected), "{url}");
    assert!(url.contains("X-Amz-Credential=GOOG1EXAMPLE%2F"), "{url}");
    assert!(url.contains("%2Fauto%2Fs3%2Faws4_request"), "{url}");
    assert!(url.contains("X-Amz-Expires=300"), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(!url.contains("gsecret"), "{url}");
}
