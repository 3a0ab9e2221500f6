//! The quality gate on small synthetic datasets: each check passing and failing (naming example
//! ids), statistics, review-sample stability, the HTML report and the terminal sample.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shaping::quality::{
    self, CheckReport, QualityConfig, QualityError, ReviewSnapshot, Sample, Voice, render_report,
    review_sample,
};

/// A dataset written to `<tmp>/training/data/<name>.jsonl`.
struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fixture {
    fn new(name: &str, lines: &[Value]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("training/data");
        std::fs::create_dir_all(&data).unwrap();
        let path = data.join(format!("{name}.jsonl"));
        write_lines(&path, lines);
        Self { dir, path }
    }

    fn append(&self, lines: &[Value]) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
    }

    fn errors(&self, lines: &[Value]) {
        write_lines(&quality::errors_path_for(&self.path), lines);
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A minimal record.
fn rec(id: &str, prompt: &str, response: &str) -> Value {
    json!({"id": id, "messages": [
        {"role": "system", "content": "You are Margaret."},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
    ]})
}

/// An annotated record with one step per `(model, finish_reason)`; the last step produced the response.
fn annotated(
    id: &str,
    prompt: &str,
    response: &str,
    source: &str,
    finish: &[(&str, Option<&str>)],
) -> Value {
    let mut value = rec(id, prompt, response);
    let steps: Vec<Value> = finish
        .iter()
        .enumerate()
        .map(|(i, (model, reason))| {
            let text = if i + 1 == finish.len() { response.to_owned() } else { format!("draft {i} of {id}") };
            json!({"model": model, "messages": [{"role": "user", "content": format!("step {i}: {prompt}")}],
                   "params": {"temperature": 0.7}, "text": text, "success": true, "finish_reason": reason,
                   "usage": {"input_tokens": 10, "output_tokens": 5}, "error": null, "cached": i == 0})
        })
        .collect();
    value["input_data"] = json!({"prompt": prompt, "source": source, "category": if id.len().is_multiple_of(2) { "even" } else { "odd" }});
    value["steps"] = Value::Array(steps);
    value["pipeline_commit"] = json!("abc123");
    value["started_at"] = json!("2025-01-01T00:00:00Z");
    value["completed_at"] = json!("2025-01-01T00:00:01Z");
    value
}

/// `n` samples that pass every check of [`config`]: unique ids, prompts and responses, a marker in each.
fn good(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let source = ["forum", "trivia", "chat"][i % 3];
            annotated(
                &format!("s{i:03}"),
                &format!("p{i}a p{i}b p{i}c p{i}d"),
                &format!("Oh hon, the Cubs will win game number {i} this year."),
                source,
                &[("drafter", Some("stop")), ("rewriter", Some("stop"))],
            )
        })
        .collect()
}

fn config() -> QualityConfig {
    QualityConfig::default()
        .min_samples(20)
        .voice_markers(["Cubs", "hon"])
}

fn run(fixture: &Fixture, config: &QualityConfig) -> CheckReport {
    quality::check(&fixture.path, config, &Voice::default()).unwrap()
}

/// The named check, asserted to have failed, with its example ids.
fn failed(report: &CheckReport, name: &str) -> Vec<String> {
    let check = report
        .get(name)
        .unwrap_or_else(|| panic!("no check {name}"));
    assert!(!check.passed, "{name} should fail: {check:?}");
    assert!(!report.passed);
    check.example_ids.clone()
}

fn passed(report: &CheckReport, name: &str) {
    let check = report
        .get(name)
        .unwrap_or_else(|| panic!("no check {name}"));
    assert!(check.passed, "{name} should pass: {check:?}");
}

#[test]
fn good_dataset_passes_every_check() {
    let fixture = Fixture::new("good", &good(30));
    let report = run(&fixture, &config());
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "volume",
            "empty_responses",
            "error_text",
            "truncated",
            "duplicate_ids",
            "duplicate_responses",
            "refusals",
            "voice_markers",
            "response_length",
            "source_share",
            "prompt_diversity"
        ]
    );
    assert!(report.passed, "{report:#?}");
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.example_ids.is_empty() && !c.skipped)
    );
}

