//! The HTML report: one self-contained page (inline CSS, SVG and JS; nothing fetched) per dataset.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::checks::{CheckReport, CheckResult, Comparison};
use super::detect::{Reason, Verdict};
use super::stats::{Bucket, DatasetStats};
use super::text::{Sample, truncate_chars};

/// Most samples listed in a report in file order; after these, up to as many failing samples
/// (and every sample named by a failing check) are listed too.
pub const REPORT_SAMPLE_CAP: usize = 2000;
/// Most samples named per reason in the "failing samples by reason" section.
const REASON_LIST_CAP: usize = 200;

/// Per reason: how many samples fail with it, and the first [`REASON_LIST_CAP`] (id, detail).
type ByReason = BTreeMap<Reason, (u64, Vec<(String, String)>)>;

/// Characters of the prompt shown in a sample's collapsed line.
const PREVIEW_CHARS: usize = 140;
/// Bars shown in a category chart before the rest is summed into "other".
const TOP_BARS: usize = 12;

/// Render the report page of one dataset.
///
/// `samples` (each with its [`Verdict`], see [`super::judged_samples`]) is read lazily: the first
/// [`REPORT_SAMPLE_CAP`] are listed, and after that failing samples (up to as many again) and
/// those named by a check's example ids. Failing samples are also listed by reason, with the
/// finding's detail. Every piece of data is HTML-escaped.
pub fn render_report<I>(
    dataset_name: &str,
    stats: &DatasetStats,
    checks: &CheckReport,
    samples: I,
) -> String
where
    I: IntoIterator<Item = (Sample, Verdict)>,
{
    let named = named_ids(checks);
    let mut listed: Vec<(Sample, Verdict)> = Vec::new();
    let mut by_reason = ByReason::new();
    let mut total = 0usize;
    for (sample, verdict) in samples {
        total += 1;
        for finding in &verdict.findings {
            let (count, list) = by_reason.entry(finding.reason).or_default();
            *count += 1;
            if list.len() < REASON_LIST_CAP {
                list.push((sample.id.clone(), finding.located_detail()));
            }
        }
        let extra = listed.len().saturating_sub(REPORT_SAMPLE_CAP);
        if listed.len() < REPORT_SAMPLE_CAP
            || named.contains(sample.id.as_str())
            || (!verdict.passed() && extra < REPORT_SAMPLE_CAP)
        {
            listed.push((sample, verdict));
        }
    }

    let mut page = String::with_capacity(64 * 1024 + listed.len() * 2048);
    let status = if checks.passed { "pass" } else { "fail" };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{name} · quality report</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        name = esc(dataset_name)
    );

    // Header.
    let failed = checks.checks.iter().filter(|c| !c.passed).count();
    let _ = write!(
        page,
        "<header class=\"top\"><div class=\"wrap\"><div class=\"title\"><h1>{name}</h1>\
         <span class=\"badge {status}\">{label}</span></div>\
         <p class=\"sub\">{samples} samples · {errors} errors · {checks_n} checks, {failed} failed</p></div></header>\n\
         <main class=\"wrap\">\n",
        name = esc(dataset_name),
        label = if checks.passed { "PASSED" } else { "FAILED" },
        samples = fmt_int(stats.samples),
        errors = fmt_int(stats.errors),
        checks_n = checks.checks.len(),
    );

    summary_cards(&mut page, stats);
    checks_table(&mut page, checks);
    failing_by_reason(&mut page, checks, &by_reason);

    // Charts.
    page.push_str("<section class=\"grid\">\n");
    chart_card(
        &mut page,
        "Prompt length",
        "characters of the first user message",
        &length_chart(stats, true),
    );
    chart_card(
        &mut page,
        "Response length",
        "characters of the last assistant message (a pair's chosen)",
        &length_chart(stats, false),
    );
    chart_card(
        &mut page,
        "Sources",
        "input_data.source",
        &bar_list(&stats.sources, stats.samples, "samples"),
    );
    if !stats.categories.is_empty() {
        chart_card(
            &mut page,
            "Categories",
            "input_data.category",
            &bar_list(&stats.categories, stats.samples, "samples"),
        );
    }
    if stats.steps > 0 {
        chart_card(
            &mut page,
            "Models",
            "steps per model alias",
            &bar_list(&stats.models, stats.steps, "steps"),
        );
        chart_card(
            &mut page,
            "Finish reasons",
            "over all steps",
            &bar_list(&stats.finish_reasons, stats.steps, "steps"),
        );
    }
    let errors_body = if stats.errors == 0 {
        "<p class=\"empty\">No failed records.</p>".to_owned()
    } else {
        bar_list(&stats.error_types, stats.errors, "errors")
    };
    chart_card(
        &mut page,
        "Errors",
        "records in the errors file, by type",
        &errors_body,
    );
    page.push_str("</section>\n");

    samples_section(&mut page, &listed, total);

    let _ = write!(
        page,
        "</main>\n<footer class=\"wrap\">Generated by shaping's quality gate.</footer>\n<script>{JS}</script>\n</body>\n</html>\n"
    );
    page
}

