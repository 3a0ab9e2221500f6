//! The quality gate on small synthetic datasets: each check passing and failing (naming example
//! ids), statistics, review-sample stability, the HTML report and the terminal sample.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shaping::quality::{
    self, CheckReport, Detectors, QualityConfig, QualityError, Reason, ReviewSnapshot, Sample,
    Turn, Verdict, Voice, render_report, review_sample,
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

/// `n` samples that pass every check of [`config`]: unique ids, prompts and responses, a marker in
/// each, and a reply that shares a content word ("Cubs") with its prompt.
fn good(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let source = ["forum", "trivia", "chat"][i % 3];
            annotated(
                &format!("s{i:03}"),
                &format!("p{i}a p{i}b p{i}c Cubs"),
                &format!("Oh hon, the Cubs will win game number {i} this year, and I'll pour you a coffee at the diner to celebrate."),
                source,
                &[("drafter", Some("stop")), ("rewriter", Some("stop"))],
            )
        })
        .collect()
}

fn config() -> QualityConfig {
    QualityConfig::default()
        .loosen("min_samples", 20.0, "small test fixtures")
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
            "degeneration",
            "contradiction",
            "role_confusion",
            "echo",
            "relevance",
            "surface_garbage",
            "voice_markers",
            "response_length",
            "source_share",
            "prompt_diversity"
        ]
    );
    assert!(report.passed, "{report:#?}");
    assert_eq!((report.samples, report.failing_samples), (30, 0));
    assert!(
        report.reason_counts.is_empty(),
        "{:?}",
        report.reason_counts
    );
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
    // Stopped at max_tokens, but the pipeline trimmed the reply to its last full sentence.
    lines.push(annotated(
        "trimmed",
        "p trimmed a",
        "Oh hon, the Cubs rule the whole league.",
        "chat",
        &[("r", Some("length"))],
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
        generic_phrases: vec!["aide at Wrigley".into()],
        ..Voice::default()
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

    // An unknown key: file, line and key.
    std::fs::write(
        dir.path().join(quality::VOICE_FILE),
        "name = \"Dee\"\nmarkers = [\"hon\"]\nmarkrs = [\"Cubs\"]\n",
    )
    .unwrap();
    let err = Voice::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("voice.toml:3") && err.contains("markrs"),
        "{err}"
    );
    // An unknown key inside a contradiction.
    std::fs::write(
        dir.path().join(quality::VOICE_FILE),
        "[[contradictions]]\nlabel = \"x\"\npattern = \"a\"\nflags = \"i\"\n",
    )
    .unwrap();
    let err = Voice::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("voice.toml:4") && err.contains("flags"),
        "{err}"
    );
    // A pattern that does not compile: file, line, key and label.
    std::fs::write(
        dir.path().join(quality::VOICE_FILE),
        "name = \"Dee\"\n\n[[contradictions]]\nlabel = \"ok\"\npattern = 'I am fine'\n\n[[contradictions]]\nlabel = \"broken\"\npattern = '(unclosed'\n",
    )
    .unwrap();
    let err = Voice::load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, QualityError::VoiceFile { line: 9, key, .. } if key == "contradictions[1].pattern"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("voice.toml:9") && text.contains("broken"),
        "{text}"
    );
}

/// The repository's own identity/voice.toml parses and names Dee.
#[test]
fn repository_voice_file_is_valid() {
    let voice = Voice::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert_eq!(voice.name.as_deref(), Some("Dee"));
    assert!(!voice.is_ai);
    assert!(voice.contradictions.len() >= 5);
    Detectors::new(&voice, &QualityConfig::default()).unwrap();
}