#[test]
fn volume() {
    let fixture = Fixture::new("few", &good(5));
    let report = run(&fixture, &config());
    failed(&report, "volume");
    let check = report.get("volume").unwrap();
    assert_eq!((check.value, check.threshold), (5.0, 20.0));
    assert!(check.message.contains("5 samples"), "{}", check.message);
    passed(&run(&fixture, &config().min_samples(5)), "volume");
}

#[test]
fn empty_responses() {
    let mut lines = good(25);
    lines.push(rec("blank", "a question here", "  \n\t "));
    lines.push(json!({"id": "no-assistant", "messages": [{"role": "user", "content": "hello there friend"}]}));
    let fixture = Fixture::new("empty", &lines);
    let report = run(&fixture, &config());
    assert_eq!(
        failed(&report, "empty_responses"),
        ["blank", "no-assistant"]
    );
    passed(&run(&fixture, &config().max_empty(2)), "empty_responses");
}

#[test]
fn error_text() {
    let mut lines = good(25);
    lines.push(rec("e429", "q one", "Error code: 429 - Too Many Requests"));
    lines.push(rec(
        "e500",
        "q two",
        "<html>500 Internal Server Error</html>",
    ));
    lines.push(rec(
        "ejson",
        "q three",
        "{\"error\": {\"message\": \"overloaded\"}}",
    ));
    lines.push(rec(
        "erate",
        "q four",
        "Sorry hon, I was rate limited, try again.",
    ));
    let fixture = Fixture::new("errtext", &lines);
    let report = run(&fixture, &config());
    assert_eq!(
        failed(&report, "error_text"),
        ["e429", "e500", "ejson", "erate"]
    );
    assert_eq!(report.get("error_text").unwrap().value, 4.0);
    passed(&run(&fixture, &config().max_error_text(4)), "error_text");
}

#[test]
fn truncated_counts_only_the_final_step() {
    let mut lines = good(25);
    lines.push(annotated(
        "cut",
        "p cut a",
        "Oh hon, the Cubs are",
        "forum",
        &[("d", Some("stop")), ("r", Some("length"))],
    ));
    // A cut-off draft that a later step completed is fine.
    lines.push(annotated(
        "draft-cut",
        "p draft a",
        "Oh hon, the Cubs rule.",
        "chat",
        &[("d", Some("length")), ("r", Some("stop"))],
    ));
    let fixture = Fixture::new("trunc", &lines);
    let report = run(&fixture, &config());
    assert_eq!(failed(&report, "truncated"), ["cut"]);
    passed(&run(&fixture, &config().max_truncated(1)), "truncated");
}

#[test]
fn duplicate_ids() {
    let mut lines = good(25);
    lines.push(rec(
        "s003",
        "another prompt entirely",
        "Oh hon, a Cubs answer that is new.",
    ));
    let fixture = Fixture::new("dupids", &lines);
    let report = run(&fixture, &config());
    assert_eq!(failed(&report, "duplicate_ids"), ["s003"]);
    passed(
        &run(&fixture, &config().max_duplicate_ids(1)),
        "duplicate_ids",
    );
}

#[test]
fn duplicate_responses_share() {
    let mut lines = good(20);
    for i in 0..3 {
        // Case and whitespace do not make a response different.
        let response = if i == 1 {
            "OH HON,   go Cubs go!"
        } else {
            "Oh hon, go Cubs go!"
        };
        lines.push(rec(
            &format!("same{i}"),
            &format!("unique prompt {i} here"),
            response,
        ));
    }
    let fixture = Fixture::new("dupresp", &lines);
    let report = run(&fixture, &config());
    assert_eq!(failed(&report, "duplicate_responses"), ["same1", "same2"]);
    let check = report.get("duplicate_responses").unwrap();
    assert_eq!(check.value, 0.087);
    passed(
        &run(&fixture, &config().max_duplicate_response_share(0.1)),
        "duplicate_responses",
    );
}

