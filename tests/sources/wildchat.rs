//! WildChat: conversations in the WildChat-1M schema (written at test time), first-turn defaults,
//! filters, dedupe, JSONL rows, and the committed sample. `generate_wildchat_sample` (ignored)
//! regenerates `training/inputs/wildchat-sample.parquet`.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::json;
use shaping::sources::*;
use tempfile::TempDir;

use super::parquet_files::write_flat_parquet;
use super::{all, repo_file, write};

/// A sample row: language, prompt, toxic, redacted, follow-up prompts.
type SampleRow = (String, String, bool, bool, Vec<String>);

#[derive(Clone, Debug)]
struct Turn {
    role: &'static str,
    content: String,
    language: String,
    toxic: bool,
    redacted: bool,
    turn_identifier: i64,
}

#[derive(Clone, Debug)]
struct Conv {
    hash: String,
    model: String,
    timestamp_us: i64,
    turns: Vec<Turn>,
    language: String,
    toxic: bool,
    redacted: bool,
    country: String,
}

const WILDCHAT_SCHEMA: &str = "
message schema {
  optional binary conversation_hash (STRING);
  optional binary model (STRING);
  optional int64 timestamp (TIMESTAMP(MICROS,true));
  optional group conversation (LIST) {
    repeated group list {
      optional group element {
        optional binary content (STRING);
        optional binary language (STRING);
        optional boolean redacted;
        optional binary role (STRING);
        optional int64 timestamp (TIMESTAMP(MICROS,true));
        optional boolean toxic;
        optional int64 turn_identifier;
      }
    }
  }
  optional int64 turn;
  optional binary language (STRING);
  optional boolean toxic;
  optional boolean redacted;
  optional binary state (STRING);
  optional binary country (STRING);
}";

/// Writes conversations in the WildChat-1M schema (the columns the loader uses plus a few more).
fn write_wildchat(path: &Path, convs: &[Conv], rows_per_group: usize) {
    let schema = Arc::new(parse_message_type(WILDCHAT_SCHEMA).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in convs.chunks(rows_per_group) {
        let mut rg = writer.next_row_group().unwrap();
        let mut col_index = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            // Top-level: def 1 = present. Nested leaves: max def 4 (conversation, list, element,
            // leaf), rep 1 for every turn after the first of a row; an empty list has def 1.
            let flat_str = |f: &dyn Fn(&Conv) -> &str| -> (Vec<ByteArray>, Vec<i16>) {
                (
                    chunk.iter().map(|c| ByteArray::from(f(c))).collect(),
                    vec![1; chunk.len()],
                )
            };
            let nested_levels = || {
                let mut defs = Vec::new();
                let mut reps = Vec::new();
                for c in chunk {
                    if c.turns.is_empty() {
                        defs.push(1);
                        reps.push(0);
                    }
                    for (i, _) in c.turns.iter().enumerate() {
                        defs.push(4);
                        reps.push(if i == 0 { 0 } else { 1 });
                    }
                }
                (defs, reps)
            };
            let turns = || chunk.iter().flat_map(|c| c.turns.iter());
            match col_index {
                0 | 1 | 14 | 15 => {
                    let (v, d) = match col_index {
                        0 => flat_str(&|c| &c.hash),
                        1 => flat_str(&|c| &c.model),
                        14 => flat_str(&|_| "Illinois"),
                        _ => flat_str(&|c| &c.country),
                    };
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&d), None)
                        .unwrap();
                }
                2 => {
                    let v: Vec<i64> = chunk.iter().map(|c| c.timestamp_us).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&vec![1; v.len()]), None)
                        .unwrap();
                }
                3 | 4 | 6 => {
                    let (d, r) = nested_levels();
                    let v: Vec<ByteArray> = turns()
                        .map(|t| match col_index {
                            3 => ByteArray::from(t.content.as_str()),
                            4 => ByteArray::from(t.language.as_str()),
                            _ => ByteArray::from(t.role),
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&d), Some(&r))
                        .unwrap();
                }
                5 | 8 => {
                    let (d, r) = nested_levels();
                    let v: Vec<bool> = turns()
                        .map(|t| if col_index == 5 { t.redacted } else { t.toxic })
                        .collect();
                    col.typed::<BoolType>()
                        .write_batch(&v, Some(&d), Some(&r))
                        .unwrap();
                }
                7 | 9 => {
                    let (d, r) = nested_levels();
                    let mut v = Vec::new();
                    for c in chunk {
                        for t in &c.turns {
                            v.push(if col_index == 7 {
                                c.timestamp_us + t.turn_identifier % 1000
                            } else {
                                t.turn_identifier
                            });
                        }
                    }
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&d), Some(&r))
                        .unwrap();
                }
                10 => {
                    let v: Vec<i64> = chunk
                        .iter()
                        .map(|c| c.turns.iter().filter(|t| t.role == "user").count() as i64)
                        .collect();
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&vec![1; v.len()]), None)
                        .unwrap();
                }
                11 => {
                    let (v, d) = flat_str(&|c| &c.language);
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&d), None)
                        .unwrap();
                }
                12 | 13 => {
                    let v: Vec<bool> = chunk
                        .iter()
                        .map(|c| if col_index == 12 { c.toxic } else { c.redacted })
                        .collect();
                    col.typed::<BoolType>()
                        .write_batch(&v, Some(&vec![1; v.len()]), None)
                        .unwrap();
                }
                other => panic!("unexpected column {other}"),
            }
            col.close().unwrap();
            col_index += 1;
        }
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

