//! Reports: one run as text or JSON, several runs as a comparison table and an SVG bar chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub scenario: String,
    pub qos: u8,
    pub clients: usize,
    pub payload: usize,
    /// "closed(window)" or "open(rate)".
    pub load: String,
    pub seconds: f64,
    /// Messages (or, for storms, operations) per second.
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub latency_us: Latency,
    pub broker_cpu_s: Option<f64>,
    /// Broker CPU microseconds per delivered message (or operation).
    pub broker_cpu_us_per_msg: Option<f64>,
    pub broker_rss_bytes: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
    /// Harness CPU seconds per second of run: 1.0 is one full core.
    pub harness_cpu_share: f64,
    /// The broker's busy threads, busiest first: name and CPU seconds per second of run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub broker_thread_cores: Vec<(String, f64)>,
    pub failures: u64,
    /// With `--churn-beside`: the subscription changes per second the broker acknowledged
    /// beside the scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_per_s: Option<f64>,
}

impl Report {
    /// Human-readable summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {} qos={} clients={} payload={}B {} over {:.1}s\n  sent {:.0}/s  delivered {:.0}/s  lost {}  duplicated {}  failures {}\n  latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.label, self.scenario, self.qos, self.clients, self.payload, self.load, self.seconds,
            self.sent_per_s, self.delivered_per_s, self.lost, self.duplicated, self.failures,
            self.latency_us.p50, self.latency_us.p90, self.latency_us.p99, self.latency_us.p999, self.latency_us.max,
        );
        if let Some(cpu) = self.broker_cpu_s {
            let _ = write!(s, "  broker CPU {cpu:.2}s");
            if let Some(per) = self.broker_cpu_us_per_msg {
                let _ = write!(s, " ({per:.2} us per delivered message)");
            }
        }
        if let Some(rss) = self.broker_rss_bytes {
            let _ = write!(s, "  broker RSS {:.1} MB", rss as f64 / 1e6);
        }
        if let Some(per) = self.rss_per_connection_bytes {
            let _ = write!(s, "  RSS per idle connection {per:.0} B");
        }
        if let Some(churn) = self.churn_per_s {
            let _ = write!(s, "\n  subscription changes beside it {churn:.0}/s");
        }
        let _ = write!(
            s,
            "\n  harness CPU share {:.2} core{}",
            self.harness_cpu_share,
            if self.harness_cpu_share > 0.9 {
                "  WARNING: the harness may be the bottleneck"
            } else {
                ""
            }
        );
        if !self.broker_thread_cores.is_empty() {
            let threads: Vec<String> = self
                .broker_thread_cores
                .iter()
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            let _ = write!(s, "\n  broker threads, cores: {}", threads.join(", "));
        }
        s
    }
}

/// Reads JSON-line reports.
pub fn read_reports(path: &Path) -> Result<Vec<Report>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad report line: {e}")))
        .collect()
}

type Key = (String, u8, usize, String);

/// The medians of one row for one label.
#[derive(Debug, Clone, Copy)]
struct Median {
    /// Delivered msgs/s.
    rate: f64,
    /// p99 latency (µs): of the median-rate run on a closed loop; on an open loop, where every
    /// run delivers the offered rate and so which run has the median rate is chance, the
    /// median of the runs' p99s.
    p99: u64,
    /// Broker CPU µs per delivered message, median on its own.
    cpu: Option<f64>,
}

/// Per (scenario, QoS, clients, load): per label, the medians.
type Medians = BTreeMap<Key, BTreeMap<String, Median>>;

/// Per (scenario, QoS, clients, load): per label, its reports in the order they were written.
type Runs<'a> = BTreeMap<Key, BTreeMap<String, Vec<&'a Report>>>;

/// The labels in the order they first appear, and the reports by row and label. Idle runs
/// measure memory, not a rate: they are reported on their own.
fn runs_by_row(reports: &[Report]) -> (Vec<String>, Runs<'_>) {
    let mut labels: Vec<String> = Vec::new();
    let mut runs: Runs<'_> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.scenario != "idle") {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
        runs.entry((r.scenario.clone(), r.qos, r.clients, r.load.clone()))
            .or_default()
            .entry(r.label.clone())
            .or_default()
            .push(r);
    }
    (labels, runs)
}