#[test]
fn refusals_and_generic_phrases() {
    let mut lines = good(20);
    lines.push(rec(
        "r1",
        "q a b",
        "I'm sorry, but I can't help with that, hon.",
    ));
    lines.push(rec(
        "r2",
        "q c d",
        "As an AI language model, I love the Cubs.",
    ));
    lines.push(rec(
        "r3",
        "q e f",
        "Well hon, I don\u{2019}t have personal opinions on the Cubs.",
    ));
    lines.push(rec(
        "fine",
        "q g h",
        "Hon, I was an aide at Wrigley for the Cubs.",
    ));
    let fixture = Fixture::new("refuse", &lines);
    let report = run(&fixture, &config());
    assert_eq!(failed(&report, "refusals"), ["r1", "r2", "r3"]);
    passed(&run(&fixture, &config().max_refusal_share(0.2)), "refusals");

    // Generic phrases come from the pipeline config and from identity/voice.toml.
    let phrase = config()
        .max_refusal_share(0.0)
        .generic_phrases(["game number 7"]);
    assert_eq!(
        failed(&run(&fixture, &phrase), "refusals")[..4],
        ["s007", "r1", "r2", "r3"]
    );
    let voice = Voice {
        markers: vec![],
        generic_phrases: vec!["aide at Wrigley".into()],
    };
    let report = quality::check(&fixture.path, &config().max_refusal_share(0.0), &voice).unwrap();
    assert_eq!(failed(&report, "refusals"), ["r1", "r2", "r3", "fine"]);
}

#[test]
fn voice_markers() {
    let mut lines = good(20);
    for i in 0..20 {
        lines.push(rec(
            &format!("plain{i}"),
            &format!("x{i} y{i} z{i}"),
            &format!("A plain helpful answer, honestly, number {i}."),
        ));
    }
    let fixture = Fixture::new("voice", &lines);
    let report = run(&fixture, &config().min_marker_share(0.6));
    assert_eq!(
        failed(&report, "voice_markers"),
        ["plain0", "plain1", "plain2", "plain3", "plain4"]
    );
    assert_eq!(report.get("voice_markers").unwrap().value, 0.5);
    passed(
        &run(&fixture, &config().min_marker_share(0.5)),
        "voice_markers",
    );

    // No markers anywhere: skipped, passing.
    let report = run(
        &fixture,
        &config()
            .voice_markers(Vec::<String>::new())
            .min_marker_share(0.9),
    );
    let check = report.get("voice_markers").unwrap();
    assert!(check.passed && check.skipped, "{check:?}");

    // Markers from identity/voice.toml.
    std::fs::create_dir_all(fixture.root().join("identity")).unwrap();
    std::fs::write(
        fixture.root().join(quality::VOICE_FILE),
        "markers = [\"Wrigley\"]\n",
    )
    .unwrap();
    let voice = Voice::load(fixture.root()).unwrap();
    assert_eq!(voice.markers, ["Wrigley"]);
    let config = QualityConfig::default().min_samples(1);
    let report = quality::check(&fixture.path, &config, &voice).unwrap();
    assert_eq!(report.get("voice_markers").unwrap().value, 0.0);
    failed(&report, "voice_markers");
}

#[test]
fn voice_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Voice::load(dir.path()).unwrap(), Voice::default());
    std::fs::create_dir_all(dir.path().join("identity")).unwrap();
    std::fs::write(dir.path().join(quality::VOICE_FILE), "markers = [1,").unwrap();
    let err = Voice::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("voice.toml"), "{err}");
}

#[test]
fn response_length() {
    let mut lines = good(20);
    lines.push(rec("short", "q1 a", "Hon!"));
    lines.push(rec("long", "q2 a", &format!("Cubs {}", "la ".repeat(100))));
    let fixture = Fixture::new("length", &lines);
    let report = run(&fixture, &config().response_chars(10, 200));
    assert_eq!(failed(&report, "response_length"), ["short", "long"]);
    passed(
        &run(&fixture, &config().response_chars(4, 400)),
        "response_length",
    );
    passed(
        &run(
            &fixture,
            &config()
                .response_chars(10, 200)
                .max_length_outlier_share(0.1),
        ),
        "response_length",
    );
}

