//! Seeded mixing: deterministic selection and report, shares, shortfalls, duplicates across
//! sources, errors, bounded memory.

use std::collections::BTreeSet;

use serde_json::json;
use shaping::sources::*;
use tempfile::TempDir;

use super::write;

fn numbered(prefix: &str, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record::new(prefix, format!("{prefix} prompt {i}")))
        .collect()
}

#[test]
fn mix_is_deterministic_and_reports() {
    let a = numbered("a", 100);
    let mut b = numbered("b", 50);
    b.extend((0..10).map(|i| Record::new("b", format!("A   PROMPT {i}"))));
    let run = |seed: u64, a: Vec<Record>, b: Vec<Record>| {
        Mix::new(seed)
            .add_records("alpha", a, Weight::Count(30))
            .add_records("beta", b, Weight::All)
            .run()
            .unwrap()
    };
    let (r1, rep1) = run(7, a.clone(), b.clone());
    let (r2, rep2) = run(7, a.clone(), b.clone());
    assert_eq!(r1, r2);
    assert_eq!(rep1, rep2);
    let mut reversed = a.clone();
    reversed.reverse();
    let (r3, _) = run(7, reversed, b.clone());
    assert_eq!(r1, r3, "selection and order do not depend on input order");
    let (r4, _) = run(8, a.clone(), b.clone());
    let alpha = |rs: &[Record]| {
        rs.iter()
            .filter(|r| r.source == "alpha")
            .map(|r| r.id.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_ne!(alpha(&r1), alpha(&r4), "another seed picks differently");

    assert_eq!(rep1.seed, 7);
    let (ra, rb) = (&rep1.sources[0], &rep1.sources[1]);
    assert_eq!(
        (
            ra.name.as_str(),
            ra.available,
            ra.taken,
            ra.requested,
            ra.shortfall
        ),
        ("alpha", 100, 30, Some(30), 0)
    );
    assert_eq!(rb.available, 60);
    assert_eq!(rb.taken as u64 + rb.duplicates_dropped, 60);
    let picked_dupes = alpha(&r1)
        .iter()
        .filter(|id| a[..10].iter().any(|r| &r.id == *id))
        .count() as u64;
    assert_eq!(
        rb.duplicates_dropped, picked_dupes,
        "beta loses exactly the prompts alpha already took"
    );
    assert_eq!(rep1.taken, r1.len());
    assert_eq!(r1.len(), 30 + rb.taken);
    let keys: BTreeSet<String> = r1.iter().map(Record::key).collect();
    assert_eq!(keys.len(), r1.len(), "no duplicates across sources");
    assert!(r1.iter().all(|r| r.source == "alpha" || r.source == "beta"));
    // Output is shuffled, not grouped.
    assert!(
        r1.iter().take(20).any(|r| r.source == "beta")
            && r1.iter().take(20).any(|r| r.source == "alpha")
    );

    let v = serde_json::to_value(&rep1).unwrap();
    assert_eq!(v["sources"][0]["weight"], json!({"count": 30}));
    assert_eq!(v["sources"][1]["weight"], json!("all"));
}

#[test]
fn mix_shares_shortfall_dupes_and_errors() {
    let (recs, rep) = Mix::new(1)
        .total(50)
        .add_records("x", numbered("x", 100), Weight::Share(0.5))
        .add_records("y", numbered("y", 100), Weight::Share(0.3))
        .add_records("z", numbered("z", 100), Weight::Share(0.2))
        .run()
        .unwrap();
    assert_eq!(recs.len(), 50);
    assert_eq!(
        rep.sources.iter().map(|s| s.taken).collect::<Vec<_>>(),
        [25, 15, 10]
    );

    let (_, rep) = Mix::new(1)
        .total(10)
        .add_records("x", numbered("x", 3), Weight::Share(1.0 / 3.0))
        .add_records("y", numbered("y", 100), Weight::Share(2.0 / 3.0))
        .run()
        .unwrap();
    assert_eq!(rep.sources[0].requested, Some(3));
    assert_eq!(rep.sources[1].requested, Some(7));

    let mut dup = numbered("d", 5);
    dup.push(Record::new("d", "D prompt 0"));
    let (recs, rep) = Mix::new(3)
        .add_records("d", dup.clone(), Weight::Count(100))
        .run()
        .unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(
        (rep.sources[0].duplicates_dropped, rep.sources[0].shortfall),
        (1, 95)
    );
    let (recs, _) = Mix::new(3)
        .add_records("d", dup, Weight::Count(0))
        .run()
        .unwrap();
    assert!(recs.is_empty());

    let err = Mix::new(1)
        .add_records("x", numbered("x", 3), Weight::Share(0.5))
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("Weight::Share needs Mix::total"));
    let err = Mix::new(1)
        .total(5)
        .add_records("x", vec![], Weight::Share(0.7))
        .add_records("y", vec![], Weight::Share(0.7))
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("more than 1"), "{err}");

    // Errors from a component propagate.
    let dir = TempDir::new().unwrap();
    let p = write(dir.path(), "bad.jsonl", "{\"prompt\": \"ok\"}\nnot json\n");
    let err = Mix::new(1)
        .add("bad", Loader::new(&p).open().unwrap(), Weight::All)
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("bad.jsonl:line 2"), "{err}");
}

#[test]
fn mix_memory_is_bounded_by_taken() {
    // A long stream: only the bottom-k heap is kept.
    let stream = (0..50_000u32).map(|i| Ok(Record::new("s", format!("streamed prompt {i}"))));
    let (recs, rep) = Mix::new(9)
        .add("s", stream, Weight::Count(5))
        .run()
        .unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(rep.sources[0].available, 50_000);
}
