//! `mplink provision`: creates the queue, its dead-letter queue and redrive policy, the queue
//! policy, and the SNS subscriptions and EventBridge rule that feed it. Idempotent. Meant for
//! local use and tests; production uses the deploy templates.

use crate::aws::error_text;
use crate::topics::{ENTITLEMENT_TOPIC_PREFIX, SUBSCRIPTION_TOPIC_PREFIX};
use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;

/// Suffix added to the queue name for its dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";
/// Id of the EventBridge target pointing at the queue.
pub const EVENTBRIDGE_TARGET_ID: &str = "mplink-queue";

/// What to create.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    /// Name of the source queue.
    pub queue_name: String,
    /// Receives before a message moves to the dead-letter queue.
    pub max_receive_count: u32,
    /// The queue's default visibility timeout.
    pub visibility_timeout: Duration,
    /// SNS topics to subscribe the queue to.
    pub topic_arns: Vec<String>,
    /// Name of an EventBridge rule for `aws.agreement-marketplace` targeting the queue.
    pub eventbridge_rule: Option<String>,
    /// The event bus the rule is on (None: the default bus, where AWS Marketplace sends).
    pub event_bus: Option<String>,
    /// Subscribe with SNS raw message delivery.
    pub raw_delivery: bool,
}

/// What exists afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// Source queue URL.
    pub queue_url: String,
    /// Source queue ARN.
    pub queue_arn: String,
    /// Dead-letter queue URL.
    pub dead_letter_queue_url: String,
    /// Dead-letter queue ARN.
    pub dead_letter_queue_arn: String,
    /// SNS subscription ARNs, one per topic.
    pub subscription_arns: Vec<String>,
    /// The EventBridge rule's ARN, if one was asked for.
    pub rule_arn: Option<String>,
}

/// A provisioning step AWS refused.
#[derive(Debug, Error)]
#[error("provisioning failed while {step}: {detail}")]
pub struct ProvisionError {
    /// What was being done.
    pub step: String,
    /// AWS's answer.
    pub detail: String,
}

fn fail<E: std::error::Error>(step: impl Into<String>) -> impl FnOnce(E) -> ProvisionError {
    let step = step.into();
    move |e| ProvisionError {
        step,
        detail: error_text(&e),
    }
}

fn missing(step: &str) -> ProvisionError {
    ProvisionError {
        step: step.to_string(),
        detail: "AWS returned no value".to_string(),
    }
}