/// Per-sample verdicts: each detector fails its sample with a readable reason, the dataset checks
/// count them, and the report keeps per-reason counts.
#[test]
fn per_sample_verdicts_feed_the_dataset_checks() {
    let mut lines = good(25);
    let junk = [
        (
            "loop",
            "What hot dog do you grab at the game?",
            "I'm gonna grab the hot dog. ".repeat(9),
        ),
        (
            "cards",
            "Who do you root for, the Cubs?",
            "Hon, I've always rooted for the Cardinals and I always will.".to_owned(),
        ),
        (
            "script",
            "Any Cubs news today?",
            "The Cubs won, hon.\nUser: Who pitched for the Cubs?".to_owned(),
        ),
        (
            "parrot",
            "Should I paint my kitchen blue or yellow?",
            "Should I paint my kitchen blue or yellow?".to_owned(),
        ),
        (
            "offtopic",
            "How do I fix a leaky faucet in my bathroom?",
            "Ernie argued about the infield fly rule all morning at the third stool, you know."
                .to_owned(),
        ),
        (
            "shout",
            "How are the Cubs looking?",
            "THE CUBS ARE LOOKING GREAT THIS YEAR HON, BELIEVE ME!".to_owned(),
        ),
    ];
    for (id, prompt, reply) in &junk {
        lines.push(rec(id, prompt, reply));
    }
    let fixture = Fixture::new("verdicts", &lines);
    // The junk replies are one-liners: only the detector under test should fire.
    let short_ok = config().loosen("min_response_chars", 8.0, "one-line junk fixtures");
    let mut verdicts = Vec::new();
    let (_, report) = quality::analyze_each(&fixture.path, &short_ok, &Voice::default(), |s| {
        verdicts.push(s.clone())
    })
    .unwrap();
    assert_eq!(verdicts.len(), 31);
    assert!(
        verdicts[..25].iter().all(|s| s.verdict.passed()),
        "{verdicts:#?}"
    );
    let reasons_of = |id: &str| -> Vec<Reason> {
        let sample = verdicts.iter().find(|s| s.id == id).unwrap();
        sample.verdict.findings.iter().map(|f| f.reason).collect()
    };
    assert_eq!(
        verdicts
            .iter()
            .find(|s| s.id == "loop")
            .unwrap()
            .verdict
            .reasons(),
        ["degeneration: sentence 'I'm gonna grab the hot dog.' ×9"]
    );
    // Which claims contradict the identity is the voice's business: the default voice has none
    // about baseball teams (Dee's file does, see `contradictions_follow_the_identity`).
    assert_eq!(reasons_of("cards"), []);
    assert_eq!(reasons_of("script"), [Reason::RoleConfusion]);
    assert_eq!(reasons_of("parrot"), [Reason::Echo]);
    assert_eq!(reasons_of("offtopic"), [Reason::Relevance]);
    assert_eq!(reasons_of("shout"), [Reason::SurfaceGarbage]);
    assert!(
        verdicts
            .iter()
            .find(|s| s.id == "shout")
            .unwrap()
            .verdict
            .markers
            .contains(&"hon".to_owned())
    );

    assert_eq!(failed(&report, "degeneration"), ["loop"]);
    assert_eq!(failed(&report, "role_confusion"), ["script"]);
    assert_eq!(failed(&report, "echo"), ["parrot"]);
    assert_eq!(failed(&report, "surface_garbage"), ["shout"]);
    // One irrelevant reply of 31 is within the default 5 %.
    passed(&report, "relevance");
    assert_eq!(report.get("relevance").unwrap().value, 0.0323);
    assert_eq!(report.reason_counts.get("echo"), Some(&1));
    assert_eq!(report.reason_counts.get("relevance"), Some(&1));
    assert_eq!(
        report.failing_samples as usize,
        verdicts.iter().filter(|s| !s.verdict.passed()).count()
    );
    // A pipeline may loosen a count, with a reason.
    let loose = short_ok.loosen("max_echo", 1.0, "paraphrase tasks");
    passed(&run(&fixture, &loose), "echo");
}

/// Contradictions come from identity/voice.toml (Dee's file here); AI claims are contradictions
/// unless the identity is an AI.
#[test]
fn contradictions_follow_the_identity() {
    let dee = Voice::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let detectors = Detectors::new(&dee, &QualityConfig::default()).unwrap();
    let judge = |prompt: &str, reply: &str| {
        detectors.judge(&Turn {
            prompt,
            reply,
            finish_reason: None,
        })
    };
    for reply in [
        "Hon, I've always rooted for the Cardinals, ever since I was a girl in the diner.",
        "I'm a lifelong White Sox fan, kiddo, but I serve Cubs fans coffee all the same.",
        "My wife runs the register while I work the grill at the diner, hon.",
        "I'm retired now, hon, so the diner is somebody else's headache these days.",
        "I'm a 21-year-old college student, so the diner is just my summer job, hon.",
        "I play second base for the Cubs, hon, so I don't get to the diner much.",
        "I'm an AI language model, so I can't taste the pierogi at the diner, hon.",
        "I was designed to help people with their questions about the diner, hon.",
    ] {
        let verdict = judge("Tell me about yourself and the diner.", reply);
        assert!(
            verdict.has(Reason::Contradiction),
            "{reply}: {:?}",
            verdict.reasons()
        );
    }
    for reply in [
        "The Cardinals? Bless their hearts, hon. I'd never root for the Cardinals, but their fans drink good coffee at the diner.",
        "White Sox fans come into the diner too, hon, and I tease them something awful.",
        "I'm 58, hon, and I've run the diner for twenty-six years.",
    ] {
        let verdict = judge("Tell me about yourself and the diner.", reply);
        assert!(
            !verdict.has(Reason::Contradiction),
            "{reply}: {:?}",
            verdict.reasons()
        );
    }
    // An AI persona may say it is an AI.
    let robot = Voice {
        is_ai: true,
        ..Voice::default()
    };
    let detectors = Detectors::new(&robot, &QualityConfig::default()).unwrap();
    let verdict = detectors.judge(&Turn {
        prompt: "Are you a language model?",
        reply: "Yes, I'm a language model, and I'm happy to talk about what that means.",
        finish_reason: Some("stop"),
    });
    assert!(
        !verdict.has(Reason::Contradiction),
        "{:?}",
        verdict.reasons()
    );
    // A contradiction pattern built in code that does not compile is an error naming its label.
    let broken = Voice {
        contradictions: vec![quality::Contradiction {
            label: "broken claim".into(),
            pattern: "(".into(),
        }],
        ..Voice::default()
    };
    let err = Detectors::new(&broken, &QualityConfig::default()).unwrap_err();
    assert!(err.to_string().contains("broken claim"), "{err}");
}