/// Column order check: the match above relies on the leaf order of WILDCHAT_SCHEMA.
#[test]
fn wildchat_schema_leaf_order() {
    let schema = parquet::schema::types::SchemaDescriptor::new(Arc::new(
        parse_message_type(WILDCHAT_SCHEMA).unwrap(),
    ));
    let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    assert_eq!(
        names,
        [
            "conversation_hash",
            "model",
            "timestamp",
            "conversation.list.element.content",
            "conversation.list.element.language",
            "conversation.list.element.redacted",
            "conversation.list.element.role",
            "conversation.list.element.timestamp",
            "conversation.list.element.toxic",
            "conversation.list.element.turn_identifier",
            "turn",
            "language",
            "toxic",
            "redacted",
            "state",
            "country",
        ]
    );
}

fn turn(role: &'static str, content: &str, language: &str, id: i64) -> Turn {
    Turn {
        role,
        content: content.into(),
        language: language.into(),
        toxic: false,
        redacted: false,
        turn_identifier: id,
    }
}

fn conv(hash: &str, language: &str, user_prompts: &[&str]) -> Conv {
    let mut turns = Vec::new();
    for (i, p) in user_prompts.iter().enumerate() {
        turns.push(turn("user", p, language, i as i64 * 2));
        turns.push(turn(
            "assistant",
            "Sure — here is an answer.",
            language,
            i as i64 * 2 + 1,
        ));
    }
    Conv {
        hash: hash.into(),
        model: "gpt-4-0314".into(),
        timestamp_us: 1_680_998_400_000_000,
        turns,
        language: language.into(),
        toxic: false,
        redacted: false,
        country: "United States".into(),
    }
}

fn wildchat_fixture(path: &Path) {
    let mut convs = vec![
        conv(
            "h1",
            "English",
            &["Plan a picnic for six people", "Add a vegetarian option"],
        ),
        conv("h2", "English", &["  plan a PICNIC   for six people "]),
        conv("h3", "Spanish", &["¿Cómo hago tortillas de maíz?"]),
        conv(
            "h4",
            "English",
            &["Write a limerick about my noisy neighbour"],
        ),
        conv(
            "h5",
            "English",
            &["Draft an email to my landlord about the heating"],
        ),
        conv("h6", "English", &["hi"]),
        conv(
            "h7",
            "English",
            &[
                "Explain photosynthesis simply",
                "Why are leaves green?",
                "And in autumn?",
            ],
        ),
        conv("h9", "English", &[]),
    ];
    convs[3].toxic = true;
    convs[4].redacted = true;
    convs[6].turns[2].toxic = true; // the second user turn
    write_wildchat(path, &convs, 3);
}

