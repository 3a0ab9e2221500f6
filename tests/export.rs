//! `cargo xtask export` in the library: every format × kind re-read through the project's own
//! loaders record for record, the status gate, the dataset card, and `--push` against a loopback
//! Hub (testkit's `MockHub`).

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shaping::export::hub::{PushOptions, Pushed};
use shaping::export::{self, ExportError, ExportFormat, ExportRequest, Exported, HubClient};
use shaping::format::{ChatLine, Message, PreferenceLine, Provenance, SampleKind, SampleLine};
use shaping::manifest::{State, Status};
use shaping::sources::{FieldMap, Loader};
use testkit::MockHub;

use common::TestRepo;

const NAME: &str = "dee-data";
const TOKEN: &str = "hf_testtoken_5f2a9c";

fn chat_samples() -> Vec<SampleLine> {
    let annotated = |mut line: ChatLine| {
        line.provenance = Provenance::new(json!({"prompt": "from the source"}), Vec::new());
        line
    };
    vec![
        SampleLine::Chat(annotated(ChatLine::minimal(
            "c-1",
            vec![
                Message::user("What's the pie today?"),
                Message::assistant("Cherry, hon."),
            ],
        ))),
        SampleLine::Chat(ChatLine::minimal(
            "c-2",
            vec![
                Message::system("You are Dee, who runs a diner."),
                Message::user("Cubs or Sox?"),
                Message::assistant("Cubs. Always the Cubs."),
                Message::user("Even in \"bad\" years?\nReally?"),
                Message::assistant("Especially then — 1990 taught me patience. ☕"),
            ],
        )),
        SampleLine::Chat(ChatLine::minimal(
            "c-3",
            vec![
                Message::user("Coffee?"),
                Message::assistant("Fresh pot, sugar."),
            ],
        )),
    ]
}

fn preference_samples() -> Vec<SampleLine> {
    let mut first = PreferenceLine::minimal(
        "p-1",
        vec![
            Message::system("You are Dee."),
            Message::user("How's business?"),
        ],
        Message::assistant("Busy as a Friday fish fry, hon."),
        Message::assistant("Business is good."),
    );
    first.scores = Some([("chosen_voice".to_owned(), 0.9)].into_iter().collect());
    first.provenance = Provenance::new(json!({"prompt": "How's business?"}), Vec::new());
    let second = PreferenceLine::minimal(
        "p-2",
        vec![
            Message::user("Hi"),
            Message::assistant("Hey there, sit anywhere."),
            Message::user("What's good | today?"),
        ],
        Message::assistant("The meatloaf, and I don't say that lightly."),
        Message::assistant("Many dishes are good."),
    );
    vec![
        SampleLine::Preference(first),
        SampleLine::Preference(second),
    ]
}

/// The training content of a sample: id and messages, no scores or provenance.
fn minimal(sample: &SampleLine) -> SampleLine {
    match sample {
        SampleLine::Chat(c) => {
            SampleLine::Chat(ChatLine::minimal(c.id.clone(), c.messages.clone()))
        }
        SampleLine::Preference(p) => SampleLine::Preference(PreferenceLine {
            id: p.id.clone(),
            prompt: p.prompt.clone(),
            chosen: p.chosen.clone(),
            rejected: p.rejected.clone(),
            scores: None,
            provenance: Provenance::default(),
        }),
    }
}

