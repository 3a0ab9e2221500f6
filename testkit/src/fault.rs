//! Fault injection: scripted (by request index or prompt marker) and random (seeded rates).

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One way a request can go wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Respond with this HTTP status and a realistic error body for the endpoint's wire format.
    /// 429 carries `retry-after: 1` / `retry-after-ms: 1000`.
    Status(u16),
    /// 429 with a specific retry-after.
    RateLimited {
        /// The pause the response asks for (`retry-after` / `retry-after-ms`).
        retry_after: Duration,
    },
    /// 400 `context_length_exceeded` (OpenAI) / `invalid_request_error` "prompt is too long" (Anthropic).
    ContextLength,
    /// Close the TCP connection with RST, sending no response.
    ResetConnection,
    /// Send headers with the full `content-length`, half the body, then close the connection.
    CloseMidBody,
    /// A complete 200 response whose JSON body is cut in half.
    TruncatedJson,
    /// Sleep this long, then respond normally (for client-timeout tests).
    Delay(Duration),
    /// A complete 200 response with body `not json`.
    InvalidJson,
    /// The item expires in a batch (`batch_expired` / `expired` result); an interactive
    /// request with it gets a 504.
    Expire,
}

/// A prompt-marker rule: requests whose last user message contains `marker` get `fault`,
/// for the first `times` matches (or forever when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerFault {
    /// Text to look for in the last user message.
    pub marker: String,
    /// The fault to inject.
    pub fault: Fault,
    /// How many matching requests get it; None for all of them.
    pub times: Option<u32>,
}

/// Random faults: each request independently draws one fault with the given probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    /// Seed of the RNG that draws the faults.
    pub seed: u64,
    /// `(fault, probability)`; probabilities should sum to <= 1.
    pub rates: Vec<(Fault, f64)>,
}

/// What faults to inject. Precedence: `nth` > `markers` (first matching rule) > `random`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Fault for the request with this 0-based index, counted from when the plan was installed.
    pub nth: BTreeMap<u64, Fault>,
    /// Prompt-marker rules, tried in order.
    pub markers: Vec<MarkerFault>,
    /// Random faults for requests no other rule matched.
    pub random: Option<RandomFaults>,
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Faults for consecutive requests starting at index 0 (`None` = serve normally).
    pub fn sequence(faults: impl IntoIterator<Item = Option<Fault>>) -> Self {
        let nth = faults
            .into_iter()
            .enumerate()
            .filter_map(|(i, f)| f.map(|f| (i as u64, f)))
            .collect();
        Self {
            nth,
            ..Self::default()
        }
    }

    /// Random faults with a seeded RNG.
    pub fn random(seed: u64, rates: impl IntoIterator<Item = (Fault, f64)>) -> Self {
        Self {
            random: Some(RandomFaults {
                seed,
                rates: rates.into_iter().collect(),
            }),
            ..Self::default()
        }
    }

    /// Inject `fault` on the request with 0-based index `n`.
    pub fn nth(mut self, n: u64, fault: Fault) -> Self {
        self.nth.insert(n, fault);
        self
    }

    /// Inject `fault` on every request whose last user message contains `marker`.
    pub fn marker(mut self, marker: impl Into<String>, fault: Fault) -> Self {
        self.markers.push(MarkerFault {
            marker: marker.into(),
            fault,
            times: None,
        });
        self
    }

    /// Inject `fault` on the first `times` requests whose last user message contains `marker`.
    pub fn marker_times(mut self, marker: impl Into<String>, fault: Fault, times: u32) -> Self {
        self.markers.push(MarkerFault {
            marker: marker.into(),
            fault,
            times: Some(times),
        });
        self
    }

    /// Add a random fault rate (creates the random section with seed 0 if absent).
    pub fn with_rate(mut self, fault: Fault, probability: f64) -> Self {
        self.random
            .get_or_insert_with(|| RandomFaults {
                seed: 0,
                rates: Vec::new(),
            })
            .rates
            .push((fault, probability));
        self
    }

    /// Whether the plan injects nothing.
    pub fn is_empty(&self) -> bool {
        self.nth.is_empty()
            && self.markers.is_empty()
            && self.random.as_ref().is_none_or(|r| r.rates.is_empty())
    }
}

/// Live state of an installed plan.
pub(crate) struct FaultEngine {
    plan: FaultPlan,
    seen: u64,
    rng: StdRng,
    empty: bool,
}

impl FaultEngine {
    pub(crate) fn new(plan: FaultPlan) -> Self {
        let seed = plan.random.as_ref().map_or(0, |r| r.seed);
        let empty = plan.is_empty();
        Self {
            plan,
            seen: 0,
            rng: StdRng::seed_from_u64(seed),
            empty,
        }
    }

    /// Decide the fault for the next received request.
    pub(crate) fn decide(&mut self, last_user: Option<&str>) -> Option<Fault> {
        let idx = self.seen;
        self.seen += 1;
        if self.empty {
            return None;
        }
        if let Some(f) = self.plan.nth.get(&idx) {
            return Some(f.clone());
        }
        if let Some(text) = last_user {
            for rule in &mut self.plan.markers {
                if rule.times == Some(0) || !text.contains(rule.marker.as_str()) {
                    continue;
                }
                if let Some(t) = rule.times.as_mut() {
                    *t -= 1;
                }
                return Some(rule.fault.clone());
            }
        }
        if let Some(r) = &self.plan.random {
            if r.rates.is_empty() {
                return None;
            }
            let x: f64 = self.rng.random();
            let mut acc = 0.0;
            for (f, p) in &r.rates {
                acc += p;
                if x < acc {
                    return Some(f.clone());
                }
            }
        }
        None
    }
}