/// Strict defaults, and no quiet lowering: loosening a threshold needs a reason.
#[test]
fn loosening_needs_a_reason() {
    let defaults = QualityConfig::default();
    assert_eq!(defaults.min_samples, 100);
    assert_eq!(defaults.min_marker_share, 0.6);
    assert_eq!(defaults.max_irrelevant_share, 0.05);
    assert_eq!(
        (
            defaults.max_degeneration,
            defaults.max_contradiction,
            defaults.max_role_confusion,
            defaults.max_echo,
            defaults.max_surface_garbage,
            defaults.max_truncated,
            defaults.max_empty,
            defaults.max_error_text
        ),
        (0, 0, 0, 0, 0, 0, 0, 0)
    );
    assert_eq!(defaults.max_refusal_share, 0.0);
    defaults.validate().unwrap();
    assert!(defaults.loosenings().is_empty());
    QualityConfig::lenient().validate().unwrap();

    // Tightening needs no reason.
    QualityConfig::default()
        .min_samples(1000)
        .min_marker_share(0.8)
        .max_irrelevant_share(0.01)
        .validate()
        .unwrap();

    // Loosening without a reason names field, value and default.
    let err = QualityConfig::default()
        .min_marker_share(0.1)
        .validate()
        .unwrap_err();
    assert!(
        matches!(&err, QualityError::UnjustifiedLoosening { field, .. } if field == "min_marker_share")
    );
    let text = err.to_string();
    assert!(
        text.contains("min_marker_share") && text.contains("0.1") && text.contains("0.6"),
        "{text}"
    );
    let err = QualityConfig::default()
        .max_truncated(u64::MAX)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_truncated = any") && err.contains("default 0"),
        "{err}"
    );

    // With a reason it validates, and the reason is kept (and serialized into the manifest).
    let config = QualityConfig::default()
        .loosen(
            "min_marker_share",
            0.1,
            "knowledge answers rarely mention the diner",
        )
        .max_truncated(u64::MAX)
        .reason(
            "max_truncated",
            "replies are trimmed to the last full sentence",
        );
    config.validate().unwrap();
    let loosenings = config.loosenings();
    assert_eq!(loosenings.len(), 2);
    assert_eq!(
        loosenings[1].to_string(),
        "min_marker_share loosened to 0.1 (default 0.6): knowledge answers rarely mention the diner"
    );
    let back: QualityConfig =
        serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    back.validate().unwrap();

    // Unknown thresholds and impossible shares are errors too.
    let err = QualityConfig::default()
        .loosen("min_vibes", 0.1, "why not")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("min_vibes"), "{err}");
    let err = QualityConfig::default()
        .max_source_share(1.5)
        .reason("max_source_share", "x")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_source_share") && err.contains("1.5"),
        "{err}"
    );

    // `check` enforces the default for a loosening without a reason.
    let unjustified = QualityConfig::default()
        .min_marker_share(0.1)
        .min_samples(1000);
    let enforced = unjustified.with_unjustified_loosenings_reset();
    assert_eq!(
        (enforced.min_marker_share, enforced.min_samples),
        (0.6, 1000)
    );

    // Checks show each loosening next to the result.
    let fixture = Fixture::new("loose", &good(25));
    let report = run(&fixture, &config.clone().voice_markers(["Cubs"]));
    let check = report.get("voice_markers").unwrap();
    assert_eq!(check.loosened.len(), 1);
    assert_eq!(
        check.loosened[0].reason.as_deref(),
        Some("knowledge answers rarely mention the diner")
    );
    assert_eq!(report.loosened.len(), 2, "{:?}", report.loosened);
}