/// A repository holding dataset NAME of `samples` with its manifest.
fn repo_with(samples: &[SampleLine], kind: SampleKind) -> TestRepo {
    let repo = TestRepo::new("");
    repo.write(
        "identity/voice.toml",
        "name = \"Dee\"\nmarkers = [\"hon\", \"diner\"]\n",
    );
    let text: String = samples
        .iter()
        .map(|s| serde_json::to_string(s).expect("serializes") + "\n")
        .collect();
    repo.write(&format!("training/data/{NAME}.jsonl"), &text);
    let manifest = json!({
        "schema": 1,
        "pipeline": NAME,
        "output": format!("training/data/{NAME}.jsonl"),
        "generated_at": "2026-11-30T12:00:00Z",
        "pipeline_commit": "0123456789abcdef0123456789abcdef01234567",
        "commit_dirty": false,
        "code_hash": "c0dec0dec0dec0de",
        "files": {"narrative": {"path": "identity/NARRATIVE.md", "sha256": "feedfacefeedface"}},
        "models": {"dee": {"alias": "dee", "provider": "llama-cpp", "model": "SmolLM2-135M", "endpoint": "sha256:abc123", "params": {"temperature": 0.7}}},
        "limit": null,
        "annotated": true,
        "kind": kind,
        "samples": samples.len(),
        "errors": 1,
        "output_sha256": "5ha5ha5ha",
        "run": {"records": samples.len() + 1, "requests_sent": 0, "cache_hits": 0, "retries": 0, "failed_requests": 0, "input_tokens": 0, "output_tokens": 0, "wall_time_secs": 0.0},
        "checks": {"passed": true, "samples": samples.len(), "failing_samples": 0, "checks": [
            {"name": "volume", "passed": true, "skipped": false, "value": 3.0, "threshold": 1.0, "message": "3 samples (need at least 1)"},
            {"name": "degeneration", "passed": true, "skipped": false, "value": 0.0, "threshold": 0.0, "message": "0 responses degenerate"}
        ]},
    });
    repo.write(
        &format!("training/data/{NAME}.manifest.json"),
        &serde_json::to_string_pretty(&manifest).expect("json"),
    );
    // An error record beside the output: never exported.
    repo.write(
        &format!("training/data/{NAME}.errors.jsonl"),
        "{\"__ERROR__\":{\"id\":\"bad\",\"type\":\"provider\",\"message\":\"boom\"}}\n",
    );
    repo
}

fn current(samples: usize) -> Status {
    Status {
        state: State::Current,
        samples: Some(samples as u64),
        reasons: Vec::new(),
    }
}

fn export_in(
    repo: &TestRepo,
    format: ExportFormat,
    status: &Status,
    allow_stale: bool,
) -> Result<Exported, ExportError> {
    let output = repo.output(NAME);
    export::export(&ExportRequest {
        root: repo.root(),
        name: NAME,
        output: &output,
        status,
        format,
        out: None,
        allow_stale,
        command: format!("cargo xtask export {NAME} --format {format}"),
        hub_repo: None,
    })
}

fn messages(value: &Value) -> Vec<Message> {
    serde_json::from_value(value.clone()).expect("a list of {role, content}")
}

fn sharegpt_message(value: &Value) -> Message {
    let role = match value["from"].as_str().expect("from") {
        "human" => "user",
        "gpt" => "assistant",
        other => other,
    };
    Message::new(role, value["value"].as_str().expect("value"))
}

/// The export at `path` read back through `shaping::sources::Loader`, as samples.
fn reread(format: ExportFormat, kind: SampleKind, path: &Path) -> Vec<SampleLine> {
    let (prompt, keep): (&str, &[&str]) = match (format, kind) {
        (ExportFormat::Trl | ExportFormat::Parquet, SampleKind::Chat)
        | (ExportFormat::Openai, SampleKind::Chat) => ("messages.0.content", &["messages"]),
        (ExportFormat::Trl | ExportFormat::Parquet, SampleKind::Preference) => {
            ("prompt.0.content", &["prompt", "chosen", "rejected"])
        }
        (ExportFormat::Openai, SampleKind::Preference) => (
            "input.messages.0.content",
            &["input", "preferred_output", "non_preferred_output"],
        ),
        (ExportFormat::Sharegpt, SampleKind::Chat) => ("conversations.0.value", &["conversations"]),
        (ExportFormat::Sharegpt, SampleKind::Preference) => (
            "conversations.0.value",
            &["conversations", "chosen", "rejected"],
        ),
    };
    let records = Loader::new(path)
        .fields(
            FieldMap::new()
                .prompt(prompt)
                .no_category()
                .extra_only(keep.iter().copied()),
        )
        .open()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    records
        .enumerate()
        .map(|(i, record)| {
            let record = record.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let x = &record.extra;
            // OpenAI records have no id: they are compared in order.
            let id = if format == ExportFormat::Openai {
                format!("#{i}")
            } else {
                record.id.clone()
            };
            match (format, kind) {
                (ExportFormat::Sharegpt, SampleKind::Chat) => SampleLine::Chat(ChatLine::minimal(
                    id,
                    x["conversations"]
                        .as_array()
                        .expect("list")
                        .iter()
                        .map(sharegpt_message)
                        .collect(),
                )),
                (ExportFormat::Sharegpt, SampleKind::Preference) => {
                    SampleLine::Preference(PreferenceLine::minimal(
                        id,
                        x["conversations"]
                            .as_array()
                            .expect("list")
                            .iter()
                            .map(sharegpt_message)
                            .collect(),
                        sharegpt_message(&x["chosen"]),
                        sharegpt_message(&x["rejected"]),
                    ))
                }
                (_, SampleKind::Chat) => {
                    SampleLine::Chat(ChatLine::minimal(id, messages(&x["messages"])))
                }
                (ExportFormat::Openai, SampleKind::Preference) => {
                    SampleLine::Preference(PreferenceLine {
                        id,
                        prompt: messages(&x["input"]["messages"]),
                        chosen: messages(&x["preferred_output"]),
                        rejected: messages(&x["non_preferred_output"]),
                        scores: None,
                        provenance: Provenance::default(),
                    })
                }
                (_, SampleKind::Preference) => SampleLine::Preference(PreferenceLine {
                    id,
                    prompt: messages(&x["prompt"]),
                    chosen: messages(&x["chosen"]),
                    rejected: messages(&x["rejected"]),
                    scores: None,
                    provenance: Provenance::default(),
                }),
            }
        })
        .collect()
}

