#!/usr/bin/env bash
# Validates deploy/cloudformation.yaml for real:
#   1. cfn-lint (pinned in scripts/localstack/requirements.txt) finds no error and no warning;
#      deploy/ecs-task-definition.json passes the CLI's own RegisterTaskDefinition model check
#      (botocore, offline), takes the database URL from secrets only and stops after the grace period.
#   2. the template deploys to LocalStack (aws cloudformation deploy) against two marketplace-like
#      topics this script creates, with two of the four topic slots left empty;
#   3. the deployed stack is what the template promises (queue attributes, redrive, the exact
#      queue policy, subscriptions, rule and target, the worker IAM policy, the DLQ alarm and its
#      actions when LocalStack runs CloudWatch) and it works: a message published to each topic
#      and an aws.agreement-marketplace event put on the default bus all arrive in its queue;
#   4. a second stack with no topic at all (an EventBridge-only listing) deploys, with a queue
#      policy that lets in EventBridge alone and no subscription;
#   5. the stacks, their (retained) queues and the topics are deleted however the script ends.
#
#   scripts/check-deploy.sh
#
# Uses LocalStack on MPLINK_LOCALSTACK_HOST (default 127.0.0.1:4566), started via
# scripts/localstack.sh if it is not answering (and stopped again at the end in that case).
# Every run uses its own names, so runs can overlap and an interrupted run cannot break the next.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
venv="${MPLINK_LOCALSTACK_VENV:-$PWD/.localstack-venv}"
host="${MPLINK_LOCALSTACK_HOST:-127.0.0.1:4566}"
template=deploy/cloudformation.yaml
taskdef=deploy/ecs-task-definition.json

say() { echo "check-deploy: $*"; }
die() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

[ -f "$template" ] || die "$template is missing"

# --- LocalStack and the tools of its virtualenv ------------------------------------------------
started_localstack=false
if ! scripts/localstack.sh status >/dev/null 2>&1; then
    scripts/localstack.sh start || die "LocalStack did not start (see localstack.log)"
    started_localstack=true
fi
if [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/aws" ]; then
    # A venv made before cfn-lint/awscli joined the lock: bring it up to the lock.
    say "installing the pinned tools into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/localstack/requirements.txt ||
        die "could not install scripts/localstack/requirements.txt into $venv"
fi
python="$venv/bin/python"

# Everything below talks to LocalStack only: fixed test credentials, and the endpoint passed
# explicitly (the CLI would also read AWS_ENDPOINT_URL, but a profile's
# ignore_configured_endpoint_urls could turn that off and send calls to real AWS).
export AWS_ENDPOINT_URL="http://$host"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
export AWS_PAGER=""
aws() { "$venv/bin/aws" --endpoint-url "$AWS_ENDPOINT_URL" --output json "$@"; }
text() { "$venv/bin/aws" --endpoint-url "$AWS_ENDPOINT_URL" --output text "$@"; }

tmp="$(mktemp -d)"
run_id="$(date +%s)$$"
stack="mplink-check-$run_id"       # two topics
queue_name="mplink-check-$run_id"
stack2="mplink-check-eb-$run_id"   # EventBridge only
queue_name2="mplink-check-eb-$run_id"
product="check$run_id" # product codes are alphanumeric
topics=()                          # every topic this run created
stacks=()                          # every stack this run asked for

cleanup() {
    local rc=$?
    set +e
    trap - ERR
    local st status q url t
    for st in "${stacks[@]}"; do
        aws cloudformation delete-stack --stack-name "$st" >/dev/null 2>&1
    done
    for st in "${stacks[@]}"; do
        for _ in $(seq 1 60); do
            status="$(text cloudformation describe-stacks --stack-name "$st" \
                --query 'Stacks[0].StackStatus' 2>/dev/null)" || break
            case "$status" in
                DELETE_COMPLETE | "") break ;;
                DELETE_FAILED) echo "check-deploy: warning: could not delete stack $st" >&2; break ;;
            esac
            sleep 0.5
        done
    done
    # The template retains its queues on stack deletion (AWS honours that; LocalStack does not).
    for q in "$queue_name" "$queue_name-dlq" "$queue_name2" "$queue_name2-dlq"; do
        url="$(text sqs get-queue-url --queue-name "$q" --query QueueUrl 2>/dev/null)" &&
            aws sqs delete-queue --queue-url "$url" >/dev/null 2>&1
    done
    for t in "${topics[@]}"; do
        aws sns delete-topic --topic-arn "$t" >/dev/null 2>&1
    done
    rm -rf "$tmp"
    if $started_localstack; then scripts/localstack.sh stop >/dev/null 2>&1; fi
    if [ "$rc" -eq 0 ]; then
        say "PASSED in $((SECONDS - t0)) s"
    else
        echo "check-deploy: cleaned up after failure (exit $rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "check-deploy: FAILED: line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# JSON assertions: python code on files in $tmp; it prints a reason and exits 1 on failure.