#[test]
fn source_share() {
    let lines: Vec<Value> = (0..20)
        .map(|i| {
            let source = if i < 17 { "forum" } else { "chat" };
            annotated(
                &format!("x{i}"),
                &format!("a{i} b{i} c{i}"),
                &format!("Cubs reply {i}"),
                source,
                &[("m", Some("stop"))],
            )
        })
        .collect();
    let fixture = Fixture::new("sources", &lines);
    let report = run(&fixture, &config());
    assert_eq!(
        failed(&report, "source_share"),
        ["x0", "x1", "x2", "x3", "x4"]
    );
    let check = report.get("source_share").unwrap();
    assert_eq!(check.value, 0.85);
    assert!(check.message.contains("\"forum\""), "{}", check.message);
    passed(
        &run(&fixture, &config().max_source_share(0.9)),
        "source_share",
    );

    // Without any declared source the check does not apply.
    let minimal: Vec<Value> = (0..20)
        .map(|i| {
            rec(
                &format!("m{i}"),
                &format!("a{i} b{i}"),
                &format!("Cubs {i} hon"),
            )
        })
        .collect();
    let fixture = Fixture::new("nosource", &minimal);
    let check = run(&fixture, &config())
        .get("source_share")
        .unwrap()
        .clone();
    assert!(check.passed && check.skipped);
}

#[test]
fn prompt_diversity() {
    let lines: Vec<Value> = (0..20)
        .map(|i| {
            let prompt = if i % 2 == 0 {
                "tell me a story about baseball"
            } else {
                "tell me a story about the lake"
            };
            rec(&format!("d{i}"), prompt, &format!("Oh hon, Cubs story {i}"))
        })
        .collect();
    let fixture = Fixture::new("samey", &lines);
    let report = run(&fixture, &config());
    assert_eq!(
        failed(&report, "prompt_diversity"),
        ["d2", "d3", "d4", "d5", "d6"]
    );
    let check = report.get("prompt_diversity").unwrap();
    // 6 distinct bigrams ("tell me", "me a", "a story", "story about", "about baseball", "about the", "the lake" = 7) of 110.
    assert_eq!(check.value, (7.0f64 / 110.0 * 10_000.0).round() / 10_000.0);
    passed(
        &run(&fixture, &config().min_prompt_distinct_2(0.05)),
        "prompt_diversity",
    );
}