/// The keys of every line of a JSONL export.
fn jsonl_keys(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .expect("read export")
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("JSON line");
            value.as_object().expect("object").keys().cloned().collect()
        })
        .collect()
}

const FORMATS: [ExportFormat; 4] = [
    ExportFormat::Trl,
    ExportFormat::Openai,
    ExportFormat::Sharegpt,
    ExportFormat::Parquet,
];

#[test]
fn every_format_of_every_kind_reads_back_record_for_record() {
    for (kind, samples) in [
        (SampleKind::Chat, chat_samples()),
        (SampleKind::Preference, preference_samples()),
    ] {
        let repo = repo_with(&samples, kind);
        for format in FORMATS {
            let exported = export_in(&repo, format, &current(samples.len()), false)
                .unwrap_or_else(|e| panic!("{format} {kind}: {e}"));
            assert_eq!(exported.samples, samples.len() as u64);
            assert_eq!(exported.kind, kind);
            assert_eq!(exported.warning, None);
            let expected: Vec<SampleLine> = samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut m = minimal(s);
                    if format == ExportFormat::Openai {
                        match &mut m {
                            SampleLine::Chat(c) => c.id = format!("#{i}"),
                            SampleLine::Preference(p) => p.id = format!("#{i}"),
                        }
                    }
                    m
                })
                .collect();
            let read_from = match format {
                ExportFormat::Parquet => {
                    assert_eq!(exported.path, repo.path(&format!("training/export/{NAME}")));
                    assert_eq!(
                        exported.files,
                        ["README.md", "data/train-00000-of-00001.parquet"]
                    );
                    exported.path.join("data")
                }
                _ => {
                    assert_eq!(
                        exported.path,
                        repo.path(&format!("training/export/{NAME}.{format}.jsonl"))
                    );
                    assert_eq!(
                        exported.card,
                        repo.path(&format!("training/export/{NAME}.{format}.card.md"))
                    );
                    let card = std::fs::read_to_string(&exported.card).expect("card");
                    assert!(
                        card.contains(&format!("data_files=\"{NAME}.{format}.jsonl\"")),
                        "{card}"
                    );
                    // Minimal records: the format's keys only, no provenance or scores.
                    let keys = match (format, kind) {
                        (ExportFormat::Trl, SampleKind::Chat) => vec!["id", "messages"],
                        (ExportFormat::Trl, SampleKind::Preference) => {
                            vec!["chosen", "id", "prompt", "rejected"]
                        }
                        (ExportFormat::Openai, SampleKind::Chat) => vec!["messages"],
                        (ExportFormat::Openai, SampleKind::Preference) => {
                            vec!["input", "non_preferred_output", "preferred_output"]
                        }
                        (ExportFormat::Sharegpt, SampleKind::Chat) => vec!["conversations", "id"],
                        (ExportFormat::Sharegpt, SampleKind::Preference) => {
                            vec!["chosen", "conversations", "id", "rejected"]
                        }
                        (ExportFormat::Parquet, _) => unreachable!(),
                    };
                    for line_keys in jsonl_keys(&exported.path) {
                        assert_eq!(line_keys, keys, "{format} {kind}");
                    }
                    exported.path.clone()
                }
            };
            let back = reread(format, kind, &read_from);
            assert_eq!(back, expected, "{format} {kind}");
        }
    }
}

