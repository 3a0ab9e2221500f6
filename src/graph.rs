//! The build graph: pipelines linked by outputs used as file dependencies, evaluated in dependency order.
//!
//! Status is computed from manifests and current fingerprints only (no network, no model calls);
//! an upstream that is not CURRENT makes its downstream STALE.
//!
//! Early cutoff, as in build systems: a downstream is STALE because of its upstream only until
//! the upstream has run. If the upstream's new output is byte-identical to the old one, the
//! downstream's file fingerprint still matches its manifest and it is CURRENT again: `data`
//! runs the plan level by level ([`ready`]) and evaluates again in between, instead of assuming
//! that everything downstream of a run must run too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::description::Description;
use crate::fingerprint::{FileHasher, FingerprintError};
use crate::manifest::{CurrentFingerprints, Manifest, ManifestError, State, Status, status};
use crate::models::{ModelsConfig, ModelsError};

/// Errors building or evaluating the graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Pipelines read each other's outputs in a circle: the names, each reading the next one's
    /// output, the first repeated at the end.
    #[error("dependency cycle between pipelines: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    /// Two pipelines declare the same name.
    #[error("two pipelines are named '{0}'")]
    DuplicateName(String),
    /// A pipeline declares a model alias that `models.toml` does not define.
    #[error("pipeline '{pipeline}': {source}")]
    Models {
        /// The pipeline declaring the alias.
        pipeline: String,
        /// The lookup error.
        source: ModelsError,
    },
    /// Hashing a pipeline's inputs, code or output failed (a missing input or output is not an
    /// error: it makes the pipeline STALE or MISSING).
    #[error("pipeline '{pipeline}': {source}")]
    Fingerprint {
        /// The pipeline being evaluated.
        pipeline: String,
        /// The hashing error.
        source: FingerprintError,
    },
    /// A pipeline's manifest exists but could not be read or parsed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// One pipeline with its evaluated status.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluated {
    /// The pipeline's name.
    pub name: String,
    /// Its output, relative to the repository root.
    pub output: String,
    /// Pipelines whose outputs this one reads.
    pub upstream: Vec<String>,
    /// Its state (CURRENT, STALE, …) with the reasons.
    pub status: Status,
}

fn normalize(path: &str) -> String {
    path.trim_start_matches("./").replace('\\', "/")
}

/// Pipelines in dependency order (producers before consumers), or the cycle.
pub fn topological_order(descriptions: &[Description]) -> Result<Vec<usize>, GraphError> {
    let mut by_output = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (i, d) in descriptions.iter().enumerate() {
        if !names.insert(d.name.clone()) {
            return Err(GraphError::DuplicateName(d.name.clone()));
        }
        by_output.insert(normalize(&d.output), i);
    }
    let upstream: Vec<Vec<usize>> = descriptions
        .iter()
        .map(|d| {
            d.files
                .iter()
                .filter_map(|f| by_output.get(&normalize(&f.path)).copied())
                .collect()
        })
        .collect();
    // Depth-first with colours, so a cycle can be reported as a path.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        upstream: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Active => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(i);
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks[i] = Mark::Active;
        stack.push(i);
        for &u in &upstream[i] {
            visit(u, upstream, marks, stack, order)?;
        }
        stack.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; descriptions.len()];
    let mut order = Vec::new();
    // Visit in name order so the result is deterministic.
    let mut indices: Vec<usize> = (0..descriptions.len()).collect();
    indices.sort_by(|&a, &b| descriptions[a].name.cmp(&descriptions[b].name));
    for i in indices {
        let mut stack = Vec::new();
        visit(i, &upstream, &mut marks, &mut stack, &mut order).map_err(|cycle| {
            GraphError::Cycle(
                cycle
                    .into_iter()
                    .map(|i| descriptions[i].name.clone())
                    .collect(),
            )
        })?;
    }
    Ok(order)
}

