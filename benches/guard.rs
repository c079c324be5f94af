//! Micro-benchmarks of the guard, each beside the biscuit-auth floor it stands on.
//!
//! "Floor" is what any Biscuit-based guard must pay with biscuit-auth alone: parse + verify the
//! token against the root key, then build an authorizer holding the same policy and the same
//! facts capgate supplies and run it. Every capgate figure here has its floor measured in the
//! same process, right next to it, so a ratio never mixes two runs. After the criterion groups a
//! paired run alternates capgate and the floor call by call and prints the cold-path ratio,
//! which is steadier on a noisy machine than two medians taken seconds apart.
//!
//! Run: `cargo bench --bench guard` (filter like any criterion bench: `-- cold`).

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::builder::{AuthorizerBuilder, BlockBuilder, date, fact, string};
use biscuit_auth::builder_ext::BuilderExt;
use biscuit_auth::{AuthorizerLimits, Biscuit, PublicKey};
use capgate_authz::policy::DEFAULT_INVOCATION_POLICY;
use capgate_authz::token::{VerifiedToken, Verifier, task_block};
use capgate_authz::{CallEnv, Channel, Transport};
use capgate_core::door::Prepared;
use capgate_core::task::{Intent, TaskGrant, Ttl};
use capgate_core::{Arguments, Resource};
use capgate_server::Host;
use criterion::{BatchSize, BenchmarkId, Criterion};
use serde_json::json;

use support::{Installation, args, doc_read_body, doc_read_tool, filler_tool, issue_task};

/// What a fixture's token and policy hold.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Tools granted to the agent and to the task (`doc_read` plus fillers).
    tools: usize,
    /// Resource prefixes of `doc_read`, in the agent's authority block and in the task block.
    prefixes: usize,
    /// `reject if` rules appended to the shipped invocation policy.
    rules: usize,
    /// `[guard] store_poll`.
    store_poll: &'static str,
    /// `[guard] decision_cache_entries`.
    decision_cache: usize,
}

const BASE: Shape = Shape {
    tools: 1,
    prefixes: 1,
    rules: 0,
    // capgate's default.
    store_poll: "5ms",
    decision_cache: 100_000,
};

/// One installation, a host over it, and tokens of 1, 2, 3 and 8 blocks.
struct Fixture {
    _dir: tempfile::TempDir,
    host: Host,
    root: PublicKey,
    agent: Arc<VerifiedToken>,
    /// `(blocks, token)`: the agent token (1), its task token (2), and the task token with one
    /// and six sub-agent blocks appended (3, 8).
    tokens: Vec<(usize, String)>,
    /// The task's id (the floor supplies `task($id)` like the guard does).
    task_id: String,
    /// The call every benchmark makes: `doc_read` on a file under the last granted prefix.
    call_args: Arguments,
    resource: String,
    floor: Floor,
}

impl Fixture {
    fn new(shape: Shape) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut policy = DEFAULT_INVOCATION_POLICY.to_owned();
        for k in 0..shape.rules {
            policy.push_str(&format!(
                "\n// rule: blocked-area-{k}\nreject if resource($r), $r.starts_with(\"/blocked/area{k}/\");\n"
            ));
        }
        let guard = format!(
            "store_poll = \"{}\"\ndecision_cache_entries = {}",
            shape.store_poll, shape.decision_cache
        );
        let inst = Installation::create(dir.path(), &guard, Some(&policy));

        let mut tools = vec!["doc_read".to_owned()];
        let mut registered = vec![doc_read_tool()];
        for k in 1..shape.tools {
            let name = format!("tool_{k:03}");
            registered.push(filler_tool(&name));
            tools.push(name);
        }
        let prefixes: Vec<String> = (0..shape.prefixes)
            .map(|k| format!("/docs/area{k}/"))
            .collect();
        let limits = vec![("doc_read".to_owned(), prefixes.clone())];
        let host = inst.host(registered);
        let verifier = host.verifier();

