//! The shared store end to end, in one run: real `capgate serve --http` processes on the SQLite
//! file (one replica) and on a real PostgreSQL started here (one and three replicas), driven over
//! loopback by the same client code:
//!
//! * issuance/s: concurrent `POST /v1/tasks` (each a policy decision, a signed block, a stored
//!   task and an audit line), spread round-robin over the replicas;
//! * guarded calls/s: concurrent MCP sessions calling `fs_read`, spread over the replicas;
//! * revocation propagation: a task ended on replica A (`DELETE /v1/tasks/{id}`), timed from the
//!   request until a session on replica B is refused, with notifications and by polling alone.
//!
//! `cargo bench --bench replicas` takes about a minute; `-- --duration 1s --revocations 20` less.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capgate_testkit::{Capgate, Postgres, Server, call, denial};
use clap::Parser;
use serde_json::{Value, json};
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(
    name = "replicas",
    about = "Issuance, calls and revocation propagation on SQLite and PostgreSQL"
)]
struct Opts {
    /// Measured time of each throughput run.
    #[arg(long, default_value = "3s", value_parser = duration)]
    duration: Duration,
    /// Concurrent clients of each throughput run.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Revocations timed per propagation setting.
    #[arg(long, default_value_t = 60)]
    revocations: usize,
    /// `cargo bench` passes `--bench`; without it (`cargo test --benches`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
    /// A criterion-style name filter from `cargo bench -- FILTER`.
    filter: Option<String>,
}

fn duration(s: &str) -> Result<Duration, String> {
    capgate_core::time::parse_duration(s)
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if !opts.bench {
        println!("replicas: skipped (a benchmark; run it with `cargo bench --bench replicas`)");
        return ExitCode::SUCCESS;
    }
    if opts
        .filter
        .as_deref()
        .is_some_and(|f| !"replicas".contains(f))
    {
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(drive(opts));
    ExitCode::SUCCESS
}

fn read_intent() -> Value {
    json!({"purpose": "Read the docs", "tools": ["fs_read"], "resources": {"fs_read": ["acme/docs/"]}})
}

fn readme() -> Value {
    json!({"path": "acme/docs/readme.txt"})
}

/// One setting: its installations (kept for their files) and running servers.
struct Setup {
    name: String,
    nodes: Vec<Capgate>,
    servers: Vec<Server>,
}

impl Setup {
    fn start(name: &str, n: usize, extra: &str) -> Self {
        let nodes = if n == 1 && extra.is_empty() {
            vec![Capgate::new()]
        } else {
            Capgate::replicas(n, extra)
        };
        let servers = nodes.iter().map(Capgate::serve_http).collect();
        Setup {
            name: name.to_owned(),
            nodes,
            servers,
        }
    }

    fn agent(&self) -> String {
        self.nodes[0].mint("reader", "acme", &["fs_read"], &[])
    }

    fn bases(&self) -> Vec<String> {
        self.servers.iter().map(Server::base).collect()
    }
}

async fn post_task(http: &reqwest::Client, base: &str, agent: &str) -> Option<Value> {
    let resp = http
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(agent)
        .json(&read_intent())
        .send()
        .await
        .ok()?;
    if resp.status() != 201 {
        return None;
    }
    resp.json().await.ok()
}

/// Tasks issued per second by `clients` concurrent requesters.
async fn issuance(setup: &Setup, clients: usize, d: Duration) -> f64 {
    let agent = Arc::new(setup.agent());
    let bases = Arc::new(setup.bases());
    let http = reqwest::Client::new();
    let start = Instant::now();
    let until = start + d;
    let mut set = JoinSet::new();
    for c in 0..clients {
        let (agent, bases, http) = (agent.clone(), bases.clone(), http.clone());
        set.spawn(async move {
            let mut n = 0u64;
            let mut i = c;
            while Instant::now() < until {
                let ok = post_task(&http, &bases[i % bases.len()], &agent).await;
                assert!(ok.is_some(), "issuance failed");
                n += 1;
                i += 1;
            }
            n
        });
    }
    let n: u64 = set.join_all().await.into_iter().sum();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Guarded calls per second from `clients` concurrent sessions, each with a task of its own.
async fn calls(setup: &Setup, clients: usize, d: Duration) -> f64 {
    let agent = setup.agent();
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for c in 0..clients {
        let server = &setup.servers[c % setup.servers.len()];
        let task = post_task(&http, &server.base(), &agent)
            .await
            .expect("a task");
        sessions.push(server.client(task["token"].as_str().unwrap()).await);
    }
    // Warm: every session's token verified and its decision cached.
    for s in &sessions {
        call(s, "fs_read", readme()).await.expect("warm call");
    }
    let start = Instant::now();
    let until = start + d;
    let mut set = JoinSet::new();
    for s in sessions {
        set.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let r = call(&s, "fs_read", readme()).await.expect("a result");
                assert_eq!(r.is_error, Some(false), "{r:?}");
                n += 1;
            }
            let _ = s.cancel().await;
            n
        });
    }
    let n: u64 = set.join_all().await.into_iter().sum();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Milliseconds until a session on B is refused, from `DELETE /v1/tasks/{id}` sent to A and