#[test]
fn jsonl_lines_have_the_documented_shape() {
    let repo = repo_with(&preference_samples(), SampleKind::Preference);
    let exported = export_in(&repo, ExportFormat::Openai, &current(2), false).expect("exports");
    let first = std::fs::read_to_string(&exported.path).expect("read");
    let first = first.lines().next().expect("a line");
    assert_eq!(
        first,
        r#"{"input":{"messages":[{"role":"system","content":"You are Dee."},{"role":"user","content":"How's business?"}]},"preferred_output":[{"role":"assistant","content":"Busy as a Friday fish fry, hon."}],"non_preferred_output":[{"role":"assistant","content":"Business is good."}]}"#
    );
    let repo = repo_with(&chat_samples(), SampleKind::Chat);
    let exported = export_in(&repo, ExportFormat::Sharegpt, &current(3), false).expect("exports");
    let text = std::fs::read_to_string(&exported.path).expect("read");
    assert_eq!(
        text.lines().next().expect("a line"),
        r#"{"id":"c-1","conversations":[{"from":"human","value":"What's the pie today?"},{"from":"gpt","value":"Cherry, hon."}]}"#
    );
}

#[test]
fn parquet_has_the_datasets_schema_and_a_card() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let repo = repo_with(&preference_samples(), SampleKind::Preference);
    let exported = export_in(&repo, ExportFormat::Parquet, &current(2), false).expect("exports");
    let shard = exported.path.join("data/train-00000-of-00001.parquet");
    let reader =
        SerializedFileReader::new(std::fs::File::open(&shard).expect("open")).expect("parquet");
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 2);
    let mut schema = Vec::new();
    parquet::schema::printer::print_schema(&mut schema, meta.file_metadata().schema());
    let schema = String::from_utf8(schema).expect("utf-8");
    for column in ["prompt", "chosen", "rejected"] {
        assert!(
            schema.contains(&format!("OPTIONAL group {column} (LIST)")),
            "{schema}"
        );
    }
    assert!(
        schema.contains("OPTIONAL BYTE_ARRAY role (STRING)"),
        "{schema}"
    );
    assert_eq!(
        meta.row_group(0).column(0).compression(),
        parquet::basic::Compression::ZSTD(Default::default())
    );

    let card = std::fs::read_to_string(exported.path.join("README.md")).expect("card");
    for needle in [
        "---\npretty_name: \"Dee: dee-data\"",
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n",
        "  - name: chosen\n    list:\n    - name: role\n      dtype: string\n    - name: content\n      dtype: string\n",
        "- dpo\n",
        "2 preference pairs for Dee",
        "| pipeline | `dee-data` |",
        "| failed records (not exported) | 1 |",
        "| code hash | `c0dec0dec0dec0de` |",
        "| source output sha256 | `5ha5ha5ha` |",
        "| dee | llama-cpp | SmolLM2-135M | `sha256:abc123` | `{\"temperature\":0.7}` |",
        "| narrative | `identity/NARRATIVE.md` | `feedfacefeedface` |",
        "| `volume` | passed | 3 samples (need at least 1) |",
        "Every check passed",
        "ds = load_dataset(\"training/export/dee-data\", split=\"train\")",
        "| reproduce | `git checkout 0123456789abcdef0123456789abcdef01234567 && cargo xtask data dee-data && cargo xtask export dee-data --format parquet`",
        "| generated at | 2026-11-30T12:00:00Z |",
        "size_categories:\n- n<1K\n",
        "0123456789abcdef0123456789abcdef01234567",
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
    }
    // Exporting again writes the same bytes.
    let before = std::fs::read(&shard).expect("shard");
    export_in(&repo, ExportFormat::Parquet, &current(2), false).expect("exports again");
    assert_eq!(std::fs::read(&shard).expect("shard"), before);
    assert_eq!(
        std::fs::read_to_string(exported.path.join("README.md")).expect("card"),
        card
    );
}

