//! In-process gRPC tests against the real server, with Redis and Kafka unreachable:
//! the scorer must serve with the built-in weights.

mod common;

use common::{closed_port, feedback, TestServer};
use inner_reward_rs::pb::{GetConfigRequest, ScoreActionRequest, ScoreSlateRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_types::StatusExt;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

async fn server() -> TestServer {
    let redis = format!("redis://127.0.0.1:{}/0", closed_port());
    TestServer::start(&redis, &["--max-slate", "5"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_with_builtin_weights_when_dependencies_are_down() {
    let srv = server().await;
    let mut client = srv.client().await;

    // ScoreAction
    let reward = client
        .score_action(ScoreActionRequest {
            feedback: Some(feedback("e-1")),
        })
        .await
        .expect("score_action")
        .into_inner()
        .reward
        .expect("reward");
    let expected = 1.0 + 0.5 * 13.5_f64.ln() + 0.8 * 0.7;
    assert_eq!(reward.event_id, "e-1");
    assert!(close(reward.value, expected), "{reward:?}");
    assert!(close(reward.raw_value, expected));
    assert_eq!(reward.weights_version, 0);
    assert_eq!(reward.segment, "default");
    let parts = reward.parts.expect("parts");
    assert!(close(parts.click, 1.0) && close(parts.skip, 0.0));
    assert!(close(parts.dwell, 0.5 * 13.5_f64.ln()) && close(parts.relevance, 0.56));

    // An unknown segment falls back to default.
    let mut f = feedback("e-vip");
    f.segment = "vip".into();
    let r = client
        .score_action(ScoreActionRequest { feedback: Some(f) })
        .await
        .expect("vip")
        .into_inner()
        .reward
        .expect("reward");
    assert_eq!(r.segment, "default");

    // ScoreSlate: one reward per feedback, in order.
    let slate: Vec<_> = (0..5)
        .map(|i| {
            let mut f = feedback(&format!("e-s{i}"));
            f.position = i;
            f.clicked = i % 2 == 0;
            f.skipped = i % 2 == 1;
            f
        })
        .collect();
    let rewards = client
        .score_slate(ScoreSlateRequest { feedbacks: slate })
        .await
        .expect("score_slate")
        .into_inner()
        .rewards;
    assert_eq!(rewards.len(), 5);
    for (i, r) in rewards.iter().enumerate() {
        assert_eq!(r.event_id, format!("e-s{i}"));
        assert!((-5.0..=5.0).contains(&r.value));
    }
    assert!(rewards[0].value > rewards[1].value, "click beats skip");

    // GetConfig: built-in defaults, with and without a segment.
    for segment in ["", "default", "nope"] {
        let cfg = client
            .get_config(GetConfigRequest {
                segment: segment.into(),
            })
            .await
            .expect("get_config")
            .into_inner();
        assert_eq!(cfg.segment, "default");
        assert_eq!(cfg.version, 0);
        assert_eq!(cfg.source, "builtin-default");
        let w = cfg.weights.expect("weights");
        assert_eq!(
            (w.click, w.dwell, w.skip, w.relevance),
            (1.0, 0.5, -0.3, 0.8)
        );
    }

    // Health: overall and per service.
    let mut health = HealthClient::new(srv.channel().await);
    for service in ["", "rewardloop.v1.InnerReward"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    // Reflection v1 lists the services.
    let mut reflection = ServerReflectionClient::new(srv.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("reflection message")
        .expect("one response");
    let names: Vec<String> = match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    };
    for expected in [
        "rewardloop.v1.InnerReward",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }

    // Metrics endpoint.
    let (status, body) = srv.http_get("/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "ok");
    let (status, body) = srv.http_get("/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("rewardloop_inner_requests_total{code=\"OK\",method=\"ScoreAction\"} 2"));
    assert!(
        body.contains("rewardloop_inner_events_enqueued_total 7"),
        "{body}"
    );
    assert!(body.contains("rewardloop_inner_weights_version{segment=\"default\"} 0"));
    assert!(body.contains("rewardloop_inner_build_info{version=\""));

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let srv = server().await;
    let mut client = srv.client().await;

    let check = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
        let bad = status.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, field);
        assert!(!bad.field_violations[0].description.is_empty());
    };

    let mut f = feedback("e-1");
    f.dwell_seconds = f64::NAN;
    let err = client
        .score_action(ScoreActionRequest { feedback: Some(f) })
        .await
        .expect_err("nan dwell");
    check(err, "feedback.dwell_seconds");

    let err = client
        .score_action(ScoreActionRequest { feedback: None })
        .await
        .expect_err("missing feedback");
    check(err, "feedback");

    let mut slate: Vec<_> = (0..5).map(|i| feedback(&format!("e-{i}"))).collect();
    slate[3].user_id.clear();
    let err = client
        .score_slate(ScoreSlateRequest { feedbacks: slate })
        .await
        .expect_err("empty user id");
    check(err, "feedbacks[3].user_id");

    let err = client
        .score_slate(ScoreSlateRequest { feedbacks: vec![] })
        .await
        .expect_err("empty slate");
    check(err, "feedbacks");

    let too_many: Vec<_> = (0..6).map(|i| feedback(&format!("e-{i}"))).collect();
    let err = client
        .score_slate(ScoreSlateRequest {
            feedbacks: too_many,
        })
        .await
        .expect_err("slate over INNER_REWARD_MAX_SLATE");
    check(err, "feedbacks");

    let mut f = feedback("e-1");
    f.behavior_propensity = 0.0;
    let err = client
        .score_action(ScoreActionRequest { feedback: Some(f) })
        .await
        .expect_err("zero propensity");
    check(err, "feedback.behavior_propensity");

    // Still serving after the errors, and nothing invalid was queued.
    let ok = client
        .score_action(ScoreActionRequest {
            feedback: Some(feedback("e-ok")),
        })
        .await
        .expect("still serving");
    assert!(ok.into_inner().reward.is_some());
    let invalid = srv
        .metric("rewardloop_inner_requests_total{code=\"INVALID_ARGUMENT\",method=\"ScoreSlate\"}")
        .await;
    assert_eq!(invalid, 3.0);
    assert_eq!(
        srv.metric("rewardloop_inner_events_enqueued_total").await,
        1.0
    );
    // Each refusal is counted once by its field; only the accepted feedback is scored.
    for (field, n) in [
        ("dwell_seconds", 1.0),
        ("feedback", 1.0),
        ("user_id", 1.0),
        ("feedbacks", 2.0),
        ("behavior_propensity", 1.0),
        ("event_id", 0.0),
    ] {
        let name = format!("rewardloop_inner_invalid_fields_total{{field=\"{field}\"}}");
        assert_eq!(srv.metric(&name).await, n, "{name}");
    }
    assert_eq!(
        srv.metric("rewardloop_inner_scored_events_total").await,
        1.0
    );
    assert_eq!(
        srv.metric("rewardloop_inner_behavior_propensity_count")
            .await,
        1.0
    );

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_resource_exhausted_and_long_slates_invalid() {
    let redis = format!("redis://127.0.0.1:{}/0", closed_port());
    let srv = TestServer::start(&redis, &["--max-message-bytes", "4096", "--max-slate", "3"]).await;
    let mut client = srv.client().await;
    let mut f = feedback("e-big");
    f.item_id = "x".repeat(5000);
    let err = client
        .score_action(ScoreActionRequest { feedback: Some(f) })
        .await
        .expect_err("too big");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("INNER_REWARD_MAX_MESSAGE_BYTES (4096 bytes)"),
        "{err:?}"
    );
    let err = client
        .score_slate(ScoreSlateRequest {
            feedbacks: vec![feedback("e-1"); 4],
        })
        .await
        .expect_err("slate too long");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 3"), "{err:?}");
    // Within both limits: scored.
    let ok = client
        .score_slate(ScoreSlateRequest {
            feedbacks: vec![feedback("e-1"); 3],
        })
        .await
        .expect("fits");
    assert_eq!(ok.into_inner().rewards.len(), 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_grpc_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key_pair.serialize_pem()).expect("write key");
    let redis = format!("redis://127.0.0.1:{}/0", closed_port());
    let (cert_arg, key_arg) = (cert_path.to_string_lossy(), key_path.to_string_lossy());
    let srv = TestServer::start(&redis, &["--tls-cert", &cert_arg, "--tls-key", &key_arg]).await;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert.pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", srv.grpc))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS handshake");
    let mut client = inner_reward_rs::pb::inner_reward_client::InnerRewardClient::new(channel);
    let r = client
        .score_action(ScoreActionRequest {
            feedback: Some(feedback("e-tls")),
        })
        .await
        .expect("scored over TLS")
        .into_inner()
        .reward
        .expect("reward");
    assert_eq!(r.event_id, "e-tls");

    // A plaintext client cannot talk to it.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", srv.grpc))
        .expect("uri")
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = inner_reward_rs::pb::inner_reward_client::InnerRewardClient::new(ch);
        assert!(c.get_config(GetConfigRequest::default()).await.is_err());
    }
    srv.stop().await;
}
