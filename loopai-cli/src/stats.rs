//! `loopai stats`: the daily statistics of a task's dataset.

use std::io::Write;
use std::process::ExitCode;

use loopai_core::{Clock, DailyStats, DatasetReader, Error, SystemClock, Timestamp};

use crate::TaskArgs;

const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// How many UTC days to show, ending today.
    #[arg(long, default_value_t = 7, value_name = "N")]
    days: u32,
    /// Print the statistics as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Recompute each day's statistics from the JSONL files and rewrite its
    /// daily-stats file first.
    #[arg(long)]
    rebuild: bool,
}

pub(crate) fn run(args: StatsArgs) -> Result<ExitCode, Error> {
    loopai_core::validate_task_id(&args.task.task)?;
    // Encrypted logs and analytics (`storage.encryption`) are read with the data dir's keys
    // (and `--rebuild` writes the analytics sealed, as the runtime does).
    let config = loopai_core::DeploymentConfig::load_for_data_dir(&args.task.data_dir)?;
    let reader = DatasetReader::new(&args.task.data_dir, &args.task.task).with_config(&config)?;
    if !reader.layout().root().exists() {
        // No dataset: fine for an installed task that never ran, an error (naming the
        // data dir, the tasks there and the closest) for a data dir or task that does not
        // exist.
        loopai_core::ArtifactStore::open_existing(&args.task.data_dir, &args.task.task)?;
    }
    let now = Timestamp(SystemClock.now_millis());
    let today = now.day();
    if args.rebuild && args.days > 0 {
        let span_ms = (i64::from(args.days) - 1).saturating_mul(MS_PER_DAY);
        let from = Timestamp(now.millis().saturating_sub(span_ms)).day();
        let mut days = reader.execution_days()?;
        days.extend(reader.validation_days()?);
        days.sort();
        days.dedup();
        for day in days.into_iter().filter(|d| *d >= from && *d <= today) {
            reader.rebuild_stats(day, now)?;
        }
    }
    let stats = reader.stats(args.days, today)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write_err = |e: std::io::Error| Error::io("stdout", e);
    if args.json {
        // A gateway task: {"days": [...], "gateway": {...}} (the figures of `tasks list
        // --json`); any other task: the list of days.
        match gateway_stats(&args)? {
            Some(gateway) => serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({"days": &stats, "gateway": gateway}),
            ),
            None => serde_json::to_writer_pretty(&mut out, &stats),
        }
        .map_err(|e| write_err(e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
        if stats.is_empty() {
            eprintln!("{}", no_data(&reader, &args));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let gateway = gateway_figures(&args)?;
    if stats.is_empty() {
        writeln!(out, "{}", no_data(&reader, &args)).map_err(write_err)?;
    } else {
        out.write_all(table(&args.task.task, args.days, &stats).as_bytes())
            .map_err(write_err)?;
    }
    if let Some(block) = gateway {
        out.write_all(block.as_bytes()).map_err(write_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The gateway figures of the task, when it is a gateway task (it has a stored spec).
fn gateway_stats(args: &StatsArgs) -> Result<Option<loopai_gateway::TaskStats>, Error> {
    let dir = &args.task.data_dir;
    if !loopai_gateway::gateway_tasks(dir)?.contains(&args.task.task) {
        return Ok(None);
    }
    let config = loopai_core::DeploymentConfig::load_for_data_dir(dir)?;
    let all = loopai_gateway::summarize(dir, Some(&config))?;
    Ok(all.into_iter().find(|t| t.task == args.task.task))
}

/// The gateway figures of the task as the block under the table.
fn gateway_figures(args: &StatsArgs) -> Result<Option<String>, Error> {
    Ok(gateway_stats(args)?
        .as_ref()
        .map(crate::tasks::gateway_block))
}

fn no_data(reader: &DatasetReader, args: &StatsArgs) -> String {
    format!(
        "no data for task {} in the last {} day(s) under {}",
        args.task.task,
        args.days,
        reader.layout().root().display()
    )
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.3}")
    } else if x < 1000.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// `a 60.0%, b 40.0%` for the `top` largest counts, then `+N more`.
fn shares<'a>(
    counts: impl Iterator<Item = (&'a String, &'a u64)>,
    total: u64,
    top: usize,
) -> String {
    let mut v: Vec<(&String, u64)> = counts.map(|(k, n)| (k, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = v
        .iter()
        .take(top)
        .map(|(k, n)| format!("{k} {}", pct(*n as f64 / total.max(1) as f64)))
        .collect();
    if v.len() > top {
        parts.push(format!("+{} more", v.len() - top));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

fn table(task: &str, days: u32, stats: &[DailyStats]) -> String {
    let rows: Vec<[String; 9]> = stats
        .iter()
        .map(|s| {
            [
                s.date.clone(),
                s.total.to_string(),
                pct(s.success_rate),
                ms(s.latency_ms.p50),
                ms(s.latency_ms.p95),
                ms(s.latency_ms.p99),
                s.validations.match_rate.map_or_else(|| "-".to_owned(), pct),
                shares(s.output_distribution.iter(), s.total, 3),
                shares(s.versions.iter(), s.total, 3),
            ]
        })
        .collect();
    let header = [
        "date", "total", "success", "p50 ms", "p95 ms", "p99 ms", "match", "outputs", "versions",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            // Text columns left-aligned, numbers right-aligned.
            if i == 0 || i >= 7 {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            }
            if i + 1 < cells.len() {
                s.push_str("  ");
            }
        }
        s.push('\n');
        s
    };
    let mut out = format!(
        "task {task}: {} of the last {days} day(s) with data (UTC)\n\n",
        stats.len()
    );
    out.push_str(&line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    let last = stats.last().map(|s| s.updated_at).unwrap_or(Timestamp(0));
    out.push_str(&format!(
        "\nsuccess: status success / total; match: validations that matched the oracle; \
         latest update {last}\n"
    ));
    out
}