#[test]
fn wildchat_first_turn_defaults_and_dedupe() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("wc.parquet");
    wildchat_fixture(&p);
    let records = WildChat::new().open(&p).unwrap();
    let stats = records.stats();
    let recs = all(records);
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.prompt.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("h1", "Plan a picnic for six people"),
            ("h3", "¿Cómo hago tortillas de maíz?"),
            ("h6", "hi"),
            ("h7", "Explain photosynthesis simply"),
        ]
    );
    assert_eq!(
        stats.get(),
        SourceStats {
            read: 8,
            kept: 4,
            skipped_bad: 0,
            skipped_filtered: 2,
            duplicates: 1
        }
    );
    let r = &recs[3];
    assert_eq!(r.source, "wildchat");
    assert_eq!(r.category, None);
    assert_eq!(
        serde_json::Value::Object(r.extra.clone()),
        json!({"model": "gpt-4-0314", "language": "English", "turn": 3, "conversation_hash": "h7"})
    );
}

#[test]
fn wildchat_filters() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("wc.parquet");
    wildchat_fixture(&p);
    let records = WildChat::new()
        .languages(["english"])
        .min_chars(5)
        .max_turns(2)
        .open(&p)
        .unwrap();
    let stats = records.stats();
    let recs = all(records);
    assert_eq!(
        recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["h1"]
    );
    assert_eq!(stats.get().skipped_filtered, 5);
    assert_eq!(stats.get().duplicates, 1);

    let ids = |w: WildChat| {
        all(w.open(&p).unwrap())
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(WildChat::new().include_toxic(true).include_redacted(true)),
        ["h1", "h3", "h4", "h5", "h6", "h7"]
    );
    assert_eq!(ids(WildChat::new().min_turns(2)), ["h1", "h7"]);
    assert_eq!(ids(WildChat::new().max_chars(10)), ["h6"]);
    assert_eq!(
        ids(WildChat::new()
            .dedupe(false)
            .languages(["English"])
            .max_turns(1)),
        ["h2", "h6"]
    );

    let recs = all(WildChat::new().turns(Turns::All).open(&p).unwrap());
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.prompt.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("h1-0", "Plan a picnic for six people"),
            ("h1-1", "Add a vegetarian option"),
            ("h3-0", "¿Cómo hago tortillas de maíz?"),
            ("h6-0", "hi"),
            ("h7-0", "Explain photosynthesis simply"),
            ("h7-2", "And in autumn?"),
        ]
    );
    assert_eq!(recs[5].extra["turn_index"], 2);
}

#[test]
fn wildchat_jsonl_and_bad_rows() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "wc.jsonl",
        "{\"conversation_hash\": \"j1\", \"conversation\": [{\"role\": \"user\", \"content\": \"Hello there\"}], \"language\": \"English\"}\n\
         {\"conversation\": []}\n\
         {\"conversation_hash\": \"j3\", \"conversation\": \"oops\"}\n",
    );
    let results: Vec<_> = WildChat::new().open(&p).unwrap().collect();
    assert_eq!(results[0].as_ref().unwrap().extra["turn"], 1);
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(
        e.contains(
            "wc.jsonl:line 2: field `conversation_hash` is missing; available fields: conversation"
        ),
        "{e}"
    );
    let e = results[2].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("line 3: field `conversation`: expected a list of turns"),
        "{e}"
    );
    let records = WildChat::new().skip_bad_rows(true).open(&p).unwrap();
    let stats = records.stats();
    assert_eq!(all(records).len(), 1);
    assert_eq!(stats.get().skipped_bad, 2);

    let flat = dir.path().join("flat.parquet");
    write_flat_parquet(&flat, &["prompt"], &[vec![Some("x")]], 1);
    let err = WildChat::new().open(&flat).err().unwrap().to_string();
    assert!(
        err.contains("column `conversation_hash` not found; available columns: prompt"),
        "{err}"
    );
}

