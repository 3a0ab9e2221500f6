//! The rubric judge against the testkit mock server: scores parsed and aggregated into the manifest (status stays CURRENT), reruns answered from the cache, malformed answers reported per sample, cost estimates, secrets, bad input.

mod common;

use std::path::Path;
use std::sync::Once;

use common::echo::Echo;
use common::{ServedRepo, TestRepo, openai_model, run_args};
use shaping::judge::{
    self, AnswerError, Criterion, JudgeError, JudgeOptions, JudgePlan, JudgeSummary,
};
use shaping::manifest::State;
use testkit::{ChatView, MockConfig, default_reply};

/// The variable holding the judge's (fake) key.
const KEY_VAR: &str = "SHAPING_TEST_JUDGE_KEY";
const KEY: &str = "sk-judge-test-0123456789abcdef";
/// A variable holding a key the server does not accept.
const WRONG_KEY_VAR: &str = "SHAPING_TEST_JUDGE_WRONG_KEY";
const WRONG_KEY: &str = "sk-judge-wrong-fedcba9876543210";

fn init_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before anything in this binary reads them; never changed afterwards.
        unsafe {
            std::env::set_var(KEY_VAR, KEY);
            std::env::set_var(WRONG_KEY_VAR, WRONG_KEY);
        }
    });
}