/// Medians per (scenario, qos, clients, load) and label.
fn medians(reports: &[Report]) -> (Vec<String>, Medians) {
    let (labels, runs) = runs_by_row(reports);
    let med = runs
        .into_iter()
        .map(|(k, per)| {
            let per = per
                .into_iter()
                .map(|(label, mut v)| {
                    v.sort_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
                    let mid = v[v.len() / 2];
                    let mut cpus: Vec<f64> =
                        v.iter().filter_map(|r| r.broker_cpu_us_per_msg).collect();
                    cpus.sort_by(f64::total_cmp);
                    let p99 = if k.3.starts_with("open") {
                        let mut p99s: Vec<u64> = v.iter().map(|r| r.latency_us.p99).collect();
                        p99s.sort_unstable();
                        p99s[p99s.len() / 2]
                    } else {
                        mid.latency_us.p99
                    };
                    let median = Median {
                        rate: mid.delivered_per_s,
                        p99,
                        cpu: cpus.get(cpus.len() / 2).copied(),
                    };
                    (label, median)
                })
                .collect();
            (k, per)
        })
        .collect();
    (labels, med)
}

/// A comparison table of the medians of several runs per scenario; the ratio is first label over
/// second.
pub fn table(reports: &[Report]) -> String {
    let (labels, med) = medians(reports);
    let mut s = String::new();
    let columns =
        |unit: &str| -> Vec<String> { labels.iter().map(|l| format!("{l} {unit}")).collect() };
    let _ = writeln!(
        s,
        "| scenario | QoS | clients | load | {} | ratio | {} | {} |",
        columns("msgs/s").join(" | "),
        columns("p99 us").join(" | "),
        columns("CPU us/msg").join(" | ")
    );
    let _ = writeln!(s, "|{}", "---|".repeat(5 + 3 * labels.len()));
    for ((scenario, qos, clients, load), per) in &med {
        let rate = |l: &String| per.get(l).map(|v| v.rate);
        let cell = |f: &dyn Fn(&Median) -> String| -> String {
            labels
                .iter()
                .map(|l| per.get(l).map_or("-".into(), f))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let ratio = match (labels.first().and_then(rate), labels.get(1).and_then(rate)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {scenario} | {qos} | {clients} | {load} | {} | {ratio} | {} | {} |",
            cell(&|m| format!("{:.0}", m.rate)),
            cell(&|m| m.p99.to_string()),
            cell(&|m| m.cpu.map_or("-".into(), |c| format!("{c:.2}")))
        );
    }
    s
}

/// Per scenario, each label's broker CPU per message over Mosquitto's (the label `mosquitto`,
/// or else the last label), run by run: the k-th report of a label and the k-th of the
/// reference are taken as one run (as `ab.sh` and `compare.sh` write them). Single runs of one
/// build spread by 15-20% on this kind of machine, so the ratio of medians can flatter or
/// wrong a build; this shows the median of the per-run ratios and their range.
pub fn run_ratios(reports: &[Report]) -> String {
    let (labels, runs) = runs_by_row(reports);
    let Some(reference) = labels
        .iter()
        .find(|l| *l == "mosquitto")
        .or(labels.last())
        .cloned()
    else {
        return String::new();
    };
    let others: Vec<&String> = labels.iter().filter(|l| **l != reference).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | QoS | clients | load | label | CPU per message over {reference}'s, per run | median | range |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for ((scenario, qos, clients, load), per) in &runs {
        let Some(base) = per.get(&reference) else {
            continue;
        };
        for label in &others {
            let Some(own) = per.get(*label) else {
                continue;
            };
            let mut ratios: Vec<f64> = own
                .iter()
                .zip(base)
                .filter_map(|(a, b)| Some((a.broker_cpu_us_per_msg?, b.broker_cpu_us_per_msg?)))
                // A reading of 0 is a run shorter than the CPU clock's tick (the retained row).
                .filter(|&(a, b)| a > 0.0 && b > 0.0)
                .map(|(a, b)| a / b)
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            ratios.sort_by(f64::total_cmp);
            let (low, high) = (ratios[0], ratios[ratios.len() - 1]);
            let median = ratios[ratios.len() / 2];
            let _ = writeln!(
                s,
                "| {scenario} | {qos} | {clients} | {load} | {label} | {} | {median:.3} | {low:.3}-{high:.3} |",
                listed.join(", ")
            );
        }
    }
    s
}