#[test]
fn committed_wildchat_sample_loads() {
    let path = repo_file("training/inputs/wildchat-sample.parquet");
    let records = WildChat::new().languages(["English"]).open(&path).unwrap();
    let stats = records.stats();
    let recs = all(records);
    let s = stats.get();
    assert!(s.read >= 180, "{s:?}");
    assert!(recs.len() >= 100, "{s:?}");
    assert!(s.skipped_filtered >= 20 && s.duplicates >= 5, "{s:?}");
    let everything = all(WildChat::new()
        .include_toxic(true)
        .include_redacted(true)
        .dedupe(false)
        .turns(Turns::All)
        .open(&path)
        .unwrap());
    assert!(everything.len() as u64 > s.read);
}

/// Regenerates `training/inputs/wildchat-sample.parquet` (WildChat-1M schema, original prompts):
/// `cargo test -p shaping --test sources -- --ignored generate_wildchat_sample`.
#[test]
#[ignore]
fn generate_wildchat_sample() {
    use sha2::{Digest, Sha256};
    let templates = [
        "Can you explain {} like I'm twelve?",
        "Give me three practical tips about {}.",
        "Write a short, upbeat paragraph about {}.",
        "What are common mistakes people make with {}?",
        "I have ten minutes. What's the quickest way to get started with {}?",
        "Summarize the history of {} in five sentences.",
        "Make a checklist for {}.",
        "Compare two popular approaches to {} and say when each one fits.",
        "What questions should I ask before spending money on {}?",
        "Write a haiku about {}.",
        "My friend says {} is overrated. Give me a fair counterpoint.",
        "Plan a one-week schedule for learning about {}.",
    ];
    let topics = [
        "baking sourdough bread",
        "composting in a small apartment",
        "budgeting for a first car",
        "training a stubborn puppy",
        "keeping houseplants alive",
        "learning to juggle",
        "writing a cover letter",
        "fixing a leaky faucet",
        "planning a road trip along the coast",
        "brewing good coffee at home",
        "starting a vegetable garden",
        "running a neighborhood book club",
        "photographing the night sky",
        "organizing a cluttered garage",
        "teaching kids to ride a bike",
        "choosing running shoes",
    ];
    let follow_ups = [
        "Can you make it shorter?",
        "Now add an example.",
        "What would you do differently in winter?",
    ];
    let foreign = [
        (
            "Spanish",
            "¿Cuál es la mejor manera de aprender a tocar la guitarra?",
        ),
        ("Spanish", "Dame una receta sencilla de gazpacho."),
        ("Spanish", "¿Qué puedo hacer un domingo lluvioso en casa?"),
        (
            "French",
            "Peux-tu m'expliquer comment fonctionne un arc-en-ciel ?",
        ),
        (
            "French",
            "Donne-moi trois idées de pique-nique pour dimanche.",
        ),
        ("French", "Comment planter des tulipes sur un balcon ?"),
        ("German", "Wie backe ich einen einfachen Apfelkuchen?"),
        ("German", "Erkläre mir bitte kurz, wie Gezeiten entstehen."),
        ("German", "Welche Zimmerpflanzen brauchen wenig Licht?"),
        ("Portuguese", "Como posso organizar melhor a minha semana?"),
        (
            "Portuguese",
            "Quais são boas brincadeiras para crianças num dia de chuva?",
        ),
        ("Chinese", "请帮我写一首关于春天的短诗。"),
        ("Chinese", "怎样才能在家里种好番茄？"),
        ("Chinese", "给我推荐三本适合初学者的科普书。"),
        ("Italian", "Come si prepara un buon risotto ai funghi?"),
        (
            "Italian",
            "Suggeriscimi un itinerario di tre giorni a Torino.",
        ),
        ("Russian", "Как быстро выучить таблицу умножения?"),
        ("Japanese", "簡単なお弁当のアイデアを教えてください。"),
    ];
    let grumpy = [
        "My roommate keeps eating my leftovers and I'm furious. Write a stern but silly note.",
        "Roast my terrible cooking in a playful way.",
        "Write an angry rant about slow elevators (keep it clean).",
        "This printer is the dumbest machine ever made. Help me vent about it.",
        "Insult my fantasy football team in pirate speak.",
        "Tell my brother his jokes are awful, but make it rhyme.",
        "Write a grumpy review of a parking lot that ate my afternoon.",
        "Give me a comeback for someone who says pineapple on pizza is a crime.",
        "Write a furious letter to the pigeons on my balcony.",
        "Complain dramatically about Monday mornings.",
    ];
    let redacted_prompts = [
        "Write a birthday message for my coworker [NAME] who loves hiking.",
        "Help me reply to [NAME] at [EMAIL] about rescheduling our meeting.",
        "My address is [ADDRESS]; how long would it take to walk to the library?",
        "Draft a thank-you note to Dr. [NAME] for the excellent care.",
        "Remind me what to pack for the trip to [LOCATION] next week.",
        "Text for my neighbour [NAME] asking to borrow a ladder.",
        "Write a reference letter for [NAME], who worked at [ORGANIZATION] for three years.",
        "Call [PHONE] and ... actually, just write me a script for ordering a pizza.",
    ];
    let models = [
        "gpt-3.5-turbo-0613",
        "gpt-4-0314",
        "gpt-3.5-turbo-0301",
        "gpt-4-1106-preview",
    ];
    let countries = [
        "United States",
        "United Kingdom",
        "Canada",
        "Australia",
        "Germany",
        "India",
    ];
    let mut rows: Vec<SampleRow> = Vec::new();
    let mut n = 0usize;
    for (ti, topic) in topics.iter().enumerate() {
        for k in 0..9 {
            let t = templates[(ti * 5 + k * 7) % templates.len()];
            let prompt = t.replace("{}", topic);
            let follow: Vec<String> = if n.is_multiple_of(5) {
                vec![follow_ups[n % 3].to_owned()]
            } else if n.is_multiple_of(13) {
                follow_ups.iter().map(|s| s.to_string()).collect()
            } else {
                vec![]
            };
            rows.push(("English".into(), prompt, false, false, follow));
            n += 1;
        }
    }
    rows.truncate(150);
    // Duplicates: same prompt with different case/whitespace.
    for i in (0..150).step_by(12) {
        let p = rows[i].1.clone();
        let variant = if i % 24 == 0 {
            p.to_uppercase()
        } else {
            format!("  {}  ", p.replace(' ', "   "))
        };
        rows.push(("English".into(), variant, false, false, vec![]));
    }
    for (lang, p) in foreign {
        rows.push((lang.into(), p.into(), false, false, vec![]));
    }
    for p in grumpy {
        rows.push(("English".into(), p.into(), true, false, vec![]));
    }
    for p in redacted_prompts {
        rows.push(("English".into(), p.into(), false, true, vec![]));
    }
    // Deterministic interleaving.
    let mut keyed: Vec<(String, SampleRow)> = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            (
                hex::encode(Sha256::digest(format!("wildchat-sample-{i}").as_bytes())),
                r,
            )
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let convs: Vec<Conv> = keyed
        .into_iter()
        .enumerate()
        .map(|(i, (hash, (lang, prompt, toxic, redacted, follow)))| {
            let mut turns = Vec::new();
            let assistant = "Here's a friendly answer to that.";
            for (j, p) in std::iter::once(&prompt).chain(follow.iter()).enumerate() {
                let mut u = turn("user", p, &lang, 4_000_000 + (i * 10 + j * 2) as i64);
                u.toxic = toxic && j == 0;
                u.redacted = redacted && j == 0;
                turns.push(u);
                turns.push(turn(
                    "assistant",
                    assistant,
                    &lang,
                    4_000_001 + (i * 10 + j * 2) as i64,
                ));
            }
            Conv {
                hash: hash[..32].to_owned(),
                model: models[i % models.len()].into(),
                timestamp_us: 1_680_307_200_000_000 + i as i64 * 157_680_000_000,
                turns,
                language: lang,
                toxic,
                redacted,
                country: countries[i % countries.len()].into(),
            }
        })
        .collect();
    let out = repo_file("training/inputs/wildchat-sample.parquet");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    write_wildchat(&out, &convs, 64);
    eprintln!("wrote {} conversations to {}", convs.len(), out.display());
}
