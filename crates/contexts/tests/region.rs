//! S3 storage with no region anywhere is refused at start, naming the key to set. A test
//! binary of its own: it clears the AWS environment the SDK reads.

use buildman_contexts::S3Store;
use buildman_core::config::S3StorageConfig;

#[tokio::test]
async fn s3_without_a_region_is_refused_with_the_key_to_set() {
    let spool = tempfile::tempdir().expect("temp dir");
    let config = S3StorageConfig {
        bucket: "contexts".into(),
        region: None,
        endpoint_url: Some("http://127.0.0.1:9".into()),
        access_key: Some("key".into()),
        secret_key: Some("secret".into()),
        prefix: String::new(),
        path_style: true,
    };
    // The SDK also looks in the environment and ~/.aws: keep it from finding a region there.
    // SAFETY: the only test of this binary, before it starts any thread.
    unsafe {
        std::env::remove_var("AWS_REGION");
        std::env::remove_var("AWS_DEFAULT_REGION");
        std::env::set_var("AWS_CONFIG_FILE", spool.path().join("none"));
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let refused = S3Store::connect(&config, spool.path()).await;
    let message = refused.expect_err("no region").to_string();
    assert!(message.contains("set REGION"), "{message}");
}