check() {
    local what="$1" code="$2"
    shift 2
    "$python" - "$@" <<<"import json, sys
def load(name): return json.load(open('$tmp/' + name))
def fail(msg): print(msg); sys.exit(1)
$code" >"$tmp/check.out" 2>&1 || die "$what: $(cat "$tmp/check.out")"
    say "ok: $what"
}

# --- 1. static checks ----------------------------------------------------------------------------
if ! "$venv/bin/cfn-lint" -- "$template" >"$tmp/lint.out" 2>&1; then
    cat "$tmp/lint.out" >&2
    die "cfn-lint reported the problems above in $template"
fi
say "ok: cfn-lint $template (no errors, no warnings)"

if [ -f "$taskdef" ]; then
    cp "$taskdef" "$tmp/taskdef.json" 2>/dev/null
    check "$taskdef: matches the ECS RegisterTaskDefinition model, database URL only via secrets, stopTimeout above the grace period" '
try:
    td = load("taskdef.json")
except ValueError as e:
    fail(f"not valid JSON: {e}")
import botocore.session
from botocore.validate import ParamValidator
shape = botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
report = ParamValidator().validate(td, shape)
if report.has_errors():
    fail(report.generate_report())
for c in td["containerDefinitions"]:
    name = c["name"]
    env = {e["name"]: e["value"] for e in c.get("environment", [])}
    for bad in ("MPLINK_DATABASE_URL", "DATABASE_URL"):
        if bad in env:
            fail(f"{name}: {bad} is plain environment; it must come from secrets")
    secrets = {s["name"]: s["valueFrom"] for s in c.get("secrets", [])}
    if "MPLINK_DATABASE_URL" not in secrets:
        fail(f"{name}: MPLINK_DATABASE_URL is not in secrets")
    if int(c.get("stopTimeout", 30)) <= int(env.get("MPLINK_GRACE_PERIOD", 25)):
        fail(f"{name}: stopTimeout must exceed the grace period")
    if env.get("MPLINK_HTTP_ADDR", "").startswith("127."):
        fail(f"{name}: MPLINK_HTTP_ADDR on loopback is unreachable for health checks")
'
fi

# --- 2. deploy -----------------------------------------------------------------------------------
# new_topic NAME: creates the topic, remembers it for cleanup, sets $topic_arn.
new_topic() {
    topic_arn="$(text sns create-topic --name "$1" --query TopicArn)" ||
        die "could not create topic $1 in LocalStack"
    topics+=("$topic_arn")
}
new_topic "aws-mp-subscription-notification-$product" && topic1="$topic_arn"
new_topic "aws-mp-entitlement-notification-$product" && topic2="$topic_arn"
new_topic "mplink-check-alarms-$run_id" && alarm_topic="$topic_arn"

# Non-default MaxReceiveCount and VisibilityTimeout, to see that the parameters reach the queue.
max_receive=7
visibility=45
cloudwatch="$(curl -sf --max-time 5 "http://$host/_localstack/health" |
    "$python" -c 'import json, sys; print(json.load(sys.stdin)["services"].get("cloudwatch", "disabled"))')" ||
    cloudwatch=disabled
case "$cloudwatch" in available | running) alarm=true ;; *) alarm=false ;; esac
if ! $alarm; then
    say "note: LocalStack runs without CloudWatch: deploying with CreateDeadLetterAlarm=false (the alarm is not checked)"
fi