/// Any chat JSONL: ids are optional, and a line that is not a chat record is an error naming it.
#[test]
fn chat_files_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.jsonl");
    let lines = [
        json!({"messages": [{"role": "user", "content": "How do I brew good coffee at home?"}, {"role": "assistant", "content": "Oh hon, buy whole beans, grind them fresh, and brew your coffee with water just off the boil. Then drink it black."}]}),
        json!({"id": "x2", "messages": [{"role": "user", "content": "How do I brew good coffee at home?"}, {"role": "assistant", "content": "How do I brew good coffee at home?"}]}),
    ];
    write_lines(&path, &lines);
    let mut seen = Vec::new();
    let (stats, report) =
        quality::analyze_chat_file(&path, &QualityConfig::default(), &Voice::default(), |s| {
            seen.push((s.id.clone(), s.verdict.passed()))
        })
        .unwrap();
    assert_eq!(stats.samples, 2);
    assert_eq!(
        seen,
        [("line-1".to_owned(), true), ("x2".to_owned(), false)]
    );
    assert_eq!(failed(&report, "echo"), ["x2"]);
    // Datasets of our own still need ids.
    assert!(quality::check(&path, &QualityConfig::default(), &Voice::default()).is_err());

    std::fs::write(
        &path,
        format!("{}\n{}\n", lines[0], json!({"text": "not chat"})),
    )
    .unwrap();
    let err =
        quality::analyze_chat_file(&path, &QualityConfig::default(), &Voice::default(), |_| {})
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("foreign.jsonl:2") && err.contains("messages"),
        "{err}"
    );
    std::fs::write(&path, "id,prompt,response\n1,a,b\n").unwrap();
    let err =
        quality::analyze_chat_file(&path, &QualityConfig::default(), &Voice::default(), |_| {})
            .unwrap_err()
            .to_string();
    assert!(err.contains("foreign.jsonl:1"), "{err}");
}

#[test]
fn training_set_volume() {
    let small = quality::training_set_check(quality::TRAINING_SET_MIN_SAMPLES - 1, 3);
    assert!(!small.passed);
    assert_eq!(small.name, "training_set");
    assert!(
        small.message.contains("499 samples in 3 datasets"),
        "{}",
        small.message
    );
    assert!(quality::training_set_check(quality::TRAINING_SET_MIN_SAMPLES, 1).passed);
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
    assert_eq!(stats.prompt_chars.min, 16);
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
    let response = long.response.as_deref().unwrap();
    assert!(response.chars().count() <= quality::REVIEW_TEXT_CHARS + 1);
    assert!(response.ends_with('…'));
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

fn all_samples(path: &Path, config: &QualityConfig) -> Vec<(Sample, Verdict)> {
    let detectors = Detectors::new(&Voice::default(), config).unwrap();
    quality::judged_samples(path, &detectors)
        .unwrap()
        .map(|r| r.unwrap())
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
        all_samples(&fixture.path, &config()),
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
    // Failing samples are listed by reason, with what exactly is wrong.
    assert!(html.contains("Failing samples by reason"));
    assert!(html.contains("<span class=\"chip bad\">empty</span> 1 sample</summary>"));
    assert!(html.contains("empty: the reply has no text"));
    // The loosened volume threshold is shown with its reason.
    assert!(html.contains("min_samples loosened to 20 (default 100): small test fixtures"));
    // Self-contained: nothing fetched.
    for needle in ["http://", "https://", "src=", "<link"] {
        assert!(!html.contains(needle), "{needle}");
    }

    let passing = Fixture::new("fine", &good(25));
    let (stats, report) = quality::analyze(&passing.path, &config(), &Voice::default()).unwrap();
    let html = render_report(
        "fine",
        &stats,
        &report,
        all_samples(&passing.path, &config()),
    );
    assert!(html.contains("PASSED") && html.contains("No failed records."));
    assert!(html.contains("No sample fails a detector."));
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
    let html = render_report("big", &stats, &report, all_samples(&fixture.path, &config));
    assert_eq!(
        html.matches("<details class=\"sample").count(),
        quality::REPORT_SAMPLE_CAP + 1
    );
    assert!(html.contains("Listing the first 2,000 of 2,031 samples, plus 1 failing"));
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

/// The calibration category of junk that reads fine to every rule and makes no sense.
const INCOHERENT: &str = "incoherent";

/// The per-sample verdicts against a hand-labelled calibration set (`tests/calibration/`, see its
/// RUBRIC.md): junk taken from real outputs and good replies. Prints precision and recall; run with
/// `cargo test --test quality calibration -- --nocapture` to see the figures.
#[test]
fn calibration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let voice = Voice::load(root).unwrap();
    let detectors = Detectors::new(&voice, &QualityConfig::default()).unwrap();
    let path = root.join("tests/calibration/labelled.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut junk, mut junk_rejected, mut good, mut good_rejected) = (0u32, 0u32, 0u32, 0u32);
    let mut per_category: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    let mut misses = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let record: shaping::format::ChatLine = serde_json::from_value(value.clone()).unwrap();
        let verdict = detectors.judge_record(&record);
        let label = value["label"].as_str().unwrap();
        let category = value["category"].as_str().unwrap_or("?").to_owned();
        let rejected = !verdict.passed();
        if label == "junk" {
            junk += 1;
            let entry = per_category.entry(category.clone()).or_default();
            entry.0 += 1;
            if rejected {
                junk_rejected += 1;
                entry.1 += 1;
            } else {
                misses.push(format!("missed junk {} ({category})", record.id));
            }
        } else {
            good += 1;
            if rejected {
                good_rejected += 1;
                misses.push(format!(
                    "rejected good {}: {:?}",
                    record.id,
                    verdict.reasons()
                ));
            }
        }
    }
    let share = |part: u32, whole: u32| f64::from(part) / f64::from(whole.max(1));
    println!(
        "calibration: {} samples ({junk} junk, {good} good)",
        junk + good
    );
    println!(
        "  junk rejected: {junk_rejected} of {junk} ({:.1}%)",
        100.0 * share(junk_rejected, junk)
    );
    println!(
        "  good rejected: {good_rejected} of {good} ({:.1}%)  [target ≤ 10%]",
        100.0 * share(good_rejected, good)
    );
    println!(
        "  precision (rejected samples that are junk): {:.1}%",
        100.0 * share(junk_rejected, junk_rejected + good_rejected)
    );
    for (category, (total, caught)) in &per_category {
        println!(
            "  recall {category:<20} {caught:>3} of {total:<3} ({:.1}%)",
            100.0 * share(*caught, *total)
        );
    }
    for miss in &misses {
        println!("  {miss}");
    }
    // Coherence is what no deterministic rule sees (RUBRIC.md): the 90 % target holds for the
    // categories the detectors are built for, and incoherent junk is reported on its own.
    let (incoherent, incoherent_caught) = per_category.get(INCOHERENT).copied().unwrap_or_default();
    let (addressed, addressed_caught) = (junk - incoherent, junk_rejected - incoherent_caught);
    println!(
        "  junk rejected, {INCOHERENT} aside: {addressed_caught} of {addressed} ({:.1}%)  [target ≥ 90%]",
        100.0 * share(addressed_caught, addressed)
    );
    println!(
        "  {INCOHERENT} junk rejected: {incoherent_caught} of {incoherent} ({:.1}%)  [no target: needs a model judge]",
        100.0 * share(incoherent_caught, incoherent)
    );
    assert!(junk >= 50 && good >= 50, "the calibration set is too small");
    assert!(
        share(addressed_caught, addressed) >= 0.9,
        "junk rejected below 90%"
    );
    assert!(share(good_rejected, good) <= 0.1, "good rejected above 10%");
}

// ---- Sample kinds: multi-turn conversations and preference pairs ----

/// A conversation: an optional system message, then `(user, assistant)` exchanges.
fn convo(id: &str, system: bool, exchanges: &[(&str, &str)]) -> Value {
    let mut messages = Vec::new();
    if system {
        messages.push(json!({"role": "system", "content": "You are Margaret."}));
    }
    for (user, assistant) in exchanges {
        messages.push(json!({"role": "user", "content": user}));
        messages.push(json!({"role": "assistant", "content": assistant}));
    }
    json!({"id": id, "messages": messages})
}

/// `n` conversations of two exchanges (with a system message) that pass every check.
fn good_convos(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            convo(
                &format!("c{i:03}"),
                true,
                &[
                    (
                        &format!("p{i}a p{i}b Cubs game tonight?"),
                        &format!("Oh hon, the Cubs play game number {i} tonight, and I'll pour you a coffee at the diner before the first pitch."),
                    ),
                    (
                        &format!("p{i}c what about the diner menu?"),
                        &format!("The menu has pierogi on Fridays, hon, and pancakes every morning; the Cubs fans order the meatloaf special number {i}."),
                    ),
                ],
            )
        })
        .collect()
}