#[test]
fn data_that_is_not_current_is_refused_unless_allowed() {
    let repo = repo_with(&chat_samples(), SampleKind::Chat);
    let stale = Status {
        state: State::Stale,
        samples: Some(3),
        reasons: vec!["File 'narrative' content changed".into()],
    };
    let error = export_in(&repo, ExportFormat::Trl, &stale, false).expect_err("refused");
    let message = error.to_string();
    assert!(matches!(error, ExportError::NotCurrent { .. }), "{error:?}");
    assert!(
        message.contains("refusing to export 'dee-data': it is STALE"),
        "{message}"
    );
    assert!(
        message.contains("  - File 'narrative' content changed"),
        "{message}"
    );
    assert!(message.contains("--allow-stale"), "{message}");
    assert!(!repo.exists(&format!("training/export/{NAME}.trl.jsonl")));

    let partial = Status {
        state: State::Partial,
        samples: Some(3),
        reasons: vec!["Partial run (--limit 3, 3 samples)".into()],
    };
    let error = export_in(&repo, ExportFormat::Parquet, &partial, false).expect_err("refused");
    assert!(error.to_string().contains("it is PARTIAL"), "{error}");

    // --allow-stale: exported, with a warning, and the card says so.
    let exported = export_in(&repo, ExportFormat::Parquet, &stale, true).expect("allowed");
    let warning = exported.warning.expect("a warning");
    assert!(
        warning.contains("STALE") && warning.contains("content changed"),
        "{warning}"
    );
    let card = std::fs::read_to_string(exported.path.join("README.md")).expect("card");
    assert!(
        card.contains("exported with `--allow-stale`: the data is not CURRENT"),
        "{card}"
    );

    // MISSING: nothing to export, even with --allow-stale.
    let missing = Status {
        state: State::Missing,
        samples: None,
        reasons: vec!["Output file does not exist".into()],
    };
    let error = export_in(&repo, ExportFormat::Trl, &missing, true).expect_err("refused");
    assert!(error.to_string().contains("it is MISSING"), "{error}");
    assert!(!error.to_string().contains("--allow-stale"), "{error}");
}

#[test]
fn samples_that_do_not_match_the_manifest_or_their_kind_are_refused() {
    // The manifest says preference, the lines are chat samples.
    let repo = repo_with(&chat_samples(), SampleKind::Preference);
    let error = export_in(&repo, ExportFormat::Trl, &current(3), false).expect_err("refused");
    assert!(
        error.to_string().ends_with(":1: sample 'c-1' is a chat sample, but the manifest says the dataset holds preference samples"),
        "{error}"
    );
    // A conversation that ends on the user's turn.
    let broken = SampleLine::Chat(ChatLine::minimal("x", vec![Message::user("hello?")]));
    let repo = repo_with(&[broken], SampleKind::Chat);
    let error = export_in(&repo, ExportFormat::Parquet, &current(1), false).expect_err("refused");
    assert!(
        error
            .to_string()
            .contains(":1: sample 'x' cannot be trained on: the conversation ends on a user turn"),
        "{error}"
    );
    assert!(!repo.exists(&format!(
        "training/export/{NAME}/data/train-00000-of-00001.parquet"
    )));
}

/// A mock Hub kept serving on a runtime of its own.
fn start_hub() -> (tokio::runtime::Runtime, MockHub) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let hub = runtime.block_on(MockHub::start(TOKEN));
    (runtime, hub)
}

fn push_options() -> PushOptions {
    PushOptions {
        summary: "Export dee-data".into(),
        description: String::new(),
        private: true,
    }
}

fn push(client: &HubClient, exported: &Exported) -> Result<Pushed, ExportError> {
    client.push(
        "me/dee-voice",
        &exported.path,
        &exported.files,
        &push_options(),
    )
}

