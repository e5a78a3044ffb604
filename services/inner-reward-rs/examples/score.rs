//! Smoke client: sends N ScoreAction calls and one GetConfig to a running scorer.
//!
//! ```bash
//! cargo run --release --example score -- http://127.0.0.1:50051 3 smoke-user
//! ```

use inner_reward_rs::pb::inner_reward_client::InnerRewardClient;
use inner_reward_rs::pb::{Feedback, GetConfigRequest, ScoreActionRequest};
use std::time::{SystemTime, UNIX_EPOCH};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let n: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let user = args.next().unwrap_or_else(|| "smoke-user".into());
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;

    let mut client = InnerRewardClient::connect(addr).await?;
    let config = client
        .get_config(GetConfigRequest::default())
        .await?
        .into_inner();
    println!("config: {config:?}");
    for i in 0..n {
        let feedback = Feedback {
            event_id: format!("smoke-{now}-{i}"),
            request_id: format!("smoke-req-{now}"),
            user_id: user.clone(),
            session_id: format!("smoke-session-{now}"),
            item_id: format!("item-{i}"),
            position: i,
            event_time_ms: now,
            clicked: i % 2 == 0,
            dwell_seconds: f64::from(i) * 3.0,
            skipped: i % 2 == 1,
            predicted_relevance: 0.5,
            behavior_propensity: 0.25,
            segment: String::new(),
        };
        let reward = client
            .score_action(ScoreActionRequest {
                feedback: Some(feedback),
            })
            .await?
            .into_inner()
            .reward;
        println!("reward: {reward:?}");
    }
    Ok(())
}
