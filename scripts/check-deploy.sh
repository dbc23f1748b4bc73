#!/usr/bin/env bash
# Validates the deploy/ templates for real:
#   1. cfn-lint (pinned in scripts/localstack/requirements.txt) finds no error and no warning in
#      deploy/cloudformation.yaml (the queue stack) and deploy/service.yaml (the ECS service);
#      hadolint finds nothing in deploy/Dockerfile (scripts/hadolint.sh); the service's container
#      takes the database URL from secrets only, stops after the grace period, has a read-only
#      root filesystem and `mplink healthcheck` as health check, and passes AWS Marketplace's
#      own topics for its product codes as MPLINK_ALLOWED_TOPIC_ARNS; the public API's container
#      runs `mplink serve` with its token from secrets only, behind an internet-facing ALB whose
#      idle timeout is below MPLINK_HTTP_HEADER_TIMEOUT, with /healthz as the target group's
#      health check, MPLINK_CLIENT_IP_HEADER=X-Forwarded-For, and its port open to the ALB's
#      security group only. LocalStack's free edition has no ECS (nor ELBv2), so the service
#      stack is checked statically only;
#   2. the queue template deploys to LocalStack (aws cloudformation deploy) against two
#      marketplace-like topics this script creates, with two of the four topic slots left empty;
#   3. the deployed stack is what the template promises (queue attributes, redrive, the exact
#      queue policy - and who it lets send under IAM's condition rules -, subscriptions, rule and
#      target, the worker IAM policy, the DLQ alarm and its actions when LocalStack runs
#      CloudWatch) and it works: a message published to each topic and an
#      aws.agreement-marketplace event put on the default bus all arrive in its queue;
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
service=deploy/service.yaml

say() { echo "check-deploy: $*"; }
die() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

[ -f "$template" ] || die "$template is missing"
[ -f "$service" ] || die "$service is missing"

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

# Who the queue policy lets send, under IAM's documented condition rules (conditions of a
# statement all hold; a negated operator holds when the key is absent or matches none of the
# values). LocalStack does not enforce queue policies, so this is how a policy that would let a
# stranger in - or lock SNS out, which loses messages silently - is caught here.
cat >"$tmp/iam_eval.py" <<'EOF'
import fnmatch
def _holds(op, key, values, ctx):
    values = [values] if isinstance(values, str) else values
    have = ctx.get(key)
    match = {"ArnEquals": lambda v: have == v, "ArnNotEquals": lambda v: have == v,
             "ArnLike": lambda v: fnmatch.fnmatchcase(have, v), "ArnNotLike": lambda v: fnmatch.fnmatchcase(have, v)}[op]
    hit = have is not None and any(match(v) for v in values)
    return not hit if "Not" in op else hit
def _applies(s, ctx, action, resource):
    p = s.get("Principal")
    if p != "*" and p.get("Service") != ctx.get("service"): return False
    acts = s["Action"]; acts = [acts] if isinstance(acts, str) else acts
    if action not in acts or s["Resource"] != resource: return False
    return all(_holds(op, k, v, ctx) for op, kv in s.get("Condition", {}).items() for k, v in kv.items())
def decide(policy, ctx, resource, action="sqs:SendMessage"):
    """'deny' (explicit), 'allow' (by this policy), or 'identity' (left to the caller's IAM policy)."""
    st = policy["Statement"]; st = [st] if isinstance(st, dict) else st
    hits = [s["Effect"] for s in st if _applies(s, ctx, action, resource)]
    return "deny" if "Deny" in hits else "allow" if "Allow" in hits else "identity"
EOF

# --- 1. static checks ----------------------------------------------------------------------------
for t in "$template" "$service"; do
    if ! "$venv/bin/cfn-lint" -- "$t" >"$tmp/lint.out" 2>&1; then
        cat "$tmp/lint.out" >&2
        die "cfn-lint reported the problems above in $t"
    fi
    say "ok: cfn-lint $t (no errors, no warnings)"
done

scripts/hadolint.sh deploy/Dockerfile >"$tmp/hadolint.out" 2>&1 || {
    cat "$tmp/hadolint.out" >&2
    die "hadolint reported the problems above in deploy/Dockerfile"
}
say "ok: $(tail -n 1 "$tmp/hadolint.out") (the image itself cannot be built here: no container engine)"

