//! `--sweep`: the highest offered rate at which a server keeps rooms'
//! p99 send-to-deliver latency within a bound, with at least 99% of the
//! deliveries made and the generator keeping its schedule.
//!
//! Starting at `--rate`, the rate doubles until a step breaks the bound,
//! then bisects between the best rate that met it and the lowest that did
//! not, for at most `--sweep-steps` steps of `--seconds` each. The
//! connections are opened once and kept from step to step; after a step
//! that left messages in flight or lost a connection, the server is
//! restarted so the next step does not start behind.

use serde::Serialize;

use crate::process::Server;
use crate::report::Latency;
use crate::rooms::{Args, RoomsResult, Session, SECRET};
use crate::Target;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SweepArgs {
    /// Search for the highest rate whose p99 latency stays within
    /// --p99-bound-ms with ≥ 99% delivered: from --rate, double (or halve)
    /// until the bound is crossed, then bisect.
    #[arg(long)]
    pub(crate) sweep: bool,
    /// The p99 send-to-deliver latency a rate must stay within.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) p99_bound_ms: f64,
    /// Steps at most, each one measurement of --seconds.
    #[arg(long, default_value_t = 6)]
    pub(crate) sweep_steps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// Whether this rate met the bound.
    pub(crate) meets: bool,
    #[serde(flatten)]
    pub(crate) result: RoomsResult,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SweepResult {
    pub(crate) target: Target,
    pub(crate) connections: usize,
    pub(crate) seconds_per_step: u64,
    pub(crate) p99_bound_ms: f64,
    /// The highest offered rate that met the bound below every rate that
    /// did not, if any did.
    pub(crate) max_rate: Option<u64>,
    /// Whether any step broke the bound: if none did, `max_rate` is only a
    /// lower bound (start higher, or allow more steps).
    pub(crate) bound_crossed: bool,
    /// In the order they ran; by rate in a median of runs
    /// ([`median_of`]).
    pub(crate) steps: Vec<Step>,
}

/// Whether a step met the bound: p99 latency within it, ≥ 99% of the
/// planned messages sent and of the expected deliveries made, and the
/// senders no later than the bound against their schedule.
pub(crate) fn meets(r: &RoomsResult, seconds: u64, p99_bound_ms: f64) -> bool {
    let planned = (r.rate * seconds) as f64;
    r.sent as f64 >= 0.99 * planned
        && r.delivered as f64 >= 0.99 * r.expected as f64
        && r.latency.p99_ms <= p99_bound_ms
        && r.send_lag_p99_ms <= p99_bound_ms
}

/// The best rate that met the bound below the lowest that did not.
pub(crate) fn max_rate(tried: &[(u64, bool)]) -> Option<u64> {
    let lowest_fail = tried.iter().filter(|t| !t.1).map(|t| t.0).min();
    tried
        .iter()
        .filter(|t| t.1 && lowest_fail.is_none_or(|f| t.0 < f))
        .map(|t| t.0)
        .max()
}

/// The next rate to try after `tried` (rate, met the bound), or `None`
/// once the best rate is known to within 5%.
pub(crate) fn next_rate(start: u64, tried: &[(u64, bool)]) -> Option<u64> {
    if tried.is_empty() {
        return Some(start.max(1));
    }
    let lowest_fail = tried.iter().filter(|t| !t.1).map(|t| t.0).min();
    let next = match (max_rate(tried), lowest_fail) {
        (Some(good), None) => good.checked_mul(2)?,
        (None, Some(bad)) => bad / 2,
        (Some(good), Some(bad)) => {
            if (bad - good) * 20 <= good {
                return None;
            }
            good + (bad - good) / 2
        }
        (None, None) => unreachable!("tried is not empty"),
    };
    (next > 0 && !tried.iter().any(|t| t.0 == next)).then_some(next)
}

/// Sweeps rooms' rate against `args.server.target`, printing each step.
pub(crate) async fn sweep(args: &Args) -> anyhow::Result<SweepResult> {
    anyhow::ensure!(
        args.sweep.sweep_steps > 0,
        "--sweep-steps must be at least 1"
    );
    let result = stepped(args, "sweep", args.sweep.sweep_steps, |tried| {
        next_rate(args.rate, tried)
    })
    .await?;
    print_table(&result);
    Ok(result)
}

/// Each of `rates` once, in the order given, on one set of connections:
/// one run of `compare --rates`.
pub(crate) async fn ladder(args: &Args, rates: &[u64]) -> anyhow::Result<SweepResult> {
    stepped(args, "rates", rates.len(), |tried| {
        rates.get(tried.len()).copied()
    })
    .await
}

/// Measures one step per rate that `next` picks from the steps so far,
/// for at most `max_steps` steps, on one set of connections: the server
/// is restarted only after a step that left it behind. `what` heads the
/// printed steps.
async fn stepped(
    args: &Args,
    what: &str,
    max_steps: usize,
    mut next: impl FnMut(&[(u64, bool)]) -> Option<u64>,
) -> anyhow::Result<SweepResult> {
    let bound = args.sweep.p99_bound_ms;
    println!(
        "{what} {:?}: {} connections, {} s per step, p99 ≤ {bound} ms",
        args.server.target,
        args.groups * args.members,
        args.seconds,
    );
    let mut live: Option<(Server, Session)> = None;
    let mut tried = Vec::new();
    let mut steps = Vec::new();
    let outcome = async {
        while steps.len() < max_steps {
            let Some(rate) = next(&tried) else {
                break;
            };
            if live.is_none() {
                let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
                let opened = async {
                    let mut session = Session::open(args, &server).await?;
                    session.warm_up(&server, rate).await?;
                    anyhow::Ok(session)
                };
                match opened.await {
                    Ok(session) => live = Some((server, session)),
                    Err(e) => {
                        server.stop().await;
                        return Err(e);
                    }
                }
            }
            let (server, session) = live.as_mut().expect("started above");
            let result = session.step(server, rate, args.seconds).await?;
            let step = Step {
                meets: meets(&result, args.seconds, bound),
                result,
            };
            println!("  step {}/{max_steps}: {}", steps.len() + 1, line(&step));
            tried.push((rate, step.meets));
            steps.push(step);
            if !session.settle().await {
                eprintln!("  messages still in flight or a connection lost: restarting the server");
                let (server, session) = live.take().expect("live");
                session.close().await;
                server.stop().await;
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some((server, session)) = live {
        session.close().await;
        server.stop().await;
    }
    outcome?;
    Ok(SweepResult {
        target: args.server.target,
        connections: args.groups * args.members,
        seconds_per_step: args.seconds,
        p99_bound_ms: bound,
        max_rate: max_rate(&tried),
        bound_crossed: tried.iter().any(|t| !t.1),
        steps,
    })
}

/// Several runs of the same ladder against one server as one, read
/// against `p99_bound_ms`. A rate meets the bound if more than half of the
/// runs met it there (a tie does not: with two runs, both must), counting
/// a run with no step at that rate as not meeting it. Its step is the run
/// with the median p99 (the upper one of an even count): the p99 shown is
/// the median, while the verdict counts runs, so that run's own figures
/// (its losses, say) need not agree with the verdict. One noisy run then
/// moves neither.
pub(crate) fn median_of(runs: &[SweepResult], p99_bound_ms: f64) -> Option<SweepResult> {
    let first = runs.first()?;
    let mut rates: Vec<u64> = runs
        .iter()
        .flat_map(|run| run.steps.iter().map(|s| s.result.rate))
        .collect();
    rates.sort_unstable();
    rates.dedup();
    let steps: Vec<Step> = rates
        .into_iter()
        .map(|rate| {
            // One step per run: the first at this rate.
            let mut at: Vec<(&Step, bool)> = runs
                .iter()
                .filter_map(|run| {
                    let step = run.steps.iter().find(|s| s.result.rate == rate)?;
                    Some((
                        step,
                        meets(&step.result, run.seconds_per_step, p99_bound_ms),
                    ))
                })
                .collect();
            at.sort_by(|a, b| {
                let p99 = |s: &Step| s.result.latency.p99_ms;
                p99(a.0).total_cmp(&p99(b.0))
            });
            Step {
                meets: 2 * at.iter().filter(|(_, met)| *met).count() > runs.len(),
                result: at[at.len() / 2].0.result.clone(),
            }
        })
        .collect();
    let tried: Vec<(u64, bool)> = steps.iter().map(|s| (s.result.rate, s.meets)).collect();
    Some(SweepResult {
        target: first.target,
        connections: first.connections,
        seconds_per_step: first.seconds_per_step,
        p99_bound_ms,
        max_rate: max_rate(&tried),
        bound_crossed: tried.iter().any(|t| !t.1),
        steps,
    })
}

/// One step as a line of text.
fn line(step: &Step) -> String {
    let r = &step.result;
    let Latency { p50_ms, p99_ms, .. } = r.latency;
    format!(
        "{:>7} msg/s offered  {:>9.0} delivered/s  lost {:<6} p50 {p50_ms:>8.2} ms  \
         p99 {p99_ms:>8.2} ms  send lag p99 {:>6.2} ms  generator {:>5.1} µs/delivery  {}",
        r.rate,
        r.delivered_per_sec,
        r.lost,
        r.send_lag_p99_ms,
        r.generator_cpu_us_per_delivery,
        if step.meets { "meets" } else { "BREAKS" }
    )
}

/// The steps in order of rate, and the verdict.
fn print_table(result: &SweepResult) {
    let mut steps: Vec<&Step> = result.steps.iter().collect();
    steps.sort_by_key(|s| s.result.rate);
    println!("sweep {:?}, by rate", result.target);
    for step in steps {
        println!("  {}", line(step));
    }
    match result.max_rate {
        Some(rate) => println!(
            "  highest rate within p99 ≤ {} ms: {}{rate} msg/s",
            result.p99_bound_ms,
            if result.bound_crossed {
                ""
            } else {
                "at least "
            }
        ),
        None => println!(
            "  no rate tried stayed within p99 ≤ {} ms",
            result.p99_bound_ms
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A step at `rate` with these latencies, 20 deliveries a message.
    pub(crate) fn step(target: Target, rate: u64, p50_ms: f64, p99_ms: f64, meets: bool) -> Step {
        Step {
            meets,
            result: RoomsResult {
                target,
                connections: 400,
                rate,
                sent: rate,
                expected: rate * 20,
                delivered: rate * 20,
                lost: 0,
                delivered_per_sec: rate as f64 * 20.0,
                latency: Latency {
                    p50_ms,
                    p99_ms,
                    p999_ms: p99_ms,
                    max_ms: p99_ms,
                },
                send_lag_p99_ms: 1.0,
                server_cpu_seconds: 1.0,
                server_cpu_us_per_delivery: 10.0,
                server_peak_rss_mib: 50.0,
                generator_cpu_seconds: 1.0,
                generator_cpu_us_per_delivery: 10.0,
            },
        }
    }

    /// A run of a ladder with one step per (rate, p99), meeting a 5 ms bound.
    fn run(points: &[(u64, f64)]) -> SweepResult {
        let steps: Vec<Step> = points
            .iter()
            .map(|&(rate, p99)| step(Target::Tidings, rate, p99 / 4.0, p99, p99 <= 5.0))
            .collect();
        let tried: Vec<(u64, bool)> = steps.iter().map(|s| (s.result.rate, s.meets)).collect();
        SweepResult {
            target: Target::Tidings,
            connections: 400,
            seconds_per_step: 1,
            p99_bound_ms: 5.0,
            max_rate: max_rate(&tried),
            bound_crossed: tried.iter().any(|t| !t.1),
            steps,
        }
    }

    #[test]
    fn runs_combine_by_median_and_majority() {
        let mut runs = [
            run(&[(1000, 1.0), (2000, 4.0), (3000, 9.0)]),
            // One noisy run: breaks at 1,000, loses messages at 2,000
            // (with the median p99 there) and meets at 3,000.
            run(&[(1000, 30.0), (2000, 4.2), (3000, 4.9)]),
            run(&[(1000, 1.2), (2000, 4.5), (3000, 12.0)]),
        ];
        runs[1].steps[1].result.delivered = 0;
        let median = median_of(&runs, 5.0).unwrap();
        // Each rate judged by its runs: 2,000 meets by two of three, and
        // its p99 is the median, 4.2, from the run that lost messages.
        let p99: Vec<(u64, f64, bool)> = median
            .steps
            .iter()
            .map(|s| (s.result.rate, s.result.latency.p99_ms, s.meets))
            .collect();
        assert_eq!(
            p99,
            [(1000, 1.2, true), (2000, 4.2, true), (3000, 9.0, false)]
        );
        assert_eq!(median.max_rate, Some(2000));
        assert!(median.bound_crossed);
        // The same runs against another bound: each run is judged again.
        let loose = median_of(&runs, 10.0).unwrap();
        assert_eq!(loose.max_rate, Some(3000));
        assert!(!loose.bound_crossed);
        assert!(median_of(&[], 5.0).is_none());
    }

    #[test]
    fn half_the_runs_is_not_most() {
        let runs = [run(&[(1000, 1.0)]), run(&[(1000, 9.0)])];
        assert_eq!(median_of(&runs, 5.0).unwrap().max_rate, None);
        // A run with no step at a rate counts against it.
        let runs = [run(&[(1000, 1.0), (2000, 1.0)]), run(&[(1000, 1.0)])];
        let median = median_of(&runs, 5.0).unwrap();
        assert_eq!(median.max_rate, Some(1000));
        assert!(median.bound_crossed);
    }

    /// Runs the search against a server that keeps up up to `capacity`.
    fn search(start: u64, capacity: u64, steps: usize) -> (Vec<(u64, bool)>, Option<u64>) {
        let mut tried = Vec::new();
        while tried.len() < steps {
            let Some(rate) = next_rate(start, &tried) else {
                break;
            };
            tried.push((rate, rate <= capacity));
        }
        let best = max_rate(&tried);
        (tried, best)
    }

    #[test]
    fn doubles_then_bisects() {
        let (tried, best) = search(1000, 5000, 6);
        let rates: Vec<u64> = tried.iter().map(|t| t.0).collect();
        assert_eq!(rates, [1000, 2000, 4000, 8000, 6000, 5000]);
        assert_eq!(best, Some(5000));
    }

    #[test]
    fn halves_when_the_first_rate_is_too_high() {
        let (tried, best) = search(8000, 1500, 6);
        assert_eq!(tried[..3], [(8000, false), (4000, false), (2000, false)]);
        assert_eq!(tried[3], (1000, true));
        assert!(best.unwrap() <= 1500 && best.unwrap() >= 1000);
    }

    #[test]
    fn stops_when_close_enough_and_never_repeats() {
        for capacity in [1, 7, 999, 1000, 1001, 3333, 100_000] {
            let (tried, best) = search(1000, capacity, 40);
            assert!(tried.len() < 40, "capacity {capacity}: {tried:?}");
            let mut rates: Vec<u64> = tried.iter().map(|t| t.0).collect();
            rates.sort_unstable();
            rates.dedup();
            assert_eq!(rates.len(), tried.len());
            let best = best.unwrap();
            assert!(best <= capacity && (capacity - best) * 20 <= best.max(20));
        }
    }

    #[test]
    fn a_noisy_pass_above_a_failure_does_not_count() {
        let tried = [(1000, true), (2000, false), (4000, true)];
        assert_eq!(max_rate(&tried), Some(1000));
        assert_eq!(next_rate(1000, &tried), Some(1500));
    }

    #[test]
    fn nothing_below_one_message_per_second() {
        assert_eq!(next_rate(1, &[(1, false)]), None);
        assert_eq!(max_rate(&[(1, false)]), None);
    }
}
