//! Load results: a scenario's figures, medians over repetitions, the JSON report, and the
//! HTML page with an SVG per scenario (latency distribution and throughput over time).

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use super::check::Counters;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5) as f64,
            p99_us: h.value_at_quantile(0.99) as f64,
            p999_us: h.value_at_quantile(0.999) as f64,
            max_us: h.max() as f64,
            mean_us: h.mean(),
        }
    }
}

/// Progress at one moment of a scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub runs: u64,
    pub frames: u64,
    /// The server's RSS at that moment (KiB), where sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
}

/// What a scenario measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub command_note: String,
    pub reps: usize,
    pub concurrency: usize,
    pub runs: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    pub runs_per_s: f64,
    pub frames: u64,
    pub frames_per_s: f64,
    /// What [`Scenario::latency`] measures.
    pub latency_of: String,
    pub latency: Option<Latency>,
    /// Per run: `run.create` sent to the run's end frame received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_latency: Option<Latency>,
    pub cpu_s: Option<f64>,
    pub cpu_ms_per_run: Option<f64>,
    /// Named memory figures in KiB (server RSS per idle connection, peak RSS, ...).
    pub memory_kib: BTreeMap<String, f64>,
    /// Other named figures (connections/s, ...).
    pub figures: BTreeMap<String, f64>,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub lagged: u64,
    /// Errors by code (the server's `error.code`, `run_failed:<type>`, or the client's own).
    pub errors_by_code: BTreeMap<String, u64>,
    pub timeline: Vec<Sample>,
    /// CDF points of the latency distribution: (latency µs, percentile).
    pub latency_cdf: Vec<(f64, f64)>,
    /// Key figures of every repetition.
    pub all_reps: Vec<BTreeMap<String, f64>>,
}

impl Scenario {
    pub fn set_latency(&mut self, h: Option<&Histogram<u64>>) {
        let Some(h) = h.filter(|h| !h.is_empty()) else {
            return;
        };
        self.latency = Some(Latency::of(h));
        let mut cdf = Vec::new();
        for q in [
            0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
        ] {
            cdf.push((h.value_at_quantile(q).max(1) as f64, q * 100.0));
        }
        self.latency_cdf = cdf;
    }

    /// Takes the counters' totals, rates over `elapsed` seconds, latencies and the timeline.
    pub fn fill(&mut self, c: &Counters, elapsed: f64, timeline: Vec<Sample>) {
        self.runs = c.get(&c.runs);
        self.errors = c.get(&c.errors);
        self.frames = c.get(&c.frames);
        self.lost = c.get(&c.lost);
        self.duplicated = c.get(&c.duplicated);
        self.reordered = c.get(&c.reordered);
        self.lagged = c.get(&c.lagged);
        self.first_error = c.first_error.lock().ok().and_then(|g| g.clone());
        self.errors_by_code = c.errors_by_code();
        self.elapsed_s = elapsed;
        self.runs_per_s = self.runs as f64 / elapsed.max(1e-9);
        self.frames_per_s = self.frames as f64 / elapsed.max(1e-9);
        let h = c.latency.lock().ok().and_then(|g| g.clone());
        self.set_latency(h.as_ref());
        let r = c.run_latency.lock().ok().and_then(|g| g.clone());
        self.run_latency = r.filter(|h| !h.is_empty()).map(|h| Latency::of(&h));
        self.timeline = timeline;
    }

    /// The figures compared across repetitions.
    pub fn key_figures(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        m.insert("runs_per_s".into(), self.runs_per_s);
        m.insert("frames_per_s".into(), self.frames_per_s);
        if let Some(c) = self.cpu_ms_per_run {
            m.insert("cpu_ms_per_run".into(), c);
        }
        if let Some(l) = &self.latency {
            m.insert("p50_us".into(), l.p50_us);
            m.insert("p99_us".into(), l.p99_us);
            m.insert("p999_us".into(), l.p999_us);
        }
        for (k, v) in &self.memory_kib {
            m.insert(format!("mem:{k}"), *v);
        }
        for (k, v) in &self.figures {
            m.insert(k.clone(), *v);
        }
        m
    }