# deploy_stack NAME PARAM=VALUE...: `aws cloudformation deploy` validates the parameters and
# creates the change set; it is executed and watched here because deploy's own waiter polls
# only every 30 s, which would make this check take twice as long.
deploy_stack() {
    local name="$1" changeset status=""
    shift
    stacks+=("$name")
    if ! aws cloudformation deploy --template-file "$template" --stack-name "$name" \
        --capabilities CAPABILITY_IAM --no-execute-changeset \
        --parameter-overrides "$@" >"$tmp/deploy.out" 2>&1; then
        cat "$tmp/deploy.out" >&2
        die "aws cloudformation deploy could not create the change set of $name"
    fi
    changeset="$(text cloudformation list-change-sets --stack-name "$name" \
        --query 'Summaries[0].ChangeSetId')" || die "could not list the change sets of $name"
    if [ -z "$changeset" ] || [ "$changeset" = None ]; then die "deploy left no change set for $name"; fi
    aws cloudformation execute-change-set --change-set-name "$changeset" --stack-name "$name" >/dev/null ||
        die "could not execute change set $changeset"
    for _ in $(seq 1 120); do
        status="$(text cloudformation describe-stacks --stack-name "$name" \
            --query 'Stacks[0].StackStatus')" || die "could not read the status of $name"
        case "$status" in *_IN_PROGRESS) sleep 0.5 ;; *) break ;; esac
    done
    if [ "$status" != CREATE_COMPLETE ]; then
        # shellcheck disable=SC2016 # backticks are a JMESPath literal, not a shell expansion
        aws cloudformation describe-stack-events --stack-name "$name" \
            --query 'StackEvents[?contains(ResourceStatus, `FAILED`)].[LogicalResourceId, ResourceStatusReason]' >&2 || true
        die "stack $name ended in ${status:-no status} (events above)"
    fi
    say "ok: deployed stack $name to LocalStack"
}

deploy_stack "$stack" \
    "MarketplaceTopicArn1=$topic1" "MarketplaceTopicArn2=$topic2" \
    "QueueName=$queue_name" "MaxReceiveCount=$max_receive" "VisibilityTimeout=$visibility" \
    "CreateDeadLetterAlarm=$alarm" "AlarmTopicArn=$alarm_topic"

aws cloudformation describe-stacks --stack-name "$stack" >"$tmp/stack.json"
check "all six outputs are present" '
outs = {o["OutputKey"]: o["OutputValue"] for o in load("stack.json")["Stacks"][0].get("Outputs", [])}
want = ["QueueUrl", "QueueArn", "DeadLetterQueueUrl", "DeadLetterQueueArn", "RuleArn", "WorkerPolicyArn"]
missing = [k for k in want if not outs.get(k)]
if missing: fail(f"missing outputs: {missing}")
for k in want: open("'"$tmp"'/" + k, "w").write(outs[k])
'
queue_url="$(cat "$tmp/QueueUrl")"
queue_arn="$(cat "$tmp/QueueArn")"
dlq_url="$(cat "$tmp/DeadLetterQueueUrl")"
dlq_arn="$(cat "$tmp/DeadLetterQueueArn")"
rule_arn="$(cat "$tmp/RuleArn")"
policy_arn="$(cat "$tmp/WorkerPolicyArn")"

# --- 3a. what was deployed ---------------------------------------------------------------------
aws sqs get-queue-attributes --queue-url "$queue_url" --attribute-names All >"$tmp/queue.json"
aws sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names All >"$tmp/dlq.json"
check "queues: long poll 20 s, retention 4 d / DLQ 14 d, visibility $visibility s, redrive after $max_receive receives" "
q = load('queue.json')['Attributes']; d = load('dlq.json')['Attributes']
expect = {'ReceiveMessageWaitTimeSeconds': '20', 'MessageRetentionPeriod': '345600', 'VisibilityTimeout': '$visibility'}
for k, v in expect.items():
    if q.get(k) != v: fail(f'source queue {k} is {q.get(k)!r}, expected {v!r}')
if d.get('MessageRetentionPeriod') != '1209600': fail(f'DLQ retention is {d.get(\"MessageRetentionPeriod\")!r}')
if d.get('QueueArn') != '$dlq_arn': fail('DLQ ARN does not match the output')
r = json.loads(q.get('RedrivePolicy', '{}'))
if r.get('deadLetterTargetArn') != '$dlq_arn' or int(r.get('maxReceiveCount', 0)) != $max_receive:
    fail(f'redrive policy is {r}')