/// Ids named as examples by failing checks.
fn named_ids(checks: &CheckReport) -> HashSet<&str> {
    checks
        .checks
        .iter()
        .filter(|c| !c.passed)
        .flat_map(|c| c.example_ids.iter().map(String::as_str))
        .collect()
}

/// The "failing samples by reason" section: per reason, the samples and what exactly is wrong.
fn failing_by_reason(page: &mut String, checks: &CheckReport, by_reason: &ByReason) {
    let _ = writeln!(
        page,
        "<section class=\"card\" id=\"failing\"><h2>Failing samples by reason</h2>\
         <p class=\"hint\">{} of {} samples fail at least one detector.</p>",
        fmt_int(checks.failing_samples),
        fmt_int(checks.samples)
    );
    if by_reason.is_empty() {
        page.push_str("<p class=\"empty\">No sample fails a detector.</p></section>\n");
        return;
    }
    for (reason, (count, list)) in by_reason {
        let _ = write!(
            page,
            "<details class=\"reason\"><summary><span class=\"chip bad\">{reason}</span> {count} sample{s}</summary><ul>",
            count = fmt_int(*count),
            s = if *count == 1 { "" } else { "s" }
        );
        for (id, detail) in list {
            let _ = write!(
                page,
                "<li><a class=\"idlink\" href=\"#{}\">{}</a> {}</li>",
                anchor(id),
                esc(&truncate_chars(id, 40)),
                esc(detail)
            );
        }
        if *count > list.len() as u64 {
            let _ = write!(
                page,
                "<li class=\"muted\">… and {} more</li>",
                fmt_int(*count - list.len() as u64)
            );
        }
        page.push_str("</ul></details>\n");
    }
    page.push_str("</section>\n");
}

fn summary_cards(page: &mut String, stats: &DatasetStats) {
    page.push_str("<section class=\"cards\">\n");
    let mut card = |label: &str, value: String, note: String| {
        let _ = writeln!(
            page,
            "<div class=\"card stat\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
            esc(label),
            esc(&value),
            esc(&note)
        );
    };
    card(
        "Samples",
        fmt_int(stats.samples),
        format!("{} annotated", fmt_int(stats.annotated)),
    );
    let attempted = stats.samples + stats.errors;
    card(
        "Errors",
        fmt_int(stats.errors),
        if attempted == 0 {
            "no records".to_owned()
        } else {
            format!("{} of records attempted", pct(stats.errors, attempted))
        },
    );
    card(
        "Median length",
        format!(
            "{} / {}",
            fmt_int(stats.prompt_chars.median),
            fmt_int(stats.response_chars.median)
        ),
        "prompt / response chars".to_owned(),
    );
    card(
        "Sources",
        fmt_int(stats.sources.len() as u64),
        format!("{} categories", stats.categories.len()),
    );
    if let Some(turns) = &stats.turns {
        card(
            "Exchanges",
            format!("{} / {} / {}", turns.min, turns.mean, turns.max),
            format!(
                "min / mean / max per conversation · {} conversations",
                fmt_int(turns.conversations)
            ),
        );
    }
    if let Some(pairs) = &stats.pairs {
        card(
            "Pair margins",
            format!("{:+} / {:+}", pairs.marker_margin, pairs.word_margin),
            format!(
                "chosen − rejected: voice markers / words · chosen ahead in markers in {:.1}% of {} pairs",
                pairs.chosen_more_markers * 100.0,
                fmt_int(pairs.pairs)
            ),
        );
    }
    if stats.steps > 0 {
        card(
            "Steps",
            fmt_int(stats.steps),
            format!(
                "{} cached · {} failed",
                pct(stats.cached_steps, stats.steps),
                fmt_int(stats.failed_steps)
            ),
        );
    }
    match stats.tokens {
        Some(tokens) => card(
            "Tokens",
            format!(
                "{} / {}",
                fmt_compact(tokens.input),
                fmt_compact(tokens.output)
            ),
            format!("input / output · {} from cache", fmt_compact(tokens.cached)),
        ),
        None => card("Tokens", "—".to_owned(), "no usage recorded".to_owned()),
    }
    page.push_str("</section>\n");
}