# The service stack's worker container, read with cfn-lint's own template decoder. The topic
# allow-list is built with Fn::Join/Fn::Sub over the ProductCodes list: it is evaluated here for
# two product codes and compared with the ARNs it must give.
"$python" - "$service" >"$tmp/service.out" 2>&1 <<'EOF' || die "$service: $(cat "$tmp/service.out")"
import sys
from cfnlint.decode import decode
tpl, problems = decode(sys.argv[1])
if problems: sys.exit(f"cannot decode: {problems}")
res = tpl["Resources"]
def fail(msg): sys.exit(msg)
def evaluate(node, refs):
    if isinstance(node, str): return node
    if isinstance(node, dict) and "Ref" in node: return refs[node["Ref"]]
    if isinstance(node, dict) and "Fn::Join" in node:
        sep, items = node["Fn::Join"]
        items = evaluate(items, refs) if isinstance(items, dict) else [evaluate(i, refs) for i in items]
        return sep.join(items)
    if isinstance(node, dict) and "Fn::Sub" in node:
        text, variables = node["Fn::Sub"]
        for k, v in variables.items(): text = text.replace("${" + k + "}", evaluate(v, refs))
        return text
    fail(f"cannot evaluate {node}")
worker = res["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
env = {e["Name"]: e["Value"] for e in worker["Environment"]}
secrets = {s["Name"]: s["ValueFrom"] for s in worker.get("Secrets", []) if "Name" in s}
optional = [s["Fn::If"] for s in worker.get("Secrets", []) if "Fn::If" in s]
if optional != [["HasRedriveKey", {"Name": "MPLINK_REDRIVE_KEY", "ValueFrom": {"Ref": "RedriveKeySecretArn"}}, {"Ref": "AWS::NoValue"}]]:
    fail(f"the redrive key secret is not wired as expected: {optional}")
for bad in ("MPLINK_DATABASE_URL", "DATABASE_URL"):
    if bad in env: fail(f"{bad} is plain environment; it must come from Secrets")
if secrets.get("MPLINK_DATABASE_URL") != {"Ref": "DatabaseUrlSecretArn"}: fail(f"secrets {secrets}")
if not int(worker["StopTimeout"]) > int(env["MPLINK_GRACE_PERIOD"]): fail("StopTimeout must exceed the grace period")
if env["MPLINK_HTTP_ADDR"].startswith("127."): fail("MPLINK_HTTP_ADDR on loopback")
if env.get("MPLINK_RECONCILE_PRODUCTS") != {"Ref": "ReconcileProducts"} or env.get("MPLINK_RECONCILE_EVERY") != {"Fn::If": ["HasReconcileProducts", {"Ref": "ReconcileEverySeconds"}, "0"]}:
    fail(f"the scheduled reconcile is not wired as expected: {env.get('MPLINK_RECONCILE_PRODUCTS')} {env.get('MPLINK_RECONCILE_EVERY')}")
if worker.get("ReadonlyRootFilesystem") is not True: fail("root filesystem is writable")
if worker["HealthCheck"]["Command"] != ["CMD", "mplink", "healthcheck"]: fail(f"health check {worker['HealthCheck']}")
if worker["LogConfiguration"]["LogDriver"] != "awslogs" or env.get("MPLINK_LOG_FORMAT") != "json": fail("logs are not JSON to CloudWatch")
got = sorted(evaluate(env["MPLINK_ALLOWED_TOPIC_ARNS"], {"ProductCodes": ["prodA1", "prodB2"]}).split(","))
want = sorted(f"arn:aws:sns:us-east-1:287250355862:aws-mp-{kind}-notification-{code}"
              for kind in ("subscription", "entitlement") for code in ("prodA1", "prodB2"))
if got != want: fail(f"MPLINK_ALLOWED_TOPIC_ARNS for [prodA1, prodB2] is {got}, expected {want}")
codes = evaluate(env["MPLINK_ALLOWED_PRODUCT_CODES"], {"ProductCodes": ["prodA1", "prodB2"]})
if codes != "prodA1,prodB2": fail(f"MPLINK_ALLOWED_PRODUCT_CODES for [prodA1, prodB2] is {codes}")
migrate = res["MigrationTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
if migrate["Command"] != ["migrate"]: fail(f"migration task runs {migrate['Command']}")
cb = res["Service"]["Properties"]["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
if cb != {"Enable": True, "Rollback": True}: fail(f"circuit breaker {cb}")
marketplace = res["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
actions = sorted(a for s in marketplace for a in s["Action"])
if actions != ["aws-marketplace:BatchMeterUsage", "aws-marketplace:GetEntitlements", "aws-marketplace:ResolveCustomer", "aws-marketplace:SearchAgreements"]:
    fail(f"task role marketplace actions {actions}")
print("ok")
EOF
say "ok: $service: database URL from Secrets Manager, stopTimeout above the grace period, read-only root, mplink healthcheck, JSON logs, AWS's topics for the product codes, circuit breaker with rollback"

# The service stack's public API, read the same way: `mplink serve` behind the ALB. What it must
# keep: the token from Secrets Manager only; MPLINK_HTTP_HEADER_TIMEOUT (which also bounds a kept-
# alive connection's idle wait) above the ALB's idle timeout, else mplink closes connections the
# ALB is about to reuse (502s); the client address from the rightmost X-Forwarded-For entry the
# ALB appends; /healthz as the target group's health check (the API has no /readyz); and the
# API's port reachable from the ALB's security group alone.
"$python" - "$service" >"$tmp/api.out" 2>&1 <<'EOF' || die "$service (public API): $(cat "$tmp/api.out")"
import sys
from cfnlint.decode import decode
tpl, problems = decode(sys.argv[1])
if problems: sys.exit(f"cannot decode: {problems}")
res = tpl["Resources"]
def fail(msg): sys.exit(msg)
def names(node):
    """The logical names (resources and parameters) a value refers to with Ref or Fn::GetAtt."""
    if isinstance(node, dict):
        if "Ref" in node: return {node["Ref"]}
        if "Fn::GetAtt" in node:
            att = node["Fn::GetAtt"]
            return {att[0] if isinstance(att, list) else att.split(".")[0]}
        return set().union(*(names(v) for v in node.values())) if node else set()
    if isinstance(node, list): return set().union(*(names(v) for v in node)) if node else set()
    return set()
def of_type(t): return {k: v for k, v in res.items() if v["Type"] == t}
def props(name): return res[name].get("Properties", {})
apis = {k: v for k, v in of_type("AWS::ECS::Service").items() if v["Properties"].get("LoadBalancers")}
if len(apis) != 1: fail(f"expected one ECS service behind a load balancer, found {sorted(apis)}")
(svc_name, svc), = apis.items()
svc = svc["Properties"]
if len(svc["LoadBalancers"]) != 1: fail(f"{svc_name}: expected one LoadBalancers mapping, got {svc['LoadBalancers']}")
mapping = svc["LoadBalancers"][0]
port = int(mapping["ContainerPort"])
if port != 8080: fail(f"{svc_name} maps container port {port} to the target group, expected 8080")
(td_name,) = names(svc["TaskDefinition"])
td = props(td_name)
containers = [c for c in td["ContainerDefinitions"] if c["Name"] == mapping["ContainerName"]]
if len(containers) != 1: fail(f"{td_name} has no container {mapping['ContainerName']!r} (the service's LoadBalancers names it)")
api = containers[0]
env = {e["Name"]: e["Value"] for e in api.get("Environment", [])}
secrets = {s["Name"]: s["ValueFrom"] for s in api.get("Secrets", []) if "Name" in s}
command = api.get("Command", [])

# 1. It runs `mplink serve`, listening on the mapped port on every interface.
if command[:1] != ["serve"]: fail(f"the API container runs {command}: expected mplink serve")
if "--listen" not in command: fail(f"the API container's command {command} has no --listen (the default is loopback)")
listen = command[command.index("--listen") + 1]
if listen != f"0.0.0.0:{port}": fail(f"the API listens on {listen}: expected 0.0.0.0:{port}, the port the target group reaches")
# 2. The bearer tokens come from Secrets Manager, never from the command line or plain environment.
if any(a.startswith("--api-token") for a in command): fail(f"the API token is on the command line {command}: it must come from Secrets")
for bad in ("MPLINK_API_TOKENS", "MPLINK_API_TOKEN", "MPLINK_DATABASE_URL"):
    if bad in env: fail(f"{bad} is plain environment of the API container; it must come from Secrets")
if secrets.get("MPLINK_API_TOKENS") != {"Ref": "ApiTokenSecretArn"}:
    fail(f"MPLINK_API_TOKENS must be a secret from ApiTokenSecretArn; the API's secrets are {secrets}")
if secrets.get("MPLINK_DATABASE_URL") != {"Ref": "DatabaseUrlSecretArn"}: fail(f"the API's database URL is not the secret: {secrets}")
(exec_role,) = names(td["ExecutionRoleArn"])
readable = names([p["PolicyDocument"] for p in props(exec_role).get("Policies", [])])
if not {"ApiTokenSecretArn", "DatabaseUrlSecretArn"} <= readable:
    fail(f"the execution role {exec_role} cannot read the API's secrets (its policies name {sorted(readable)})")
# 3. The load balancer in front, and its idle timeout against mplink's header timeout.
tg_name = next(iter(names(mapping["TargetGroupArn"])))
forwarding = {k: v["Properties"] for k, v in of_type("AWS::ElasticLoadBalancingV2::Listener").items()
              if tg_name in names(v["Properties"].get("DefaultActions", []))}
lbs = set().union(*(names(l["LoadBalancerArn"]) for l in forwarding.values())) if forwarding else set()
if len(lbs) != 1: fail(f"expected one load balancer forwarding to {tg_name}, found {sorted(lbs)}")
(lb_name,) = lbs
if sorted(l["Protocol"] for l in forwarding.values()) != ["HTTPS"]:
    fail(f"{tg_name} must be reached through HTTPS listeners only: {forwarding}")
if any(l.get("SslPolicy") != "ELBSecurityPolicy-TLS13-1-2-2021-06" for l in forwarding.values()):
    fail(f"the HTTPS listener's TLS policy is not ELBSecurityPolicy-TLS13-1-2-2021-06")
lb = props(lb_name)
if lb.get("Scheme") != "internet-facing": fail(f"{lb_name} is {lb.get('Scheme')!r}, expected internet-facing")
attrs = {a["Key"]: str(a["Value"]) for a in lb.get("LoadBalancerAttributes", [])}
idle = int(attrs.get("idle_timeout.timeout_seconds", "60"))  # AWS's default
if "MPLINK_HTTP_HEADER_TIMEOUT" not in env: fail("MPLINK_HTTP_HEADER_TIMEOUT is not set on the API (its default is below the ALB's idle timeout)")
header_timeout = int(env["MPLINK_HTTP_HEADER_TIMEOUT"])
if not header_timeout > idle:
    fail(f"MPLINK_HTTP_HEADER_TIMEOUT ({header_timeout} s) must exceed the ALB's idle_timeout.timeout_seconds ({idle} s): "
         "it also bounds a kept-alive connection's idle wait, and the ALB would reuse connections mplink has closed (502)")
if attrs.get("routing.http.drop_invalid_header_fields.enabled") != "true": fail(f"{lb_name} does not drop invalid header fields")
# 4. The target group's health check is /healthz (the API has no /readyz), on the API's port.
tg = props(tg_name)
if tg.get("HealthCheckPath") != "/healthz": fail(f"the target group's health check path is {tg.get('HealthCheckPath')!r}, expected /healthz")
if tg.get("Matcher", {}).get("HttpCode") != "200": fail(f"the target group's health check expects {tg.get('Matcher')}, expected 200")
if (tg.get("TargetType"), int(tg.get("Port", 0)), tg.get("Protocol")) != ("ip", port, "HTTP"):
    fail(f"target group: type {tg.get('TargetType')}, port {tg.get('Port')}, {tg.get('Protocol')}: expected ip, {port}, HTTP (awsvpc tasks)")
hc = api.get("HealthCheck", {}).get("Command", [])
if hc and (hc[:3] != ["CMD", "mplink", "healthcheck"] or "--live" not in hc or f"127.0.0.1:{port}" not in hc):
    fail(f"the API container's health check {hc} must be mplink healthcheck --live on 127.0.0.1:{port} (/readyz is the worker's)")
# 5. The client address: the rightmost X-Forwarded-For entry, which the ALB appends; no per-client
#    connection cap (every connection comes from the ALB).
if env.get("MPLINK_CLIENT_IP_HEADER", "").lower() != "x-forwarded-for":
    fail(f"MPLINK_CLIENT_IP_HEADER is {env.get('MPLINK_CLIENT_IP_HEADER')!r}, expected X-Forwarded-For (the ALB's)")
if attrs.get("routing.http.xff_header_processing.mode", "append") != "append" or attrs.get("routing.http.xff_client_port.enabled", "false") != "false":
    fail(f"{lb_name} must append the client's address, without its port, to X-Forwarded-For: {attrs}")
if env.get("MPLINK_HTTP_MAX_CONNECTIONS_PER_CLIENT") != "0":
    fail(f"MPLINK_HTTP_MAX_CONNECTIONS_PER_CLIENT is {env.get('MPLINK_HTTP_MAX_CONNECTIONS_PER_CLIENT')!r}, expected 0: behind the ALB every connection comes from the ALB")
# 6. The API's port is open to the ALB's security group and nothing else.
groups = set(of_type("AWS::EC2::SecurityGroup"))
lb_groups = names(lb.get("SecurityGroups", [])) & groups
task_groups = names(svc["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]) & groups
if not lb_groups: fail(f"{lb_name} has no security group of this stack")
if not task_groups: fail(f"{svc_name} has no security group of this stack (nothing opens its port to the ALB)")
if lb_groups & task_groups: fail(f"the ALB and the API tasks share {sorted(lb_groups & task_groups)}")
for g in sorted(task_groups):
    rules = [(g, r) for r in props(g).get("SecurityGroupIngress", [])]
    rules += [(k, v["Properties"]) for k, v in of_type("AWS::EC2::SecurityGroupIngress").items() if g in names(v["Properties"]["GroupId"])]
    if not rules: fail(f"{g}: no ingress rule lets the ALB reach port {port}")
    for where, r in rules:
        opened = (str(r.get("IpProtocol")), int(r.get("FromPort", -1)), int(r.get("ToPort", -1)))
        if opened != ("tcp", port, port): fail(f"{where} opens {opened} on the API tasks: only tcp {port}, from the ALB")
        wide = [k for k in ("CidrIp", "CidrIpv6", "SourcePrefixListId", "SourceSecurityGroupName") if k in r]
        source = names(r.get("SourceSecurityGroupId"))
        if wide or not source or not source <= lb_groups:
            fail(f"{where} opens port {port} of the API tasks to {wide or sorted(source)}: only the ALB's security group {sorted(lb_groups)} may reach it")
# And the rest of the service as the worker's: the circuit breaker, a read-only root, JSON logs, a
# task role that may resolve customers and nothing more.
if svc["DeploymentConfiguration"].get("DeploymentCircuitBreaker") != {"Enable": True, "Rollback": True}: fail(f"{svc_name}: circuit breaker")
if api.get("ReadonlyRootFilesystem") is not True: fail("the API's root filesystem is writable")
if api["LogConfiguration"]["LogDriver"] != "awslogs" or env.get("MPLINK_LOG_FORMAT") != "json": fail("the API's logs are not JSON to CloudWatch")
(task_role,) = names(td["TaskRoleArn"])
role = props(task_role)
actions = sorted(a for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]
                 for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
if actions != ["aws-marketplace:ResolveCustomer"] or role.get("ManagedPolicyArns"):
    fail(f"the API's task role {task_role} may do {actions} (+ managed {role.get('ManagedPolicyArns')}): expected aws-marketplace:ResolveCustomer only")
print("ok")
EOF
say "ok: $service: the API runs mplink serve on 8080 behind an internet-facing ALB, its tokens and database URL from Secrets Manager, MPLINK_HTTP_HEADER_TIMEOUT above the ALB's idle timeout, client address from X-Forwarded-For, target health check /healthz, port 8080 open to the ALB's security group only, ResolveCustomer only"

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

# Two operator roles may redrive besides the worker: one exact, one a wildcard (SSO roles live
# under a generated path).
account="$(text sts get-caller-identity --query Account)" || die "sts get-caller-identity failed"
ops_role="arn:aws:iam::$account:role/mplink-ops-$run_id"
sso_roles="arn:aws:iam::$account:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Ops_*"
worker_role="arn:aws:iam::$account:role/$queue_name-worker"
deploy_stack "$stack" \
    "MarketplaceTopicArn1=$topic1" "MarketplaceTopicArn2=$topic2" \
    "QueueName=$queue_name" "MaxReceiveCount=$max_receive" "VisibilityTimeout=$visibility" \
    "RedriveRoleArns=$ops_role,$sso_roles" \
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
check "queue policy: SNS from exactly the two topics, EventBridge from the rule; everyone else refused but the worker and operator roles" "
p = json.loads(load('queue.json')['Attributes'].get('Policy', '{}'))
st = p.get('Statement', [])
if isinstance(st, dict): st = [st]
if [s.get('Effect') for s in st] != ['Allow', 'Allow', 'Deny']: fail(f'expected Allow, Allow, Deny: {st}')
by = {}
for s in st[:2]:
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
deny = st[2]
if deny.get('Principal') != '*' or deny.get('Action') not in ('sqs:SendMessage', ['sqs:SendMessage']): fail(f'deny {deny}')
c = deny.get('Condition', {})
if sorted(c.get('ArnNotEquals', {}).get('aws:SourceArn', [])) != sorted(['$topic1', '$topic2', '$rule_arn']):
    fail(f'deny exempts sources {c.get(\"ArnNotEquals\")}')
if sorted(c.get('ArnNotLike', {}).get('aws:PrincipalArn', [])) != sorted(['$worker_role', '$ops_role', '$sso_roles']):
    fail(f'deny exempts principals {c.get(\"ArnNotLike\")}')
exec(open('$tmp/iam_eval.py').read())
foreign_topic = 'arn:aws:sns:us-east-1:111122223333:aws-mp-subscription-notification-$product'
cases = [
    ('SNS from the subscription topic', {'service': 'sns.amazonaws.com', 'aws:SourceArn': '$topic1'}, 'allow'),
    ('SNS from the entitlement topic', {'service': 'sns.amazonaws.com', 'aws:SourceArn': '$topic2'}, 'allow'),
    ('SNS from a same-named topic of another account', {'service': 'sns.amazonaws.com', 'aws:SourceArn': foreign_topic}, 'deny'),
    ('EventBridge from the rule', {'service': 'events.amazonaws.com', 'aws:SourceArn': '$rule_arn'}, 'allow'),
    ('EventBridge from another rule', {'service': 'events.amazonaws.com', 'aws:SourceArn': '$rule_arn-other'}, 'deny'),
    ('the worker task role (redrive)', {'aws:PrincipalArn': '$worker_role'}, 'identity'),
    ('the operator role', {'aws:PrincipalArn': '$ops_role'}, 'identity'),
    ('an SSO operator role', {'aws:PrincipalArn': '${sso_roles%\*}x1y2'}, 'identity'),
    ('another role of the account', {'aws:PrincipalArn': 'arn:aws:iam::$account:role/app'}, 'deny'),
    ('a user of another account', {'aws:PrincipalArn': 'arn:aws:iam::111122223333:user/eve'}, 'deny'),
]
wrong = [f'{what}: {decide(p, ctx, \"$queue_arn\")}, expected {want}' for what, ctx, want in cases if decide(p, ctx, '$queue_arn') != want]
if wrong: fail('; '.join(wrong))
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
check "no topics: the queue policy lets in EventBridge only (SNS is refused), and nothing is subscribed" "
a = load('queue2.json')['Attributes']
p = json.loads(a.get('Policy', '{}'))
st = p.get('Statement', [])
if isinstance(st, dict): st = [st]
principals = [s.get('Principal', {}).get('Service') if s.get('Principal') != '*' else '*' for s in st]
if principals != ['events.amazonaws.com', '*']: fail(f'policy principals {principals}')
if st[0].get('Condition', {}).get('ArnEquals', {}).get('aws:SourceArn') != '$rule_arn2': fail(f'policy {st}')
exec(open('$tmp/iam_eval.py').read())
worker = 'arn:aws:iam::$account:role/$queue_name2-worker'
got = [decide(p, {'service': 'events.amazonaws.com', 'aws:SourceArn': '$rule_arn2'}, a['QueueArn']),
       decide(p, {'service': 'sns.amazonaws.com', 'aws:SourceArn': '$topic1'}, a['QueueArn']),
       decide(p, {'aws:PrincipalArn': worker}, a['QueueArn']),
       decide(p, {'aws:PrincipalArn': '$ops_role'}, a['QueueArn'])]
if got != ['allow', 'deny', 'identity', 'deny']: fail(f'rule, a topic, the worker, an unlisted operator: {got}')
subs = [s for s in load('allsubs.json')['Subscriptions'] if s['Endpoint'] == a['QueueArn']]
if subs: fail(f'unexpected subscriptions {subs}')
"