"

# LocalStack does not enforce queue policies, so the policy is checked statement by statement:
# in AWS, a policy that does not let SNS in loses messages silently.
check "queue policy: sns.amazonaws.com from exactly the two topics, events.amazonaws.com from the rule, nothing else" "
p = json.loads(load('queue.json')['Attributes'].get('Policy', '{}'))
st = p.get('Statement', [])
if isinstance(st, dict): st = [st]
if len(st) != 2: fail(f'expected 2 statements, got {len(st)}: {st}')
by = {}
for s in st:
    if s.get('Effect') != 'Allow': fail(f'unexpected statement {s}')
    svc = s.get('Principal', {}).get('Service')
    acts = s.get('Action'); acts = [acts] if isinstance(acts, str) else acts
    if acts != ['sqs:SendMessage']: fail(f'{svc}: actions {acts}')
    if s.get('Resource') != '$queue_arn': fail(f'{svc}: resource {s.get(\"Resource\")}')
    src = s.get('Condition', {}).get('ArnEquals', {}).get('aws:SourceArn')
    by[svc] = sorted([src] if isinstance(src, str) else (src or []))
if by.get('sns.amazonaws.com') != sorted(['$topic1', '$topic2']):
    fail(f'SNS may send from {by.get(\"sns.amazonaws.com\")}, expected the two topics')
if by.get('events.amazonaws.com') != ['$rule_arn']:
    fail(f'EventBridge may send from {by.get(\"events.amazonaws.com\")}, expected the rule')
"

: >"$tmp/subs.jsonl"
for t in "$topic1" "$topic2"; do
    for sub in $(text sns list-subscriptions-by-topic --topic-arn "$t" --query 'Subscriptions[].SubscriptionArn'); do
        aws sns get-subscription-attributes --subscription-arn "$sub" --output json |
            "$python" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["Attributes"]))' >>"$tmp/subs.jsonl"
    done
done
check "SNS: one confirmed sqs subscription per topic, to the queue, raw delivery off" "
subs = [json.loads(l) for l in open('$tmp/subs.jsonl')]
for t in ['$topic1', '$topic2']:
    mine = [s for s in subs if s['TopicArn'] == t]
    if len(mine) != 1: fail(f'{t}: {len(mine)} subscriptions')
    s = mine[0]
    if (s['Protocol'], s['Endpoint']) != ('sqs', '$queue_arn'): fail(f'{t}: subscribed {s[\"Protocol\"]} {s[\"Endpoint\"]}')
    if s.get('PendingConfirmation', 'false') != 'false': fail(f'{t}: subscription not confirmed')
    if s.get('RawMessageDelivery', 'false') != 'false': fail(f'{t}: raw delivery is on')
"

rule_name="${rule_arn##*/}"
aws events describe-rule --name "$rule_name" >"$tmp/rule.json"
aws events list-targets-by-rule --rule "$rule_name" >"$tmp/targets.json"
# The detail-types the template lists (tests/deploy_rule.rs keeps them equal to the decoder's).
"$python" - "$template" >"$tmp/detail-types.json" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
block = text.split("detail-type:", 1)[1].split("State:", 1)[0]
print(json.dumps(re.findall(r'^\s*- "([^"]+)"', block, re.M)))
EOF
check "EventBridge: enabled rule on the default bus for aws.agreement-marketplace and exactly the handled detail-types, one target: the queue" "
r = load('rule.json')
handled = load('detail-types.json')
if len(handled) < 8: fail(f'only {len(handled)} detail-types found in the template')
if json.loads(r['EventPattern']) != {'source': ['aws.agreement-marketplace'], 'detail-type': handled}: fail(f'pattern {r[\"EventPattern\"]}')
if r.get('State') != 'ENABLED': fail(f'state {r.get(\"State\")}')
if r.get('EventBusName', 'default') != 'default': fail(f'bus {r.get(\"EventBusName\")}')
t = load('targets.json')['Targets']
if [x['Arn'] for x in t] != ['$queue_arn']: fail(f'targets {t}')
if any(x.get('RoleArn') for x in t): fail('an SQS target needs no role')
"

