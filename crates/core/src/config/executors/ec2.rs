//! The ec2 executor: an EC2 instance running the worker.

use super::require_together;
use crate::config::diagnostics::{Section, http_url, to_string};
use crate::config::redact::debug_redacting;

/// The ec2 executor's keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Ec2Config {
    /// EC2_REGION (required).
    pub ec2_region: String,
    /// COREOS_AMI; when absent, looked up from the Fedora CoreOS stream at
    /// COREOS_STREAM_URL (one of the two is required).
    pub coreos_ami: Option<String>,
    /// COREOS_CHANNEL (default `stable`): the stream looked up.
    pub coreos_channel: String,
    /// COREOS_STREAM_URL (buildman's key): the base URL of the Fedora CoreOS stream files
    /// (`<url>/<channel>.json`), e.g. `https://builds.coreos.fedoraproject.org/streams`.
    pub coreos_stream_url: Option<String>,
    /// EC2_ENDPOINT_URL (buildman's key): the EC2 API endpoint, for EC2-compatible clouds
    /// and tests; the region's AWS endpoint when absent.
    pub ec2_endpoint_url: Option<String>,
    /// AWS_ACCESS_KEY.
    pub aws_access_key: Option<String>,
    /// AWS_SECRET_KEY (redacted in Debug).
    pub aws_secret_key: Option<String>,
    /// EC2_INSTANCE_TYPE; `None` lets the executor choose.
    pub ec2_instance_type: Option<String>,
    /// EC2_VPC_SUBNET_ID (needs EC2_SECURITY_GROUP_IDS).
    pub ec2_vpc_subnet_id: Option<String>,
    /// EC2_SECURITY_GROUP_IDS.
    pub ec2_security_group_ids: Vec<String>,
    /// EC2_KEY_NAME.
    pub ec2_key_name: Option<String>,
    /// BLOCK_DEVICE_SIZE in GiB (default 48).
    pub block_device_size: u32,
}

debug_redacting!(Ec2Config {
    ec2_region, coreos_ami, coreos_channel, coreos_stream_url, ec2_endpoint_url, aws_access_key,
    ec2_instance_type, ec2_vpc_subnet_id, ec2_security_group_ids, ec2_key_name,
    block_device_size,
} secret { aws_secret_key });

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            ec2_region: String::new(),
            coreos_ami: None,
            coreos_channel: "stable".to_owned(),
            coreos_stream_url: None,
            ec2_endpoint_url: None,
            aws_access_key: None,
            aws_secret_key: None,
            ec2_instance_type: None,
            ec2_vpc_subnet_id: None,
            ec2_security_group_ids: Vec::new(),
            ec2_key_name: None,
            block_device_size: 48,
        }
    }
}

pub(super) fn parse_ec2(s: &mut Section, d: Ec2Config) -> Ec2Config {
    let config = Ec2Config {
        ec2_region: s.required("EC2_REGION", to_string).unwrap_or(d.ec2_region),
        coreos_ami: s.string("COREOS_AMI"),
        coreos_channel: s.string("COREOS_CHANNEL").unwrap_or(d.coreos_channel),
        coreos_stream_url: s.get("COREOS_STREAM_URL", http_url),
        ec2_endpoint_url: s.get("EC2_ENDPOINT_URL", http_url),
        aws_access_key: s.string("AWS_ACCESS_KEY"),
        aws_secret_key: s.string("AWS_SECRET_KEY"),
        ec2_instance_type: s.string("EC2_INSTANCE_TYPE"),
        ec2_vpc_subnet_id: s.string("EC2_VPC_SUBNET_ID"),
        ec2_security_group_ids: s.strings("EC2_SECURITY_GROUP_IDS").unwrap_or_default(),
        ec2_key_name: s.string("EC2_KEY_NAME"),
        block_device_size: (s.u32_at_least("BLOCK_DEVICE_SIZE", 1)).unwrap_or(d.block_device_size),
    };
    require_together(
        s,
        "EC2_VPC_SUBNET_ID",
        config.ec2_vpc_subnet_id.is_some(),
        "EC2_SECURITY_GROUP_IDS",
        !config.ec2_security_group_ids.is_empty(),
    );
    if config.coreos_ami.is_none() && config.coreos_stream_url.is_none() {
        s.r.error(
            &s.path,
            "missing required key COREOS_AMI (the Fedora CoreOS AMI of EC2_REGION); \
             or set COREOS_STREAM_URL to look it up from the Fedora CoreOS stream",
        );
    }
    require_together(
        s,
        "AWS_ACCESS_KEY",
        config.aws_access_key.is_some(),
        "AWS_SECRET_KEY",
        config.aws_secret_key.is_some(),
    );
    require_together(
        s,
        "AWS_SECRET_KEY",
        config.aws_secret_key.is_some(),
        "AWS_ACCESS_KEY",
        config.aws_access_key.is_some(),
    );
    config
}