    /// Whether every frame arrived once and in order, with no error.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.lost == 0 && self.duplicated == 0 && self.reordered == 0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Folds repetitions into one: the median repetition by throughput, with every key figure
/// replaced by its median; error and frame-loss counts are summed.
pub fn fold(reps: Vec<Scenario>) -> Option<Scenario> {
    if reps.is_empty() {
        return None;
    }
    let keys: Vec<BTreeMap<String, f64>> = reps.iter().map(Scenario::key_figures).collect();
    let primary = |s: &Scenario| {
        if s.runs > 0 {
            s.runs_per_s
        } else {
            s.frames_per_s
        }
    };
    let mut order: Vec<usize> = (0..reps.len()).collect();
    order.sort_by(|a, b| primary(&reps[*a]).total_cmp(&primary(&reps[*b])));
    let mid = order[order.len() / 2];
    let mut out = reps[mid].clone();
    let med = |k: &str| median(keys.iter().filter_map(|m| m.get(k).copied()).collect());
    out.runs_per_s = med("runs_per_s");
    out.frames_per_s = med("frames_per_s");
    if out.cpu_ms_per_run.is_some() {
        out.cpu_ms_per_run = Some(med("cpu_ms_per_run"));
    }
    if let Some(l) = out.latency.as_mut() {
        l.p50_us = med("p50_us");
        l.p99_us = med("p99_us");
        l.p999_us = med("p999_us");
    }
    for (k, v) in out.memory_kib.iter_mut() {
        *v = med(&format!("mem:{k}"));
    }
    let fig_keys: Vec<String> = out.figures.keys().cloned().collect();
    for k in fig_keys {
        out.figures.insert(k.clone(), med(&k));
    }
    out.errors = reps.iter().map(|r| r.errors).sum();
    out.lost = reps.iter().map(|r| r.lost).sum();
    out.duplicated = reps.iter().map(|r| r.duplicated).sum();
    out.reordered = reps.iter().map(|r| r.reordered).sum();
    out.lagged = reps.iter().map(|r| r.lagged).sum();
    let mut codes = BTreeMap::new();
    for r in &reps {
        for (k, v) in &r.errors_by_code {
            *codes.entry(k.clone()).or_insert(0) += v;
        }
    }
    out.errors_by_code = codes;
    out.first_error = reps.iter().find_map(|r| r.first_error.clone());
    out.reps = reps.len();
    out.all_reps = keys;
    Some(out)
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub preset: String,
    pub nproc: usize,
    pub reps: usize,
    pub command: String,
    pub scenarios: Vec<Scenario>,
    /// callboard against the Python SDK: `name` to value.
    pub ratios: BTreeMap<String, f64>,
    pub notes: Vec<String>,
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "\ncallboard load ({} preset, nproc {}, medians of {} rep(s))\n{:<12} {:>7} {:>9} {:>11} {:>9} {:>9} {:>9} {:>10} {:>6} {:>5}\n",
            self.preset, self.nproc, self.reps, "scenario", "runs", "runs/s", "frames/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU ms/run", "errors", "lost"
        );
        for sc in &self.scenarios {
            let l = sc.latency.as_ref();
            s.push_str(&format!(
                "{:<12} {:>7} {:>9.1} {:>11.0} {:>9} {:>9} {:>9} {:>10} {:>6} {:>5}\n",
                sc.name,
                sc.runs,
                sc.runs_per_s,
                sc.frames_per_s,
                fmt_opt(l.map(|l| l.p50_us), 0),
                fmt_opt(l.map(|l| l.p99_us), 0),
                fmt_opt(l.map(|l| l.p999_us), 0),
                fmt_opt(sc.cpu_ms_per_run, 3),
                sc.errors,
                sc.lost + sc.duplicated + sc.reordered,
            ));
            for (k, v) in sc.memory_kib.iter() {
                s.push_str(&format!("{:<12}   {k}: {v:.1} KiB\n", ""));
            }
            for (k, v) in sc.figures.iter() {
                s.push_str(&format!("{:<12}   {k}: {v:.1}\n", ""));
            }
            for (k, v) in sc.errors_by_code.iter() {
                s.push_str(&format!("{:<12}   errors {k}: {v}\n", ""));
            }
            if let Some(e) = &sc.first_error {
                s.push_str(&format!("{:<12}   first error: {e}\n", ""));
            }
        }
        for (k, v) in &self.ratios {
            s.push_str(&format!("ratio {k}: {v:.1}x\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }

    /// Writes `report.json`, one SVG per scenario and `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)?;
        let mut html = String::from(
            "<!doctype html><meta charset=utf-8><title>callboard load report</title>\
             <style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}\
             th{background:#eee}td:first-child{text-align:left}</style>",
        );
        html.push_str(&format!(
            "<h1>callboard load report</h1><p>preset <b>{}</b>, nproc {}, medians of {} repetition(s). \
             Command: <code>{}</code></p><table><tr><th>scenario</th><th>runs</th><th>runs/s</th>\
             <th>frames/s</th><th>p50 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>CPU ms/run</th>\
             <th>errors</th><th>lost/dup/reordered</th></tr>",
            self.preset, self.nproc, self.reps, html_escape(&self.command)
        ));
        for sc in &self.scenarios {
            let l = sc.latency.as_ref();
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}/{}</td></tr>",
                sc.name, sc.runs, sc.runs_per_s, sc.frames_per_s,
                fmt_opt(l.map(|l| l.p50_us), 0), fmt_opt(l.map(|l| l.p99_us), 0), fmt_opt(l.map(|l| l.p999_us), 0),
                fmt_opt(sc.cpu_ms_per_run, 3), sc.errors, sc.lost, sc.duplicated, sc.reordered
            ));
        }
        html.push_str("</table>");
        if !self.ratios.is_empty() {
            html.push_str("<h2>callboard vs the Python Agents SDK</h2><ul>");
            for (k, v) in &self.ratios {
                html.push_str(&format!("<li>{}: <b>{v:.1}x</b></li>", html_escape(k)));
            }
            html.push_str("</ul>");
        }
        for sc in self
            .scenarios
            .iter()
            .filter(|s| !s.errors_by_code.is_empty())
        {
            html.push_str(&format!(
                "<h2>{}: errors by code</h2><table><tr><th>code</th><th>count</th></tr>",
                html_escape(&sc.name)
            ));
            for (k, v) in &sc.errors_by_code {
                html.push_str(&format!("<tr><td>{}</td><td>{v}</td></tr>", html_escape(k)));
            }
            html.push_str("</table>");
            if let Some(e) = &sc.first_error {
                html.push_str(&format!("<p>First error: {}</p>", html_escape(e)));
            }
        }
        for sc in &self.scenarios {
            let file = format!("{}.svg", sc.name);
            if plot(sc, &dir.join(&file)).is_ok() {
                html.push_str(&format!(
                    "<h2>{}</h2><p>{}</p><img src=\"{file}\">",
                    sc.name,
                    html_escape(&sc.description)
                ));
            }
        }
        for n in &self.notes {
            html.push_str(&format!("<p>{}</p>", html_escape(n)));
        }
        std::fs::write(dir.join("report.html"), html)
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Throughput per sample interval: (t, runs/s, frames/s).
fn rates(tl: &[Sample]) -> Vec<(f64, f64, f64)> {
    tl.windows(2)
        .filter(|w| w[1].t_s > w[0].t_s)
        .map(|w| {
            let dt = w[1].t_s - w[0].t_s;
            (
                w[1].t_s,
                (w[1].runs - w[0].runs) as f64 / dt,
                (w[1].frames - w[0].frames) as f64 / dt,
            )
        })
        .collect()
}

fn plot(sc: &Scenario, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    // Latency CDF, x in log10(µs).
    if !sc.latency_cdf.is_empty() {
        let pts: Vec<(f64, f64)> = sc
            .latency_cdf
            .iter()
            .map(|(us, p)| (us.log10(), *p))
            .collect();
        let xmax = pts.iter().map(|p| p.0).fold(1.0f64, f64::max).ceil();
        let mut ch = ChartBuilder::on(&left)
            .caption(
                format!("{}: {} latency (CDF)", sc.name, sc.latency_of),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..xmax, 0f64..100f64)?;
        ch.configure_mesh()
            .x_desc("latency (µs, log scale)")
            .y_desc("percentile")
            .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
            .draw()?;
        ch.draw_series(LineSeries::new(pts, &BLUE))?;
    }
    let r = rates(&sc.timeline);
    if !r.is_empty() {
        let use_runs = sc.runs > 0;
        let pts: Vec<(f64, f64)> = r
            .iter()
            .map(|(t, runs, frames)| (*t, if use_runs { *runs } else { *frames }))
            .collect();
        let tmax = pts.iter().map(|p| p.0).fold(0.1f64, f64::max);
        let ymax = pts.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
        let mut ch = ChartBuilder::on(&right)
            .caption(
                format!(
                    "{}: {} over time",
                    sc.name,
                    if use_runs { "runs/s" } else { "frames/s" }
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
        ch.configure_mesh().x_desc("seconds").draw()?;
        ch.draw_series(LineSeries::new(pts, &RED))?;
    }
    root.present()?;
    Ok(())
}
