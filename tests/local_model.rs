//! The in-process llama.cpp provider against the real default model (SmolLM2-135M-Instruct).
//!
//! The model is fetched into the default model cache on first use (`ensure_default_model`).
//! Set `SHAPING_SKIP_LOCAL_MODEL=1` to skip the tests that need it.
#![cfg(feature = "local-model")]

use std::sync::OnceLock;

use serde_json::{Value, json};
use shaping::models::Requantize;
use shaping::provider::gbnf::json_schema_to_gbnf;
use shaping::provider::llama_cpp::{
    DEFAULT_MODEL_SHA256, EngineSettings, LlamaCppProvider, LocalModelError,
};
use shaping::provider::{ChatRequest, ErrorKind, Message, Params, Provider};

fn skip() -> bool {
    if std::env::var("SHAPING_SKIP_LOCAL_MODEL").is_ok_and(|v| v == "1") {
        eprintln!("SHAPING_SKIP_LOCAL_MODEL=1: skipping the local-model test");
        return true;
    }
    false
}

/// One provider for the whole test binary (8 sequences × 1024 tokens), configured like the
/// example aliases in `models.toml`: the default GGUF through its Q8_0 working copy.
fn provider() -> Option<&'static LlamaCppProvider> {
    if skip() {
        return None;
    }
    static PROVIDER: OnceLock<LlamaCppProvider> = OnceLock::new();
    Some(PROVIDER.get_or_init(|| {
        let path = shaping::model_fetch::ensure_default_model(&shaping::models::model_cache_dir())
            .expect("fetching the default model");
        LlamaCppProvider::load(&path, Some(DEFAULT_MODEL_SHA256), Requantize::Q8_0, 8, 1024)
            .expect("loading the default model")
    }))
}