        let agent_b64 = inst.agent_token(&tools, &limits);
        let agent = verifier.verify(&agent_b64).expect("agent token verifies");
        let task_b64 = issue_task(&host, &agent, &tools, &limits);
        let task = verifier.verify(&task_b64).expect("task token verifies");
        let task_id = host
            .ledger()
            .task_of(&task)
            .expect("ledger")
            .map(|t| t.id.clone())
            .expect("the task token carries its task");
        // Sub-agent blocks, appended offline as a sub-agent would: each narrows (tool, resource,
        // time) without excluding the benchmark's call.
        let narrow = |token: &str, extra: usize| -> String {
            let mut b = Biscuit::from_base64(token, inst.root.public()).expect("parse");
            for i in 0..extra {
                let block = match i % 3 {
                    0 => BlockBuilder::new()
                        .code("check if tool($t), [\"doc_read\", \"echo\"].contains($t);"),
                    1 => BlockBuilder::new()
                        .code("check if resource($r), $r.starts_with(\"/docs/\");"),
                    _ => Ok(BlockBuilder::new().check_expiration_date(
                        SystemTime::now() + Duration::from_secs(40 * 60 + i as u64),
                    )),
                }
                .expect("block");
                b = b.append(block).expect("append");
            }
            b.to_base64().expect("encode")
        };
        let three = narrow(&task_b64, 1);
        let eight = narrow(&task_b64, 6);
        let tokens = vec![(1, agent_b64), (2, task_b64), (3, three), (8, eight)];

        let path = format!("area{}/readme.txt", shape.prefixes - 1);
        let resource = format!("/docs/{path}");
        let floor = Floor::new(
            inst.root.public(),
            &policy,
            AuthorizerLimits {
                max_facts: inst.config.guard.max_facts,
                max_iterations: inst.config.guard.max_iterations,
                max_time: inst.config.guard.max_time,
            },
            &[("acme", "/tenants/acme/"), ("globex", "/tenants/globex/")],
        );
        let me = Fixture {
            _dir: dir,
            root: inst.root.public(),
            host,
            agent,
            tokens,
            task_id,
            call_args: args(json!({"path": path})),
            resource,
            floor,
        };
        me.check_floor_agrees();
        me
    }

    fn token(&self, blocks: usize) -> &str {
        self.tokens
            .iter()
            .find(|(b, _)| *b == blocks)
            .map(|(_, t)| t.as_str())
            .expect("a token of that many blocks")
    }

    fn prepare(&self) -> Prepared {
        self.host
            .catalog()
            .prepare("doc_read", Some(self.call_args.clone()))
            .expect("valid call")
    }

    fn facts(&self, session: String, blocks: usize) -> CallFacts {
        CallFacts {
            tool: "doc_read",
            operation: "read",
            resource: self.resource.clone(),
            args: vec![(
                "path".into(),
                self.call_args["path"].as_str().unwrap_or("").into(),
            )],
            transport: Transport::InProcess.as_str(),
            session,
            // An agent token alone carries no task block.
            task: (blocks >= 2).then(|| self.task_id.clone()),
        }
    }

    /// The floor must decide exactly what capgate decides, or the comparison is meaningless.
    fn check_floor_agrees(&self) {
        for (blocks, _) in &self.tokens {
            let token = self.token(*blocks);
            let verified = self.host.verifier().verify(token).expect("verifies");
            let capgate = self
                .host
                .guard()
                .decide(&verified, &self.prepare(), &env("agree".into()))
                .is_ok();
            let floor = self
                .floor
                .decide(token, &self.facts("agree".into(), *blocks));
            assert_eq!(
                capgate, floor,
                "capgate and the floor disagree at {blocks} blocks"
            );
            assert_eq!(capgate, *blocks >= 2, "only task tokens are allowed");
        }
    }
}

fn env(session: String) -> CallEnv {
    CallEnv {
        transport: Transport::InProcess,
        session: Arc::from(session),
        holder: None,
    }
}

