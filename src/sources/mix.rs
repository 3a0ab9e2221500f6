//! Deterministic, memory-bounded mixing of several prompt sources.
//!
//! ```no_run
//! use shaping::sources::{Loader, Mix, Weight, WildChat, load_custom};
//! let (records, report) = Mix::new(42)
//!     .total(1000)
//!     .add("custom", load_custom("identity/prompts/custom.jsonl")?, Weight::All)
//!     .add("wildchat", WildChat::new().languages(["English"]).open("training/inputs/wildchat-sample.parquet")?, Weight::Share(0.5))
//!     .add("faq", Loader::new("training/inputs/faq.csv").open()?, Weight::Count(100))
//!     .run()?;
//! # Ok::<(), shaping::sources::SourceError>(())
//! ```
//!
//! Selection is a seeded *bottom-k* sample: every prompt gets a pseudo-random priority from
//! `(seed, normalised prompt)` and a component keeps the `k` distinct prompts with the lowest
//! priorities. So the pick is uniform over distinct prompts, independent of input order, the same for
//! the same seed and inputs on every platform, and memory is bounded by the number taken (plus one
//! 8-byte fingerprint per record taken so far, for cross-source dedupe).
//!
//! Components are processed in the order added; a prompt already taken from an earlier component
//! is dropped from later ones (cross-source dedupe). `Weight::Count(n)` takes `n` (fewer if the
//! source runs short: see `shortfall`), `Weight::Share(f)` takes `f` of [`Mix::total`] (shares are
//! rounded by largest remainder, so shares summing to 1 give exactly the total), `Weight::All`
//! takes every distinct prompt (memory: the whole source). Every record's `source` is set to its
//! component's name; ids are kept. The output is in a seeded pseudo-random order.

use std::collections::{BinaryHeap, HashMap, HashSet};

use serde::Serialize;

use super::{Record, SourceError, prompt_fingerprint};

/// How much of a component to take.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// Exactly this many (or all there are, if fewer).
    Count(usize),
    /// This fraction (0..=1) of [`Mix::total`].
    Share(f64),
    /// Every distinct prompt.
    All,
}

type Source = Box<dyn Iterator<Item = Result<Record, SourceError>> + Send>;

struct Component {
    name: String,
    weight: Weight,
    records: Source,
}

/// Builder for a mix; see the module docs.
pub struct Mix {
    seed: u64,
    total: Option<usize>,
    components: Vec<Component>,
}

/// What happened to one component of a mix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixSourceReport {
    /// The component's name (every record taken from it has it as `source`).
    pub name: String,
    /// How much of it was asked for.
    pub weight: Weight,
    /// Records requested (`None` for `Weight::All`).
    pub requested: Option<usize>,
    /// Records the source yielded.
    pub available: u64,
    /// Records taken into the mix.
    pub taken: usize,
    /// Duplicates that would otherwise have been taken: prompts already taken from an earlier
    /// component, and repeats among this component's picks (with `Weight::All`: every repeat).
    pub duplicates_dropped: u64,
    /// `requested - taken` when the source ran short.
    pub shortfall: usize,
}