#[test]
fn malformed_lines_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, format!("{}\n\n{{not json\n", rec("a", "b", "c"))).unwrap();
    let err = quality::check(&path, &config(), &Voice::default()).unwrap_err();
    assert!(matches!(err, QualityError::Json { line: 3, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("bad.jsonl:3"), "{text}");

    std::fs::write(
        &path,
        format!("{}\n{}\n", rec("a", "b", "c"), json!({"messages": []})),
    )
    .unwrap();
    let text = quality::check(&path, &config(), &Voice::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("bad.jsonl:2") && text.contains("id"),
        "{text}"
    );

    std::fs::write(&path, "[1, 2]\n").unwrap();
    let text = quality::check(&path, &config(), &Voice::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("bad.jsonl:1"), "{text}");

    std::fs::write(&path, b"{\"id\": \"\xff\"}\n").unwrap();
    let text = review_sample(&path, 3).unwrap_err().to_string();
    assert!(
        text.contains("bad.jsonl:1") && text.contains("UTF-8"),
        "{text}"
    );

    let missing = dir.path().join("missing.jsonl");
    let text = quality::check(&missing, &config(), &Voice::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("missing.jsonl"), "{text}");

    // A malformed errors file is an error too.
    let fixture = Fixture::new("errs", &good(3));
    std::fs::write(quality::errors_path_for(&fixture.path), "{\"nope\": 1}\n").unwrap();
    let text = quality::check(&fixture.path, &config(), &Voice::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("errs.errors.jsonl:1") && text.contains("__ERROR__"),
        "{text}"
    );
}

#[test]
fn lenient_fields_are_accepted() {
    let line = json!({"id": 17, "messages": [{"role": "user", "content": ["part"]}, {"role": "assistant", "content": null}],
                      "steps": [{"model": "m", "error": "boom", "usage": null, "finish_reason": null}]});
    let fixture = Fixture::new("lenient", &[line]);
    let (stats, report) =
        quality::analyze(&fixture.path, &QualityConfig::lenient(), &Voice::default()).unwrap();
    assert!(report.passed, "{report:#?}");
    assert_eq!(stats.samples, 1);
    assert_eq!(stats.finish_reasons.get("none"), Some(&1));
    let sample = review_sample(&fixture.path, 1).unwrap().remove(0);
    assert_eq!(sample.id, "17");
    assert_eq!(sample.prompt(), "[\"part\"]");
    assert_eq!(sample.steps[0].error.as_deref(), Some("error: boom"));
}

#[test]
fn stats() {
    let mut lines = good(9);
    lines.push(rec("plain", "four words right here", ""));
    let fixture = Fixture::new("stats", &lines);
    fixture.errors(&[
        json!({"__ERROR__": {"error": "rate_limited", "message": "429", "input_data": {}, "steps": [], "pipeline_commit": "x", "failed_at": "2025-01-01T00:00:00Z"}}),
        json!({"__ERROR__": {"error": "rate_limited", "message": "429"}}),
        json!({"__ERROR__": {"error": "parse", "message": "bad json"}}),
    ]);
    let (stats, _) = quality::analyze(&fixture.path, &config(), &Voice::default()).unwrap();
    assert_eq!(stats.samples, 10);
    assert_eq!(stats.annotated, 9);
    assert_eq!(stats.with_system, 10);
    assert_eq!(stats.sources.get("forum"), Some(&3));
    assert_eq!(stats.sources.get("unknown"), Some(&1));
    assert_eq!(stats.categories.values().sum::<u64>(), 9);
    assert_eq!(stats.steps, 18);
    assert_eq!(stats.cached_steps, 9);
    assert_eq!(stats.finish_reasons.get("stop"), Some(&18));
    assert_eq!(stats.models.get("rewriter"), Some(&9));
    let tokens = stats.tokens.unwrap();
    assert_eq!((tokens.input, tokens.output, tokens.cached), (180, 90, 135));
    assert_eq!(stats.errors, 3);
    assert_eq!(stats.error_types.get("rate_limited"), Some(&2));
    assert_eq!(stats.response_chars.min, 0);
    assert_eq!(stats.prompt_chars.min, 15);
    assert_eq!(stats.prompt_chars.max, 21);
    assert_eq!(
        stats
            .prompt_chars
            .histogram
            .iter()
            .map(|b| b.count)
            .sum::<u64>(),
        10
    );
    assert!(
        stats.response_chars.median >= 40
            && stats.response_chars.p90 >= stats.response_chars.median
    );
}

#[test]
fn review_sample_is_stable() {
    let fixture = Fixture::new("review", &good(50));
    let ids = |n| {
        review_sample(&fixture.path, n)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    let first = ids(8);
    assert_eq!(first.len(), 8);
    assert_eq!(first, ids(8), "same data, same sample");
    // The sample does not depend on file order.
    let mut reversed = good(50);
    reversed.reverse();
    let other = Fixture::new("review", &reversed);
    let other_ids: Vec<String> = review_sample(&other.path, 8)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(first, other_ids);
    // Adding records changes at most one member per record.
    for extra in 0..20 {
        let before = ids(8);
        fixture.append(&[rec(
            &format!("new{extra}"),
            "a fresh prompt",
            "Cubs hon fresh",
        )]);
        let after = ids(8);
        let changed = after.iter().filter(|id| !before.contains(id)).count();
        assert!(changed <= 1, "{before:?} -> {after:?}");
    }
    assert_eq!(ids(1000).len(), 70);
    assert!(ids(0).is_empty());
}

#[test]
fn review_snapshot_has_no_paths_and_truncates() {
    let mut lines = good(5);
    lines.push(rec("long", "q", &"word ".repeat(400)));
    let fixture = Fixture::new("snap", &lines);
    let snapshot = ReviewSnapshot::build(&fixture.path, &config(), &Voice::default(), 10).unwrap();
    assert_eq!(snapshot.dataset, "snap");
    assert_eq!(snapshot.samples.len(), 6);
    let long = snapshot.samples.iter().find(|s| s.id == "long").unwrap();
    assert!(long.response.chars().count() <= quality::REVIEW_TEXT_CHARS + 1);
    assert!(long.response.ends_with('…'));
    let text = serde_json::to_string(&snapshot).unwrap();
    assert!(!text.contains(&fixture.root().display().to_string()));
    assert_eq!(
        snapshot,
        ReviewSnapshot::build(&fixture.path, &config(), &Voice::default(), 10).unwrap()
    );
}

#[test]
fn config_serde_and_manifest() {
    let config = config().max_source_share(0.5);
    let value = serde_json::to_value(&config).unwrap();
    assert_eq!(
        serde_json::from_value::<QualityConfig>(value).unwrap(),
        config
    );
    // Missing fields take defaults.
    let partial: QualityConfig = serde_json::from_value(json!({"min_samples": 3})).unwrap();
    assert_eq!(partial, QualityConfig::default().min_samples(3));

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("x.manifest.json");
    assert_eq!(QualityConfig::from_manifest(&manifest).unwrap(), None);
    std::fs::write(
        &manifest,
        json!({"name": "x", "quality": {"min_samples": 7}, "checks": CheckReport::default()})
            .to_string(),
    )
    .unwrap();
    assert_eq!(
        QualityConfig::from_manifest(&manifest).unwrap(),
        Some(QualityConfig::default().min_samples(7))
    );
    std::fs::write(&manifest, json!({"name": "x"}).to_string()).unwrap();
    assert_eq!(QualityConfig::from_manifest(&manifest).unwrap(), None);
    std::fs::write(
        &manifest,
        json!({"quality": {"min_samples": "many"}}).to_string(),
    )
    .unwrap();
    let err = QualityConfig::from_manifest(&manifest)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.manifest.json") && err.contains("quality"),
        "{err}"
    );

    // A check report round-trips too (the manifest records it).
    let fixture = Fixture::new("rt", &good(3));
    let report = run(&fixture, &config);
    let back: CheckReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back, report);
}