fn checks_table(page: &mut String, checks: &CheckReport) {
    page.push_str(
        "<section class=\"card\"><h2>Checks</h2>\n<div class=\"table-scroll\"><table class=\"checks\">\
         <thead><tr><th>Status</th><th>Check</th><th>Result</th><th class=\"num\">Value</th><th class=\"num\">Threshold</th><th>Examples</th></tr></thead><tbody>\n",
    );
    for check in &checks.checks {
        let (class, label) = match (check.passed, check.skipped) {
            (_, true) => ("skip", "skipped"),
            (true, false) => ("pass", "pass"),
            (false, false) => ("fail", "fail"),
        };
        let mut examples = String::new();
        for id in &check.example_ids {
            let _ = write!(
                examples,
                "<a class=\"idlink\" href=\"#{}\">{}</a> ",
                anchor(id),
                esc(&truncate_chars(id, 40))
            );
        }
        let mut advice = if check.passed {
            String::new()
        } else {
            format!("<div class=\"advice\">{}</div>", esc(check.advice()))
        };
        for loosening in &check.loosened {
            let _ = write!(
                advice,
                "<div class=\"loosened\">{}</div>",
                esc(&loosening.to_string())
            );
        }
        let _ = writeln!(
            page,
            "<tr class=\"{class}\"><td><span class=\"pill {class}\">{label}</span></td><td class=\"name\">{name}</td>\
             <td>{message}{advice}</td><td class=\"num\" data-label=\"value\">{value}</td><td class=\"num\" data-label=\"threshold\">{cmp} {threshold}</td><td class=\"examples\">{examples}</td></tr>",
            name = esc(&check.name),
            message = esc(&check.message),
            value = if check.skipped {
                "—".to_owned()
            } else {
                show_value(check, check.value)
            },
            cmp = match check.comparison {
                Comparison::AtLeast => "≥",
                Comparison::AtMost => "≤",
            },
            threshold = show_value(check, check.threshold),
        );
    }
    page.push_str("</tbody></table></div></section>\n");
}

fn show_value(check: &CheckResult, x: f64) -> String {
    if x >= u64::MAX as f64 {
        "∞".to_owned()
    } else if matches!(
        check.name.as_str(),
        "volume"
            | "training_set"
            | "empty_responses"
            | "error_text"
            | "truncated"
            | "duplicate_ids"
            | "degeneration"
            | "contradiction"
            | "role_confusion"
            | "echo"
            | "surface_garbage"
            | "shape"
            | "same_answers"
            | "rejected_voice"
    ) {
        fmt_int(x as u64)
    } else if check.name == "prompt_diversity" {
        format!("{x:.3}")
    } else {
        format!("{:.1}%", x * 100.0)
    }
}

fn chart_card(page: &mut String, title: &str, subtitle: &str, body: &str) {
    let _ = writeln!(
        page,
        "<div class=\"card chart\"><h2>{}</h2><p class=\"hint\">{}</p>{body}</div>",
        esc(title),
        esc(subtitle)
    );
}

/// An SVG histogram of prompt (`prompt == true`) or response lengths.
fn length_chart(stats: &DatasetStats, prompt: bool) -> String {
    let lengths = if prompt {
        &stats.prompt_chars
    } else {
        &stats.response_chars
    };
    if stats.samples == 0 || lengths.histogram.is_empty() {
        return "<p class=\"empty\">No samples.</p>".to_owned();
    }
    let class = if prompt { "bar prompt" } else { "bar response" };
    let mut out = histogram_svg(
        &lengths.histogram,
        class,
        if prompt { "Prompt" } else { "Response" },
    );
    let _ = write!(
        out,
        "<dl class=\"quantiles\"><div><dt>min</dt><dd>{}</dd></div><div><dt>median</dt><dd>{}</dd></div>\
         <div><dt>p90</dt><dd>{}</dd></div><div><dt>max</dt><dd>{}</dd></div><div><dt>mean</dt><dd>{}</dd></div></dl>",
        fmt_int(lengths.min),
        fmt_int(lengths.median),
        fmt_int(lengths.p90),
        fmt_int(lengths.max),
        fmt_int(lengths.mean)
    );
    out
}

