//! The `data` scheduler: run what is not CURRENT level by level, evaluate again in between (early cutoff), skip the downstream of a failure, one local-model pipeline at a time.
//!
//! It decides; a [`Runner`] acts (builds nothing, starts the pipeline binaries, hashes outputs),
//! so the policy is tested here with a fake runner and xtask stays a thin shell around it.

use std::collections::BTreeSet;

use crate::exit_code::ShapingExitCode;
use crate::graph::{Evaluated, ready};

/// What the scheduler asks of the world.
pub trait Runner {
    /// Why [`evaluate`](Self::evaluate) failed; the scheduler stops and returns it.
    type Error;
    /// Every pipeline's status now.
    fn evaluate(&mut self) -> Result<Vec<Evaluated>, Self::Error>;
    /// Whether pipeline `name` runs an in-process model (those use every core: one at a time).
    fn uses_local_model(&self, name: &str) -> bool;
    /// The hash of pipeline `name`'s output as it is now (`None` when it does not exist).
    fn output_hash(&self, name: &str) -> Option<String>;
    /// Run these pipelines at once, each with `1 / names.len()` of every model's limits, and
    /// wait for all of them: the exit code of each, in order.
    fn run(&mut self, names: &[&str]) -> Vec<i32>;
}

/// What happened along the way, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Not run because an input pipeline failed.
    Skipped(String),
    /// Ran, and its output came out byte for byte as before.
    Unchanged(String),
}

/// The result of [`regenerate`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Pipelines this invocation ran or skipped (each at most once).
    pub done: BTreeSet<String>,
    /// Pipelines that failed or were skipped for a failed input, in the order it happened.
    pub failed: Vec<String>,
    /// The exit code of the first pipeline that failed.
    pub first_failure: Option<i32>,
    /// The statuses after the last run.
    pub evaluated: Vec<Evaluated>,
}

impl Outcome {
    /// The exit code of the whole `data` ([`ShapingExitCode::OK`] when nothing failed).
    pub fn exit_code(&self) -> i32 {
        match (self.failed.is_empty(), self.first_failure) {
            (true, _) => ShapingExitCode::OK,
            (false, Some(code)) => code,
            (false, None) => ShapingExitCode::PIPELINE_FAILED,
        }
    }
}

