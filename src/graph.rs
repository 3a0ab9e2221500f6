//! The build graph: pipelines linked by outputs used as file dependencies, evaluated in dependency order.
//!
//! Status is computed from manifests and current fingerprints only (no network, no model calls);
//! an upstream that is not CURRENT makes its downstream STALE.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::cli::Description;
use crate::fingerprint::{FileHasher, FingerprintError};
use crate::manifest::{CurrentFingerprints, Manifest, ManifestError, State, Status, status};
use crate::models::{ModelsConfig, ModelsError};

/// Errors building or evaluating the graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("dependency cycle between pipelines: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("two pipelines are named '{0}'")]
    DuplicateName(String),
    #[error("pipeline '{pipeline}': {source}")]
    Models {
        pipeline: String,
        source: ModelsError,
    },
    #[error("pipeline '{pipeline}': {source}")]
    Fingerprint {
        pipeline: String,
        source: FingerprintError,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// One pipeline with its evaluated status.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluated {
    pub name: String,
    pub output: String,
    /// Pipelines whose outputs this one reads.
    pub upstream: Vec<String>,
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
