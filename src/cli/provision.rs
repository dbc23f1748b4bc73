//! `mplink provision`: the queues, subscriptions and rule for local use and tests.

use super::{CliError, ProvisionArgs};
use std::process::ExitCode;

pub(super) async fn provision(args: ProvisionArgs) -> Result<ExitCode, CliError> {
    let sdk = crate::aws::sdk_config(std::time::Duration::from_secs(30)).await;
    let mut topic_arns = args.topic_arns.clone();
    for product in &args.create_topics_for {
        topic_arns.extend(crate::provision::create_marketplace_topics(&sdk, product).await?);
    }
    let spec = crate::provision::ProvisionSpec {
        queue_name: args.queue_name,
        max_receive_count: args.max_receive_count,
        visibility_timeout: std::time::Duration::from_secs(args.visibility_timeout),
        topic_arns: topic_arns.clone(),
        eventbridge_rule: args.eventbridge_rule,
        event_bus: args.event_bus,
        raw_delivery: args.raw_delivery,
    };
    let done = crate::provision::provision(&sdk, &spec).await?;
    if args.json {
        let out = serde_json::json!({
            "queue_url": done.queue_url,
            "queue_arn": done.queue_arn,
            "dead_letter_queue_url": done.dead_letter_queue_url,
            "dead_letter_queue_arn": done.dead_letter_queue_arn,
            "topic_arns": topic_arns,
            "subscription_arns": done.subscription_arns,
            "rule_arn": done.rule_arn,
        });
        println!("{out}");
    } else {
        println!("queue              {}", done.queue_url);
        println!("dead-letter queue  {}", done.dead_letter_queue_url);
        for (topic, sub) in topic_arns.iter().zip(&done.subscription_arns) {
            println!("subscribed to      {topic} ({sub})");
        }
        if let Some(rule) = &done.rule_arn {
            println!("EventBridge rule   {rule}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
