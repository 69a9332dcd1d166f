//! The EC2 executor (Quay's `ec2`): one instance per worker, booting Fedora CoreOS with the
//! Ignition document as user data, on the official AWS SDK.
//!
//! Instances carry Quay's tags (Name, RegistrationToken, BuildUUID) plus [`MANAGER_TAG`],
//! naming the manager deployment by the address its workers dial: every manager of the
//! deployment shares it, so the orphan reaper of any of them finds the instances of one
//! that crashed, and never touches Quay's instances or another deployment's.

mod ami;
mod client;
mod errors;
mod watch;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, Instance, InstanceNetworkInterfaceSpecification,
    InstanceType, ResourceType, ShutdownBehavior, Tag, TagSpecification, VolumeType,
};
use base64::Engine;
use buildman_core::config::{Ec2Config, ExecutorConfig, ExecutorSpecific};
use tokio::sync::mpsc;

pub use client::client;

use self::ami::AmiSource;
use self::errors::failed;
use self::watch::Watched;
use crate::ignition::WorkerMachine;
use crate::{
    Executor, ExecutorError, FailureReports, OwnedWorker, Result, StartRequest, WorkerFailure,
};

/// The Name tag of every worker instance (Quay's; the running count filters on it).
pub const NAME: &str = "Quay Ephemeral Builder";
/// The tag naming the manager deployment that started an instance (buildman's).
pub const MANAGER_TAG: &str = "BuildmanManager";
/// EC2_INSTANCE_TYPE when unset (Quay requires the key): 2 vCPU, 8 GiB, not burstable.
pub const DEFAULT_INSTANCE_TYPE: &str = "m5.large";
/// How often the instances not yet stopped are checked for an early end.
pub const DEFAULT_FAILURE_POLL: Duration = Duration::from_secs(5);
/// EC2's limit on user data (before base64).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// What the executor needs beyond its configuration.
#[derive(Clone, Debug)]
pub struct Ec2Settings {
    /// The [`MANAGER_TAG`] value: the address workers dial (shared by the deployment).
    pub manager: String,
    /// How often started instances are checked for an early end.
    pub failure_poll: Duration,
}

impl Ec2Settings {
    /// Settings for the deployment whose workers dial `manager`.
    pub fn new(manager: impl Into<String>) -> Self {
        Ec2Settings {
            manager: manager.into(),
            failure_poll: DEFAULT_FAILURE_POLL,
        }
    }
}

/// Starts workers as EC2 instances.
pub struct Ec2Executor {
    client: Client,
    config: ExecutorConfig,
    ec2: Ec2Config,
    manager: String,
    ami: AmiSource,
    watched: Watched,
    failures: FailureReports,
}

impl Ec2Executor {
    /// An executor for `config` (an ec2 one). Nothing is asked of EC2 yet: credentials
    /// are resolved and checked on the first call.
    pub async fn connect(config: &ExecutorConfig, settings: Ec2Settings) -> Result<Self> {
        let ExecutorSpecific::Ec2(ec2) = &config.specific else {
            return Err(ExecutorError::Failed(format!(
                "executor {:?} is not an ec2 executor",
                config.name
            )));
        };
        let ami = AmiSource::new(ec2)?;
        let client = client::client(ec2).await;
        let (report, failures) = FailureReports::channel();
        let watched = Watched::default();
        watched.spawn(client.clone(), report, settings.failure_poll);
        Ok(Ec2Executor {
            ami,
            client,
            config: config.clone(),
            ec2: ec2.clone(),
            manager: settings.manager,
            watched,
            failures,
        })
    }

    /// The Ignition document for `request`, base64 as RunInstances wants it.
    fn user_data(&self, request: &StartRequest) -> Result<String> {
        let document = WorkerMachine::for_job(&self.config, request).to_json();
        if document.len() > USER_DATA_LIMIT {
            return Err(ExecutorError::Failed(format!(
                "the worker's Ignition document is {} bytes, over EC2's {USER_DATA_LIMIT}-byte user-data limit: shorten CA_CERT or SSH_AUTHORIZED_KEYS",
                document.len()
            )));
        }
        Ok(base64::engine::general_purpose::STANDARD.encode(document))
    }