#[test]
fn push_uploads_the_parquet_export_and_its_card_in_one_commit() {
    let (_runtime, hub) = start_hub();
    let repo = repo_with(&chat_samples(), SampleKind::Chat);
    let exported = export_in(&repo, ExportFormat::Parquet, &current(3), false).expect("exports");
    let client = HubClient::new(hub.endpoint(), TOKEN);

    let pushed = push(&client, &exported).expect("pushed");
    assert!(pushed.created);
    assert_eq!(pushed.lfs, ["data/train-00000-of-00001.parquet"]);
    assert_eq!(pushed.regular, ["README.md"]);
    assert_eq!(
        pushed.url,
        format!("{}/datasets/me/dee-voice", hub.endpoint())
    );
    assert!(pushed.commit_url.is_some());
    assert_eq!(
        hub.repos().get("me/dee-voice"),
        Some(&true),
        "created private"
    );
    let files = hub.files("me/dee-voice");
    let local = |rel: &str| std::fs::read(exported.path.join(rel)).expect("local file");
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["README.md", "data/train-00000-of-00001.parquet"]
    );
    assert_eq!(
        files["data/train-00000-of-00001.parquet"],
        local("data/train-00000-of-00001.parquet")
    );
    assert_eq!(files["README.md"], local("README.md"));
    let commits = hub.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].summary, "Export dee-data");

    // The token goes to the endpoint's API only; the LFS upload URL gets none.
    for request in hub.requests() {
        if request.path.starts_with("/lfs-upload/") {
            assert_eq!(request.authorization, None, "{request:?}");
        } else {
            assert_eq!(
                request.authorization.as_deref(),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{request:?}"
            );
        }
    }

    // Again: the repository exists (409) and the Hub has the Parquet bytes already.
    let again = push(&client, &exported).expect("pushed again");
    assert!(!again.created);
    assert_eq!(
        again.lfs_already_stored,
        ["data/train-00000-of-00001.parquet"]
    );
    assert_eq!(hub.commits().len(), 2);
    assert_eq!(
        hub.requests()
            .iter()
            .filter(|r| r.path.starts_with("/lfs-upload/"))
            .count(),
        1
    );
}

#[test]
fn a_refused_token_is_a_clear_error_without_the_token() {
    let (_runtime, hub) = start_hub();
    let repo = repo_with(&chat_samples(), SampleKind::Chat);
    let exported = export_in(&repo, ExportFormat::Parquet, &current(3), false).expect("exports");
    let wrong = "hf_wrong_secret_token_1234";
    let client = HubClient::new(hub.endpoint(), wrong);
    let error = push(&client, &exported).expect_err("refused");
    let text = format!("{error} {error:?}");
    assert!(
        matches!(
            error,
            ExportError::Hub {
                status: Some(401),
                step: "create repository",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(text.contains("401") && text.contains("HF_TOKEN"), "{text}");
    assert!(!text.contains(wrong), "the token leaked: {text}");
    assert!(!format!("{client:?}").contains(wrong));
    assert!(hub.files("me/dee-voice").is_empty());

    let error = client
        .push(
            "not-a-repo-id",
            &exported.path,
            &exported.files,
            &push_options(),
        )
        .expect_err("refused");
    assert!(error.to_string().contains("expected owner/name"), "{error}");
}

/// The child half of [`push_reads_hf_endpoint_and_hf_token`]: runs only with the variables set.
#[test]
#[ignore = "run by push_reads_hf_endpoint_and_hf_token in a child process"]
fn child_push_from_env() {
    let dir = PathBuf::from(std::env::var_os("EXPORT_TEST_DIR").expect("EXPORT_TEST_DIR"));
    let client = HubClient::from_env().expect("a token in HF_TOKEN");
    let files = vec![
        "README.md".to_owned(),
        "data/train-00000-of-00001.parquet".to_owned(),
    ];
    let pushed = client
        .push("me/from-env", &dir, &files, &push_options())
        .expect("pushed");
    assert!(pushed.created);
}

#[test]
fn push_reads_hf_endpoint_and_hf_token() {
    let (_runtime, hub) = start_hub();
    let repo = repo_with(&chat_samples(), SampleKind::Chat);
    let exported = export_in(&repo, ExportFormat::Parquet, &current(3), false).expect("exports");
    // The environment is the process's: set it in a child, not in this multi-threaded one.
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_push_from_env", "--ignored", "--quiet"])
        .env("EXPORT_TEST_DIR", &exported.path)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_TOKEN", TOKEN)
        .status()
        .expect("child runs");
    assert!(status.success());
    assert_eq!(hub.files("me/from-env").len(), 2);

    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_push_from_env", "--ignored", "--quiet"])
        .env("EXPORT_TEST_DIR", &exported.path)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_TOKEN", "")
        .env("HF_HOME", repo.path("no-hf-home"))
        .env_remove("HF_TOKEN_PATH")
        .output()
        .expect("child runs");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("a token in HF_TOKEN: NoToken"), "{stdout}");
}