version="$(text iam get-policy --policy-arn "$policy_arn" --query Policy.DefaultVersionId)"
aws iam get-policy-version --policy-arn "$policy_arn" --version-id "$version" >"$tmp/iam.json"
check "worker IAM policy: exactly the consumer, DLQ-tooling and redrive permissions" "
doc = load('iam.json')['PolicyVersion']['Document']
if isinstance(doc, str):
    import urllib.parse; doc = json.loads(urllib.parse.unquote(doc))
got = {}
for s in doc['Statement']:
    if s.get('Effect') != 'Allow': fail(f'unexpected statement {s}')
    acts = s['Action']; acts = [acts] if isinstance(acts, str) else acts
    res = s['Resource']; res = [res] if isinstance(res, str) else res
    for r in res:
        got.setdefault(r, set()).update(acts)
consume = {'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'}
want = {
    '$queue_arn': consume | {'sqs:SendMessage'},
    '$dlq_arn': {'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:SendMessage',
                 'sqs:GetQueueAttributes', 'sqs:StartMessageMoveTask', 'sqs:ListMessageMoveTasks', 'sqs:CancelMessageMoveTask'},
}
if got != want: fail(f'got {got}, expected {want}')
"

if $alarm; then
    aws cloudwatch describe-alarms --alarm-name-prefix "$stack-" >"$tmp/alarms.json"
    check "CloudWatch: alarm on the DLQ's ApproximateNumberOfMessagesVisible > 0, notifying the alarm topic" "
a = load('alarms.json')['MetricAlarms']
if len(a) != 1: fail(f'{len(a)} alarms for the stack')
a = a[0]
dims = {d['Name']: d['Value'] for d in a.get('Dimensions', [])}
got = (a['Namespace'], a['MetricName'], dims, a['ComparisonOperator'], float(a['Threshold']),
       a.get('AlarmActions'), a.get('OKActions'))
want = ('AWS/SQS', 'ApproximateNumberOfMessagesVisible', {'QueueName': '$queue_name-dlq'}, 'GreaterThanThreshold', 0.0,
        ['$alarm_topic'], ['$alarm_topic'])
if got != want: fail(f'got {got}, expected {want}')
"
fi

# --- 3b. does it work: SNS -> SQS and EventBridge -> SQS -----------------------------------------
marker="mplink-check-$run_id"
aws sns publish --topic-arn "$topic1" \
    --message "{\"action\":\"subscribe-success\",\"customer-identifier\":\"$marker\",\"product-code\":\"$product\"}" \
    >/dev/null || die "could not publish to $topic1"
aws sns publish --topic-arn "$topic2" \
    --message "{\"action\":\"entitlement-updated\",\"customer-identifier\":\"$marker\",\"product-code\":\"$product\"}" \
    >/dev/null || die "could not publish to $topic2"
# The detail names this run, so events other tests put on the default bus (which this stack's
# rule also catches) are told apart. One event has a detail-type the rule lists (an
# informational one: a worker whose rule also catches it, as scripts/demo.sh's does, only notes
# it); the other has one it does not list and must never arrive.
"$python" - >"$tmp/entries.json" <<EOF
import json
detail = {"requestId": "$marker", "agreement": {"id": "agmt-$marker"}, "product": {"code": "$product"}}
print(json.dumps([{"Source": "aws.agreement-marketplace", "DetailType": dt,
                   "Detail": json.dumps(detail), "Resources": []}
                  for dt in ("Purchase Agreement Renewal Upcoming - Proposer", "mplink deploy check")]))
EOF
aws events put-events --entries "file://$tmp/entries.json" >"$tmp/put.json" || die "put-events failed"
check "put-events accepted the event" "
r = load('put.json')
if r.get('FailedEntryCount', 0) != 0: fail(f'{r}')
"

: >"$tmp/received.jsonl"
deadline=$((SECONDS + 20))
found=""
while [ $SECONDS -lt $deadline ]; do
    aws sqs receive-message --queue-url "$queue_url" --wait-time-seconds 5 \
        --max-number-of-messages 10 >"$tmp/batch.json" || die "receive-message failed"
    [ -s "$tmp/batch.json" ] || continue
    # Delete what was received (anything in this run's queue is this run's to throw away).
    "$python" - "$tmp/batch.json" >"$tmp/handles" <<'EOF'