/// from its answer received (the revocation committed between the two).
async fn propagation(setup: &Setup, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let agent = setup.agent();
    let http = reqwest::Client::new();
    let (a, b) = (&setup.servers[0], &setup.servers[1]);
    let (mut from_sent, mut from_answer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let task = post_task(&http, &a.base(), &agent).await.expect("a task");
        let id = task["task_id"].as_str().unwrap();
        let on_b = b.client(task["token"].as_str().unwrap()).await;
        call(&on_b, "fs_read", readme()).await.expect("allowed");
        // Spread the revocations over the 250 ms poll cycle, as real ones fall.
        let offset = (round as u64 * 37) % 250;
        tokio::time::sleep(Duration::from_millis(offset)).await;
        let sent = Instant::now();
        let resp = http
            .delete(format!("{}/v1/tasks/{id}", a.base()))
            .bearer_auth(&agent)
            .send()
            .await
            .expect("DELETE");
        assert_eq!(resp.status(), 200);
        let answered = Instant::now();
        loop {
            let refused = match call(&on_b, "fs_read", readme()).await {
                Err(_) => true,
                Ok(r) => r.is_error == Some(true) && denial(&r)["decision"] == "deny",
            };
            if refused {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "never refused on B"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        from_sent.push(sent.elapsed().as_secs_f64() * 1e3);
        from_answer.push(answered.elapsed().as_secs_f64() * 1e3);
        let _ = on_b.cancel().await;
    }
    (from_sent, from_answer)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn drive(opts: Opts) {
    let pg = Postgres::start();
    let store =
        |db: &str, extra: &str| format!("[store]\nurl = \"{}\"\n{extra}\n", pg.database(db));
    println!(
        "replicas: {} clients, {:?} a run; `capgate serve --http` processes on loopback",
        opts.clients, opts.duration
    );
    let setups = [
        Setup::start("sqlite, 1 replica", 1, ""),
        Setup::start("postgres, 1 replica", 1, &store("one", "")),
        Setup::start("postgres, 3 replicas", 3, &store("three", "")),
    ];
    println!("| store | issuance/s | guarded calls/s |");
    println!("|---|---|---|");
    let mut rows = Vec::new();
    for s in &setups {
        let i = issuance(s, opts.clients, opts.duration).await;
        let c = calls(s, opts.clients, opts.duration).await;
        println!("| {} | {i:.0} | {c:.0} |", s.name);
        rows.push((i, c));
    }
    println!(
        "postgres/sqlite, 1 replica: issuance {:.2}x, calls {:.2}x; 3 replicas/1: issuance {:.2}x, calls {:.2}x",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1,
        rows[2].0 / rows[1].0,
        rows[2].1 / rows[1].1
    );
    drop(setups);

    println!("\n| revocation on A, refused on B | from | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, extra) in [
        ("LISTEN/NOTIFY + poll 250ms", ""),
        ("poll 250ms only (notify = false)", "notify = false"),
    ] {
        let db = if extra.is_empty() { "notify" } else { "poll" };
        let s = Setup::start(name, 3, &store(db, extra));
        let (sent, answered) = propagation(&s, opts.revocations).await;
        for (from, mut ms) in [("DELETE sent", sent), ("DELETE answered", answered)] {
            ms.sort_by(f64::total_cmp);
            println!(
                "| {name} | {from} | {:.1} | {:.1} | {:.1} |",
                percentile(&ms, 0.5),
                percentile(&ms, 0.99),
                ms[ms.len() - 1]
            );
        }
    }
}
