//! Moving dead letters back to their source: SQS's native move task, or receive → send →
//! delete with the original identity signed (see [`crate::redrive`]).

use super::*;

/// The source queue that names `dlq_url` as its dead-letter queue.
pub async fn source_of(client: &SqsClient, dlq_url: &str) -> Result<String, DlqError> {
    let out = client
        .list_dead_letter_source_queues()
        .queue_url(dlq_url)
        .send()
        .await
        .map_err(sqs("ListDeadLetterSourceQueues"))?;
    out.queue_urls
        .into_iter()
        .next()
        .ok_or_else(|| DlqError::NoSource(dlq_url.to_string()))
}

async fn queue_arn(client: &SqsClient, url: &str) -> Result<String, DlqError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(sqs("GetQueueAttributes"))?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or(DlqError::Sqs {
            op: "GetQueueAttributes",
            detail: "no QueueArn".into(),
        })
}

/// Moves every dead letter back with SQS's own StartMessageMoveTask (to `to`, or to the
/// original source queues), waiting for the task and reporting progress; returns how many moved.
pub async fn redrive_native(
    client: &SqsClient,
    dlq_url: &str,
    to: Option<&str>,
    progress: &mut Progress,
) -> Result<u64, DlqError> {
    let source_arn = queue_arn(client, dlq_url).await?;
    let destination_arn = match to {
        Some(url) => Some(queue_arn(client, url).await?),
        None => None,
    };
    let total = depth(client, dlq_url).await?;
    progress.start(total);
    client
        .start_message_move_task()
        .source_arn(&source_arn)
        .set_destination_arn(destination_arn)
        .send()
        .await
        .map_err(sqs("StartMessageMoveTask"))?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tasks = client
            .list_message_move_tasks()
            .source_arn(&source_arn)
            .max_results(1)
            .send()
            .await
            .map_err(sqs("ListMessageMoveTasks"))?;
        let Some(task) = tasks.results().first() else {
            continue;
        };
        let moved = task.approximate_number_of_messages_moved() as u64;
        progress.tick(moved);
        match task.status().unwrap_or_default() {
            "RUNNING" | "CANCELLING" => continue,
            "COMPLETED" => {
                progress.finish(moved);
                return Ok(moved);
            }
            other => {
                return Err(DlqError::MoveTask {
                    status: other.to_string(),
                    detail: task
                        .failure_reason()
                        .unwrap_or("no reason given")
                        .to_string(),
                })
            }
        }
    }
}

/// Moves dead letters back by receive → send → delete, for emulators and queues without the
/// native move. The original message id and SentTimestamp travel as message attributes, so a
/// raw delivery keeps its identity and event time.
pub async fn redrive_portable(
    client: &SqsClient,
    dlq_url: &str,
    to: &str,
    key: &RedriveKey,
    progress: &mut Progress,
) -> Result<u64, DlqError> {
    let total = depth(client, dlq_url).await?;
    progress.start(total);
    let mut moved = 0u64;
    let mut seen = HashSet::new();
    loop {
        let letters = receive_pass(client, dlq_url, SQS_MAX_BATCH, &mut seen, Some(key)).await?;
        if letters.is_empty() {
            break;
        }
        let entries = letters
            .iter()
            .enumerate()
            .map(|(i, l)| portable_entry(i, l, key))
            .collect::<Result<Vec<SendMessageBatchRequestEntry>, DlqError>>()?;
        let out = client
            .send_message_batch()
            .queue_url(to)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs("SendMessageBatch"))?;
        // Delete only what the source queue took; the rest stays in the dead-letter queue.
        let sent: Vec<&Letter> = out
            .successful()
            .iter()
            .filter_map(|s| s.id().parse::<usize>().ok().and_then(|i| letters.get(i)))
            .collect();
        let unsent: Vec<&Letter> = out
            .failed()
            .iter()
            .filter_map(|f| f.id().parse::<usize>().ok().and_then(|i| letters.get(i)))
            .collect();
        for f in out.failed() {
            tracing::error!(
                code = f.code(),
                reason = f.message().unwrap_or(""),
                "could not send a message back; it stays in the dead-letter queue"
            );
        }
        let failed_deletes = delete(client, dlq_url, &sent).await?;
        release(client, dlq_url, &unsent).await?;
        moved += (sent.len() - failed_deletes) as u64;
        progress.tick(moved);
    }
    progress.finish(moved);
    Ok(moved)
}

/// The message sent back for a dead letter: its body, and its original identity signed with
/// the redrive key (a letter whose own claim was not believed travels under its SQS identity).
fn portable_entry(
    index: usize,
    letter: &Letter,
    key: &RedriveKey,
) -> Result<SendMessageBatchRequestEntry, DlqError> {
    let inbound = &letter.received.inbound;
    let unmovable = |why| DlqError::Unmovable {
        message_id: letter.sqs_id().to_string(),
        why,
    };
    let claim = Claim {
        message_id: inbound.message_id.clone(),
        sent_timestamp_ms: inbound
            .sent_timestamp_ms
            .ok_or_else(|| unmovable("no SentTimestamp"))?,
    };
    let signature = key.sign(&claim, &inbound.body);
    let attribute = |value: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|_| unmovable("an attribute that does not build"))
    };
    SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(&inbound.body)
        .message_attributes(ORIGINAL_MESSAGE_ID_ATTRIBUTE, attribute(&claim.message_id)?)
        .message_attributes(
            ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE,
            attribute(&claim.sent_timestamp_ms.to_string())?,
        )
        .message_attributes(SIGNATURE_ATTRIBUTE, attribute(&signature)?)
        .build()
        .map_err(|_| unmovable("a send entry that does not build"))
}