/// A grouped bar chart (SVG) of median delivered msgs/s per scenario, one bar per label.
pub fn chart(reports: &[Report]) -> String {
    let (labels, med) = medians(reports);
    let colors = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];
    let groups: Vec<_> = med.iter().collect();
    let max = groups
        .iter()
        .flat_map(|(_, per)| per.values().map(|v| v.rate))
        .fold(1.0f64, f64::max);
    let (bar, gap, height, top, left) = (22.0, 26.0, 260.0, 30.0, 70.0);
    let group_w = bar * labels.len() as f64 + gap;
    let width = left + group_w * groups.len() as f64 + 20.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        top + height + 84.0
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18" font-size="13">Delivered msgs/s (median)</text>"#
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + height - height * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{width:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{:.0}k</text>"##,
            left - 4.0,
            y + 4.0,
            v / 1000.0
        );
    }
    for (g, ((scenario, qos, _, load), per)) in groups.iter().enumerate() {
        let x0 = left + gap / 2.0 + g as f64 * group_w;
        for (i, label) in labels.iter().enumerate() {
            if let Some(m) = per.get(label) {
                let h = height * m.rate / max;
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="{bar}" height="{h:.1}" fill="{}"/>"#,
                    x0 + i as f64 * bar,
                    top + height - h,
                    colors[i % colors.len()]
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{scenario}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">QoS {qos}</text>"#,
            x0 + bar * labels.len() as f64 / 2.0,
            top + height + 16.0,
            x0 + bar * labels.len() as f64 / 2.0,
            top + height + 30.0
        );
        // An open loop offers a fixed rate: said under its bars, so that it is not read as the
        // closed loop of the same scenario beside it.
        if let Some(rate) = load.strip_prefix("open(") {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">open {}</text>"#,
                x0 + bar * labels.len() as f64 / 2.0,
                top + height + 44.0,
                rate.trim_end_matches(')')
            );
        }
    }
    for (i, label) in labels.iter().enumerate() {
        let x = left + i as f64 * 140.0;
        let _ = write!(
            s,
            r#"<rect x="{x:.0}" y="{:.0}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{:.0}">{label}</text>"#,
            top + height + 59.0,
            colors[i % colors.len()],
            x + 16.0,
            top + height + 69.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// What a message-flow run (flows or fleet) measured over its measured seconds.
pub struct Measured {
    pub seconds: f64,
    /// Messages published.
    pub sent: u64,
    /// Messages the broker delivered.
    pub delivered: u64,
    /// Microseconds: publish to delivery, or (fleet) request to response.
    pub latency: Histogram<u64>,
    pub broker_cpu: Option<f64>,
    /// The broker's busy threads: name and CPU seconds.
    pub broker_threads: Vec<(String, f64)>,
    pub harness_cpu: f64,
}

impl Measured {
    /// Rates, latency and CPU per delivered message into `report`.
    pub fn fill(&self, report: &mut Report) {
        report.seconds = self.seconds;
        report.sent_per_s = self.sent as f64 / self.seconds;
        report.delivered_per_s = self.delivered as f64 / self.seconds;
        report.latency_us = Latency::from(&self.latency);
        report.broker_cpu_s = self.broker_cpu;
        report.broker_cpu_us_per_msg = self
            .broker_cpu
            .map(|c| c * 1e6 / self.delivered.max(1) as f64);
        report.harness_cpu_share = self.harness_cpu / self.seconds;
        report.broker_thread_cores = self
            .broker_threads
            .iter()
            .map(|(name, seconds)| (name.clone(), seconds / self.seconds))
            .collect();
    }
}
