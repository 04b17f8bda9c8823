//! What the demo's two runs saw, and the closing table that compares them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What one run's clients saw, and what its syncgate did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Requests sent.
    pub requests: u64,
    /// Answers by status (0: no answer at all).
    pub by_status: BTreeMap<u16, u64>,
    /// 401s that reached clients, by the worker that gave them.
    pub unauthorized_by_worker: BTreeMap<String, u64>,
    /// 503s that reached clients, by why (syncgate's `error` text, or "a worker answered 503").
    pub unavailable: BTreeMap<String, u64>,
    /// Answers by the worker that gave them.
    pub by_worker: BTreeMap<String, u64>,
    /// When `worker-new` was admitted, from the beginning of the load.
    pub late_worker_admitted_at: Option<Duration>,
    /// 401s a second worker contradicted (the guard answered from the second worker).
    pub contradicted: u64,
    /// Times `worker-2` was taken out of rotation.
    pub worker_2_ejections: u64,
}

impl RunReport {
    /// 401s that reached clients.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized_by_worker.values().sum()
    }

    /// 503s that reached clients.
    pub fn unavailable_total(&self) -> u64 {
        self.unavailable.values().sum()
    }
}

/// Both runs of the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Behind an ordinary health check, without a second opinion.
    pub ordinary: RunReport,
    /// Behind syncgate's gate and guard.
    pub gated: RunReport,
}

impl DemoReport {
    /// 401s that reached clients through syncgate's gate and guard (the answer must be 0).
    pub fn unauthorized(&self) -> u64 {
        self.gated.unauthorized()
    }

    /// The closing table, one row per line, columns aligned (labels never contain two spaces
    /// in a row, so the columns split on them).
    pub fn table(&self) -> String {
        let (o, g) = (&self.ordinary, &self.gated);
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |label: &str, a: String, b: String| rows.push((label.to_owned(), a, b));
        row("", "ordinary".into(), "syncgate".into());
        row("requests", o.requests.to_string(), g.requests.to_string());
        let ok = |r: &RunReport| {
            r.by_status
                .iter()
                .filter(|(s, _)| (200..300).contains(*s))
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        row("answered 2xx", ok(o).to_string(), ok(g).to_string());
        row(
            "401s that reached clients",
            o.unauthorized().to_string(),
            g.unauthorized().to_string(),
        );
        let mut workers: Vec<&String> = o
            .unauthorized_by_worker
            .keys()
            .chain(g.unauthorized_by_worker.keys())
            .collect();
        workers.sort();
        workers.dedup();
        for w in workers {
            let n = |r: &RunReport| r.unauthorized_by_worker.get(w).copied().unwrap_or(0);
            row(&format!("- from {w}"), n(o).to_string(), n(g).to_string());
        }
        row(
            "503s that reached clients",
            o.unavailable_total().to_string(),
            g.unavailable_total().to_string(),
        );
        let mut reasons: Vec<&String> = o.unavailable.keys().chain(g.unavailable.keys()).collect();
        reasons.sort();
        reasons.dedup();
        for why in reasons {
            let n = |r: &RunReport| r.unavailable.get(why).copied().unwrap_or(0);
            row(&format!("- {why}"), n(o).to_string(), n(g).to_string());
        }
        let other = |r: &RunReport| {
            r.by_status
                .iter()
                .filter(|(s, _)| !(200..300).contains(*s) && **s != 401 && **s != 503)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        if other(o) + other(g) > 0 {
            row(
                "other answers (or none)",
                other(o).to_string(),
                other(g).to_string(),
            );
        }
        let by = |r: &RunReport, w: &str| r.by_worker.get(w).copied().unwrap_or(0).to_string();
        row(
            "answered by worker-new",
            by(o, "worker-new"),
            by(g, "worker-new"),
        );
        let at = |r: &RunReport| {
            r.late_worker_admitted_at.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64()),
            )
        };
        row("worker-new admitted at", at(o), at(g));
        row(
            "401s contradicted by a second worker",
            "no guard".into(),
            g.contradicted.to_string(),
        );
        row(
            "worker-2 taken out of rotation",
            o.worker_2_ejections.to_string(),
            g.worker_2_ejections.to_string(),
        );
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (label, a, b) in rows {
            let _ = writeln!(out, "{label:<width$}  {a:>10}  {b:>10}");
        }
        out
    }