/// Summary of a mix for the run manifest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixReport {
    /// The seed of the selection and the order.
    pub seed: u64,
    /// [`Mix::total`], if set.
    pub total: Option<usize>,
    /// Records in the mix, over all components.
    pub taken: usize,
    /// One report per component, in the order they were added.
    pub sources: Vec<MixSourceReport>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Mix {
    /// An empty mix with this seed.
    pub fn new(seed: u64) -> Self {
        Mix {
            seed,
            total: None,
            components: Vec::new(),
        }
    }

    /// The total that `Weight::Share` refers to.
    pub fn total(mut self, total: usize) -> Self {
        self.total = Some(total);
        self
    }

    /// Adds a component (any iterator of records, e.g. a [`super::Records`]).
    pub fn add<I>(mut self, name: impl Into<String>, records: I, weight: Weight) -> Self
    where
        I: IntoIterator<Item = Result<Record, SourceError>>,
        I::IntoIter: Send + 'static,
    {
        self.components.push(Component {
            name: name.into(),
            weight,
            records: Box::new(records.into_iter()),
        });
        self
    }

    /// Adds a component from records already in memory.
    pub fn add_records<I>(self, name: impl Into<String>, records: I, weight: Weight) -> Self
    where
        I: IntoIterator<Item = Record>,
        I::IntoIter: Send + 'static,
    {
        self.add(name, records.into_iter().map(Ok), weight)
    }

    fn quotas(&self) -> Result<Vec<Option<usize>>, SourceError> {
        let mut quotas = Vec::with_capacity(self.components.len());
        let mut shares = Vec::new();
        for (i, c) in self.components.iter().enumerate() {
            quotas.push(match c.weight {
                Weight::Count(n) => Some(n),
                Weight::All => None,
                Weight::Share(f) => {
                    if !(0.0..=1.0).contains(&f) {
                        return Err(SourceError::Mix(format!(
                            "component `{}`: share {f} is not within 0..=1",
                            c.name
                        )));
                    }
                    shares.push((i, f));
                    Some(0)
                }
            });
        }
        if shares.is_empty() {
            return Ok(quotas);
        }
        let Some(total) = self.total else {
            return Err(SourceError::Mix("Weight::Share needs Mix::total".into()));
        };
        let sum: f64 = shares.iter().map(|(_, f)| f).sum();
        if sum > 1.0 + 1e-9 {
            return Err(SourceError::Mix(format!(
                "shares add up to {sum}, more than 1"
            )));
        }
        let target = (sum * total as f64).round() as usize;
        let mut rem: Vec<(usize, f64)> = Vec::new();
        let mut given = 0;
        for &(i, f) in &shares {
            let exact = f * total as f64;
            quotas[i] = Some(exact.floor() as usize);
            given += exact.floor() as usize;
            rem.push((i, exact - exact.floor()));
        }
        rem.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (i, _) in rem.into_iter().take(target.saturating_sub(given)) {
            *quotas[i].as_mut().expect("share quota") += 1;
        }
        Ok(quotas)
    }

    /// Reads every component and returns the selected records and the report.
    pub fn run(self) -> Result<(Vec<Record>, MixReport), SourceError> {
        let quotas = self.quotas()?;
        let salt = splitmix64(self.seed);
        let mut taken_keys: HashSet<u64> = HashSet::new();
        let mut out: Vec<(u64, u64, Record)> = Vec::new();
        let mut reports = Vec::new();
        for (component, quota) in self.components.into_iter().zip(quotas) {
            let mut available = 0u64;
            let mut duplicates = 0u64;
            // key -> (priority, record); heap of (priority, key) with the largest on top.
            let mut picked: HashMap<u64, (u64, Record)> = HashMap::new();
            let mut heap: BinaryHeap<(u64, u64)> = BinaryHeap::new();
            for record in component.records {
                let record = record?;
                available += 1;
                let key = prompt_fingerprint(&record.prompt);
                if taken_keys.contains(&key) || picked.contains_key(&key) {
                    duplicates += 1;
                    continue;
                }
                let priority = splitmix64(key ^ salt);
                match quota {
                    None => {}
                    Some(0) => continue,
                    Some(k) if heap.len() < k => {}
                    Some(_) => {
                        let &(top, top_key) = heap.peek().expect("non-empty heap");
                        if (priority, key) >= (top, top_key) {
                            continue;
                        }
                        heap.pop();
                        picked.remove(&top_key);
                    }
                }
                heap.push((priority, key));
                picked.insert(key, (priority, record));
            }
            let taken = picked.len();
            for (key, (priority, mut record)) in picked {
                taken_keys.insert(key);
                record.source = component.name.clone();
                out.push((priority, key, record));
            }
            reports.push(MixSourceReport {
                name: component.name,
                weight: component.weight,
                requested: quota,
                available,
                taken,
                duplicates_dropped: duplicates,
                shortfall: quota.map_or(0, |q| q.saturating_sub(taken)),
            });
        }
        out.sort_by_key(|(p, k, _)| (*p, *k));
        let records: Vec<Record> = out.into_iter().map(|(_, _, r)| r).collect();
        let report = MixReport {
            seed: self.seed,
            total: self.total,
            taken: records.len(),
            sources: reports,
        };
        Ok((records, report))
    }
}