/// Regenerate the `selected` pipelines (all when empty) that are not CURRENT, or all of them
/// with `force`, in dependency order: run what is [`ready`], `jobs` at a time within a level
/// (one at a time when a local model is involved), evaluate again, and go on until nothing is
/// ready. A downstream of an output that came out byte-identical is CURRENT by then and does
/// not run; a downstream of a failure is skipped. No pipeline runs twice.
pub fn regenerate<R: Runner>(
    runner: &mut R,
    evaluated: Vec<Evaluated>,
    selected: &[String],
    force: bool,
    jobs: usize,
    mut on_event: impl FnMut(Event),
) -> Result<Outcome, R::Error> {
    let mut failed: Vec<String> = Vec::new();
    let mut first_failure = None;
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut now = evaluated;
    loop {
        let ready: Vec<(String, Vec<String>)> = ready(&now, selected, force, &done)
            .into_iter()
            .map(|e| (e.name.clone(), e.upstream.clone()))
            .collect();
        if ready.is_empty() {
            break;
        }
        let mut runnable: Vec<&str> = Vec::new();
        for (name, upstream) in &ready {
            done.insert(name.clone());
            if upstream.iter().any(|u| failed.contains(u)) {
                on_event(Event::Skipped(name.clone()));
                failed.push(name.clone());
            } else {
                runnable.push(name);
            }
        }
        let jobs = if runnable.iter().any(|name| runner.uses_local_model(name)) {
            1
        } else {
            jobs.max(1)
        };
        for chunk in runnable.chunks(jobs) {
            let before: Vec<Option<String>> =
                chunk.iter().map(|name| runner.output_hash(name)).collect();
            let codes = runner.run(chunk);
            for ((name, code), before) in chunk.iter().zip(codes).zip(before) {
                if code != ShapingExitCode::OK {
                    first_failure.get_or_insert(code);
                    failed.push((*name).to_owned());
                } else if before.is_some() && before == runner.output_hash(name) {
                    on_event(Event::Unchanged((*name).to_owned()));
                }
            }
        }
        now = runner.evaluate()?;
    }
    Ok(Outcome {
        done,
        failed,
        first_failure,
        evaluated: now,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::{State, Status};

    /// A fake world: pipelines in a chain or tree, each output a version number; a run bumps
    /// the version unless the pipeline is "stable" (byte-identical output), or fails with its code.
    #[derive(Default)]
    struct Fake {
        /// name → (upstream, output version, version its manifest saw of each upstream)
        pipelines: BTreeMap<String, (Vec<String>, u32)>,
        /// Pipelines whose own inputs changed (STALE on their own).
        dirty: BTreeSet<String>,
        stable: BTreeSet<String>,
        fails: BTreeMap<String, i32>,
        local: BTreeSet<String>,
        /// The output versions each pipeline last ran against.
        seen: BTreeMap<String, BTreeMap<String, u32>>,
        /// Calls to `run`, in order.
        runs: Vec<Vec<String>>,
    }

    impl Fake {
        fn add(&mut self, name: &str, upstream: &[&str]) -> &mut Self {
            self.pipelines.insert(
                name.to_owned(),
                (upstream.iter().map(|u| (*u).to_owned()).collect(), 1),
            );
            let seen = upstream.iter().map(|u| ((*u).to_owned(), 1)).collect();
            self.seen.insert(name.to_owned(), seen);
            self
        }

        fn status(&self, name: &str) -> Status {
            let (upstream, _) = &self.pipelines[name];
            let mut reasons = Vec::new();
            if self.dirty.contains(name) {
                reasons.push("File 'x' content changed".to_owned());
            }
            for up in upstream {
                if self.pipelines[up].1 != self.seen[name][up] {
                    reasons.push(format!("File '{up}' content changed"));
                }
                if self.dirty.contains(up) {
                    reasons.push(format!("Input from pipeline '{up}' is stale"));
                }
            }
            Status {
                state: if reasons.is_empty() {
                    State::Current
                } else {
                    State::Stale
                },
                samples: Some(1),
                reasons,
            }
        }
    }

    impl Runner for Fake {
        type Error = std::convert::Infallible;

        fn evaluate(&mut self) -> Result<Vec<Evaluated>, Self::Error> {
            Ok(self
                .pipelines
                .iter()
                .map(|(name, (upstream, _))| Evaluated {
                    name: name.clone(),
                    output: format!("{name}.jsonl"),
                    upstream: upstream.clone(),
                    status: self.status(name),
                })
                .collect())
        }

        fn uses_local_model(&self, name: &str) -> bool {
            self.local.contains(name)
        }

        fn output_hash(&self, name: &str) -> Option<String> {
            Some(self.pipelines[name].1.to_string())
        }

        fn run(&mut self, names: &[&str]) -> Vec<i32> {
            self.runs
                .push(names.iter().map(|n| (*n).to_owned()).collect());
            names
                .iter()
                .map(|name| {
                    if let Some(code) = self.fails.get(*name) {
                        return *code;
                    }
                    self.dirty.remove(*name);
                    let upstream = self.pipelines[*name].0.clone();
                    for up in upstream {
                        let version = self.pipelines[&up].1;
                        self.seen.get_mut(*name).unwrap().insert(up, version);
                    }
                    if !self.stable.contains(*name) {
                        self.pipelines.get_mut(*name).unwrap().1 += 1;
                    }
                    ShapingExitCode::OK
                })
                .collect()
        }
    }

    fn go(fake: &mut Fake, jobs: usize) -> (Outcome, Vec<Event>) {
        let evaluated = fake.evaluate().unwrap();
        let mut events = Vec::new();
        let outcome = regenerate(fake, evaluated, &[], false, jobs, |e| events.push(e)).unwrap();
        (outcome, events)
    }

    #[test]
    fn levels_run_in_dependency_order_and_everything_ends_current() {
        let mut fake = Fake::default();
        fake.add("a", &[]).add("b", &["a"]).add("c", &["b"]);
        fake.dirty.insert("a".into());
        let (outcome, events) = go(&mut fake, 2);
        assert_eq!(fake.runs, [["a"], ["b"], ["c"]]);
        assert!(events.is_empty());
        assert_eq!(outcome.exit_code(), ShapingExitCode::OK);
        assert!(outcome.evaluated.iter().all(|e| e.status.is_current()));
    }

    #[test]
    fn a_byte_identical_output_cuts_off_its_downstream() {
        let mut fake = Fake::default();
        fake.add("a", &[]).add("b", &["a"]);
        fake.dirty.insert("a".into());
        fake.stable.insert("a".into());
        let (outcome, events) = go(&mut fake, 2);
        assert_eq!(fake.runs, [["a"]], "b must not run");
        assert_eq!(events, [Event::Unchanged("a".into())]);
        assert!(outcome.evaluated.iter().all(|e| e.status.is_current()));
    }

    #[test]
    fn a_failure_skips_its_downstream_and_gives_its_exit_code() {
        let mut fake = Fake::default();
        fake.add("a", &[]).add("b", &["a"]).add("other", &[]);
        fake.dirty.extend(["a".to_owned(), "other".to_owned()]);
        fake.fails
            .insert("a".into(), ShapingExitCode::TOO_MANY_RECORD_ERRORS);
        let (outcome, events) = go(&mut fake, 2);
        assert_eq!(
            fake.runs,
            [["a", "other"]],
            "independent pipelines still run"
        );
        assert_eq!(events, [Event::Skipped("b".into())]);
        assert_eq!(outcome.failed, ["a", "b"]);
        assert_eq!(outcome.exit_code(), ShapingExitCode::TOO_MANY_RECORD_ERRORS);
    }

    #[test]
    fn local_model_pipelines_run_one_at_a_time() {
        let mut fake = Fake::default();
        fake.add("a", &[]).add("b", &[]).add("c", &[]);
        fake.dirty.extend(["a", "b", "c"].map(String::from));
        let (_, _) = go(&mut fake, 2);
        assert_eq!(fake.runs, [vec!["a", "b"], vec!["c"]]);

        let mut fake = Fake::default();
        fake.add("a", &[]).add("b", &[]);
        fake.dirty.extend(["a", "b"].map(String::from));
        fake.local.insert("b".into());
        let (_, _) = go(&mut fake, 2);
        assert_eq!(fake.runs, [["a"], ["b"]]);
    }
}