fn histogram_svg(buckets: &[Bucket], bar_class: &str, what: &str) -> String {
    const W: f64 = 560.0;
    const H: f64 = 240.0;
    const LEFT: f64 = 48.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 12.0;
    const BOTTOM: f64 = 44.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let y_max = nice_ceiling(max);
    let slot = plot_w / buckets.len() as f64;
    let gap = (slot * 0.12).min(4.0);

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"histogram\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{what} length histogram\" preserveAspectRatio=\"xMidYMid meet\">"
    );
    // Y grid and labels.
    for i in 0..=4u64 {
        let value = y_max * i / 4;
        let y = TOP + plot_h - plot_h * (value as f64 / y_max as f64);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            x2 = W - RIGHT,
            lx = LEFT - 6.0,
            ty = y + 4.0,
            label = fmt_compact(value)
        );
    }
    // Bars.
    for (i, bucket) in buckets.iter().enumerate() {
        let h = plot_h * (bucket.count as f64 / y_max as f64);
        let x = LEFT + slot * i as f64 + gap / 2.0;
        let range = match bucket.to {
            Some(to) => format!("{}–{}", fmt_int(bucket.from), fmt_int(to.saturating_sub(1))),
            None => format!("{}+", fmt_int(bucket.from)),
        };
        let _ = write!(
            svg,
            "<rect class=\"{bar_class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" rx=\"2\"><title>{range} chars: {count} samples</title></rect>",
            y = TOP + plot_h - h,
            w = (slot - gap).max(1.0),
            count = fmt_int(bucket.count),
        );
    }
    // X axis, with a label at every few bucket edges.
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y}\" y2=\"{y}\"/>",
        x2 = W - RIGHT,
        y = TOP + plot_h
    );
    let every = buckets.len().div_ceil(7).max(1);
    for (i, bucket) in buckets.iter().enumerate() {
        if i % every != 0 {
            continue;
        }
        let x = LEFT + slot * i as f64;
        let label = if bucket.to.is_none() {
            format!("{}+", fmt_compact(bucket.from))
        } else {
            fmt_compact(bucket.from)
        };
        let _ = write!(
            svg,
            "<line class=\"axis\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y0}\" y2=\"{y1}\"/><text class=\"tick\" x=\"{x:.1}\" y=\"{ty}\" text-anchor=\"middle\">{label}</text>",
            y0 = TOP + plot_h,
            y1 = TOP + plot_h + 4.0,
            ty = TOP + plot_h + 17.0
        );
    }
    let _ = write!(
        svg,
        "<text class=\"axis-label\" x=\"{x}\" y=\"{y}\" text-anchor=\"middle\">characters</text>\
         <text class=\"axis-label\" transform=\"translate(12 {ym}) rotate(-90)\" text-anchor=\"middle\">samples</text></svg>",
        x = LEFT + plot_w / 2.0,
        y = H - 6.0,
        ym = TOP + plot_h / 2.0
    );
    svg
}