fn all_samples(path: &Path) -> Vec<Sample> {
    quality::read_records(path)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|(line, record)| Sample::from_record(line, record))
        .collect()
}

#[test]
fn html_report() {
    let mut lines = good(25);
    lines.push(rec(
        "evil<id>",
        "<script>alert('x')</script> & more",
        "Oh hon, <b>bold</b> Cubs",
    ));
    lines.push(rec("dup", "q", ""));
    let fixture = Fixture::new("margaret_voice", &lines);
    fixture.errors(&[json!({"__ERROR__": {"error": "timeout<x>", "message": "slow"}})]);
    let (stats, report) = quality::analyze(&fixture.path, &config(), &Voice::default()).unwrap();
    let html = render_report(
        "margaret_voice",
        &stats,
        &report,
        all_samples(&fixture.path),
    );

    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<h1>margaret_voice</h1>"));
    assert!(html.contains("FAILED"));
    for check in &report.checks {
        assert!(
            html.contains(&format!("<td class=\"name\">{}</td>", check.name)),
            "{}",
            check.name
        );
    }
    assert!(html.contains("<svg class=\"histogram\""));
    assert!(html.contains("<svg class=\"bars\""));
    assert!(html.contains("<input id=\"search\" type=\"search\""));
    // Escaped everywhere: prompt, response, id, error type.
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;"));
    assert!(html.contains("evil&lt;id&gt;") && !html.contains("evil<id>"));
    assert!(html.contains("timeout&lt;x&gt;"));
    // Only our own script: one <script> element.
    assert_eq!(html.matches("<script>").count(), 1);
    // The failing check links to the sample, which carries that anchor.
    let link = html.split("class=\"idlink\" href=\"#").nth(1).unwrap();
    let anchor = &link[..link.find('"').unwrap()];
    assert!(html.contains(&format!("id=\"{anchor}\"")), "{anchor}");
    // Self-contained: nothing fetched.
    for needle in ["http://", "https://", "src=", "<link"] {
        assert!(!html.contains(needle), "{needle}");
    }

    let passing = Fixture::new("fine", &good(25));
    let (stats, report) = quality::analyze(&passing.path, &config(), &Voice::default()).unwrap();
    let html = render_report("fine", &stats, &report, all_samples(&passing.path));
    assert!(html.contains("PASSED") && html.contains("No failed records."));
}

