//! Standard gRPC tooling works against a node: the health service reports every drcut service
//! as serving, and reflection lists and describes them (what grpcurl and load balancers use).
//! And drctl behaves in a shell pipeline: `drctl status | head -1` ends quietly.

use anyhow::{Context, Result, ensure};
use drcut_tests::Cluster;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_describe_the_services() -> Result<()> {
    let cluster = Cluster::builder(15).nodes(1).start().await?;
    cluster.wait_leader(&[1]).await?;
    let uri = format!("http://{}", cluster.addr(1));
    let channel = tonic::transport::Endpoint::from_shared(uri)?.connect().await?;

    tracing::info!("--- health: every service serving");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "drcut.v1.Control", "drcut.v1.AgentLink", "drcut.v1.RaftTransport"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner();
        ensure!(r.status == ServingStatus::Serving as i32, "{service:?} is {:?}", r.status);
    }
    let unknown = health.check(HealthCheckRequest { service: "drcut.v1.Nope".into() }).await;
    ensure!(unknown.is_err(), "an unknown service must not report serving");

    tracing::info!("--- reflection: list and describe");
    let mut refl = ServerReflectionClient::new(channel);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("drcut.v1.Control".into())),
        },
    ];
    let mut replies = refl.server_reflection_info(tokio_stream::iter(reqs)).await?.into_inner();
    let first = replies.next().await.context("no reply to list_services")??;
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        anyhow::bail!("unexpected reply {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["drcut.v1.Control", "drcut.v1.AgentLink", "drcut.v1.RaftTransport", "grpc.health.v1.Health"] {
        ensure!(names.iter().any(|n| n == want), "{want} not listed: {names:?}");
    }
    let second = replies.next().await.context("no reply to file_containing_symbol")??;
    let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
        anyhow::bail!("unexpected reply {second:?}");
    };
    ensure!(!fd.file_descriptor_proto.is_empty(), "no descriptor for drcut.v1.Control");

    // The reader goes away before drctl has printed everything (`| head -c0`).
    let mut child = std::process::Command::new(drcut_tests::bins::bin_path(drcut_tests::bins::DRCTL)?)
        .args(["--endpoint", &cluster.endpoints(&[1]), "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(141) && !stderr.contains("panicked"), "drctl into a closed pipe: {out:?}");
    cluster.finish();
    Ok(())
}