/// Horizontal SVG bars for a count map: the largest [`TOP_BARS`] entries, then "other".
fn bar_list(map: &BTreeMap<String, u64>, total: u64, unit: &str) -> String {
    if map.is_empty() {
        return "<p class=\"empty\">None recorded.</p>".to_owned();
    }
    let mut entries: Vec<(String, u64)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if entries.len() > TOP_BARS {
        let rest: Vec<(String, u64)> = entries.split_off(TOP_BARS - 1);
        let sum = rest.iter().map(|(_, v)| v).sum();
        entries.push((format!("other ({} more)", rest.len()), sum));
    }
    const W: f64 = 560.0;
    const ROW: f64 = 26.0;
    const LABEL_W: f64 = 170.0;
    const VALUE_W: f64 = 110.0;
    let h = ROW * entries.len() as f64 + 4.0;
    let bar_w = W - LABEL_W - VALUE_W;
    let max = entries.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1);
    let mut svg = format!(
        "<svg class=\"bars\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"counts per {unit}\" preserveAspectRatio=\"xMinYMin meet\">"
    );
    for (i, (label, count)) in entries.iter().enumerate() {
        let y = 2.0 + ROW * i as f64;
        let w = (bar_w * (*count as f64 / max as f64)).max(2.0);
        let _ = write!(
            svg,
            "<g><title>{full}: {count} {unit} ({share})</title>\
             <text class=\"bar-label\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{short}</text>\
             <rect class=\"track\" x=\"{LABEL_W}\" y=\"{by:.1}\" width=\"{bar_w}\" height=\"16\" rx=\"3\"/>\
             <rect class=\"bar c{color}\" x=\"{LABEL_W}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"16\" rx=\"3\"/>\
             <text class=\"bar-value\" x=\"{vx}\" y=\"{ty:.1}\">{count} · {share}</text></g>",
            full = esc(label),
            short = esc(&truncate_chars(label, 24)),
            count = fmt_int(*count),
            share = pct(*count, total),
            lx = LABEL_W - 8.0,
            ty = y + 13.0,
            by = y + 1.0,
            vx = LABEL_W + bar_w + 8.0,
            color = i % 6,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn samples_section(page: &mut String, listed: &[(Sample, Verdict)], total: usize) {
    let sources: std::collections::BTreeSet<&str> =
        listed.iter().map(|(s, _)| s.source.as_str()).collect();
    let _ = write!(
        page,
        "<section class=\"card\" id=\"samples\"><h2>Samples</h2>\n<div class=\"filters\">\
         <input id=\"search\" type=\"search\" placeholder=\"Search text, id or source…\" aria-label=\"Search samples\" autocomplete=\"off\">\
         <select id=\"source-filter\" aria-label=\"Filter by source\"><option value=\"\">All sources</option>"
    );
    for source in &sources {
        let _ = write!(page, "<option value=\"{0}\">{0}</option>", esc(source));
    }
    let _ = writeln!(
        page,
        "</select><label class=\"toggle\"><input id=\"flagged-filter\" type=\"checkbox\"> flagged only</label>\
         <span id=\"count\" class=\"count\">{} shown</span></div>",
        listed.len()
    );
    let shown_in_order = listed.len().min(REPORT_SAMPLE_CAP);
    if total > shown_in_order {
        let _ = writeln!(
            page,
            "<p class=\"note\">Listing the first {} of {} samples{}. Use <code>cargo xtask sample</code> to look at others.</p>",
            fmt_int(shown_in_order as u64),
            fmt_int(total as u64),
            if listed.len() > shown_in_order {
                format!(", plus {} failing", listed.len() - shown_in_order)
            } else {
                String::new()
            }
        );
    }
    if listed.is_empty() {
        page.push_str("<p class=\"empty\">The dataset has no samples.</p>");
    }
    page.push_str("<div id=\"sample-list\">\n");
    let mut seen_anchor = HashSet::new();
    for (sample, verdict) in listed {
        // Duplicate ids share an anchor; only the first gets the id attribute.
        let anchor_id = anchor(&sample.id);
        let id_attr = if seen_anchor.insert(anchor_id.clone()) {
            format!(" id=\"{anchor_id}\"")
        } else {
            String::new()
        };
        let mut flags: Vec<Reason> = verdict.findings.iter().map(|f| f.reason).collect();
        flags.dedup();
        let _ = write!(
            page,
            "<details class=\"sample{flag_class}\"{id_attr} data-source=\"{source}\"><summary>\
             <span class=\"sid\">{id}</span><span class=\"chip\">{source}</span>",
            flag_class = if flags.is_empty() { "" } else { " flagged" },
            id = esc(&sample.id),
            source = esc(&sample.source),
        );
        if let Some(category) = &sample.category {
            let _ = write!(page, "<span class=\"chip cat\">{}</span>", esc(category));
        }
        for reason in &flags {
            let _ = write!(page, "<span class=\"chip bad\">{reason}</span>");
        }
        let _ = write!(
            page,
            "<span class=\"preview\">{}</span></summary>\n<div class=\"conversation\">",
            esc(&truncate_chars(
                &sample
                    .prompt()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                PREVIEW_CHARS
            ))
        );
        // A conversation turn by turn; in one of several exchanges each turn is numbered as the
        // findings name it (`turn 4`).
        let numbered = sample.pair.is_none() && sample.exchanges() > 1;
        for (index, message) in sample.messages.iter().enumerate() {
            let label = if numbered {
                format!("{} · turn {}", message.role, index + 1)
            } else {
                message.role.clone()
            };
            message_html(page, &message.role, &label, &message.content);
        }
        page.push_str("</div>");
        // A pair: the two answers side by side.
        if let Some(pair) = &sample.pair {
            page.push_str("<div class=\"pair\"><div class=\"answer chosen\">");
            message_html(page, "assistant", "chosen", &pair.chosen);
            page.push_str("</div><div class=\"answer rejected\">");
            message_html(page, "assistant", "rejected", &pair.rejected);
            page.push_str("</div></div>");
        }
        if !sample.steps.is_empty() {
            let _ = write!(
                page,
                "<details class=\"steps\"><summary>{} step{}</summary><ol>",
                sample.steps.len(),
                if sample.steps.len() == 1 { "" } else { "s" }
            );
            for step in &sample.steps {
                let mut flags = Vec::new();
                if let Some(reason) = &step.finish_reason {
                    flags.push(reason.as_str());
                }
                if step.cached {
                    flags.push("cached");
                }
                if step.success == Some(false) {
                    flags.push("failed");
                }
                let _ = write!(
                    page,
                    "<li><div class=\"step-head\"><b>{model}</b> <span class=\"muted\">{flags}</span></div>\
                     <div class=\"step-io\"><span class=\"muted\">prompt</span> {prompt}</div>\
                     <div class=\"step-io\"><span class=\"muted\">response</span> {response}</div>{error}</li>",
                    model = esc(&step.model),
                    flags = esc(&flags.join(" · ")),
                    prompt = esc(&truncate_chars(&step.prompt, 400)),
                    response = esc(&truncate_chars(&step.response, 400)),
                    error = step
                        .error
                        .as_ref()
                        .map(|e| format!("<div class=\"step-io err\">{}</div>", esc(e)))
                        .unwrap_or_default(),
                );
            }
            page.push_str("</ol></details>");
        }
        if !verdict.findings.is_empty() {
            page.push_str("<ul class=\"findings\">");
            for finding in &verdict.findings {
                let _ = write!(page, "<li>{}</li>", esc(&finding.to_string()));
            }
            page.push_str("</ul>");
        }
        let markers = if verdict.markers.is_empty() {
            "no voice marker".to_owned()
        } else {
            format!("markers: {}", verdict.markers.join(", "))
        };
        let _ = writeln!(
            page,
            "<div class=\"meta\">{} · line {}</div></details>",
            esc(&markers),
            sample.line
        );
    }
    page.push_str(
        "</div><p id=\"no-match\" class=\"empty\" hidden>No sample matches.</p></section>\n",
    );
}

/// One message bubble: `role` picks its style, `label` is shown above it.
fn message_html(page: &mut String, role: &str, label: &str, text: &str) {
    let role = match role {
        "system" | "user" | "assistant" => role,
        _ => "other",
    };
    let _ = write!(
        page,
        "<div class=\"msg {role}\"><div class=\"role\">{label}</div><div class=\"bubble\">{text}</div></div>",
        label = esc(label),
        text = esc(text)
    );
}

/// The fragment id of a sample: `s-` and 12 hex digits of `sha256(id)`.
fn anchor(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("s-{}", hex::encode(&digest[..6]))
}

/// Escape text for HTML content and quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// 1234567 → "1,234,567".
fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1234567 → "1.2M", 12345 → "12.3k", 999 → "999".
fn fmt_compact(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => trim_decimal(n as f64 / 1e3, "k"),
        1_000_000..=999_999_999 => trim_decimal(n as f64 / 1e6, "M"),
        _ => trim_decimal(n as f64 / 1e9, "B"),
    }
}

fn trim_decimal(x: f64, suffix: &str) -> String {
    let s = if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    };
    format!("{}{suffix}", s.strip_suffix(".0").unwrap_or(&s))
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".to_owned();
    }
    let p = part as f64 * 100.0 / whole as f64;
    if p > 0.0 && p < 0.1 {
        "<0.1%".to_owned()
    } else {
        format!("{p:.1}%")
    }
}