/// A distinct session per call: the decision cache is keyed on the session, so every call with a
/// new one runs Datalog, as on first sight of a token.
fn fresh_session() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("session-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The facts of one call, as the floor supplies them.
struct CallFacts {
    tool: &'static str,
    operation: &'static str,
    resource: String,
    args: Vec<(String, String)>,
    transport: &'static str,
    session: String,
    task: Option<String>,
}

/// biscuit-auth alone: parse + verify, then the same policy and facts as capgate's guard.
struct Floor {
    root: PublicKey,
    /// The policy parsed once, limits and static facts loaded: what any sensible guard keeps.
    template: AuthorizerBuilder,
}

impl Floor {
    fn new(
        root: PublicKey,
        policy: &str,
        limits: AuthorizerLimits,
        tenants: &[(&str, &str)],
    ) -> Self {
        let mut template = AuthorizerBuilder::new()
            .code(policy)
            .expect("policy parses")
            .set_limits(limits);
        for (t, p) in tenants {
            template = template
                .fact(fact("tenant_prefix", &[string(t), string(p)]))
                .expect("fact");
        }
        Floor { root, template }
    }

    fn decide(&self, token: &str, call: &CallFacts) -> bool {
        match Biscuit::from_base64(token, self.root) {
            Ok(b) => self.authorize(&b, call),
            Err(_) => false,
        }
    }

    fn authorize(&self, token: &Biscuit, c: &CallFacts) -> bool {
        let mut b = self
            .template
            .clone()
            .fact(fact("time", &[date(&SystemTime::now())]))
            .and_then(|b| b.fact(fact("tool", &[string(c.tool)])))
            .and_then(|b| b.fact(fact("operation", &[string(c.operation)])))
            .and_then(|b| b.fact(fact("resource", &[string(&c.resource)])))
            .and_then(|b| b.fact(fact("transport", &[string(c.transport)])))
            .and_then(|b| b.fact(fact("session", &[string(&c.session)])))
            .expect("facts");
        if let Some(task) = &c.task {
            b = b.fact(fact("task", &[string(task)])).expect("fact");
        }
        for (name, value) in &c.args {
            b = b
                .fact(fact("arg", &[string(name), string(value)]))
                .expect("fact");
        }
        b.build(token).and_then(|mut a| a.authorize()).is_ok()
    }
}

/// Cold: first sight of a token. capgate's path is the real one: `Verifier::verify` on a fresh
/// verifier (a cache miss: parse, verify every signature, read identity, expiry and time
/// bounds), then `Guard::authorize` (store check, task lookup, decision-cache miss, Datalog,
/// cache insert). A new session per call makes every decision a cache miss. Preparing the call
/// (schema validation) is left out: it is not the guard.
fn cold(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("cold");
    // The verify step alone: capgate's `Verifier::verify` on a new token against biscuit-auth's
    // parse + verify. The difference is what capgate reads from a token beyond its signatures.
    for &(blocks, _) in &fx.tokens {
        let token = fx.token(blocks);
        g.bench_with_input(BenchmarkId::new("verify/new", blocks), &blocks, |b, _| {
            b.iter_batched(
                || Verifier::new(fx.root, 16),
                // The verifier is handed back so that criterion drops it outside the clock:
                // tearing down a cache is not part of verifying a token.
                |verifier| {
                    let ok = verifier.verify(token).is_ok();
                    (verifier, ok)
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("verify/floor", blocks), &blocks, |b, _| {
            b.iter(|| Biscuit::from_base64(token, fx.root).is_ok())
        });
    }
    for &(blocks, _) in &fx.tokens {
        let token = fx.token(blocks);
        g.bench_with_input(BenchmarkId::new("new", blocks), &blocks, |b, _| {
            b.iter_batched(
                || {
                    (
                        Verifier::new(fx.root, 16),
                        fx.prepare(),
                        env(fresh_session()),
                    )
                },
                |(verifier, call, env)| {
                    let verified = verifier.verify(token);
                    let ok = verified.map(|v| fx.host.guard().decide(&v, &call, &env).is_ok());
                    (verifier, ok)
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("floor", blocks), &blocks, |b, &blocks| {
            b.iter_batched(
                || fx.facts(fresh_session(), blocks),
                |facts| fx.floor.decide(token, &facts),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Warm: the token was seen before (verified and cached) and so was this exact call, so the
/// decision cache answers. Measured with and without the verifier's cache lookup, and with the
/// decision cache off (the Datalog run the cache saves).
fn warm(c: &mut Criterion, fx: &Fixture, no_cache: &Fixture) {
    let mut g = c.benchmark_group("warm");
    for &(blocks, _) in fx.tokens.iter().filter(|(b, _)| *b >= 2) {
        let token = fx.token(blocks);
        let session = env("warm".into());
        let v = fx.host.verifier().verify(token).expect("verifies");
        let first = fx.host.guard().decide(&v, &fx.prepare(), &session);
        assert!(first.is_ok(), "the warm call is allowed");
        let again = fx.host.guard().decide(&v, &fx.prepare(), &session);
        assert!(
            again.is_ok_and(|g| g.cached),
            "the second identical call is answered from the cache"
        );
        g.bench_with_input(
            BenchmarkId::new("verify+authorize", blocks),
            &blocks,
            |b, _| {
                b.iter_batched(
                    || fx.prepare(),
                    |call| {
                        let v = fx.host.verifier().verify(token).expect("cached");
                        fx.host.guard().decide(&v, &call, &session).is_ok()
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        g.bench_with_input(BenchmarkId::new("authorize", blocks), &blocks, |b, _| {
            b.iter_batched(
                || fx.prepare(),
                |call| fx.host.guard().decide(&v, &call, &session).is_ok(),
                BatchSize::SmallInput,
            )
        });
    }
    // The same warm token with the decision cache off: every call runs Datalog.
    let token = no_cache.token(2);
    let v = no_cache.host.verifier().verify(token).expect("verifies");
    let session = env("warm".into());
    g.bench_function("authorize, decision cache off/2", |b| {
        b.iter_batched(
            || no_cache.prepare(),
            |call| no_cache.host.guard().decide(&v, &call, &session).is_ok(),
            BatchSize::SmallInput,
        )
    });
    // The floor of that: authorizing an already-verified token with biscuit-auth.
    let parsed = Biscuit::from_base64(token, no_cache.root).expect("parse");
    let facts = no_cache.facts("warm".into(), 2);
    g.bench_function("floor authorize (verified token)/2", |b| {
        b.iter(|| no_cache.floor.authorize(&parsed, &facts))
    });
    g.finish();
}

/// Authorizer cost as tools, prefixes and policy rules grow: a verified token, the decision
/// cache missing (new session per call), beside the floor's authorizer on the same token.
fn scaling(c: &mut Criterion, fixtures: &[(&str, usize, Fixture)]) {
    let mut g = c.benchmark_group("scaling");
    for (dim, n, fx) in fixtures {
        let token = fx.token(2);
        let v = fx.host.verifier().verify(token).expect("verifies");
        g.bench_with_input(BenchmarkId::new(format!("{dim}/capgate"), n), n, |b, _| {
            b.iter_batched(
                || (fx.prepare(), env(fresh_session())),
                |(call, env)| fx.host.guard().decide(&v, &call, &env).is_ok(),
                BatchSize::SmallInput,
            )
        });
        let parsed = Biscuit::from_base64(token, fx.root).expect("parse");
        g.bench_with_input(BenchmarkId::new(format!("{dim}/floor"), n), n, |b, _| {
            b.iter_batched(
                || fx.facts(fresh_session(), 2),
                |facts| fx.floor.authorize(&parsed, &facts),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Task issuance, end to end (issuance policy, append the task block, encode, store the task,
/// audit line), beside the floor of its token work (append a block + serialize).
fn issuance(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("issuance");
    let intent = Intent {
        purpose: "benchmark".into(),
        tools: vec!["doc_read".into()],
        resources: [("doc_read".to_owned(), vec!["/docs/area0/".to_owned()])].into(),
        ttl: Some(Ttl::Text("50m".into())),
        ..Intent::default()
    };
    g.bench_function("issue (policy+attenuate+store)", |b| {
        b.iter(|| {
            fx.host
                .issuer()
                .issue(&fx.agent, intent.clone(), Channel::Cli)
                .expect("issued")
        })
    });
    let grant = TaskGrant {
        task_id: "00000000-0000-4000-8000-000000000000".into(),
        tools: [("doc_read".to_owned(), vec!["/docs/area0/".to_owned()])].into(),
        expires_at: SystemTime::now() + Duration::from_secs(3000),
        budget: None,
        workload: None,
        holder: None,
    };
    // The storage part of issuance on its own: one task record into the store (and the
    // ledger's map), as `issue` does after the token is built.
    let template = fx
        .host
        .issuer()
        .issue(&fx.agent, intent.clone(), Channel::Cli)
        .expect("issued")
        .record;
    let mut n = 0u64;
    g.bench_function("store insert", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut r = template.clone();
                r.id = format!("bench-insert-{n}");
                r.revocation_id = format!("{:064x}", n);
                r
            },
            |r| fx.host.ledger().insert(r).expect("inserted"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("floor append+serialize", |b| {
        b.iter(|| {
            let block = task_block(&grant).expect("block");
            fx.agent
                .biscuit()
                .append(block)
                .and_then(|t| t.to_base64())
                .expect("append")
        })
    });
    g.finish();
}

/// The revocation/store check: `TaskLedger::sync`, which asks SQLite for the revocation counter
/// on every call when `[guard] store_poll` is 0, and otherwise only once the interval has passed
/// (a clock read in between); and the warm guard with each setting.
fn store(c: &mut Criterion, poll0: &Fixture, poll5: &Fixture) {
    let mut g = c.benchmark_group("store");
    for (name, fx) in [("poll=0s", poll0), ("poll=5ms (default)", poll5)] {
        g.bench_function(format!("ledger.sync/{name}"), |b| {
            b.iter(|| fx.host.ledger().sync().expect("sync"))
        });
        let token = fx.token(2);
        let v = fx.host.verifier().verify(token).expect("verifies");
        let session = env("warm".into());
        assert!(fx.host.guard().decide(&v, &fx.prepare(), &session).is_ok());
        g.bench_function(format!("warm authorize/{name}"), |b| {
            b.iter_batched(
                || fx.prepare(),
                |call| fx.host.guard().decide(&v, &call, &session).is_ok(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Alternates capgate's cold path and the floor call by call, so both see the same machine
/// state, and prints medians and their ratio per token length.
fn paired_cold(fx: &Fixture, rounds: usize) {
    println!("\npaired cold path, {rounds} calls each, alternating (medians, µs):");
    println!(
        "{:>7} {:>10} {:>10} {:>8}",
        "blocks", "capgate", "floor", "ratio"
    );
    for &(blocks, _) in &fx.tokens {
        let token = fx.token(blocks);
        let mut ours = Vec::with_capacity(rounds);
        let mut floor = Vec::with_capacity(rounds);
        for i in 0..rounds + rounds / 10 {
            // Everything but the measured call is prepared outside the clock.
            let verifier = Verifier::new(fx.root, 16);
            let call = fx.prepare();
            let e = env(fresh_session());
            let facts = fx.facts(fresh_session(), blocks);
            let run_ours = || {
                let t = Instant::now();
                let r = verifier
                    .verify(token)
                    .is_ok_and(|v| fx.host.guard().decide(&v, &call, &e).is_ok());
                let d = t.elapsed();
                black_box(r);
                d
            };
            let run_floor = || {
                let t = Instant::now();
                let r = fx.floor.decide(token, &facts);
                let d = t.elapsed();
                black_box(r);
                d
            };
            // Which side goes first alternates too, so neither always runs on a warmer cache.
            let (a, b) = if i % 2 == 0 {
                let a = run_ours();
                (a, run_floor())
            } else {
                let b = run_floor();
                (run_ours(), b)
            };
            // The first tenth warms caches and the allocator; it is not counted.
            if i >= rounds / 10 {
                ours.push(a);
                floor.push(b);
            }
        }
        let m_ours = median(&mut ours).as_secs_f64() * 1e6;
        let m_floor = median(&mut floor).as_secs_f64() * 1e6;
        println!(
            "{blocks:>7} {m_ours:>10.1} {m_floor:>10.1} {:>8.3}",
            m_ours / m_floor
        );
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The whole call pipeline in-process (`Host::call`: verify lookup, span, schema, resource,
/// guard, audit line, dispatch, metrics) against calling the same tool directly: what capgate
/// adds to every call once the transport has delivered it.
fn pipeline(c: &mut Criterion, fx: &Fixture) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let token = fx.token(2).to_owned();
    rt.block_on(fx.host.call(&token, "doc_read", fx.call_args.clone()))
        .expect("the pipeline call is allowed");
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("Host::call doc_read/2", |b| {
        b.iter(|| {
            rt.block_on(fx.host.call(&token, "doc_read", fx.call_args.clone()))
                .is_ok()
        })
    });
    // A budgeted token pays for its count: one SQLite transaction per allowed call, side by
    // side with the same call under a 3-block token whose extra block only narrows.
    let append = |code: &str| {
        Biscuit::from_base64(fx.token(2), fx.root)
            .expect("parse")
            .append(BlockBuilder::new().code(code).expect("block"))
            .expect("append")
            .to_base64()
            .expect("encode")
    };
    let narrowed = append("check if resource($r), $r.starts_with(\"/docs/\");");
    let budgeted = append("budget_calls(1000000000);");
    for (name, token) in [("narrowing", &narrowed), ("budget", &budgeted)] {
        rt.block_on(fx.host.call(token, "doc_read", fx.call_args.clone()))
            .expect("allowed");
        g.bench_function(format!("Host::call doc_read/3 ({name} block)"), |b| {
            b.iter(|| {
                rt.block_on(fx.host.call(token, "doc_read", fx.call_args.clone()))
                    .is_ok()
            })
        });
    }
    // The tool's own work, run as the tool runs it (an async body on the same runtime), but
    // without capgate around it: a tool cannot be called outside the door, so the floor calls
    // the body the tool is built from.
    let resource = Resource::new(fx.resource.clone());
    g.bench_function("floor: the tool alone", |b| {
        b.iter(|| {
            let args = fx.call_args.clone();
            rt.block_on(async { doc_read_body(&args, &resource) })
                .is_ok()
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let base = Fixture::new(BASE);
    let no_cache = Fixture::new(Shape {
        decision_cache: 0,
        ..BASE
    });
    let poll0 = Fixture::new(Shape {
        store_poll: "0s",
        ..BASE
    });
    let mut scaled = Vec::new();
    for n in [1, 10, 50, 100] {
        scaled.push(("tools", n, Fixture::new(Shape { tools: n, ..BASE })));
        scaled.push((
            "prefixes",
            n,
            Fixture::new(Shape {
                prefixes: n,
                ..BASE
            }),
        ));
        scaled.push(("rules", n, Fixture::new(Shape { rules: n, ..BASE })));
    }

    cold(&mut c, &base);
    warm(&mut c, &base, &no_cache);
    scaling(&mut c, &scaled);
    issuance(&mut c, &base);
    store(&mut c, &poll0, &base);
    pipeline(&mut c, &base);
    c.final_summary();

    // The paired run is a measurement, not a test: skip it under `cargo test --benches`, and
    // when a filter names some other group.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let benching = argv.iter().any(|a| a == "--bench");
    let filter = argv.iter().find(|a| !a.starts_with('-'));
    if benching && filter.is_none_or(|f| "paired/cold".contains(f.as_str())) {
        paired_cold(&base, 3000);
    }
}