    /// Quay's tags plus the manager's.
    fn tags(&self, request: &StartRequest) -> TagSpecification {
        let token: String = request.token.chars().take(36).collect();
        let tags = [
            ("Name", NAME.to_owned()),
            ("RegistrationToken", token),
            ("BuildUUID", request.build_id.to_string()),
            (MANAGER_TAG, self.manager.clone()),
        ];
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                (tags.into_iter())
                    .map(|(key, value)| Tag::builder().key(key).value(value).build())
                    .collect(),
            ))
            .build()
    }

    /// One interface on EC2_VPC_SUBNET_ID with a public address, when a subnet is set.
    fn interfaces(&self) -> Option<Vec<InstanceNetworkInterfaceSpecification>> {
        let subnet = self.ec2.ec2_vpc_subnet_id.as_ref()?;
        Some(vec![
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(subnet)
                .set_groups(Some(self.ec2.ec2_security_group_ids.clone()))
                .associate_public_ip_address(true)
                .build(),
        ])
    }

    /// `/dev/xvda`, BLOCK_DEVICE_SIZE GiB of gp2, deleted with the instance.
    fn disk(&self) -> Result<BlockDeviceMapping> {
        let size = i32::try_from(self.ec2.block_device_size).map_err(|_| {
            ExecutorError::Failed(format!(
                "BLOCK_DEVICE_SIZE {} GiB is more than EC2 allows",
                self.ec2.block_device_size
            ))
        })?;
        let ebs = EbsBlockDevice::builder()
            .volume_size(size)
            .volume_type(VolumeType::Gp2)
            .delete_on_termination(true)
            .build();
        Ok(BlockDeviceMapping::builder()
            .device_name("/dev/xvda")
            .ebs(ebs)
            .build())
    }

    /// Terminates instances; those already gone count as terminated.
    async fn terminate(&self, ids: &[String]) -> Result<()> {
        let answer = (self.client.terminate_instances())
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await;
        let terminating = match answer {
            Ok(answer) => answer,
            Err(e)
                if aws_sdk_ec2::error::ProvideErrorMetadata::code(&e)
                    == Some("InvalidInstanceID.NotFound") =>
            {
                return Ok(());
            }
            Err(e) => return Err(failed("TerminateInstances")(e)),
        };
        let listed: Vec<&str> = (terminating.terminating_instances().iter())
            .filter_map(|i| i.instance_id())
            .collect();
        match ids.iter().find(|id| !listed.contains(&id.as_str())) {
            Some(id) => Err(ExecutorError::Failed(format!(
                "EC2 TerminateInstances did not terminate {id}"
            ))),
            None => Ok(()),
        }
    }

    /// The instances with the Name tag (and `more` filters) that are pending or running.
    async fn live(&self, more: Option<Filter>) -> Result<Vec<Instance>> {
        let mut filters = vec![
            filter("tag:Name", [NAME]),
            filter("instance-state-name", ["pending", "running"]),
        ];
        filters.extend(more);
        let found = describe(&self.client, filters).await?;
        // The API's state names are lower case (Quay compares with "Running" and counts
        // nothing); checked here too, whatever an EC2-compatible endpoint filters.
        Ok(found
            .into_iter()
            .filter(|i| {
                (i.state().and_then(|s| s.name()))
                    .is_some_and(|s| matches!(s.as_str(), "pending" | "running"))
            })
            .collect())
    }
}

/// A DescribeInstances filter.
fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_owned).collect()))
        .build()
}

/// Every instance `filters` match, page after page.
async fn describe(client: &Client, filters: Vec<Filter>) -> Result<Vec<Instance>> {
    let mut pages = (client.describe_instances())
        .set_filters(Some(filters))
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(failed("DescribeInstances"))?;
        for reservation in page.reservations.unwrap_or_default() {
            found.extend(reservation.instances.unwrap_or_default());
        }
    }
    Ok(found)
}

/// The value of an instance's tag.
fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    (instance.tags().iter())
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[async_trait]
impl Executor for Ec2Executor {
    fn kind(&self) -> &'static str {
        "ec2"
    }

    async fn start(&self, request: &StartRequest) -> Result<String> {
        let ami = self.ami.ami().await?;
        let instance_type =
            (self.ec2.ec2_instance_type.as_deref()).unwrap_or(DEFAULT_INSTANCE_TYPE);
        let run = (self.client.run_instances())
            .image_id(&ami)
            .instance_type(InstanceType::from(instance_type))
            .set_key_name(self.ec2.ec2_key_name.clone())
            .user_data(self.user_data(request)?)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .block_device_mappings(self.disk()?)
            .set_network_interfaces(self.interfaces())
            .min_count(1)
            .max_count(1)
            .tag_specifications(self.tags(request));
        let reservation = run.send().await.map_err(failed("RunInstances"))?;
        let ids: Vec<String> = (reservation.instances().iter())
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        let [id] = ids.as_slice() else {
            // MinCount = MaxCount = 1 makes this EC2's bug; none may be left running.
            if !ids.is_empty() {
                let _ = self.terminate(&ids).await;
            }
            return Err(ExecutorError::Failed(format!(
                "EC2 RunInstances started {} instances instead of one",
                ids.len()
            )));
        };
        self.watched.add(id, request.build_id);
        tracing::info!(build_id = %request.build_id, execution_id = %id, ami, instance_type, "started EC2 instance");
        Ok(id.clone())
    }

    /// TerminateInstances; an instance EC2 does not know (any more) is stopped already.
    /// With DEBUG the instance is kept: it powers itself off when its worker ends or after
    /// MAX_LIFETIME_S.
    async fn stop(&self, execution_id: &str) -> Result<()> {
        if self.config.debug {
            self.watched.remove(execution_id);
            tracing::info!(execution_id, "DEBUG: EC2 instance kept");
            return Ok(());
        }
        self.terminate(&[execution_id.to_owned()]).await?;
        self.watched.remove(execution_id);
        Ok(())
    }

    /// Instances with the Name tag, pending or running, whoever started them (Quay's count).
    async fn running(&self) -> Result<usize> {
        Ok(self.live(None).await?.len())
    }

    /// Instances with the Name tag and this deployment's [`MANAGER_TAG`], pending or running.
    async fn owned(&self) -> Result<Vec<OwnedWorker>> {
        let mine = filter(&format!("tag:{MANAGER_TAG}"), [self.manager.as_str()]);
        let instances = self.live(Some(mine)).await?;
        Ok((instances.iter())
            .filter_map(|i| {
                Some(OwnedWorker {
                    execution_id: i.instance_id()?.to_owned(),
                    build_id: tag(i, "BuildUUID").and_then(|b| b.parse().ok()),
                    started_at: (i.launch_time())
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect())
    }

    fn failures(&self) -> Option<mpsc::Receiver<WorkerFailure>> {
        self.failures.take()
    }
}