/// Creates (or updates) everything in `spec`.
pub async fn provision(
    sdk: &SdkConfig,
    spec: &ProvisionSpec,
) -> Result<Provisioned, ProvisionError> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let dlq_name = format!("{}{DEAD_LETTER_SUFFIX}", spec.queue_name);
    // Keep dead letters longer than the source keeps messages (14 days vs 4).
    let dlq_attrs = HashMap::from([(
        QueueAttributeName::MessageRetentionPeriod,
        "1209600".to_string(),
    )]);
    let dead_letter_queue_url = ensure_queue(&sqs, &dlq_name, dlq_attrs).await?;
    let dead_letter_queue_arn = queue_arn(&sqs, &dead_letter_queue_url).await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dead_letter_queue_arn,
        "maxReceiveCount": spec.max_receive_count,
    });
    let attrs = HashMap::from([
        (QueueAttributeName::RedrivePolicy, redrive.to_string()),
        (
            QueueAttributeName::VisibilityTimeout,
            spec.visibility_timeout.as_secs().to_string(),
        ),
        (
            QueueAttributeName::ReceiveMessageWaitTimeSeconds,
            "20".to_string(),
        ),
        (
            QueueAttributeName::MessageRetentionPeriod,
            "345600".to_string(),
        ),
    ]);
    let queue_url = ensure_queue(&sqs, &spec.queue_name, attrs).await?;
    let queue_arn = queue_arn(&sqs, &queue_url).await?;

    let rule_arn = match &spec.eventbridge_rule {
        Some(rule) => {
            let events = aws_sdk_eventbridge::Client::new(sdk);
            let pattern = crate::event::eventbridge_rule_pattern().to_string();
            let out = events
                .put_rule()
                .set_event_bus_name(spec.event_bus.clone())
                .name(rule)
                .event_pattern(pattern)
                .state(aws_sdk_eventbridge::types::RuleState::Enabled)
                .description("AWS Marketplace agreement and license events for mplink")
                .send()
                .await
                .map_err(fail(format!("creating EventBridge rule {rule}")))?;
            Some(
                out.rule_arn
                    .ok_or_else(|| missing("creating EventBridge rule"))?,
            )
        }
        None => None,
    };

    // The policy must be in place before anything publishes: SNS drops what the queue refuses.
    let policy = queue_policy(&queue_arn, &spec.topic_arns, rule_arn.as_deref());
    sqs.set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .map_err(fail("setting the queue policy"))?;

    if let (Some(rule), Some(_)) = (&spec.eventbridge_rule, &rule_arn) {
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id(EVENTBRIDGE_TARGET_ID)
            .arn(&queue_arn)
            .build()
            .map_err(fail("building the EventBridge target"))?;
        let out = events
            .put_targets()
            .set_event_bus_name(spec.event_bus.clone())
            .rule(rule)
            .targets(target)
            .send()
            .await
            .map_err(fail(format!("targeting rule {rule} at the queue")))?;
        if out.failed_entry_count > 0 {
            return Err(ProvisionError {
                step: format!("targeting rule {rule} at the queue"),
                detail: format!("{:?}", out.failed_entries()),
            });
        }
    }

    let sns = aws_sdk_sns::Client::new(sdk);
    let mut subscription_arns = Vec::new();
    for topic in &spec.topic_arns {
        let out = sns
            .subscribe()
            .topic_arn(topic)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", spec.raw_delivery.to_string())
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(fail(format!("subscribing the queue to {topic}")))?;
        subscription_arns.push(
            out.subscription_arn
                .ok_or_else(|| missing("subscribing the queue"))?,
        );
    }

    Ok(Provisioned {
        queue_url,
        queue_arn,
        dead_letter_queue_url,
        dead_letter_queue_arn,
        subscription_arns,
        rule_arn,
    })
}

/// Creates the two legacy marketplace topics of a product (AWS owns them in production; this
/// is for LocalStack) and returns their ARNs: subscription topic first.
pub async fn create_marketplace_topics(
    sdk: &SdkConfig,
    product_code: &str,
) -> Result<Vec<String>, ProvisionError> {
    let sns = aws_sdk_sns::Client::new(sdk);
    let mut arns = Vec::new();
    for prefix in [SUBSCRIPTION_TOPIC_PREFIX, ENTITLEMENT_TOPIC_PREFIX] {
        let name = format!("{prefix}{product_code}");
        let out = sns
            .create_topic()
            .name(&name)
            .send()
            .await
            .map_err(fail(format!("creating topic {name}")))?;
        arns.push(out.topic_arn.ok_or_else(|| missing("creating a topic"))?);
    }
    Ok(arns)
}

async fn ensure_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attrs: HashMap<QueueAttributeName, String>,
) -> Result<String, ProvisionError> {
    if let Ok(found) = sqs.get_queue_url().queue_name(name).send().await {
        if let Some(url) = found.queue_url {
            sqs.set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attrs))
                .send()
                .await
                .map_err(fail(format!("updating queue {name}")))?;
            return Ok(url);
        }
    }
    let out = sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attrs))
        .send()
        .await
        .map_err(fail(format!("creating queue {name}")))?;
    out.queue_url.ok_or_else(|| missing("creating a queue"))
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, ProvisionError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(fail(format!("reading the ARN of {url}")))?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| missing("reading a queue ARN"))
}

/// The queue policy letting the marketplace topics and the EventBridge rule send to the queue.
pub fn queue_policy(
    queue_arn: &str,
    topic_arns: &[String],
    rule_arn: Option<&str>,
) -> serde_json::Value {
    let mut statements = Vec::new();
    if !topic_arns.is_empty() {
        statements.push(serde_json::json!({
            "Sid": "mplink-sns",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arns } },
        }));
    }
    if let Some(rule) = rule_arn {
        statements.push(serde_json::json!({
            "Sid": "mplink-eventbridge",
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": rule } },
        }));
    }
    serde_json::json!({ "Version": "2012-10-17", "Statement": statements })
}
