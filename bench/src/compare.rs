//! `compare`: rooms against every target. Without `--sweep`, several runs
//! at one rate, interleaved, as medians and the ratio of Tidings' figure to
//! each peer's; with `--sweep`, each target's rate sweep in turn, a table of
//! the highest rate each keeps within the bound, and the latency-versus-rate
//! plot.

use std::path::Path;

use crate::report::print;
use crate::rooms::{self, Args, RoomsResult};
use crate::sweep::{self, SweepResult};
use crate::{plot, Target};

/// Baseline first: the ceiling the others are read against.
const TARGETS: [Target; 4] = [
    Target::Baseline,
    Target::Tidings,
    Target::NodeWs,
    Target::Nats,
];

/// The rooms figures that comparisons report, by name.
pub(crate) type Figure = (&'static str, &'static dyn Fn(&RoomsResult) -> f64);

pub(crate) const FIGURES: [Figure; 7] = [
    ("delivered_per_sec", &|r| r.delivered_per_sec),
    ("lost", &|r| r.lost as f64),
    ("p50_ms", &|r| r.latency.p50_ms),
    ("p99_ms", &|r| r.latency.p99_ms),
    ("server_cpu_us_per_delivery", &|r| {
        r.server_cpu_us_per_delivery
    }),
    ("server_peak_rss_mib", &|r| r.server_peak_rss_mib),
    ("generator_cpu_us_per_delivery", &|r| {
        r.generator_cpu_us_per_delivery
    }),
];

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rooms against each of `targets` in turn, `runs` times over, so that a
/// noisy spell on the machine falls on every target alike. Results per
/// target, in run order.
pub(crate) async fn interleaved(
    args: &Args,
    targets: &[Target],
    runs: usize,
) -> anyhow::Result<Vec<Vec<RoomsResult>>> {
    let mut results: Vec<Vec<RoomsResult>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (t, target) in targets.iter().enumerate() {
            let mut args = args.clone();
            args.server.target = *target;
            let result = rooms::run(args).await?;
            print(&format!("run {} of {runs}: {target:?}", run + 1), &result);
            results[t].push(result);
        }
    }
    Ok(results)
}

/// Runs rooms against each target in turn, `runs` times, and prints the
/// median of each figure per target and Tidings' figure over each peer's.
pub(crate) async fn compare(args: Args, runs: usize) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let targets = TARGETS;
    let results = interleaved(&args, &targets, runs).await?;
    let figure =
        |t: usize, f: &dyn Fn(&RoomsResult) -> f64| median(results[t].iter().map(f).collect());
    println!(
        "medians of {runs} runs, {} connections, {} msg/s offered",
        args.groups * args.members,
        args.rate
    );
    println!(
        "  {:<30} {:>10} {:>10} {:>10} {:>10}   tidings over baseline / node-ws / nats",
        "figure", "baseline", "tidings", "node-ws", "nats"
    );
    let mut json = serde_json::Map::new();
    for (name, f) in FIGURES {
        let m: Vec<f64> = (0..targets.len()).map(|t| figure(t, f)).collect();
        let over = |peer: f64| if peer == 0.0 { f64::NAN } else { m[1] / peer };
        println!(
            "  {name:<30} {:>10.2} {:>10.2} {:>10.2} {:>10.2}   {:.2} / {:.2} / {:.2}",
            m[0],
            m[1],
            m[2],
            m[3],
            over(m[0]),
            over(m[2]),
            over(m[3])
        );
        json.insert(
            name.into(),
            serde_json::json!({
                "baseline": m[0], "tidings": m[1], "node_ws": m[2], "nats": m[3],
                "tidings_over_baseline": over(m[0]),
                "tidings_over_node_ws": over(m[2]),
                "tidings_over_nats": over(m[3]),
            }),
        );
    }
    json.insert("runs".into(), serde_json::to_value(&results)?);
    Ok(serde_json::Value::Object(json))
}

/// Sweeps each target's rate in turn, prints the highest rate each keeps
/// within the bound, and plots latency against rate to `plot_path`.
pub(crate) async fn sweeps(args: Args, plot_path: &Path) -> anyhow::Result<serde_json::Value> {
    let mut results: Vec<SweepResult> = Vec::new();
    for target in TARGETS {
        let mut args = args.clone();
        args.server.target = target;
        results.push(sweep::sweep(&args).await?);
    }
    let bound = args.sweep.p99_bound_ms;
    println!(
        "highest offered rate with p99 ≤ {bound} ms and ≥ 99% delivered, {} connections",
        args.groups * args.members
    );
    println!(
        "  {:<10} {:>10} {:>10} {:>10}",
        "target", "msg/s", "p50_ms", "p99_ms"
    );
    for result in &results {
        let best = result
            .max_rate
            .and_then(|rate| result.steps.iter().find(|s| s.result.rate == rate));
        match best {
            Some(step) => println!(
                "  {:<10} {:>10} {:>10.2} {:>10.2}",
                format!("{:?}", result.target),
                format!(
                    "{}{}",
                    if result.bound_crossed { "" } else { "≥ " },
                    step.result.rate
                ),
                step.result.latency.p50_ms,
                step.result.latency.p99_ms
            ),
            None => println!("  {:<10} {:>10}", format!("{:?}", result.target), "none"),
        }
    }
    plot::latency_vs_rate(plot_path, &results)?;
    eprintln!("wrote {}", plot_path.display());
    Ok(serde_json::json!({
        "p99_bound_ms": bound,
        "max_rate": results
            .iter()
            .map(|r| (format!("{:?}", r.target).to_lowercase(), r.max_rate.into()))
            .collect::<serde_json::Map<_, _>>(),
        "sweeps": results,
    }))
}