/// Evaluate every pipeline's status, in dependency order.
pub fn evaluate(
    root: &Path,
    descriptions: &[Description],
    models: &ModelsConfig,
    hasher: &FileHasher,
) -> Result<Vec<Evaluated>, GraphError> {
    let order = topological_order(descriptions)?;
    let by_output: BTreeMap<String, String> = descriptions
        .iter()
        .map(|d| (normalize(&d.output), d.name.clone()))
        .collect();
    let mut states: BTreeMap<String, State> = BTreeMap::new();
    let mut evaluated = Vec::new();
    for i in order {
        let d = &descriptions[i];
        let fingerprint_err = |source| GraphError::Fingerprint {
            pipeline: d.name.clone(),
            source,
        };
        let mut current = CurrentFingerprints::default();
        let mut upstream = Vec::new();
        for file in &d.files {
            let path = root.join(&file.path);
            let sha = match hasher.hash_path(&path) {
                Ok(sha) => Some(sha),
                Err(FingerprintError::Missing { .. }) => None,
                Err(e) => return Err(fingerprint_err(e)),
            };
            current
                .files
                .insert(file.name.clone(), (file.path.clone(), sha));
            if let Some(producer) = by_output.get(&normalize(&file.path)) {
                upstream.push(producer.clone());
                if states.get(producer).is_some_and(|s| *s != State::Current) {
                    current.stale_upstream.push(producer.clone());
                }
            }
        }
        for alias in &d.models {
            let spec = models.get(alias).map_err(|source| GraphError::Models {
                pipeline: d.name.clone(),
                source,
            })?;
            current.models.insert(alias.clone(), spec.fingerprint());
        }
        current.code_hash =
            crate::fingerprint::code_hash(root, &d.crate_dir, hasher).map_err(fingerprint_err)?;
        let output = root.join(&d.output);
        current.output_sha256 = match hasher.hash_file(&output) {
            Ok(sha) => Some(sha),
            Err(FingerprintError::Missing { .. }) => None,
            Err(e) => return Err(fingerprint_err(e)),
        };
        let manifest = Manifest::read(&Manifest::path_for(&output))?;
        let status = status(manifest.as_ref(), &current);
        states.insert(d.name.clone(), status.state);
        evaluated.push(Evaluated {
            name: d.name.clone(),
            output: d.output.clone(),
            upstream,
            status,
        });
    }
    Ok(evaluated)
}

/// What `data` will run: pipelines in dependency order with their level (0 = no upstream in the plan).
/// A pipeline runs when it is selected (or upstream of a selected one) and not CURRENT, when it
/// is forced, or when an upstream of it runs.
pub fn plan<'a>(
    evaluated: &'a [Evaluated],
    selected: &[String],
    force: bool,
) -> Vec<(&'a Evaluated, usize)> {
    plan_excluding(evaluated, selected, force, &BTreeSet::new())
}

/// What `data` runs now (early cutoff): the first level of the [`plan`] of what is left, given
/// the pipelines this invocation already ran (`done`, never run twice). Run these, evaluate
/// again, and call again until it is empty: a downstream of a run whose output came out
/// byte-identical is CURRENT by then and is not run.
pub fn ready<'a>(
    evaluated: &'a [Evaluated],
    selected: &[String],
    force: bool,
    done: &BTreeSet<String>,
) -> Vec<&'a Evaluated> {
    plan_excluding(evaluated, selected, force, done)
        .into_iter()
        .filter(|(_, level)| *level == 0)
        .map(|(e, _)| e)
        .collect()
}