#[test]
fn html_report_caps_samples_but_keeps_flagged() {
    let mut lines = good(quality::REPORT_SAMPLE_CAP + 30);
    lines.push(rec("late-bad", "late", ""));
    let fixture = Fixture::new("big", &lines);
    let config = config().min_samples(1);
    let (stats, report) = quality::analyze(&fixture.path, &config, &Voice::default()).unwrap();
    assert_eq!(
        report.get("empty_responses").unwrap().example_ids,
        ["late-bad"]
    );
    let html = render_report("big", &stats, &report, all_samples(&fixture.path));
    assert_eq!(
        html.matches("<details class=\"sample").count(),
        quality::REPORT_SAMPLE_CAP + 1
    );
    assert!(
        html.contains("Listing the first 2,000 of 2,031 samples, plus 1 named by failing checks")
    );
    assert!(html.contains(">late-bad</span>"));
}

#[test]
fn html_report_of_empty_dataset() {
    let fixture = Fixture::new("empty", &[]);
    let (stats, report) = quality::analyze(&fixture.path, &config(), &Voice::default()).unwrap();
    assert_eq!(stats.samples, 0);
    assert!(!report.passed);
    let html = render_report("empty", &stats, &report, Vec::new());
    assert!(html.contains("The dataset has no samples."));
}

#[test]
fn terminal_sample() {
    let mut lines = good(30);
    lines.push(rec("long", &"prompt ".repeat(50), &"response ".repeat(100)));
    let fixture = Fixture::new("term", &lines);
    let a = quality::sample(&fixture.path, 5, 42, false).unwrap();
    assert_eq!(
        a,
        quality::sample(&fixture.path, 5, 42, false).unwrap(),
        "same seed, same sample"
    );
    assert!(a.starts_with("5 of 31 samples from term · seed 42"));
    assert_eq!(a.matches("  id: ").count(), 5);
    assert!(a.contains("source: ") && a.contains("  prompt: ") && a.contains("  response: "));
    assert!(a.contains("rewriter"), "steps are shown: {a}");
    // Different seeds pick different samples (for these seeds).
    assert_ne!(a, quality::sample(&fixture.path, 5, 7, false).unwrap());

    // All of them, truncated and in full.
    let short = quality::sample(&fixture.path, 100, 1, false).unwrap();
    assert!(short.starts_with("31 of 31"));
    let line = short
        .lines()
        .find(|l| l.starts_with("  response: response"))
        .unwrap();
    assert!(line.chars().count() < 330 && line.ends_with('…'), "{line}");
    let full = quality::sample(&fixture.path, 100, 1, true).unwrap();
    assert!(full.contains(&"response ".repeat(100).trim_end().to_owned()));
    assert!(full.contains("  assistant: "));

    // Sampling is uniform-ish: over many seeds every record shows up.
    let mut seen = std::collections::HashSet::new();
    for seed in 0..200 {
        let (total, picked) = quality::sample_records(&fixture.path, 3, seed).unwrap();
        assert_eq!(total, 31);
        assert!(picked.windows(2).all(|w| w[0].line < w[1].line));
        seen.extend(picked.into_iter().map(|s| s.id));
    }
    assert_eq!(seen.len(), 31);
}

/// The "unreviewed data" gate: a hand edit anywhere in a dataset — even one character in a record
/// outside the review sample, keeping every length — changes its review snapshot, so the snapshot
/// test fails under CI until someone reviews it (`cargo xtask review`).
#[test]
fn a_hand_edit_outside_the_sample_changes_the_review_snapshot() {
    let fixture = Fixture::new("edited", &good(40));
    let before = ReviewSnapshot::build(&fixture.path, &config(), &Voice::default(), 3).unwrap();
    let sampled: Vec<String> = before.samples.iter().map(|s| s.id.clone()).collect();
    let text = std::fs::read_to_string(&fixture.path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let victim = lines
        .iter()
        .position(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            !sampled.contains(&v["id"].as_str().unwrap().to_owned())
        })
        .unwrap();
    let edited = lines[victim].replacen("Cubs", "Cubz", 1);
    assert_ne!(
        edited, lines[victim],
        "the fixture line has something to edit"
    );
    lines[victim] = edited;
    std::fs::write(&fixture.path, lines.join("\n") + "\n").unwrap();
    let after = ReviewSnapshot::build(&fixture.path, &config(), &Voice::default(), 3).unwrap();
    assert_eq!(
        before.samples, after.samples,
        "the edit is outside the sample"
    );
    assert_ne!(before, after, "yet the snapshot changes");
}
