//! Terminal rendering of a seeded random sample: `cargo xtask sample <name> [-n 10] [--full] [--seed S]`.

use std::fmt::Write as _;
use std::path::Path;

use super::read::read_samples;
use super::text::{Sample, truncate_chars};
use super::{Result, dataset_name};

/// Characters of a prompt shown unless `full`.
const PROMPT_CHARS: usize = 80;
/// Characters of a response shown unless `full`.
const RESPONSE_CHARS: usize = 300;
/// Characters of a step's prompt and response shown unless `full`.
const STEP_CHARS: usize = 60;

/// `n` samples drawn uniformly with `seed` (reservoir sampling, one pass), in file order, and the
/// number of samples in the dataset. The same data and seed give the same sample.
pub fn sample_records(path: &Path, n: usize, seed: u64) -> Result<(u64, Vec<Sample>)> {
    let mut rng = SplitMix64(seed);
    let mut reservoir: Vec<Sample> = Vec::with_capacity(n.min(1024));
    let mut seen: u64 = 0;
    for item in read_samples(path)? {
        let (line, record) = item?;
        seen += 1;
        if reservoir.len() < n {
            reservoir.push(Sample::from_line(line, record));
        } else if n > 0 {
            let j = rng.below(seen);
            if j < n as u64 {
                reservoir[j as usize] = Sample::from_line(line, record);
            }
        }
    }
    reservoir.sort_by_key(|s| s.line);
    Ok((seen, reservoir))
}

/// Render `n` random samples (chosen with `seed`) for the terminal: id, source, prompt and
/// response (shortened unless `full`), and for annotated data each step's model, prompt and response.
pub fn sample(path: &Path, n: usize, seed: u64, full: bool) -> Result<String> {
    let (total, samples) = sample_records(path, n, seed)?;
    let name = dataset_name(path);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} of {total} samples from {name} · seed {seed} (repeat with --seed {seed})",
        samples.len()
    );
    for (i, sample) in samples.iter().enumerate() {
        out.push_str(&"─".repeat(72));
        out.push('\n');
        render_one(&mut out, i + 1, sample, full);
    }
    if !samples.is_empty() {
        out.push_str(&"─".repeat(72));
        out.push('\n');
    }
    Ok(out)
}

fn render_one(out: &mut String, index: usize, sample: &Sample, full: bool) {
    let _ = write!(
        out,
        "#{index}  id: {}  source: {}",
        sample.id, sample.source
    );
    if let Some(category) = &sample.category {
        let _ = write!(out, "  category: {category}");
    }
    let _ = writeln!(out, "  (line {})", sample.line);
    if let Some(system) = sample.messages.iter().find(|m| m.role == "system") {
        field(
            out,
            "system",
            &system.content,
            if full { None } else { Some(PROMPT_CHARS) },
        );
    }
    let several =
        sample.exchanges() > 1 || sample.messages.iter().filter(|m| m.role == "user").count() > 1;
    if full || several {
        // The whole conversation, turn by turn (shortened unless `full`).
        let limit = |chars| if full { None } else { Some(chars) };
        for message in sample.messages.iter().filter(|m| m.role != "system") {
            let chars = if message.role == "user" {
                PROMPT_CHARS
            } else {
                RESPONSE_CHARS
            };
            field(out, &message.role, &message.content, limit(chars));
        }
        if let Some(pair) = &sample.pair {
            field(out, "chosen", &pair.chosen, limit(RESPONSE_CHARS));
            field(out, "rejected", &pair.rejected, limit(RESPONSE_CHARS));
        }
    } else if let Some(pair) = &sample.pair {
        field(out, "prompt", sample.prompt(), Some(PROMPT_CHARS));
        field(out, "chosen", &pair.chosen, Some(RESPONSE_CHARS));
        field(out, "rejected", &pair.rejected, Some(RESPONSE_CHARS));
    } else {
        field(out, "prompt", sample.prompt(), Some(PROMPT_CHARS));
        field(out, "response", sample.response(), Some(RESPONSE_CHARS));
    }
    if !sample.steps.is_empty() {
        let _ = writeln!(out, "  steps:");
        for (i, step) in sample.steps.iter().enumerate() {
            let mut flags = Vec::new();
            if let Some(reason) = &step.finish_reason {
                flags.push(reason.clone());
            }
            if step.cached {
                flags.push("cached".to_owned());
            }
            if step.success == Some(false) {
                flags.push("failed".to_owned());
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", flags.join(", "))
            };
            let _ = writeln!(out, "    {}. {}{flags}", i + 1, step.model);
            let limit = if full { None } else { Some(STEP_CHARS) };
            field(out, "      in", &step.prompt, limit);
            field(out, "     out", &step.response, limit);
            if let Some(error) = &step.error {
                field(out, "   error", error, limit);
            }
        }
    }
}

/// `  label: text`, shortened to `limit` chars on one line, or in full with continuation lines indented.
fn field(out: &mut String, label: &str, text: &str, limit: Option<usize>) {
    let pad = " ".repeat(label.chars().count() + 4);
    match limit {
        Some(limit) => {
            let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(out, "  {label}: {}", truncate_chars(&one_line, limit));
        }
        None => {
            let mut lines = text.trim_end().lines();
            let _ = writeln!(out, "  {label}: {}", lines.next().unwrap_or(""));
            for line in lines {
                let _ = writeln!(out, "{pad}{line}");
            }
        }
    }
}

/// A small, seedable, portable generator (SplitMix64), so a seed means the same sample everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`), without modulo bias.
    fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let x = self.next();
            if x < zone {
                return x % bound;
            }
        }
    }
}