/// A round number (1, 2, 2.5 or 5 × 10^k) at least `n`, for a chart's y axis with 4 gridlines.
fn nice_ceiling(n: u64) -> u64 {
    let mut scale = 1u64;
    loop {
        for step in [4, 8, 10, 20, 40] {
            let candidate = step * scale;
            if candidate >= n {
                return candidate.max(4);
            }
        }
        scale = scale.saturating_mul(10);
    }
}

const CSS: &str = r#"
:root{--bg:#f5f6f8;--card:#fff;--text:#1d2733;--muted:#647282;--line:#e3e7ec;--accent:#3f6fa3;
--pass:#2e7d4f;--pass-bg:#e4f3ea;--fail:#b83232;--fail-bg:#fbe7e7;--skip:#6b7682;--skip-bg:#eceff2;
--user:#e8f0fb;--assistant:#f2f4f6;--system:#fff6e0;--c0:#4c78a8;--c1:#72b7b2;--c2:#e4a853;--c3:#b279a2;--c4:#8fb35d;--c5:#d97a6c;
color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#14181d;--card:#1c2228;--text:#e3e8ee;--muted:#98a4b1;--line:#2d353e;--accent:#7fa9d8;
--pass:#6cc58f;--pass-bg:#1f3a2a;--fail:#ef8080;--fail-bg:#45242a;--skip:#a3adb8;--skip-bg:#2a3038;--user:#213349;--assistant:#262d35;--system:#3a3322}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding:0 20px}
header.top{background:var(--card);border-bottom:1px solid var(--line);padding:22px 0 14px;margin-bottom:22px}
.title{display:flex;align-items:center;gap:14px;flex-wrap:wrap}
h1{margin:0;font-size:26px;font-weight:650;letter-spacing:-.01em;word-break:break-all}
h2{margin:0 0 4px;font-size:16px;font-weight:620}
.sub{margin:6px 0 0;color:var(--muted)}
.badge{font-size:13px;font-weight:700;letter-spacing:.06em;padding:4px 12px;border-radius:999px}
.badge.pass{background:var(--pass-bg);color:var(--pass)}.badge.fail{background:var(--fail-bg);color:var(--fail)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin-bottom:18px;box-shadow:0 1px 2px rgba(0,0,0,.03)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:14px;margin-bottom:18px}
.cards .card{margin:0}
.stat .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
.stat .value{font-size:22px;font-weight:650;margin:2px 0;font-variant-numeric:tabular-nums;white-space:nowrap}
.stat .note{color:var(--muted);font-size:13px}
.table-scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;margin-top:8px}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;white-space:nowrap}
tr.fail td{background:color-mix(in srgb,var(--fail-bg) 45%,transparent)}
.pill{display:inline-block;min-width:58px;text-align:center;font-size:12px;font-weight:650;padding:2px 8px;border-radius:999px;text-transform:uppercase;letter-spacing:.04em}
.pill.pass{background:var(--pass-bg);color:var(--pass)}.pill.fail{background:var(--fail-bg);color:var(--fail)}.pill.skip{background:var(--skip-bg);color:var(--skip)}
.advice{color:var(--muted);font-size:13px;margin-top:3px}
.examples{max-width:260px}
a{color:var(--accent)}
.idlink{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;text-decoration:none;background:var(--skip-bg);padding:1px 6px;border-radius:4px;margin:0 2px 4px 0;display:inline-block;word-break:break-all}
.idlink:hover{text-decoration:underline}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:18px;margin-bottom:18px}
.grid .card{margin:0}
@media (max-width:520px){.grid{grid-template-columns:1fr}}
.hint{margin:0 0 8px;color:var(--muted);font-size:13px}
svg{width:100%;height:auto;display:block}
svg text{fill:var(--muted);font-size:11px;font-family:inherit}
svg .axis-label{font-size:11px}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis{stroke:var(--muted);stroke-width:1}
svg .bar.prompt{fill:var(--c0)}svg .bar.response{fill:var(--c1)}
svg rect.bar:hover{opacity:.8}
svg .track{fill:var(--bg)}
svg .bar-label{fill:var(--text);font-size:12px}svg .bar-value{font-size:12px}
.c0{fill:var(--c0)}.c1{fill:var(--c1)}.c2{fill:var(--c2)}.c3{fill:var(--c3)}.c4{fill:var(--c4)}.c5{fill:var(--c5)}
.quantiles{display:flex;gap:18px;flex-wrap:wrap;margin:8px 0 0}
.quantiles div{display:flex;gap:6px;align-items:baseline}
.quantiles dt{color:var(--muted);font-size:12px}.quantiles dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
.empty{color:var(--muted);font-style:italic}
.note{color:var(--muted);font-size:13px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;background:var(--skip-bg);padding:1px 5px;border-radius:4px}
.filters{display:flex;gap:10px;align-items:center;flex-wrap:wrap;margin:10px 0 12px}
.filters input[type=search]{flex:1 1 280px;padding:8px 12px;border:1px solid var(--line);border-radius:8px;font:inherit;background:var(--bg);color:var(--text)}
.filters select{padding:7px 10px;border:1px solid var(--line);border-radius:8px;font:inherit;background:var(--bg);color:var(--text);max-width:220px}
.filters input:focus,.filters select:focus{outline:2px solid var(--accent);outline-offset:1px}
.toggle{color:var(--muted);font-size:14px;display:flex;align-items:center;gap:5px}
.count{color:var(--muted);font-size:13px;margin-left:auto}
details.sample{border:1px solid var(--line);border-radius:8px;margin-bottom:8px;background:var(--card)}
details.sample.flagged{border-left:3px solid var(--fail)}
details.sample:target,details.sample.hit{box-shadow:0 0 0 2px var(--accent)}
details.sample>summary{cursor:pointer;padding:9px 12px;display:flex;gap:8px;align-items:center;list-style:none;min-width:0}
details.sample>summary::-webkit-details-marker{display:none}
details.sample>summary::before{content:"▸";color:var(--muted);transition:transform .15s}
details.sample[open]>summary::before{transform:rotate(90deg)}
.sid{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;font-weight:600;white-space:nowrap;max-width:220px;overflow:hidden;text-overflow:ellipsis}
.chip{font-size:12px;padding:1px 8px;border-radius:999px;background:var(--skip-bg);color:var(--muted);white-space:nowrap}
.chip.cat{background:var(--user)}.chip.bad{background:var(--fail-bg);color:var(--fail)}
.preview{color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0;flex:1}
.conversation{padding:6px 14px 4px;display:flex;flex-direction:column;gap:10px}
.msg{display:flex;flex-direction:column;max-width:82%}
.msg .role{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);margin:0 4px 2px}
.bubble{padding:9px 13px;border-radius:14px;white-space:pre-wrap;overflow-wrap:anywhere}
.msg.user{align-self:flex-end;align-items:flex-end}.msg.user .bubble{background:var(--user);border-bottom-right-radius:4px}
.msg.assistant{align-self:flex-start}.msg.assistant .bubble{background:var(--assistant);border-bottom-left-radius:4px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;padding:4px 14px 8px}
.pair .msg{max-width:100%}.pair .answer.chosen .role{color:var(--pass)}.pair .answer.rejected .role{color:var(--fail)}
.pair .answer.rejected .bubble{background:var(--skip-bg)}
.msg.system,.msg.other{align-self:center;max-width:92%;align-items:center}.msg.system .bubble,.msg.other .bubble{background:var(--system);font-size:13px;border-radius:8px}
details.steps{margin:8px 14px;font-size:13px}
details.steps>summary{cursor:pointer;color:var(--accent)}
details.steps ol{padding-left:22px;margin:6px 0}
details.steps li{margin-bottom:8px}
.step-io{white-space:pre-wrap;overflow-wrap:anywhere;margin-left:4px}
.step-io.err{color:var(--fail)}
ul.findings{margin:4px 14px 8px;padding-left:20px;color:var(--fail);font-size:13px}
details.reason{margin:6px 0}details.reason>summary{cursor:pointer}details.reason ul{margin:6px 0 10px;padding-left:20px;font-size:13px}
.loosened{color:var(--skip);font-size:13px;margin-top:3px;font-style:italic}
.muted{color:var(--muted)}
.meta{color:var(--muted);font-size:12px;padding:0 14px 10px;text-align:right}
@media (max-width:700px){
table.checks thead{display:none}
table.checks tr{display:grid;grid-template-columns:auto auto 1fr;gap:2px 10px;padding:10px 4px;border-bottom:1px solid var(--line)}
table.checks td,table.checks tr.fail td{border:0;padding:0;background:none}
table.checks tr.fail{background:color-mix(in srgb,var(--fail-bg) 45%,transparent)}
table.checks td:nth-child(3){grid-column:1/-1}
table.checks td.num{text-align:left;color:var(--muted);font-size:13px}
table.checks td.num::before{content:attr(data-label) " "}
table.checks td.examples{grid-column:1/-1;max-width:none}
.pair{grid-template-columns:1fr}
.stat .value{font-size:19px}
.msg{max-width:94%}
}
footer{color:var(--muted);font-size:12px;padding:10px 20px 40px}
"#;