/// The number after "Reply number " in the sample the judge was shown.
fn reply_number(view: &ChatView) -> Option<u32> {
    let sample = view.last_user()?;
    let rest = &sample[sample.find("Reply number ")? + "Reply number ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The judge's scores for sample number `k`: voice 1..=5 cycling, persona 5, relevance 4,
/// coherence 3 or 4.
fn expected_scores(k: u32) -> [u8; 4] {
    [1 + (k % 5) as u8, 5, 4, 3 + (k % 2) as u8]
}

/// A mock model: judge requests (a system message holding the rubric) get scores from
/// [`expected_scores`], with the exceptions in `bad` (sample number → reply text); other
/// requests get the default echo.
fn responder(bad: Vec<(u32, &'static str)>) -> impl Fn(&ChatView) -> String + Send + Sync {
    move |view: &ChatView| {
        let is_judge = view
            .messages
            .first()
            .is_some_and(|m| m.role == "system" && m.content.contains("<narrative>"));
        if !is_judge {
            return default_reply(view);
        }
        let k = reply_number(view).expect("the judge sees the sample");
        if let Some((_, text)) = bad.iter().find(|(n, _)| *n == k) {
            return (*text).to_owned();
        }
        let [v, p, r, c] = expected_scores(k);
        format!(
            "{{\"voice\": {v}, \"persona\": {p}, \"relevance\": {r}, \"coherence\": {c}, \"reason\": \"sample {k}\"}}"
        )
    }
}

/// models.toml with alias `m` (generation), `judge` (priced) and `judge-wrong-key`.
fn models_toml(base_url: &str) -> String {
    format!(
        "{}{}{}",
        openai_model("m", base_url, &format!("api_key_env = \"{KEY_VAR}\"")),
        openai_model(
            "judge",
            base_url,
            &format!(
                "api_key_env = \"{KEY_VAR}\"\nmax_concurrency = 4\nprice_input_per_mtok = 2.5\nprice_output_per_mtok = 10.0"
            ),
        ),
        openai_model(
            "judge-wrong-key",
            base_url,
            &format!("api_key_env = \"{WRONG_KEY_VAR}\""),
        ),
    )
}

/// A repository with the models of [`models_toml`] on a mock server started with `config`.
fn judge_repo(config: MockConfig) -> ServedRepo {
    init_env();
    ServedRepo::with_models(config, models_toml)
}

fn prompts(n: u32) -> String {
    (0..n).map(|k| format!("Reply number {k}\n")).collect()
}

/// A dataset of `n` samples written directly (no pipeline run, no manifest).
fn write_dataset(repo: &TestRepo, name: &str, n: u32) -> std::path::PathBuf {
    let lines: String = (0..n)
        .map(|k| {
            serde_json::json!({
                "id": format!("s-{k:02}"),
                "messages": [
                    {"role": "user", "content": format!("Question {k}?")},
                    {"role": "assistant", "content": format!("Reply number {k}, hon.")},
                ],
            })
            .to_string()
                + "\n"
        })
        .collect();
    repo.write(&format!("training/data/{name}.jsonl"), &lines);
    repo.output(name)
}

fn options(alias: &str) -> JudgeOptions {
    JudgeOptions {
        alias: alias.to_owned(),
        quiet: true,
        ..JudgeOptions::default()
    }
}

fn echo_state(repo: &TestRepo) -> State {
    repo.evaluate(&[repo.describe::<Echo>()])[0].status.state
}

#[test]
fn scores_are_aggregated_into_the_manifest_and_a_rerun_sends_nothing() {
    let repo = judge_repo(
        MockConfig::new()
            .api_key(KEY)
            .responder(responder(Vec::new())),
    );
    let server = &repo.server;
    let n = 12;
    repo.write("inputs/prompts.txt", &prompts(n));
    repo.run::<Echo>(run_args()).unwrap();
    assert_eq!(echo_state(&repo), State::Current);
    let manifest_before = repo.read("training/data/echo.manifest.json");
    let generated = server.stats().received;

    let plan = JudgePlan::prepare(repo.root(), &repo.output("echo"), &options("judge")).unwrap();
    let estimate = plan.estimate();
    assert_eq!(
        (estimate.samples, estimate.cached, estimate.requests),
        (12, 0, 12)
    );
    let outcome = plan.run().unwrap();
    assert_eq!(outcome.requests_sent, 12);
    assert_eq!(server.stats().received - generated, 12);

    // Means, distribution and the lowest samples, from the scores the server gave.
    let expected: Vec<[u8; 4]> = (0..n).map(expected_scores).collect();
    let mean_of = |i: usize| {
        let sum: u32 = expected.iter().map(|s| u32::from(s[i])).sum();
        (f64::from(sum) / f64::from(n) * 1000.0).round() / 1000.0
    };
    let summary = &outcome.summary;
    assert_eq!((summary.samples, summary.scored), (12, 12));
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let means = summary.means.unwrap();
    for (i, criterion) in Criterion::ALL.iter().enumerate() {
        assert_eq!(means.get(*criterion), mean_of(i), "{criterion}");
    }
    let voice_counts = summary.distribution["voice"];
    assert_eq!(voice_counts, [3, 3, 2, 2, 2]);
    assert_eq!(summary.distribution["persona"], [0, 0, 0, 0, 12]);
    // Lowest mean: voice 1 and coherence 3 → samples 0 and 10 (mean 3.25).
    assert_eq!(summary.lowest[0].id, "echo-0");
    assert_eq!(summary.lowest[0].mean, 3.25);
    assert_eq!(summary.lowest[0].reason, "sample 0");
    assert_eq!(summary.lowest[1].id, "echo-10");
    assert_eq!(summary.model.alias, "judge");

    // Recorded in the manifest, which otherwise stays as it was: the output stays CURRENT.
    let manifest_path = repo.manifest("echo");
    judge::record_in_manifest(&manifest_path, summary).unwrap();
    assert_eq!(echo_state(&repo), State::Current);
    assert_eq!(
        judge::from_manifest(&manifest_path).unwrap().as_ref(),
        Some(summary)
    );
    let mut after: serde_json::Value =
        serde_json::from_str(&repo.read("training/data/echo.manifest.json")).unwrap();
    after.as_object_mut().unwrap().remove("judge");
    let before: serde_json::Value = serde_json::from_str(&manifest_before).unwrap();
    assert_eq!(after, before, "only the judge field was added");

    // A rerun is answered from the cache: nothing is sent, nothing is estimated to be paid.
    let plan = JudgePlan::prepare(repo.root(), &repo.output("echo"), &options("judge")).unwrap();
    let estimate = plan.estimate();
    assert_eq!((estimate.cached, estimate.requests), (12, 0));
    assert!(
        estimate.to_string().ends_with("nothing to pay for"),
        "{estimate}"
    );
    let received = server.stats().received;
    let rerun = plan.run().unwrap();
    assert_eq!(rerun.requests_sent, 0);
    assert_eq!(rerun.cache_hits, 12);
    assert_eq!(server.stats().received, received);
    assert_eq!(&rerun.summary, summary);

    // Another narrative is another rubric prompt: everything is asked again.
    repo.write("identity/NARRATIVE.md", "# Dee\n\nDee runs a bakery now.\n");
    let plan = JudgePlan::prepare(repo.root(), &repo.output("echo"), &options("judge")).unwrap();
    assert_eq!(plan.estimate().requests, 12);
}

#[test]
fn malformed_and_out_of_range_answers_are_reported_per_sample() {
    let repo = judge_repo(MockConfig::new().api_key(KEY).responder(responder(vec![
        (2, "I'd give it a solid four out of five!"),
        (
            5,
            "{\"voice\": 9, \"persona\": 5, \"relevance\": 4, \"coherence\": 4, \"reason\": \"\"}",
        ),
        (7, "{\"voice\": 3, \"persona\": 5, \"relevance\": 4}"),
    ])));
    let server = &repo.server;
    let dataset = write_dataset(&repo, "tiny", 8);

    let outcome = JudgePlan::prepare(repo.root(), &dataset, &options("judge"))
        .unwrap()
        .run()
        .unwrap();
    // Each bad answer was asked for once more, under a new cache key.
    assert_eq!(outcome.requests_sent, 8 + 3);
    let failed: Vec<(&str, &AnswerError)> = outcome
        .judgements
        .iter()
        .filter_map(|j| j.result.as_ref().err().map(|e| (j.id.as_str(), e)))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0].0, "s-02");
    assert!(matches!(failed[0].1, AnswerError::NotJson { .. }));
    assert_eq!(failed[1].0, "s-05");
    assert_eq!(
        failed[1].1.to_string(),
        "the judge's score for 'voice' is 9, outside 1..=5"
    );
    assert_eq!(failed[2].0, "s-07");
    assert_eq!(
        failed[2].1,
        &AnswerError::MissingScore {
            criterion: "coherence"
        }
    );
    let summary = &outcome.summary;
    assert_eq!((summary.samples, summary.scored), (8, 5));
    let failure_ids: Vec<&str> = summary.failures.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(failure_ids, ["s-02", "s-05", "s-07"]);
    // The means cover the five scored samples only.
    let scored = [0u32, 1, 3, 4, 6];
    let voice: u32 = scored
        .iter()
        .map(|k| u32::from(expected_scores(*k)[0]))
        .sum();
    assert_eq!(
        summary.means.unwrap().voice,
        (f64::from(voice) / 5.0 * 1000.0).round() / 1000.0
    );
    // Unjudged samples fail a gate even when the means pass.
    let gate = summary.gate(1.0);
    assert_eq!(gate.len(), 1);
    assert!(gate[0].starts_with("3 of 8 samples could not be judged (e.g. 's-02')"));

    // The bad answers are cached too: a rerun sends nothing and reports the same.
    let received = server.stats().received;
    let rerun = JudgePlan::prepare(repo.root(), &dataset, &options("judge"))
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(rerun.requests_sent, 0);
    assert_eq!(server.stats().received, received);
    assert_eq!(rerun.summary.failures, summary.failures);
}

#[test]
fn the_cost_estimate_is_shown_before_sending_when_the_model_is_priced() {
    init_env();
    let config = MockConfig::new()
        .api_key(KEY)
        .responder(responder(Vec::new()));
    let repo = ServedRepo::with_models(config, |base_url| {
        let unpriced = openai_model(
            "unpriced",
            base_url,
            &format!("api_key_env = \"{KEY_VAR}\""),
        );
        models_toml(base_url) + &unpriced
    });
    let server = &repo.server;
    let dataset = write_dataset(&repo, "tiny", 10);

    let plan = JudgePlan::prepare(repo.root(), &dataset, &options("judge")).unwrap();
    let estimate = plan.estimate();
    assert_eq!(server.stats().received, 0, "estimating sends nothing");
    assert_eq!(estimate.requests, 10);
    assert_eq!(
        estimate.output_tokens,
        10 * u64::from(judge::MAX_ANSWER_TOKENS)
    );
    // Every request carries the rubric and the narrative: well over a hundred tokens each.
    assert!(estimate.input_tokens > 10 * 300, "{estimate:?}");
    let cost = estimate.cost_usd.expect("priced");
    let expected =
        estimate.input_tokens as f64 * 2.5 / 1e6 + estimate.output_tokens as f64 * 10.0 / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    let shown = estimate.to_string();
    assert!(
        shown.contains("10 requests to send")
            && shown.contains(&format!("estimated cost ${cost:.4}")),
        "{shown}"
    );
    let outcome = plan.run().unwrap();
    let spent = outcome.cost_usd.expect("priced");
    assert!(
        spent > 0.0 && spent <= cost,
        "spent {spent}, estimated {cost}"
    );

    let unpriced = JudgePlan::prepare(repo.root(), &dataset, &options("unpriced"))
        .unwrap()
        .estimate();
    assert_eq!(unpriced.cost_usd, None);
    assert!(
        unpriced.to_string().contains(
            "cost unknown: 'unpriced' has no price_input_per_mtok / price_output_per_mtok"
        ),
        "{unpriced}"
    );
}

#[test]
fn api_keys_never_appear_in_outputs_errors_manifests_or_the_cache() {
    let repo = judge_repo(
        MockConfig::new()
            .api_key(KEY)
            .responder(responder(Vec::new())),
    );
    let server = &repo.server;
    repo.write("inputs/prompts.txt", &prompts(4));
    repo.run::<Echo>(run_args()).unwrap();

    let plan = JudgePlan::prepare(repo.root(), &repo.output("echo"), &options("judge")).unwrap();
    let mut shown = format!("{}\n", plan.estimate());
    let outcome = plan.run().unwrap();
    assert_eq!(outcome.summary.scored, 4);
    judge::record_in_manifest(&repo.manifest("echo"), &outcome.summary).unwrap();
    shown.push_str(&format!("{outcome:?}\n"));
    shown.push_str(&judge::render_html_section(&outcome.summary));

    // A key the server refuses: every sample reports the failure, naming the variable only.
    let refused = JudgePlan::prepare(
        repo.root(),
        &repo.output("echo"),
        &options("judge-wrong-key"),
    )
    .unwrap()
    .run()
    .unwrap();
    assert_eq!(refused.summary.scored, 0);
    assert_eq!(refused.summary.failures.len(), 4);
    let failure = &refused.summary.failures[0].error;
    assert!(
        failure.contains("auth") && failure.contains(WRONG_KEY_VAR),
        "{failure}"
    );
    shown.push_str(&format!("{refused:?}\n"));
    assert_eq!(
        refused.summary.gate(1.0)[0],
        "no sample was scored (0 of 4), so the minimum judge score 1 cannot be shown"
    );

    shown.push_str(&repo.read("training/data/echo.manifest.json"));
    let cache = std::fs::read(repo.path(".shaping/cache/judge.redb")).unwrap();
    for key in [KEY, WRONG_KEY] {
        assert!(!shown.contains(key), "a key was shown");
        assert!(
            !cache.windows(key.len()).any(|w| w == key.as_bytes()),
            "a key is in the cache file"
        );
    }
    // The server did receive the key: it was sent, just never shown.
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {KEY}")))
    );
}

