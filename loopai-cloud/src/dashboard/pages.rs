//! The dashboard's pages, rendered from the query results: pure functions from data to
//! HTML, every value escaped.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde_json::Value;

use super::chart::{line_chart, Series, YAxis};
use super::html::{ago, count, esc, page, pct};
use crate::http::percent_encode;
use crate::query::{DailyVersionStats, DeploymentStatus, RolloutRecord, TaskSummary};

/// Days shown by the task page's charts (ending at the task's last day with data).
pub(crate) const CHART_DAYS: i64 = 30;
/// Versions drawn by the task page's charts (the newest ones).
pub(crate) const CHART_VERSIONS: usize = 10;
/// Failing examples shown per escalation.
const EXAMPLES_SHOWN: usize = 10;

fn badge(health: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(health))
}

fn task_link(task: &str) -> String {
    format!(
        "<a href=\"/tasks/{}\">{}</a>",
        percent_encode(task),
        esc(task)
    )
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn num_at(v: &Value, path: &str) -> Option<u64> {
    v.pointer(path).and_then(Value::as_u64)
}

/// Compact JSON of a value (an input, an answer), escaped.
fn json_text(v: &Value) -> String {
    esc(&serde_json::to_string(v).unwrap_or_default())
}

fn rollout_cell(d: &DeploymentStatus) -> String {
    match d
        .heartbeat
        .as_ref()
        .and_then(|h| h.get("rollout"))
        .filter(|r| r.is_object())
    {
        Some(r) => format!(
            "{} v{}→v{} stage {} ({})",
            esc(str_at(r, "state")),
            num_at(r, "/stable_version").unwrap_or(0),
            num_at(r, "/canary_version").unwrap_or(0),
            num_at(r, "/stage").unwrap_or(0),
            pct(r.get("fraction").and_then(Value::as_f64))
        ),
        None => "<span class=\"muted\">none</span>".to_owned(),
    }
}

fn deployments_table(out: &mut String, deployments: &[DeploymentStatus], with_task: bool) {
    if deployments.is_empty() {
        out.push_str("<p class=\"muted\">No deployment has reported yet.</p>");
        return;
    }
    out.push_str("<table><thead><tr><th>Deployment</th>");
    if with_task {
        out.push_str("<th>Task</th>");
    }
    out.push_str(
        "<th class=\"num\">Version</th><th>Rollout</th><th>Last seen</th><th>Health</th>\
         <th class=\"num\">Queues (log / oracle / spool)</th><th>Last error</th></tr></thead><tbody>",
    );
    for d in deployments {
        let hb = d.heartbeat.as_ref();
        let q = |k: &str| {
            hb.and_then(|h| num_at(h, &format!("/queues/{k}")))
                .map_or("–".to_owned(), count)
        };
        let _ = write!(out, "<tr><td>{}</td>", esc(&d.deployment_id));
        if with_task {
            let _ = write!(out, "<td>{}</td>", task_link(&d.task_id));
        }
        let _ = write!(
            out,
            "<td class=\"num\">{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td>\
             <td class=\"num\">{} / {} / {}</td><td class=\"error\">{}</td></tr>",
            d.active_version.map_or("–".to_owned(), |v| format!("v{v}")),
            rollout_cell(d),
            esc(&d.last_seen),
            ago(d.seconds_since_seen),
            badge(d.health),
            q("dataset_pending"),
            q("validation_queued"),
            q("telemetry_spooled"),
            hb.and_then(|h| h.get("last_error"))
                .and_then(Value::as_str)
                .map(esc)
                .unwrap_or_default()
        );
    }
    out.push_str("</tbody></table>");
}

/// `/`: the fleet overview.
pub(crate) fn fleet(
    tasks: &[TaskSummary],
    deployments: &[DeploymentStatus],
    signed_in: bool,
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let health = |h: &str| deployments.iter().filter(|d| d.health == h).count();
    let _ = write!(
        out,
        "<h1>Fleet</h1><div class=\"stats\">\
         <div class=\"stat\"><b>{}</b><span>tasks</span></div>\
         <div class=\"stat\"><b>{}</b><span>deployments</span></div>\
         <div class=\"stat\"><b>{}</b><span>healthy</span></div>\
         <div class=\"stat\"><b>{}</b><span>degraded</span></div>\
         <div class=\"stat\"><b>{}</b><span>silent</span></div></div>",
        tasks.len(),
        deployments.len(),
        health("ok"),
        health("degraded"),
        health("silent")
    );
    out.push_str("<h2>Deployments</h2><section class=\"card\">");
    deployments_table(&mut out, deployments, true);
    out.push_str("</section><h2>Tasks</h2><section class=\"card\">");
    if tasks.is_empty() {
        out.push_str("<p class=\"muted\">No telemetry received yet.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Task</th><th>Versions</th><th class=\"num\">Published</th>\
             <th class=\"num\">Executions</th><th class=\"num\">Validations</th>\
             <th class=\"num\">Match rate</th><th class=\"num\">Deployments</th>\
             <th class=\"num\">Escalations</th><th>Days</th></tr></thead><tbody>",
        );
        for t in tasks {
            let versions: Vec<String> = t.versions.iter().map(|v| format!("v{v}")).collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"muted\">{} – {}</td></tr>",
                task_link(&t.task_id),
                esc(&versions.join(", ")),
                t.published_version
                    .map_or("–".to_owned(), |v| format!("v{v}")),
                count(t.executions),
                count(t.validations),
                pct(t.match_rate),
                t.deployments,
                t.escalations,
                esc(t.first_day.as_deref().unwrap_or("")),
                esc(t.last_day.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    page("Fleet", &out, signed_in)
}

/// The days of the charts: every calendar day from `from` to `to` (both `YYYY-MM-DD`).
fn day_range(from: &str, to: &str) -> Vec<String> {
    let (Some(mut d), Some(end)) = (loopai_core::parse_day(from), loopai_core::parse_day(to))
    else {
        return Vec::new();
    };
    let mut days = Vec::new();
    while d <= end && days.len() < 400 {
        days.push(loopai_core::day_string(d));
        match d.next_day() {
            Some(next) => d = next,
            None => break,
        }
    }
    days
}

/// The first day shown by the charts for a task whose last day with data is `last`.
pub(crate) fn chart_start(last: &str) -> Option<String> {
    let end = loopai_core::parse_day(last)?;
    let start = end.checked_sub(time::Duration::days(CHART_DAYS - 1))?;
    Some(loopai_core::day_string(start))
}

/// Everything the task page shows.
pub(crate) struct TaskPage<'a> {
    pub(crate) summary: &'a TaskSummary,
    /// The chart window's rows (see [`chart_start`]).
    pub(crate) daily: &'a [DailyVersionStats],
    pub(crate) rollouts: &'a [RolloutRecord],
    pub(crate) improvements: &'a [Value],
    pub(crate) escalations: &'a [Value],
    pub(crate) deployments: &'a [DeploymentStatus],
}

/// `/tasks/{task}`.
pub(crate) fn task(p: &TaskPage<'_>, signed_in: bool) -> String {
    let t = p.summary;
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<h1>Task {}</h1><div class=\"stats\">\
         <div class=\"stat\"><b>{}</b><span>executions</span></div>\
         <div class=\"stat\"><b>{}</b><span>match rate (all time)</span></div>\
         <div class=\"stat\"><b>{}</b><span>versions with telemetry</span></div>\
         <div class=\"stat\"><b>{}</b><span>published version</span></div>\
         <div class=\"stat\"><b>{}</b><span>deployments</span></div>\
         <div class=\"stat\"><b>{}</b><span>escalations</span></div></div>",
        esc(&t.task_id),
        count(t.executions),
        pct(t.match_rate),
        t.versions.len(),
        t.published_version
            .map_or("–".to_owned(), |v| format!("v{v}")),
        t.deployments,
        t.escalations
    );
    // Charts: the window's days, the newest versions.
    let days = match (p.daily.first(), p.daily.last()) {
        (Some(first), Some(last)) => day_range(&first.day, &last.day),
        _ => Vec::new(),
    };
    let versions: BTreeSet<u32> = p.daily.iter().map(|r| r.version).collect();
    let shown: Vec<u32> = versions
        .iter()
        .rev()
        .take(CHART_VERSIONS)
        .rev()
        .copied()
        .collect();
    let series = |value: &dyn Fn(&DailyVersionStats) -> Option<f64>| -> Vec<Series> {
        shown
            .iter()
            .map(|&v| Series {
                label: format!("v{v}"),
                points: days
                    .iter()
                    .map(|day| {
                        p.daily
                            .iter()
                            .find(|r| r.version == v && &r.day == day)
                            .and_then(value)
                    })
                    .collect(),
            })
            .collect()
    };
    if days.is_empty() {
        out.push_str("<h2>Match rate and volume</h2><section class=\"card\"><p class=\"muted\">No daily figures yet.</p></section>");
    } else {
        let _ = write!(
            out,
            "<h2>Match rate per version (validations against the oracle, {} to {})</h2><section class=\"card\">{}</section>\
             <h2>Executions per version and day</h2><section class=\"card\">{}</section>",
            esc(&days[0]),
            esc(&days[days.len() - 1]),
            line_chart("match rate per version and day", &days, &series(&|r| r.match_rate), YAxis::Percent),
            line_chart(
                "executions per version and day",
                &days,
                &series(&|r| Some(r.executions as f64)),
                YAxis::Count
            )
        );
        if versions.len() > shown.len() {
            let _ = write!(
                out,
                "<p class=\"muted\">The charts show the newest {} of {} versions.</p>",
                shown.len(),
                versions.len()
            );
        }
    }
    out.push_str("<h2>Current rollout</h2><section class=\"card\">");
    let rolling: Vec<&DeploymentStatus> = p
        .deployments
        .iter()
        .filter(|d| {
            d.heartbeat
                .as_ref()
                .and_then(|h| h.get("rollout"))
                .is_some_and(Value::is_object)
        })
        .collect();
    if rolling.is_empty() {
        out.push_str("<p class=\"muted\">No deployment reports a rollout.</p>");
    } else {
        out.push_str("<table><thead><tr><th>Deployment</th><th>Rollout</th><th>Last seen</th></tr></thead><tbody>");
        for d in rolling {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.deployment_id),
                rollout_cell(d),
                ago(d.seconds_since_seen)
            );
        }
        out.push_str("</tbody></table>");
    }
    if !p.rollouts.is_empty() {
        out.push_str(
            "<h3>Rollout decisions</h3><table><thead><tr><th>At</th><th>Deployment</th><th>Event</th>\
             <th>Stable → canary</th><th class=\"num\">Stage</th><th class=\"num\">Canary share</th>\
             <th>Reason</th></tr></thead><tbody>",
        );
        for r in p.rollouts {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>v{} → v{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&r.at),
                esc(r.deployment_id.as_deref().unwrap_or("")),
                esc(&r.kind),
                r.stable_version,
                r.canary_version,
                r.stage,
                pct(Some(r.fraction)),
                esc(&r.reason)
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section><h2>Improvement history</h2><section class=\"card\">");
    if p.improvements.is_empty() {
        out.push_str("<p class=\"muted\">No improvement attempt.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>At</th><th class=\"num\">From</th><th class=\"num\">Failure rate</th>\
             <th class=\"num\">Validations</th><th class=\"num\">Published</th><th>Outcome</th>\
             <th>Reason</th></tr></thead><tbody>",
        );
        for a in p.improvements {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"num\">v{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(str_at(a, "at")),
                num_at(a, "/from_version").unwrap_or(0),
                pct(a.get("failure_rate").and_then(Value::as_f64)),
                num_at(a, "/samples").map_or("–".to_owned(), count),
                num_at(a, "/version").map_or("–".to_owned(), |v| format!("v{v}")),
                esc(str_at(a, "outcome")),
                esc(str_at(a, "reason"))
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section><h2>Escalations to a human</h2><section class=\"card\">");
    if p.escalations.is_empty() {
        out.push_str("<p class=\"muted\">No escalation.</p>");
    }
    for e in p.escalations {
        let examples: &[Value] = e
            .get("failing_examples")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let _ = write!(
            out,
            "<h3>Escalated {} after {} unsuccessful attempts</h3>\
             <p class=\"muted\">Specification sha256 {}; {} failing examples, the first {} below.</p>\
             <table><thead><tr><th>Input</th><th>Oracle answer</th></tr></thead><tbody>",
            esc(str_at(e, "escalated_at")),
            num_at(e, "/consecutive_unsuccessful_attempts").unwrap_or(0),
            esc(str_at(e, "spec_sha256")),
            examples.len(),
            examples.len().min(EXAMPLES_SHOWN)
        );
        for x in examples.iter().take(EXAMPLES_SHOWN) {
            let _ = write!(
                out,
                "<tr><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
                json_text(x.get("input").unwrap_or(&Value::Null)),
                json_text(x.get("output").unwrap_or(&Value::Null))
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section><h2>Deployments</h2><section class=\"card\">");
    deployments_table(&mut out, p.deployments, false);
    out.push_str("</section>");
    page(&format!("Task {}", t.task_id), &out, signed_in)
}

/// `/login`: the sign-in form, with an error message when the last attempt failed.
pub(crate) fn login(error: Option<&str>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<form class=\"login\" method=\"post\" action=\"/login\"><h1>Sign in</h1>\
         <p class=\"muted\">Use a <code>viewer</code> or <code>publisher</code> API key from the server's keys file.</p>\
         {}<label for=\"key\">API key</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
        error.map(|e| format!("<p class=\"error\">{}</p>", esc(e))).unwrap_or_default()
    );
    page("Sign in", &out, false)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn summary(task: &str) -> TaskSummary {
        TaskSummary {
            task_id: task.to_owned(),
            versions: vec![1, 2],
            published_version: Some(2),
            first_day: Some("2026-11-01".into()),
            last_day: Some("2026-11-03".into()),
            executions: 1200,
            validations: 100,
            matches: 90,
            match_rate: Some(0.9),
            deployments: 1,
            escalations: 1,
        }
    }

    fn row(day: &str, version: u32, rate: f64) -> DailyVersionStats {
        DailyVersionStats {
            day: day.into(),
            version,
            executions: 100,
            errors: 0,
            abstains: 0,
            sampled: 10,
            validations: 10,
            matches: (rate * 10.0) as u64,
            match_rate: Some(rate),
            latency_ms: None,
            oracle_cost: 0.1,
            batches: 1,
        }
    }

    #[test]
    fn every_outside_value_is_escaped_on_the_task_page() {
        let evil = "<img src=x onerror=alert(1)>";
        let deployment = DeploymentStatus {
            deployment_id: evil.into(),
            task_id: "spam".into(),
            health: "degraded",
            last_seen: evil.into(),
            seconds_since_seen: 3.0,
            heartbeat: Some(
                json!({"last_error": evil, "rollout": {"state": evil, "stable_version": 1,
                "canary_version": 2, "stage": 0, "fraction": 0.05}}),
            ),
            active_version: Some(2),
        };
        let rollout = RolloutRecord {
            deployment_id: Some(evil.into()),
            at: evil.into(),
            kind: evil.into(),
            stable_version: 1,
            canary_version: 2,
            stage: 0,
            fraction: 0.05,
            reason: evil.into(),
        };
        let html = task(
            &TaskPage {
                summary: &summary(evil),
                daily: &[row("2026-11-01", 1, 0.9), row("2026-11-03", 2, 0.95)],
                rollouts: &[rollout],
                improvements: &[
                    json!({"at": evil, "from_version": 1, "outcome": evil, "reason": evil}),
                ],
                escalations: &[json!({"escalated_at": evil, "spec_sha256": evil,
                    "failing_examples": [{"input": {"text": evil}, "output": evil}]})],
                deployments: std::slice::from_ref(&deployment),
            },
            true,
        );
        assert!(!html.contains("<img"), "unescaped markup in the task page");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        // Every day of the window is on the axis, the missing one included.
        assert!(html.contains(">11-02</text>"));
        let fleet_html = fleet(&[summary(evil)], &[deployment], false);
        assert!(
            !fleet_html.contains("<img"),
            "unescaped markup in the fleet page"
        );
        // Links percent-encode the task.
        assert!(fleet_html.contains("href=\"/tasks/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E\""));
        assert!(!login(Some(evil)).contains("<img"));
    }

    #[test]
    fn chart_window_is_thirty_days_ending_at_the_last_day() {
        assert_eq!(chart_start("2026-11-30").as_deref(), Some("2026-11-01"));
        assert_eq!(day_range("2026-11-29", "2026-12-02").len(), 4);
        assert!(day_range("x", "2026-12-02").is_empty());
    }
}