/// A preference pair answering one user message.
fn pair(id: &str, prompt: &str, chosen: &str, rejected: &str) -> Value {
    json!({"id": id, "prompt": [{"role": "user", "content": prompt}],
           "chosen": [{"role": "assistant", "content": chosen}],
           "rejected": [{"role": "assistant", "content": rejected}]})
}

/// `n` pairs that pass every check: `chosen` in voice (two markers), `rejected` plainer (one).
fn good_pairs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            pair(
                &format!("d{i:03}"),
                &format!("p{i}a p{i}b p{i}c Cubs"),
                &format!("Oh hon, the Cubs will win game number {i} this year, and I'll pour you a coffee at the diner to celebrate."),
                &format!("The Cubs might win game {i}. Coffee is sold in most places in town all year round."),
            )
        })
        .collect()
}

/// Every sample's verdict, by id.
fn verdicts_of(
    fixture: &Fixture,
    config: &QualityConfig,
) -> (CheckReport, std::collections::BTreeMap<String, Verdict>) {
    let mut verdicts = std::collections::BTreeMap::new();
    let (_, report) = quality::analyze_each(&fixture.path, config, &Voice::default(), |s| {
        verdicts.insert(s.id.clone(), s.verdict.clone());
    })
    .unwrap();
    (report, verdicts)
}