    /// What the table means, in words.
    pub fn explanation(&self) -> String {
        let (o, g) = (&self.ordinary, &self.gated);
        let at = |d: Option<Duration>| {
            d.map_or_else(
                || "never".to_owned(),
                |d| format!("at {:.1} s", d.as_secs_f64()),
            )
        };
        let mut out = format!(
            "ordinary: worker-new was admitted {} because it answered its health check, and \
             answered 401 for every key it had not synced yet; worker-2 kept passing its health \
             check after losing its keys. {} 401s reached agents: each one switches an agent off \
             until its app restarts.\n",
            at(o.late_worker_admitted_at),
            o.unauthorized()
        );
        let flapped = if g.worker_2_ejections > 1 {
            " (each time its probe, still claiming a complete sync, re-admitted it, the guard \
             took it out again)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "syncgate: worker-new was admitted {}, once its probe reported a complete sync \
             consistent with its peers; {} of worker-2's 401s were contradicted by a second \
             worker and answered from it, and worker-2 was taken out {} time(s){flapped}. {} 401s \
             reached clients.",
            at(g.late_worker_admitted_at),
            g.contradicted,
            g.worker_2_ejections,
            g.unauthorized()
        );
        if g.unavailable_total() > 0 {
            out.push_str(
                "syncgate's 503s (with Retry-After, which agents retry) are listed with their \
                 reason: an answer syncgate could not confirm is never passed on as a 401.\n",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_401s_and_503s_by_worker_and_reason_in_two_aligned_columns() {
        let ordinary = RunReport {
            requests: 1000,
            by_status: BTreeMap::from([(200, 900), (401, 100)]),
            unauthorized_by_worker: BTreeMap::from([
                ("worker-new".into(), 70),
                ("worker-2".into(), 30),
            ]),
            late_worker_admitted_at: Some(Duration::from_millis(3500)),
            ..RunReport::default()
        };
        let gated = RunReport {
            requests: 990,
            by_status: BTreeMap::from([(200, 985), (503, 5)]),
            unavailable: BTreeMap::from([("retry budget spent: answer not confirmed".into(), 5)]),
            late_worker_admitted_at: Some(Duration::from_millis(9300)),
            contradicted: 12,
            worker_2_ejections: 2,
            ..RunReport::default()
        };
        let report = DemoReport { ordinary, gated };
        assert_eq!(report.unauthorized(), 0);
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        let width = lines[0].len();
        assert!(lines.iter().all(|l| l.len() == width), "{table}");
        let cells = |label: &str| -> Vec<String> {
            let line = lines
                .iter()
                .find(|l| l.starts_with(label) && l[label.len()..].starts_with("  "))
                .unwrap_or_else(|| panic!("{label} in {table}"));
            line[label.len()..]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(cells("401s that reached clients"), ["100", "0"]);
        assert_eq!(cells("- from worker-2"), ["30", "0"]);
        assert_eq!(cells("- from worker-new"), ["70", "0"]);
        assert_eq!(cells("503s that reached clients"), ["0", "5"]);
        assert_eq!(
            cells("- retry budget spent: answer not confirmed"),
            ["0", "5"]
        );
        assert_eq!(cells("worker-new admitted at"), ["3.5 s", "9.3 s"]);
        assert_eq!(
            cells("401s contradicted by a second worker"),
            ["no guard", "12"]
        );
        assert!(report.explanation().contains("took it out again"));
    }
}