#[test]
fn bad_input_gives_errors_naming_the_alias_the_file_or_the_sample() {
    let repo = judge_repo(MockConfig::new().responder(responder(Vec::new())));
    let server = &repo.server;
    let dataset = write_dataset(&repo, "tiny", 3);

    let error = prepare_error(repo.root(), &dataset, "grader");
    assert!(matches!(error, JudgeError::Models(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("unknown model alias 'grader'; known aliases: judge, judge-wrong-key, m"),
        "{error}"
    );

    let missing = repo.path("training/data/absent.jsonl");
    let error = prepare_error(repo.root(), &missing, "judge");
    assert!(error.to_string().contains("absent.jsonl"), "{error}");

    repo.write(
        "training/data/broken.jsonl",
        "{\"id\": \"a\", \"messages\": []}\nnot json\n",
    );
    let error = prepare_error(repo.root(), &repo.output("broken"), "judge");
    assert!(error.to_string().contains("broken.jsonl:2"), "{error}");

    std::fs::remove_file(repo.path("identity/NARRATIVE.md")).unwrap();
    let error = prepare_error(repo.root(), &dataset, "judge");
    assert!(matches!(error, JudgeError::Narrative { .. }), "{error:?}");
    assert!(
        error.to_string().contains("identity/NARRATIVE.md"),
        "{error}"
    );
    assert_eq!(server.stats().received, 0);

    // Judging a dataset without a manifest cannot record the scores, and says why.
    let summary = sample_summary();
    let error = judge::record_in_manifest(&repo.manifest("tiny"), &summary).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tiny.manifest.json does not exist"),
        "{error}"
    );
}

fn prepare_error(root: &Path, dataset: &Path, alias: &str) -> JudgeError {
    match JudgePlan::prepare(root, dataset, &options(alias)) {
        Ok(_) => panic!("preparing {} with '{alias}' should fail", dataset.display()),
        Err(e) => e,
    }
}

fn sample_summary() -> JudgeSummary {
    JudgeSummary {
        alias: "judge".into(),
        model: shaping::models::ModelFingerprint {
            alias: "judge".into(),
            provider: "openai".into(),
            model: "m".into(),
            endpoint: String::new(),
            params: Default::default(),
        },
        rubric_sha256: String::new(),
        narrative_sha256: String::new(),
        dataset_sha256: String::new(),
        samples: 0,
        scored: 0,
        means: None,
        overall_mean: None,
        distribution: Default::default(),
        lowest: Vec::new(),
        failures: Vec::new(),
    }
}