#[test]
fn a_multi_turn_sample_fails_on_the_turn_named() {
    let mut lines = good_convos(25);
    lines.push(convo(
        "loop3",
        true,
        &[
            (
                "What hot dog do you grab at the game?",
                &"I'm gonna grab the hot dog. ".repeat(9),
            ),
            (
                "And what about the diner menu?",
                "The menu has pierogi on Fridays, hon, and pancakes every morning; the Cubs fans all order the meatloaf.",
            ),
        ],
    ));
    let fixture = Fixture::new("convos", &lines);
    let (report, verdicts) = verdicts_of(&fixture, &config());
    assert!(
        verdicts.values().filter(|v| v.passed()).count() == 25,
        "{verdicts:#?}"
    );
    // Turn 3 (system, user, assistant) fails; the sample fails with it, the turn named.
    assert_eq!(
        verdicts["loop3"].reasons(),
        ["turn 3: degeneration: sentence 'I'm gonna grab the hot dog.' ×9"]
    );
    assert_eq!(verdicts["loop3"].findings[0].at.as_deref(), Some("turn 3"));
    assert_eq!(failed(&report, "degeneration"), ["loop3"]);
    // The shape check is listed for multi-turn data, and passes.
    passed(&report, "shape");
    // Markers are counted per reply: 51 of 52 replies show one.
    let markers = report.get("voice_markers").unwrap();
    assert!(
        markers.message.starts_with("51 of 52 responses"),
        "{markers:?}"
    );

    // A reply that repeats an earlier turn of its conversation is an echo, named by turn.
    let reply = "Oh hon, the Cubs play game number one tonight, and I'll pour you a coffee at the diner before the first pitch.";
    let fixture = Fixture::new(
        "again",
        &[convo(
            "again",
            false,
            &[
                ("Cubs game tonight?", reply),
                ("Anything else about the Cubs tonight?", reply),
            ],
        )],
    );
    let (_, verdicts) = verdicts_of(&fixture, &QualityConfig::lenient());
    assert_eq!(
        verdicts["again"].reasons(),
        ["turn 4: echo: says again the reply of turn 2, word for word"]
    );
}

#[test]
fn a_conversation_ending_on_a_user_turn_fails_naming_it() {
    let mut lines = good_convos(25);
    let mut open = convo(
        "open",
        false,
        &[(
            "p99a Cubs game tonight?",
            "Oh hon, the Cubs play tonight, and I'll pour you a coffee at the diner before the first pitch, like always.",
        )],
    );
    open["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "And tomorrow?"}));
    lines.push(open);
    lines.push(json!({"id": "tool", "messages": [
        {"role": "user", "content": "Cubs game tonight?"},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "Oh hon, the Cubs play tonight, and I'll pour you a coffee at the diner before the first pitch."}]}));
    let fixture = Fixture::new("shapes", &lines);
    let (report, verdicts) = verdicts_of(&fixture, &config());
    assert_eq!(
        verdicts["open"].reasons(),
        ["shape: the conversation ends on a user turn; the last turn must be the assistant's"]
    );
    assert_eq!(
        verdicts["tool"].reasons()[0],
        "shape: turn 2 has the unknown role 'tool' (expected system, user or assistant)"
    );
    assert_eq!(failed(&report, "shape"), ["open", "tool"]);
    assert_eq!(report.reason_counts.get("shape"), Some(&2));
    // Single-turn chat data lists no shape check until a line breaks its shape.
    assert!(
        run(&Fixture::new("plain", &good(25)), &config())
            .get("shape")
            .is_none()
    );
}

#[test]
fn a_pair_whose_chosen_fails_is_filtered() {
    let mut lines = good_pairs(25);
    lines.push(pair(
        "bad-chosen",
        "Will the Cubs win today?",
        "As an AI language model, I think the Cubs will win today, hon, and the diner is a fine place to watch.",
        "The Cubs might win today.",
    ));
    let fixture = Fixture::new("pairs", &lines);
    let (report, verdicts) = verdicts_of(&fixture, &config());
    assert_eq!(verdicts.values().filter(|v| v.passed()).count(), 25);
    let reasons = verdicts["bad-chosen"].reasons();
    assert!(
        reasons.iter().any(|r| r.starts_with("chosen: refusal: ")),
        "{reasons:?}"
    );
    assert!(
        verdicts["bad-chosen"]
            .findings
            .iter()
            .all(|f| f.at.as_deref() == Some("chosen"))
    );
    assert_eq!(failed(&report, "refusals"), ["bad-chosen"]);
    // The pair checks are listed for pairs, and pass here.
    for name in ["shape", "same_answers", "rejected_voice"] {
        passed(&report, name);
    }
    // The off-voice rejected answers (one marker, no "hon") are not judged for voice.
    passed(&report, "voice_markers");
}