/// [`plan`] leaving out the pipelines in `done` (they neither run nor hold back their downstream).
fn plan_excluding<'a>(
    evaluated: &'a [Evaluated],
    selected: &[String],
    force: bool,
    done: &BTreeSet<String>,
) -> Vec<(&'a Evaluated, usize)> {
    let by_name: BTreeMap<&str, &Evaluated> =
        evaluated.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut wanted: BTreeSet<&str> = if selected.is_empty() {
        by_name.keys().copied().collect()
    } else {
        selected.iter().map(String::as_str).collect()
    };
    let mut frontier: Vec<&str> = wanted.iter().copied().collect();
    while let Some(name) = frontier.pop() {
        for up in by_name
            .get(name)
            .map(|e| e.upstream.as_slice())
            .unwrap_or_default()
        {
            if wanted.insert(up.as_str()) {
                frontier.push(up.as_str());
            }
        }
    }
    let forced: BTreeSet<&str> = match (force, selected.is_empty()) {
        (false, _) => BTreeSet::new(),
        (true, true) => wanted.clone(),
        (true, false) => selected.iter().map(String::as_str).collect(),
    };
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    let mut plan = Vec::new();
    for e in evaluated {
        let name = e.name.as_str();
        if done.contains(name) {
            continue;
        }
        let upstream_running = e
            .upstream
            .iter()
            .filter_map(|u| level.get(u.as_str()))
            .max()
            .copied();
        if wanted.contains(name)
            && (e.status.state != State::Current
                || forced.contains(name)
                || upstream_running.is_some())
        {
            let l = upstream_running.map_or(0, |l| l + 1);
            level.insert(name, l);
            plan.push((e, l));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a → b → c (b reads a's output, c reads b's).
    fn chain(states: [(State, &str); 3]) -> Vec<Evaluated> {
        ["a", "b", "c"]
            .iter()
            .zip(states)
            .enumerate()
            .map(|(i, (name, (state, reason)))| Evaluated {
                name: (*name).to_owned(),
                output: format!("training/data/{name}.jsonl"),
                upstream: if i == 0 {
                    Vec::new()
                } else {
                    vec![["a", "b"][i - 1].to_owned()]
                },
                status: Status {
                    state,
                    samples: Some(1),
                    reasons: if reason.is_empty() {
                        Vec::new()
                    } else {
                        vec![reason.to_owned()]
                    },
                },
            })
            .collect()
    }

    fn names(ready: Vec<&Evaluated>) -> Vec<&str> {
        ready.into_iter().map(|e| e.name.as_str()).collect()
    }

    const CURRENT: (State, &str) = (State::Current, "");

    #[test]
    fn downstream_waits_for_its_upstream_and_is_cut_off_when_the_output_is_unchanged() {
        let before = chain([
            (State::Stale, "Pipeline code changed"),
            (State::Stale, "Input from pipeline 'a' is stale"),
            (State::Stale, "Input from pipeline 'b' is stale"),
        ]);
        let levels: Vec<(&str, usize)> = plan(&before, &[], false)
            .iter()
            .map(|(e, l)| (e.name.as_str(), *l))
            .collect();
        assert_eq!(levels, [("a", 0), ("b", 1), ("c", 2)]);
        let mut done = BTreeSet::new();
        assert_eq!(names(ready(&before, &[], false, &done)), ["a"]);
        done.insert("a".to_owned());

        // a's output came out byte-identical: evaluation finds b and c CURRENT.
        let unchanged = chain([CURRENT, CURRENT, CURRENT]);
        assert!(ready(&unchanged, &[], false, &done).is_empty());

        // a's output changed: b runs next, and c waits for b.
        let changed = chain([
            CURRENT,
            (State::Stale, "File 'in' content changed"),
            (State::Stale, "Input from pipeline 'b' is stale"),
        ]);
        assert_eq!(names(ready(&changed, &[], false, &done)), ["b"]);
    }

    #[test]
    fn forced_pipelines_run_once_each_in_dependency_order() {
        let all_current = chain([CURRENT, CURRENT, CURRENT]);
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        loop {
            let next = names(ready(&all_current, &[], true, &done));
            if next.is_empty() {
                break;
            }
            for name in next {
                order.push(name);
                done.insert(name.to_owned());
            }
        }
        assert_eq!(order, ["a", "b", "c"]);
        // Forcing one pipeline does not force its upstream or downstream.
        assert_eq!(
            names(ready(
                &all_current,
                &["b".to_owned()],
                true,
                &BTreeSet::new()
            )),
            ["b"]
        );
    }

    #[test]
    fn a_pipeline_already_run_is_not_run_again_even_if_still_not_current() {
        let still_stale = chain([(State::Stale, "Pipeline code changed"), CURRENT, CURRENT]);
        let done = BTreeSet::from(["a".to_owned()]);
        assert!(ready(&still_stale, &[], false, &done).is_empty());
    }
}