fn request(messages: Vec<Message>, temperature: f32, max_tokens: u32, seed: u64) -> ChatRequest {
    ChatRequest {
        messages,
        params: Params {
            temperature: Some(temperature),
            max_tokens: Some(max_tokens),
            ..Params::default()
        },
        derived_seed: seed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_coherently() {
    let Some(p) = provider() else { return };
    let req = request(
        vec![Message::user("What is the capital of France?")],
        0.0,
        24,
        1,
    );
    let reply = p.send(&req).await.unwrap();
    assert!(
        reply.text.to_lowercase().contains("paris"),
        "{:?}",
        reply.text
    );
    assert!(reply.usage.input_tokens > 5, "{:?}", reply.usage);
    assert!(
        reply.usage.output_tokens > 0 && reply.usage.output_tokens <= 24,
        "{:?}",
        reply.usage
    );
    assert!(matches!(
        reply.finish_reason.as_deref(),
        Some("stop" | "length")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_the_chat_template() {
    let Some(p) = provider() else { return };
    let messages = vec![
        Message::system("You answer with one short sentence."),
        Message::user("Hi!"),
        Message::assistant("Hello! How can I help?"),
        Message::user("What is 2+2?"),
    ];
    let prompt = p.render_prompt(&messages).unwrap();
    assert!(
        prompt.contains("<|im_start|>system\nYou answer with one short sentence.<|im_end|>"),
        "{prompt}"
    );
    assert!(
        prompt.contains("<|im_start|>assistant\nHello! How can I help?<|im_end|>"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");

    let reply = p.send(&request(messages, 0.0, 32, 1)).await.unwrap();
    assert!(!reply.text.trim().is_empty());
    for marker in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        assert!(!reply.text.contains(marker), "{:?}", reply.text);
    }
    assert!(p.estimate_prompt_tokens(&[Message::user("What is 2+2?")]) > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_and_stop_sequences() {
    let Some(p) = provider() else { return };
    let msgs = || vec![Message::user("Count from 1 to 50, separated by commas.")];
    let long = p.send(&request(msgs(), 0.0, 12, 1)).await.unwrap();
    assert_eq!(long.finish_reason.as_deref(), Some("length"));
    assert_eq!(long.usage.output_tokens, 12);

    let mut req = request(msgs(), 0.0, 64, 1);
    req.params.stop = vec!["5".into()];
    let stopped = p.send(&req).await.unwrap();
    assert_eq!(stopped.finish_reason.as_deref(), Some("stop"));
    assert!(!stopped.text.contains('5'), "{:?}", stopped.text);
    let full = p.send(&request(msgs(), 0.0, 64, 1)).await.unwrap();
    assert!(
        full.text.starts_with(&stopped.text),
        "{:?} vs {:?}",
        full.text,
        stopped.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_and_seed_give_identical_text_even_when_batched() {
    let Some(p) = provider() else { return };
    let target = request(
        vec![Message::user("Write one sentence about a cat.")],
        1.0,
        40,
        7,
    );
    let alone = p.send(&target).await.unwrap();
    let again = p.send(&target).await.unwrap();
    assert_eq!(alone.text, again.text);

    // The same request decoded next to seven others, one of them joining mid-way.
    let others: Vec<ChatRequest> = (0..6u64)
        .map(|i| {
            request(
                vec![Message::user(format!(
                    "Tell me a fact about the number {i}."
                ))],
                0.9,
                30 + 5 * i as u32,
                i,
            )
        })
        .collect();
    let late = request(vec![Message::user("Name three colours.")], 0.9, 20, 99);
    let (batched, late_reply, rest) = tokio::join!(
        p.send(&target),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            p.send(&late).await
        },
        futures::future::join_all(others.iter().map(|r| p.send(r))),
    );
    assert!(late_reply.is_ok());
    assert!(rest.iter().all(Result::is_ok));
    assert_eq!(batched.unwrap().text, alone.text);

    // A prompt longer than one prefill chunk, joining while others decode.
    let long = request(
        vec![Message::user(format!(
            "Summarise: {}",
            "The quick brown fox jumps over the lazy dog. ".repeat(60)
        ))],
        1.0,
        24,
        5,
    );
    let long_alone = p.send(&long).await.unwrap();
    let (long_batched, rest) = tokio::join!(
        async {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            p.send(&long).await
        },
        futures::future::join_all(others.iter().map(|r| p.send(r))),
    );
    assert!(rest.iter().all(Result::is_ok));
    assert!(
        long_alone.usage.input_tokens > 512,
        "{:?}",
        long_alone.usage
    );
    assert_eq!(long_batched.unwrap().text, long_alone.text);

    // An explicit seed wins over the derived one.
    let mut seeded = target.clone();
    seeded.params.seed = Some(7);
    seeded.derived_seed = 12345;
    assert_eq!(p.send(&seeded).await.unwrap().text, alone.text);
}

/// A system prompt of about 250 tokens, like voice-prompts' persona.
const PERSONA: &str = "You are Marta Oyelaran, 61, who runs the Blue Kettle bakery by the river \
    in Duluth and coaches the junior curling team on Thursday nights. Stay in character and answer \
    in three to six sentences. Never say you are an AI.\nHow you talk:\n- Warm and direct, with \
    dry humour; you tease people you like.\n- You measure time in batches of bread: 'that took \
    three sourdoughs'.\n- You bring up the lake, the weather and your late husband Tomas, who \
    built the ovens.\n- You never swear; 'oh for crumbs' is as far as you go.\n- You give \
    practical advice first and feelings second, and you end with a question back to the person.\n\
    - You distrust anything in a plastic wrapper and anyone who rushes a proofing dough.\n- You \
    call customers 'friend' until you learn their name, then you never forget it.\n- Curling \
    comes up in every third answer: sweeping, stones, the house, the hammer.\n- You are proud of \
    your rye and a little embarrassed by how much you like supermarket doughnuts.";

fn ask(question: &str, seed: u64) -> ChatRequest {
    request(
        vec![Message::system(PERSONA), Message::user(question)],
        1.0,
        32,
        seed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_system_prompts_and_candidates_reply_as_if_computed_alone() {
    let Some(shared) = provider() else { return };
    // An engine of its own (four sequences), so its counters and parked prompts are this test's.
    let p = LlamaCppProvider::load(
        shared.path(),
        Some(DEFAULT_MODEL_SHA256),
        Requantize::Q8_0,
        4,
        1000,
    )
    .unwrap();
    // Four unrelated requests take every sequence: no prompt KV stays parked for the next one.
    let flush = || async {
        let fillers: Vec<ChatRequest> = (0..4u64)
            .map(|i| {
                request(
                    vec![Message::user(format!("Name a fruit ({i})."))],
                    0.7,
                    4,
                    i,
                )
            })
            .collect();
        let replies = futures::future::join_all(fillers.iter().map(|r| p.send(r))).await;
        assert!(replies.iter().all(Result::is_ok));
    };
    let bread = ask("How do I keep bread fresh?", 7);
    let winter = ask("What do you do on a cold winter morning?", 3);

    let bread_cold = p.send(&bread).await.unwrap();
    let stats = p.prefill_stats();
    assert_eq!(stats.shared_tokens, 0, "{stats:?}");
    assert_eq!(stats.computed_tokens, stats.prompt_tokens, "{stats:?}");
    assert!(
        bread_cold.usage.input_tokens > 200,
        "{:?}",
        bread_cold.usage
    );
    flush().await;
    let winter_cold = p.send(&winter).await.unwrap();

    // The same system prompt: the prefix `winter` left parked is copied, the question computed.
    let before = p.prefill_stats();
    let bread_warm = p.send(&bread).await.unwrap();
    let after = p.prefill_stats();
    assert!(
        after.shared_tokens - before.shared_tokens > 200,
        "{before:?} → {after:?}"
    );
    assert!(
        after.computed_tokens - before.computed_tokens < 40,
        "{before:?} → {after:?}"
    );
    assert_eq!(bread_warm.text, bread_cold.text);

    // Four candidates of one prompt at once (other seeds): one prefills, the others copy the
    // whole prompt and the logits after it.
    flush().await;
    let before = p.prefill_stats();
    let candidates: Vec<ChatRequest> = (0..4u64)
        .map(|k| ask("What do you do on a cold winter morning?", 3 + k))
        .collect();
    let replies: Vec<String> = futures::future::join_all(candidates.iter().map(|r| p.send(r)))
        .await
        .into_iter()
        .map(|r| r.unwrap().text)
        .collect();
    let after = p.prefill_stats();
    let prompt = winter_cold.usage.input_tokens;
    assert_eq!(
        after.computed_tokens - before.computed_tokens,
        prompt,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        after.shared_tokens - before.shared_tokens,
        3 * prompt,
        "{before:?} → {after:?}"
    );
    assert_eq!(replies[0], winter_cold.text);
    assert!(
        replies.iter().skip(1).any(|r| *r != replies[0]),
        "other seeds, other candidates: {replies:?}"
    );

    // Two prompts with the same system prompt, two candidates each, all at once.
    flush().await;
    let mixed = [
        bread.clone(),
        winter.clone(),
        ask("How do I keep bread fresh?", 8),
        candidates[1].clone(),
    ];
    let (mixed_replies, bread_8_alone) = tokio::join!(
        futures::future::join_all(mixed.iter().map(|r| p.send(r))),
        async {
            // The third of them once more, later, next to the rest of the batch.
            tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            p.send(&mixed[2]).await
        }
    );
    let texts: Vec<String> = mixed_replies.into_iter().map(|r| r.unwrap().text).collect();
    assert_eq!(texts[0], bread_cold.text);
    assert_eq!(texts[1], winter_cold.text);
    assert_eq!(texts[3], replies[1]);
    assert_eq!(bread_8_alone.unwrap().text, texts[2]);

    // Without sharing (every prompt prefilled from scratch, no prefix part) the engine still
    // answers; its prompts are all computed.
    let plain = LlamaCppProvider::load_with(
        shared.path(),
        Some(DEFAULT_MODEL_SHA256),
        Requantize::Q8_0,
        EngineSettings {
            prefix_sharing: false,
            ..EngineSettings::new(4, 1000)
        },
    )
    .unwrap();
    let replies = futures::future::join_all(candidates.iter().map(|r| plain.send(r))).await;
    assert!(replies.iter().all(Result::is_ok));
    let stats = plain.prefill_stats();
    assert_eq!(stats.shared_tokens, 0, "{stats:?}");
    assert_eq!(stats.computed_tokens, 4 * prompt, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_requests_complete() {
    let Some(p) = provider() else { return };
    let reqs: Vec<ChatRequest> = (0..8u64)
        .map(|i| {
            request(
                vec![Message::user(format!("Say hello to person {i}."))],
                0.7,
                16,
                i,
            )
        })
        .collect();
    let replies = futures::future::join_all(reqs.iter().map(|r| p.send(r))).await;
    for reply in replies {
        let reply = reply.unwrap();
        assert!(reply.usage.output_tokens > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_constrained_output_is_valid_json() {
    let Some(p) = provider() else { return };
    let schema = json!({
        "type": "object",
        "properties": {"facts": {"type": "array", "items": {"type": "string", "maxLength": 60}, "minItems": 1, "maxItems": 3}},
        "required": ["facts"]
    });
    let mut req = request(
        vec![Message::user("List facts about the moon as JSON.")],
        0.7,
        160,
        3,
    );
    req.params.json_schema = Some(schema);
    let reply = p.send(&req).await.unwrap();
    assert_eq!(
        reply.finish_reason.as_deref(),
        Some("stop"),
        "{:?}",
        reply.text
    );
    let v: Value =
        serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {:?}", reply.text));
    let facts = v["facts"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!((1..=3).contains(&facts.len()), "{v}");
    assert!(
        facts
            .iter()
            .all(|f| f.as_str().is_some_and(|s| s.chars().count() <= 60)),
        "{v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1);

    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer"},
            "mood": {"enum": ["happy", "sad"]},
            "tall": {"type": "boolean"},
            "kind": {"const": "person"},
            "nickname": {"type": ["string", "null"], "maxLength": 20}
        },
        "required": ["name", "age", "mood", "tall", "kind"]
    });
    // Properties come out in the order of the schema's map (declared order with serde_json's
    // `preserve_order`, alphabetical without it).
    let order: Vec<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut req = request(
        vec![Message::user("Describe a person as JSON.")],
        0.0,
        120,
        3,
    );
    req.params.json_schema = Some(schema);
    let reply = p.send(&req).await.unwrap();
    let v: Value =
        serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {:?}", reply.text));
    assert!(
        v["name"].is_string() && v["age"].is_i64() && v["tall"].is_boolean(),
        "{v}"
    );
    assert!(v["mood"] == "happy" || v["mood"] == "sad", "{v}");
    assert_eq!(v["kind"], "person");
    let start = reply.text.find('{').unwrap();
    let positions: Vec<usize> = order
        .iter()
        .filter_map(|k| reply.text[start..].find(&format!("\"{k}\"")))
        .collect();
    assert!(
        positions.len() >= 5 && positions.windows(2).all(|w| w[0] < w[1]),
        "order {order:?}: {}",
        reply.text
    );
}

#[test]
fn every_supported_schema_shape_gives_a_grammar_llama_accepts() {
    let Some(p) = provider() else { return };
    let schemas = [
        json!({"type": "string"}),
        json!({"type": "string", "minLength": 2, "maxLength": 5}),
        json!({"type": "integer"}),
        json!({"type": "number"}),
        json!({"type": "boolean"}),
        json!({"type": "null"}),
        json!({"enum": ["a", 1, null, {"x": "y\"z"}]}),
        json!({"const": "tab\there"}),
        json!({}),
        json!({"type": "object"}),
        json!({"type": "object", "properties": {}}),
        json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}),
        json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]}),
        json!({"type": "array"}),
        json!({"type": "array", "items": {"type": "number"}, "minItems": 2}),
        json!({"type": "array", "items": {"type": "number"}, "maxItems": 0}),
        json!({"type": "array", "items": {"type": "array", "items": {"type": "integer"}}, "minItems": 1, "maxItems": 4}),
        json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
        json!({"type": "string", "nullable": true}),
        json!({"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"}),
        json!({"type": "object", "properties": {"weird key \"quoted\"\n": {"type": "string"}, "ключ": {"type": "boolean"}}}),
    ];
    for schema in &schemas {
        let gbnf = json_schema_to_gbnf(schema).unwrap();
        if let Err(e) = p.check_json_schema(schema) {
            panic!("{schema}: {e}\n{gbnf}");
        }
    }
    let err = p
        .check_json_schema(&json!({"type": "frobnicate"}))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let err = LlamaCppProvider::load(
        &missing,
        Some(DEFAULT_MODEL_SHA256),
        Requantize::None,
        1,
        256,
    )
    .unwrap_err();
    assert!(matches!(err, LocalModelError::Missing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains(DEFAULT_MODEL_SHA256),
        "{msg}"
    );

    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"this is not a gguf file at all").unwrap();
    let err = LlamaCppProvider::load(
        &corrupt,
        Some(DEFAULT_MODEL_SHA256),
        Requantize::Q8_0,
        1,
        256,
    )
    .unwrap_err();
    assert!(
        matches!(err, LocalModelError::HashMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&corrupt.display().to_string()) && msg.contains(DEFAULT_MODEL_SHA256),
        "{msg}"
    );

    // Without an expected hash the garbage reaches llama.cpp, which must refuse it cleanly.
    let err = LlamaCppProvider::load(&corrupt, None, Requantize::None, 1, 256).unwrap_err();
    assert!(matches!(err, LocalModelError::Load { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&corrupt.display().to_string()),
        "{err}"
    );
    // … and so must its quantizer, when asked for a working copy of the garbage.
    let err = LlamaCppProvider::load(&corrupt, None, Requantize::Q8_0, 1, 256).unwrap_err();
    assert!(matches!(err, LocalModelError::Requantize { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&corrupt.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_q8_0_working_copy_is_kept_in_the_model_cache_and_answers_like_the_original() {
    let Some(p) = provider() else { return };
    let derived = shaping::models::model_cache_dir().join("derived");
    let copies: Vec<String> = std::fs::read_dir(&derived)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(&DEFAULT_MODEL_SHA256[..16]) && name.ends_with(".gguf"))
        .collect();
    assert_eq!(
        copies,
        [format!(
            "SmolLM2-135M-Instruct.Q4_1.{}.q8_0.gguf",
            &DEFAULT_MODEL_SHA256[..16]
        )],
        "one copy, named after the source's hash and the format"
    );
    // The GGUF as it is, side by side: both know the answer.
    let original = LlamaCppProvider::load(
        p.path(),
        Some(DEFAULT_MODEL_SHA256),
        Requantize::None,
        1,
        256,
    )
    .unwrap();
    let question = request(
        vec![Message::user("What is the capital of France?")],
        0.0,
        24,
        1,
    );
    for provider in [p, &original] {
        let reply = provider.send(&question).await.unwrap();
        assert!(
            reply.text.to_lowercase().contains("paris"),
            "{}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_of_one_file_share_the_model_and_a_too_long_prompt_is_a_context_error() {
    let Some(p) = provider() else { return };
    let again = LlamaCppProvider::load(p.path(), None, Requantize::Q8_0, 8, 1024).unwrap();
    let reply = again
        .send(&request(vec![Message::user("Hi")], 0.0, 4, 1))
        .await
        .unwrap();
    assert!(reply.usage.output_tokens > 0);

    let huge = "word ".repeat(3000);
    let err = p
        .send(&request(vec![Message::user(huge)], 0.0, 4, 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextLength);
}