#[test]
fn a_pair_whose_rejected_is_chosen_again_is_filtered() {
    let mut lines = good_pairs(25);
    let chosen = "Oh hon, the Cubs will win it all this year, and I'll pour you a coffee at the diner to celebrate it.";
    lines.push(pair(
        "same",
        "Will the Cubs win it all?",
        chosen,
        &format!("  {}", chosen.to_uppercase().replace(' ', "  ")),
    ));
    lines.push(pair("blank", "Will the Cubs win it all?", chosen, " "));
    let fixture = Fixture::new("same", &lines);
    let (report, verdicts) = verdicts_of(&fixture, &config());
    assert_eq!(
        verdicts["same"].reasons(),
        ["same_answers: rejected is the chosen answer again (whitespace and case aside)"]
    );
    assert_eq!(
        verdicts["blank"].reasons(),
        ["rejected: empty: the reply has no text"]
    );
    assert_eq!(failed(&report, "same_answers"), ["same"]);
    assert_eq!(failed(&report, "empty_responses"), ["blank"]);
    assert_eq!(report.reason_counts.get("same_answers"), Some(&1));
}

#[test]
fn a_pair_whose_rejected_shows_more_voice_is_filtered() {
    let mut lines = good_pairs(25);
    lines.push(pair(
        "voiced",
        "Will the Cubs win today?",
        "The Cubs will win today, I think, and the diner will be full of fans wanting coffee and pie after the game.",
        "Oh hon, the Cubs will win today, and I'll pour you a coffee.",
    ));
    let fixture = Fixture::new("voiced", &lines);
    let (report, verdicts) = verdicts_of(&fixture, &config());
    assert_eq!(
        verdicts["voiced"].reasons(),
        ["rejected_voice: rejected shows 2 voice markers (Cubs, hon), chosen 1 (Cubs)"]
    );
    assert_eq!(failed(&report, "rejected_voice"), ["voiced"]);
    assert_eq!(report.reason_counts.get("rejected_voice"), Some(&1));

    // The same rules for a pipeline, without a file.
    let detectors = Detectors::new(&Voice::default(), &config()).unwrap();
    assert!(
        detectors
            .check_pair("Oh hon, the Cubs won.", "They won.")
            .is_empty()
    );
    assert_eq!(
        detectors.check_pair("They won.", "Oh hon, the Cubs won.")[0].reason,
        Reason::RejectedVoice
    );
}

#[test]
fn stats_of_turns_and_pair_margins() {
    let exchanges = |id: &str, n: usize| {
        let turns: Vec<(String, String)> = (0..n)
            .map(|k| (format!("question {k}?"), format!("answer {k}, hon.")))
            .collect();
        let turns: Vec<(&str, &str)> = turns
            .iter()
            .map(|(q, a)| (q.as_str(), a.as_str()))
            .collect();
        convo(id, false, &turns)
    };
    let fixture = Fixture::new(
        "turns",
        &[
            exchanges("one", 1),
            exchanges("two", 2),
            exchanges("three", 3),
        ],
    );
    let (stats, report) =
        quality::analyze(&fixture.path, &QualityConfig::lenient(), &Voice::default()).unwrap();
    let turns = stats.turns.clone().expect("turn stats");
    assert_eq!(
        (turns.conversations, turns.min, turns.mean, turns.max),
        (3, 1, 2.0, 3)
    );
    assert_eq!(stats.multi_turn, 2);
    assert_eq!(report.turns, stats.turns, "the manifest's checks keep them");
    assert!(stats.pairs.is_none());
    // Single-turn data has no turn stats (and its snapshots do not change).
    let (single, _) = quality::analyze(
        &Fixture::new("single", &good(3)).path,
        &QualityConfig::lenient(),
        &Voice::default(),
    )
    .unwrap();
    assert!(single.turns.is_none() && single.pairs.is_none());

    let fixture = Fixture::new(
        "margins",
        &[
            // chosen 2 markers, 5 words; rejected 0, 2.
            pair(
                "a",
                "Did the Cubs win?",
                "Oh hon, the Cubs won.",
                "They won.",
            ),
            // chosen 1 marker, 2 words; rejected 2, 6.
            pair(
                "b",
                "Did the Cubs win?",
                "Sure hon.",
                "The Cubs, hon, they won today.",
            ),
        ],
    );
    let config = QualityConfig::lenient().voice_markers(["Cubs", "hon"]);
    let (stats, report) = quality::analyze(&fixture.path, &config, &Voice::default()).unwrap();
    let pairs = stats.pairs.clone().expect("pair stats");
    assert_eq!(pairs.pairs, 2);
    assert_eq!(pairs.marker_margin, 0.5);
    assert_eq!(pairs.word_margin, -0.5);
    assert_eq!(pairs.chosen_more_markers, 0.5);
    assert!(stats.turns.is_none());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["pairs"]["marker_margin"], json!(0.5));
    assert_eq!(json["reason_counts"]["rejected_voice"], json!(1));
}

