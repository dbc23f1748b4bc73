//! The OpenAPI description states the organization id rule as a regular expression; a client
//! generated from it must accept exactly the ids mplink accepts. Checked over every Unicode
//! scalar value with the `regex` crate, which reads the `\u`/`\U` escapes as Python's `re` does.

use mplink_core::org;

#[test]
fn the_schema_pattern_accepts_exactly_the_characters_the_rule_accepts() {
    let pattern = regex::Regex::new(&org::pattern()).expect("the pattern compiles");
    let mut refused = 0;
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        let one = c.to_string();
        let by_rule = org::check(&one).is_ok();
        assert_eq!(
            pattern.is_match(&one),
            by_rule,
            "U+{:04X}: the pattern and the rule disagree",
            c as u32
        );
        refused += usize::from(!by_rule);
    }
    // Cc (65), White_Space outside Cc (19) and Cf (170 in Unicode 15/16): the count moves only
    // with a Unicode update, which should be a deliberate change here.
    assert!(
        (200..400).contains(&refused),
        "{refused} characters refused"
    );
    assert!(pattern.is_match("org-1") && !pattern.is_match("Acme Corp"));
}