import json, sys
for m in json.load(open(sys.argv[1])).get("Messages", []):
    print(m["ReceiptHandle"])
EOF
    while read -r handle; do
        aws sqs delete-message --queue-url "$queue_url" --receipt-handle "$handle" >/dev/null ||
            die "delete-message failed"
    done <"$tmp/handles"
    found="$("$python" - "$tmp/batch.json" "$tmp/received.jsonl" <<EOF
import json, sys
batch, seen = sys.argv[1], sys.argv[2]
with open(seen, "a") as out:
    for m in json.load(open(batch)).get("Messages", []):
        out.write(m["Body"] + "\n")
kinds = set()
for line in open(seen):
    try:
        body = json.loads(line)
    except ValueError:
        continue
    if body.get("Type") == "Notification" and "$marker" in body.get("Message", ""):
        inner = json.loads(body["Message"])
        if body.get("TopicArn") == "$topic1" and inner.get("action") == "subscribe-success":
            kinds.add("sns-subscription")
        if body.get("TopicArn") == "$topic2" and inner.get("action") == "entitlement-updated":
            kinds.add("sns-entitlement")
    if (body.get("source") == "aws.agreement-marketplace"
            and body.get("detail", {}).get("requestId") == "$marker"
            and body.get("detail-type") == "Purchase Agreement Renewal Upcoming - Proposer"):
        kinds.add("eventbridge")
    if (body.get("detail", {}).get("requestId") == "$marker"
            and body.get("detail-type") == "mplink deploy check"):
        kinds.add("unlisted")
print(" ".join(sorted(kinds)))
EOF
)"
    [ "$found" = "eventbridge sns-entitlement sns-subscription" ] && break
done
case " $found " in *" sns-subscription "*) say "ok: a message published to $topic1 arrived in the queue (SNS envelope)" ;;
    *) die "the message published to the subscription topic did not arrive in $queue_url within 20 s" ;; esac
case " $found " in *" sns-entitlement "*) say "ok: a message published to $topic2 arrived in the queue (SNS envelope)" ;;
    *) die "the message published to the entitlement topic did not arrive in $queue_url within 20 s" ;; esac
case " $found " in *" eventbridge "*) say "ok: an aws.agreement-marketplace event put on the default bus arrived in the queue (bare event)" ;;
    *) die "the EventBridge event did not arrive in $queue_url within 20 s" ;; esac
case " $found " in *" unlisted "*) die "an event whose detail-type the rule does not list arrived in $queue_url" ;;
    *) say "ok: the event whose detail-type the rule does not list did not arrive (sent with the listed one)" ;; esac

# --- 4. an EventBridge-only listing: no topic at all ---------------------------------------------
deploy_stack "$stack2" "QueueName=$queue_name2" "CreateDeadLetterAlarm=$alarm"
queue_url2="$(text cloudformation describe-stacks --stack-name "$stack2" \
    --query "Stacks[0].Outputs[?OutputKey=='QueueUrl'].OutputValue")" || die "no QueueUrl output for $stack2"
rule_arn2="$(text cloudformation describe-stacks --stack-name "$stack2" \
    --query "Stacks[0].Outputs[?OutputKey=='RuleArn'].OutputValue")" || die "no RuleArn output for $stack2"
aws sqs get-queue-attributes --queue-url "$queue_url2" --attribute-names Policy QueueArn >"$tmp/queue2.json"
aws sns list-subscriptions >"$tmp/allsubs.json"
check "no topics: the queue policy lets in EventBridge only, and nothing is subscribed" "
a = load('queue2.json')['Attributes']
st = json.loads(a.get('Policy', '{}')).get('Statement', [])
if isinstance(st, dict): st = [st]
principals = [s.get('Principal', {}).get('Service') for s in st]
if principals != ['events.amazonaws.com']: fail(f'policy principals {principals}')
if st[0].get('Condition', {}).get('ArnEquals', {}).get('aws:SourceArn') != '$rule_arn2': fail(f'policy {st}')
subs = [s for s in load('allsubs.json')['Subscriptions'] if s['Endpoint'] == a['QueueArn']]
if subs: fail(f'unexpected subscriptions {subs}')
"