#[test]
fn a_pair_missing_rejected_is_an_error_naming_file_line_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefs.jsonl");
    let broken = json!({"id": "p-9", "prompt": [{"role": "user", "content": "Cubs?"}],
                        "chosen": [{"role": "assistant", "content": "Cubs, hon."}]});
    write_lines(
        &path,
        &[pair("p-1", "Cubs?", "Cubs, hon.", "The Cubs."), broken],
    );
    let error = quality::check(&path, &config(), &Voice::default()).unwrap_err();
    assert!(
        matches!(error, QualityError::Invalid { line: 2, .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("prefs.jsonl:2: record 'p-9': missing field `rejected`"),
        "{text}"
    );
    let text = quality::analyze_chat_file(&path, &config(), &Voice::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(text.contains("prefs.jsonl:2: record 'p-9'"), "{text}");
    let text = review_sample(&path, 3).unwrap_err().to_string();
    assert!(text.contains("prefs.jsonl:2: record 'p-9'"), "{text}");
}

#[test]
fn a_file_mixing_kinds_fails_the_odd_samples() {
    let mut lines = good(25);
    lines.push(pair(
        "odd",
        "Will the Cubs win?",
        "Oh hon, the Cubs will win it all this year, and I'll pour you a coffee at the diner to celebrate it.",
        "The Cubs might win.",
    ));
    let fixture = Fixture::new("mixed", &lines);
    let (report, verdicts) = verdicts_of(&fixture, &config());
    assert_eq!(
        verdicts["odd"].reasons(),
        [
            "shape: a preference pair in a chat dataset (the first sample is chat; one kind per file)"
        ]
    );
    assert_eq!(failed(&report, "shape"), ["odd"]);
    // Chat files from elsewhere (`check --file`) may hold pairs too, ids or not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dpo.jsonl");
    let mut no_id = pair("x", "Cubs?", "Cubs, hon.", "The Cubs.");
    no_id.as_object_mut().unwrap().remove("id");
    write_lines(&path, &[no_id]);
    let mut ids = Vec::new();
    quality::analyze_chat_file(&path, &QualityConfig::lenient(), &Voice::default(), |s| {
        ids.push(s.id.clone())
    })
    .unwrap();
    assert_eq!(ids, ["line-1"]);
}

#[test]
fn review_and_report_render_turns_and_pairs() {
    // Conversations of several exchanges: turn by turn.
    let fixture = Fixture::new("convos", &good_convos(3));
    let snapshot = ReviewSnapshot::build(&fixture.path, &config(), &Voice::default(), 3).unwrap();
    let sample = &snapshot.samples[0];
    assert_eq!(sample.prompt, None);
    assert_eq!(sample.response, None);
    assert_eq!(sample.system.as_deref(), Some("You are Margaret."));
    assert_eq!(sample.turns.len(), 4);
    assert!(
        sample.turns[0].starts_with("[user] p")
            && sample.turns[1].starts_with("[assistant] Oh hon")
    );
    assert!(sample.turns[3].starts_with("[assistant] The menu"));
    let text = serde_json::to_string(&snapshot).unwrap();
    assert!(!text.contains("\"chosen\""));
    let (stats, report) = quality::analyze(&fixture.path, &config(), &Voice::default()).unwrap();
    let html = render_report(
        "convos",
        &stats,
        &report,
        all_samples(&fixture.path, &config()),
    );
    assert!(
        html.contains("<div class=\"role\">assistant · turn 5</div>"),
        "turns are numbered"
    );
    assert!(html.contains("Exchanges"));

    // Pairs: the prompt, then chosen and rejected.
    let fixture = Fixture::new("pairs", &good_pairs(3));
    let snapshot = ReviewSnapshot::build(&fixture.path, &config(), &Voice::default(), 3).unwrap();
    let sample = &snapshot.samples[0];
    assert!(sample.prompt.as_deref().unwrap().starts_with('p'));
    assert!(sample.chosen.as_deref().unwrap().starts_with("Oh hon"));
    assert!(
        sample
            .rejected
            .as_deref()
            .unwrap()
            .starts_with("The Cubs might")
    );
    assert_eq!(sample.response, None);
    assert!(sample.turns.is_empty());
    let (stats, report) = quality::analyze(&fixture.path, &config(), &Voice::default()).unwrap();
    let html = render_report(
        "pairs",
        &stats,
        &report,
        all_samples(&fixture.path, &config()),
    );
    assert_eq!(html.matches("<div class=\"pair\">").count(), 3);
    assert!(html.contains(
        "<div class=\"answer chosen\"><div class=\"msg assistant\"><div class=\"role\">chosen</div>"
    ));
    assert!(html.contains("<div class=\"role\">rejected</div>"));
    assert!(html.contains("Pair margins"));

    // And in the terminal.
    let text = quality::sample(&fixture.path, 3, 1, false).unwrap();
    assert_eq!(text.matches("  chosen: Oh hon").count(), 3, "{text}");
    assert_eq!(
        text.matches("  rejected: The Cubs might").count(),
        3,
        "{text}"
    );
    let text = quality::sample(&Fixture::new("c", &good_convos(2)).path, 2, 1, false).unwrap();
    assert_eq!(text.matches("  assistant: ").count(), 4, "{text}");
}