const JS: &str = r#"
(function(){
  var list=document.getElementById('sample-list'); if(!list) return;
  var items=Array.prototype.slice.call(list.querySelectorAll('details.sample'));
  var search=document.getElementById('search'), source=document.getElementById('source-filter'),
      flagged=document.getElementById('flagged-filter'), count=document.getElementById('count'),
      none=document.getElementById('no-match');
  var texts=items.map(function(el){return el.textContent.toLowerCase();});
  function apply(){
    var q=search.value.trim().toLowerCase(), s=source.value, f=flagged.checked, shown=0;
    var terms=q?q.split(/\s+/):[];
    items.forEach(function(el,i){
      var ok=(!s||el.getAttribute('data-source')===s)&&(!f||el.classList.contains('flagged'))&&
        terms.every(function(t){return texts[i].indexOf(t)>=0;});
      el.hidden=!ok; if(ok) shown++;
    });
    count.textContent=shown+' shown'; none.hidden=shown>0;
  }
  search.addEventListener('input',apply); source.addEventListener('change',apply); flagged.addEventListener('change',apply);
  function reveal(){
    var id=decodeURIComponent(location.hash.slice(1)); if(!id) return;
    var el=document.getElementById(id); if(!el||!el.classList.contains('sample')) return;
    if(el.hidden){search.value='';source.value='';flagged.checked=false;apply();}
    items.forEach(function(x){x.classList.remove('hit');});
    el.open=true; el.classList.add('hit'); el.scrollIntoView({block:'center'});
  }
  window.addEventListener('hashchange',reveal); reveal();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_int(1234567), "1,234,567");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_compact(12_345), "12.3k");
        assert_eq!(fmt_compact(2_000_000), "2M");
        assert_eq!(nice_ceiling(7), 8);
        assert_eq!(nice_ceiling(33), 40);
        assert_eq!(nice_ceiling(101), 200);
    }
}
