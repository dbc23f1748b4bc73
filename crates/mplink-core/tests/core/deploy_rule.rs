//! The EventBridge rule in `deploy/cloudformation.yaml` lists exactly the detail-types mplink
//! handles (the decoder's table, which `mplink provision` also uses), so nothing else is even
//! delivered. `scripts/check-deploy.sh` then checks that the deployed rule is the template's.

use mplink_core::event::{eventbridge_rule_pattern, handled_detail_types, EVENTBRIDGE_SOURCE};

/// The quoted items under `detail-type:` in the template's rule, in order.
fn template_detail_types(template: &str) -> Vec<String> {
    let rule = template
        .split("EventPattern:")
        .nth(1)
        .expect("the template has an EventPattern");
    let mut lines = rule.lines().skip_while(|l| l.trim() != "detail-type:");
    assert!(lines.next().is_some(), "the rule has a detail-type list");
    lines
        .map(str::trim)
        .take_while(|l| l.starts_with("- "))
        .map(|l| l.trim_start_matches("- ").trim_matches('"').to_string())
        .collect()
}

fn template() -> String {
    let path = crate::repo_root().join("deploy/cloudformation.yaml");
    std::fs::read_to_string(path).expect("template")
}

#[test]
fn the_template_rule_lists_exactly_the_handled_detail_types() {
    let handled: Vec<String> = handled_detail_types().map(str::to_owned).collect();
    assert_eq!(template_detail_types(&template()), handled);
    assert!(template().contains("source: [aws.agreement-marketplace]"));
}

#[test]
fn the_comparison_notices_a_missing_or_extra_detail_type() {
    let handled: Vec<String> = handled_detail_types().map(str::to_owned).collect();
    let missing = template().replace("          - \"Purchase Agreement Ending - Proposer\"\n", "");
    assert_ne!(template_detail_types(&missing), handled);
    let extra = template().replace(
        "        detail-type:\n",
        "        detail-type:\n          - \"Offer Released\"\n",
    );
    assert_ne!(template_detail_types(&extra), handled);
}

#[test]
fn provision_uses_the_same_list() {
    let pattern = eventbridge_rule_pattern();
    assert_eq!(pattern["source"], serde_json::json!([EVENTBRIDGE_SOURCE]));
    let listed: Vec<&str> = pattern["detail-type"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(listed, handled_detail_types().collect::<Vec<_>>());
    assert_eq!(listed.len(), 25);
}
