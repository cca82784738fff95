//! `compare`: rooms against every target. By default, several runs at one
//! rate, interleaved, as medians and the ratio of Tidings' figure to each
//! peer's. With `--rates`, several runs of a ladder of rates, interleaved,
//! as each target's median p99 per rate and the highest rate it keeps
//! within the bound by most runs. With `--sweep`, each target's rate sweep
//! once. Both draw the latency-versus-rate plot.

use std::path::{Path, PathBuf};

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

/// Runs rooms against the Tidings binary `before` and the one in `args`,
/// alternately, `runs` times each, and prints each figure's median per
/// build and the ratio after over before (below 1 is better for costs and
/// latencies, above 1 for throughput).
pub(crate) async fn versus(
    args: Args,
    before: PathBuf,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        args.server.target == Target::Tidings || args.server.target == Target::TidingsCluster,
        "versus compares two builds of Tidings: --target tidings or tidings-cluster"
    );
    let builds = [before, args.server.server.clone()];
    let mut results: [Vec<RoomsResult>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        // Which build goes first alternates, so that neither always meets
        // the machine just after the other has warmed or loaded it.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for b in order {
            let mut args = args.clone();
            args.server.server = builds[b].clone();
            let result = rooms::run(args).await?;
            let name = ["before", "after"][b];
            print(&format!("run {} of {runs}: {name}", run + 1), &result);
            results[b].push(result);
        }
    }
    println!(
        "medians of {runs} runs each, {} connections in {} groups, {} msg/s offered",
        args.groups * args.members,
        args.groups,
        args.rate
    );
    println!("  before: {}", builds[0].display());
    println!("  after:  {}", builds[1].display());
    println!(
        "  {:<30} {:>10} {:>10} {:>12}",
        "figure", "before", "after", "after/before"
    );
    let mut json = serde_json::Map::new();
    for (name, f) in FIGURES {
        let m = [0, 1].map(|b| median(results[b].iter().map(f).collect()));
        let ratio = if m[0] == 0.0 { f64::NAN } else { m[1] / m[0] };
        println!("  {name:<30} {:>10.2} {:>10.2} {:>12.3}", m[0], m[1], ratio);
        json.insert(
            name.into(),
            serde_json::json!({ "before": m[0], "after": m[1], "after_over_before": ratio }),
        );
    }
    json.insert(
        "builds".into(),
        serde_json::json!([
            builds[0].display().to_string(),
            builds[1].display().to_string()
        ]),
    );
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
    let max_rate = verdict(&args, &results, plot_path)?;
    Ok(serde_json::json!({
        "p99_bound_ms": args.sweep.p99_bound_ms,
        "max_rate": max_rate,
        "sweeps": results,
    }))
}

/// Runs the ladder of `rates` against each target in turn, `runs` times
/// over, so that a noisy spell falls on every target alike; prints each
/// target's median p99 per rate and the highest rate most of its runs kept
/// within the bound, and plots the medians to `plot_path`.
pub(crate) async fn ladders(
    args: Args,
    rates: &[u64],
    runs: usize,
    plot_path: &Path,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        !rates.is_empty() && rates.iter().all(|&r| r > 0),
        "--rates needs at least one rate above 0"
    );
    let mut distinct = rates.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    anyhow::ensure!(
        distinct.len() == rates.len(),
        "--rates names a rate twice: {rates:?}"
    );
    let mut all: Vec<Vec<SweepResult>> = TARGETS.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        println!("run {} of {runs}", run + 1);
        for (t, target) in TARGETS.iter().enumerate() {
            let mut args = args.clone();
            args.server.target = *target;
            all[t].push(sweep::ladder(&args, rates).await?);
        }
    }
    let bound = args.sweep.p99_bound_ms;
    let medians: Vec<SweepResult> = all
        .iter()
        .filter_map(|runs| sweep::median_of(runs, bound))
        .collect();
    println!(
        "median p99 ms by offered rate, {runs} runs (in brackets: runs within p99 ≤ {bound} ms)"
    );
    print!("  {:>8}", "msg/s");
    for m in &medians {
        print!(" {:>14}", format!("{:?}", m.target));
    }
    println!();
    for rate in distinct {
        print!("  {rate:>8}");
        for (m, runs) in medians.iter().zip(&all) {
            let p99 = m
                .steps
                .iter()
                .find(|s| s.result.rate == rate)
                .map(|s| s.result.latency.p99_ms);
            let met = runs
                .iter()
                .flat_map(|r| &r.steps)
                .filter(|s| s.result.rate == rate && s.meets)
                .count();
            match p99 {
                Some(p99) => print!(" {:>14}", format!("{p99:.2} ({met}/{})", runs.len())),
                None => print!(" {:>14}", "-"),
            }
        }
        println!();
    }
    let max_rate = verdict(&args, &medians, plot_path)?;
    let by_bound = by_bound(&all, bound);
    Ok(serde_json::json!({
        "p99_bound_ms": bound,
        "runs": runs,
        "rates": rates,
        "max_rate": max_rate,
        "max_rate_by_bound": by_bound,
        "medians": medians,
        "ladders": all,
    }))
}

/// The same runs read against several p99 bounds: prints, per bound, the
/// highest rate most of each target's runs kept, and returns them.
fn by_bound(all: &[Vec<SweepResult>], bound: f64) -> serde_json::Value {
    let mut bounds = vec![2.0, 3.0, 5.0, 10.0, 20.0, bound];
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    println!("highest rate most runs kept, by p99 bound (≥: no rate tried broke it)");
    print!("  {:>8}", "p99 ms");
    for runs in all.iter().filter_map(|r| r.first()) {
        print!(" {:>10}", format!("{:?}", runs.target));
    }
    println!();
    let mut json = serde_json::Map::new();
    for b in bounds {
        print!("  {b:>8}");
        let mut row = serde_json::Map::new();
        for m in all.iter().filter_map(|runs| sweep::median_of(runs, b)) {
            let shown = match m.max_rate {
                Some(rate) if m.bound_crossed => rate.to_string(),
                Some(rate) => format!("≥ {rate}"),
                None => "-".into(),
            };
            print!(" {shown:>10}");
            row.insert(format!("{:?}", m.target).to_lowercase(), m.max_rate.into());
        }
        println!();
        json.insert(b.to_string(), row.into());
    }
    json.into()
}

/// Prints the highest rate each target kept within the bound, plots
/// latency against rate, and returns those rates by target.
fn verdict(
    args: &Args,
    results: &[SweepResult],
    plot_path: &Path,
) -> anyhow::Result<serde_json::Value> {
    let bound = args.sweep.p99_bound_ms;
    println!(
        "highest offered rate with p99 ≤ {bound} ms and ≥ 99% delivered, {} connections",
        args.groups * args.members
    );
    println!(
        "  {:<10} {:>10} {:>10} {:>10}",
        "target", "msg/s", "p50_ms", "p99_ms"
    );
    for result in results {
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
    plot::latency_vs_rate(plot_path, results)?;
    eprintln!("wrote {}", plot_path.display());
    Ok(results
        .iter()
        .map(|r| (format!("{:?}", r.target).to_lowercase(), r.max_rate.into()))
        .collect::<serde_json::Map<_, _>>()
        .into())
}
