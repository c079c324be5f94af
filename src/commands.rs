//! The one-shot commands: keys, tokens, tasks, policy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use capgate_authz::token::{self, AgentGrant, ApprovalScope, RootKey};
use capgate_authz::{Channel, IssuanceError};
use capgate_core::Registry;
use capgate_core::task::{Budget, EndReason, Intent, TaskRecord, Ttl};
use capgate_core::time::{parse_duration, rfc3339};
use capgate_server::config::Config;
use capgate_server::store;
use capgate_server::telemetry::{AuditLog, AuditRecord, Providers};
use capgate_server::{Error, Host, HostBuilder};

use crate::cli::{
    AuditCommand, KeysCommand, PolicyCommand, StoreCommand, TaskBeginArgs, TaskCommand,
    TokenCommand,
};

type Extend<'a> = &'a dyn Fn(&mut Registry, &Config) -> Result<(), Error>;

pub(crate) fn store(config: &Config, cmd: &StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Migrate => {
            let done = store::migrate(config)?;
            println!("task store {done}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn keys(config: &Config, cmd: &KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Init { dir, force } => {
            let path = match dir {
                Some(d) => crate::absolute(d)?.join("root.key"),
                None => config.root_key_file(),
            };
            let key = RootKey::generate();
            key.write(&path, *force)?;
            eprintln!(
                "capgate: wrote root key {} (mode 0600); its public key:",
                path.display()
            );
            println!("{}", key.public_text());
        }
        KeysCommand::Show => {
            let key = RootKey::load(&config.root_key_file())?;
            println!("{}", key.public_text());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn token(
    config: &Config,
    cmd: &TokenCommand,
    extend: Extend<'_>,
) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Mint {
            agent,
            tenant,
            tools,
            resources,
            ttl,
        } => {
            let key = RootKey::load(&config.root_key_file())?;
            let (registry, _) =
                crate::registry(config, None, &crate::offline_gateway(config)?, extend)?;
            for t in tools {
                if registry.catalog().spec(t).is_none() {
                    bail!(
                        "unknown tool `{t}`; this capgate hosts: {}",
                        registry.catalog().names()
                    );
                }
            }
            let mut prefixes: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (tool, raws) in crate::parse_resources(resources)? {
                for raw in raws {
                    let p = registry.catalog().canonical_prefix(&tool, &raw)?;
                    prefixes.entry(tool.clone()).or_default().push(p);
                }
            }
            let ttl = match ttl.as_str() {
                "never" => None,
                s => Some(parse_duration(s).map_err(anyhow::Error::msg)?),
            };
            let grant = AgentGrant {
                agent: agent.clone(),
                tenant: tenant.clone(),
                rights: tools.clone(),
                prefixes,
                ttl,
                workload: None,
            };
            let token = token::mint_agent_token(&key, &grant)?;
            let encoded = token.to_base64().context("encoding the token")?;
            let ids = token.revocation_identifiers();
            eprintln!(
                "capgate: minted an agent token for `{agent}` (tenant `{tenant}`), rights: {}; expires {}; revocation id {}",
                tools.join(", "),
                ttl.map(|t| rfc3339(SystemTime::now() + t))
                    .unwrap_or_else(|| "never".into()),
                ids.first().map(hex::encode).unwrap_or_default()
            );
            println!("{encoded}");
        }
        TokenCommand::Approval {
            by,
            agent,
            tenant,
            ttl,
        } => {
            let key = RootKey::load(&config.root_key_file())?;
            let ttl = parse_duration(ttl).map_err(anyhow::Error::msg)?;
            let scope = ApprovalScope {
                agent: agent.clone(),
                tenant: tenant.clone(),
            };
            let token = token::mint_approval(&key, by, &scope, ttl)?;
            let encoded = token.to_base64().context("encoding the approval")?;
            eprintln!(
                "capgate: minted an approval by `{by}` for one task request of {}{}; valid until {}; revocation id {}",
                agent
                    .as_deref()
                    .map_or("any agent".to_owned(), |a| format!("agent `{a}`")),
                tenant
                    .as_deref()
                    .map_or(String::new(), |t| format!(" of tenant `{t}`")),
                rfc3339(SystemTime::now() + ttl),
                token
                    .revocation_identifiers()
                    .first()
                    .map(hex::encode)
                    .unwrap_or_default()
            );
            println!("{encoded}");
        }
        TokenCommand::Revoke { token, reason } => {
            let token = read_token_arg(token)?;
            // Revoking needs no trust in the token: its first revocation id is only ever
            // matched against tokens that do verify.
            let ids = biscuit_auth_ids(&token)?;
            let store = store::open(config)?;
            store.revoke(&ids[0], reason)?;
            eprintln!(
                "capgate: revoked authority block {}; every task and token derived from this token is refused from now on",
                ids[0]
            );
        }
        TokenCommand::Inspect { token, json } => {
            let token = read_token_arg(token)?;
            let root = RootKey::load(&config.root_key_file())
                .ok()
                .map(|k| k.public());
            let inspection = token::inspect(&token, root)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&inspection)?);
            } else {
                print!("{}", inspection.render());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn biscuit_auth_ids(token: &str) -> anyhow::Result<Vec<String>> {
    let inspection = token::inspect(token, None)?;
    let ids: Vec<String> = inspection
        .blocks
        .into_iter()
        .map(|b| b.revocation_id)
        .collect();
    if ids.is_empty() {
        bail!("the token has no blocks");
    }
    Ok(ids)
}

fn read_token_arg(arg: &str) -> anyhow::Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        Ok(s.trim().to_owned())
    } else {
        Ok(arg.trim().to_owned())
    }
}

/// A host for one command. Everything it does here is blocking (store, issuer); the exporters
/// run on their own threads, so no async runtime is needed.
fn host(config: Config, extend: Extend<'_>) -> anyhow::Result<Host> {
    let providers = Providers::from_env(&config.telemetry)?;
    let (registry, _) = crate::registry(&config, None, &crate::offline_gateway(&config)?, extend)?;
    let mut builder = HostBuilder::new(config).providers(providers);
    *builder.registry_mut() = registry;
    let host = builder.build()?;
    for note in host.notes() {
        eprintln!("capgate: {note}");
    }
    Ok(host)
}

pub(crate) fn task(
    config: Config,
    cmd: &TaskCommand,
    extend: Extend<'_>,
) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Begin(args) => begin(config, args, extend),
        TaskCommand::End { id } => {
            let host = host(config, extend)?;
            let ended = host.end_task(id, EndReason::Completed)?;
            host.telemetry().shutdown();
            match ended {
                Some(t) => {
                    eprintln!(
                        "capgate: task {} ended; its access is revoked, with every token derived from it",
                        t.id
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => match host.ledger().task(id)? {
                    Some(t) => {
                        eprintln!(
                            "capgate: task {} had already ended ({})",
                            t.id,
                            t.end_reason.map(|r| r.as_str()).unwrap_or("unknown")
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    None => bail!("no task `{id}` in {}", store::shown(host.config())),
                },
            }
        }
        TaskCommand::Show { id, json } => show(&config, id, *json),
        TaskCommand::List { limit } => {
            let store = store::open(&config)?;
            let now = SystemTime::now();
            for t in store.tasks(*limit)? {
                let state = match (t.end_reason, t.is_active(now)) {
                    (Some(r), _) => r.as_str().to_owned(),
                    (None, true) => "active".into(),
                    (None, false) => "expired".into(),
                };
                println!(
                    "{}  {:<9}  {:<16} {:<12} {}",
                    t.id,
                    state,
                    truncate(&t.agent, 16),
                    truncate(&t.tenant, 12),
                    truncate(&t.intent.purpose, 50)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `--budget-*` flags as a budget; `None` when none is given.
fn budget_of(args: &TaskBeginArgs) -> anyhow::Result<Option<Budget>> {
    let mut per_tool = BTreeMap::new();
    for item in &args.budget_tools {
        let (tool, n) = item
            .split_once('=')
            .with_context(|| format!("`--budget-tool {item}`: expected TOOL=N, e.g. fs_read=20"))?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("`--budget-tool {item}`: `{n}` is not a whole number"))?;
        if per_tool.insert(tool.to_owned(), n).is_some() {
            bail!("`--budget-tool` names `{tool}` twice");
        }
    }
    let budget = Budget {
        calls: args.budget_calls,
        per_tool,
        per_minute: args.budget_per_minute,
    };
    Ok((!budget.is_empty()).then_some(budget))
}

fn begin(config: Config, args: &TaskBeginArgs, extend: Extend<'_>) -> anyhow::Result<ExitCode> {
    let host = host(config, extend)?;
    let token = host
        .verifier()
        .verify(&args.token)
        .map_err(|e| anyhow::anyhow!("the agent token: {e}"))?;
    let intent = Intent {
        purpose: args.purpose.clone(),
        tools: args.tools.clone(),
        resources: crate::parse_resources(&args.resources)?,
        ttl: args.ttl.clone().map(Ttl::Text),
        on_behalf_of: args.on_behalf_of.clone(),
        approved_by: args.approved_by.clone(),
        tenant: None,
        budget: budget_of(args)?,
    };
    let outcome = host.issuer().issue(&token, intent, Channel::Cli);
    host.telemetry().shutdown();
    match outcome {
        Ok(task) => {
            let r = &task.record;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "task_id": r.id,
                        "token": task.token,
                        "expires_at": rfc3339(r.expires_at),
                        "granted": r.grant.tools,
                        "trace_id": r.trace_id,
                    }))?
                );
            } else {
                eprintln!(
                    "capgate: task {} begun, expires {}; granted {}",
                    r.id,
                    rfc3339(r.expires_at),
                    serde_json::to_string(&r.grant.tools)?
                );
                println!("{}", task.token);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(IssuanceError::Denied {
            tool,
            resource,
            refusal,
        }) => {
            eprintln!(
                "capgate: task refused for `{tool}` on `{resource}`: {}",
                refusal.message
            );
            for c in &refusal.failed_checks {
                eprintln!(
                    "  - {} {}{}: {}",
                    c.source,
                    c.rule,
                    c.location
                        .as_deref()
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default(),
                    c.datalog
                );
            }
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}

/// What `task show` aggregates from the audit log.
#[derive(Default, serde::Serialize)]
struct ToolAction {
    calls: u64,
    allowed: u64,
    denied: u64,
    invalid: u64,
    out_of_intent: u64,
}

fn show(config: &Config, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = store::open(config)?;
    let Some(task) = store.task(id)? else {
        bail!("no task `{id}` in {}", store::shown(config));
    };
    let records: Vec<AuditRecord> = AuditLog::read_all(&config.audit_file(), config.audit.keep)
        .into_iter()
        .filter(|r| r.task.as_deref() == Some(id))
        .collect();
    let mut actions: BTreeMap<String, ToolAction> = BTreeMap::new();
    let mut denials = Vec::new();
    for r in records.iter().filter(|r| r.kind == "call") {
        let a = actions.entry(r.tool.clone()).or_default();
        a.calls += 1;
        match r.decision.as_str() {
            "allow" => a.allowed += 1,
            "deny" => {
                a.denied += 1;
                denials.push(r);
            }
            _ => a.invalid += 1,
        }
        if !task.declares(&r.tool, r.resource.as_deref().unwrap_or("")) {
            a.out_of_intent += 1;
        }
    }
    let unused: Vec<&String> = task
        .grant
        .tools
        .keys()
        .filter(|t| actions.get(*t).is_none_or(|a| a.allowed == 0))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "task": task,
                "actions": actions,
                "unused_grants": unused,
                "denials": denials,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_show(&task, &actions, &unused, &denials));
    Ok(ExitCode::SUCCESS)
}

fn render_show(
    task: &TaskRecord,
    actions: &BTreeMap<String, ToolAction>,
    unused: &[&String],
    denials: &[&AuditRecord],
) -> String {
    let now = SystemTime::now();
    let state = match (task.end_reason, task.is_active(now)) {
        (Some(r), _) => format!("ended ({})", r.as_str()),
        (None, true) => "active".into(),
        (None, false) => "expired (not yet reaped)".into(),
    };
    let mut o = String::new();
    let _ = writeln!(o, "task      {}  [{state}]", task.id);
    let _ = writeln!(o, "agent     {} (tenant {})", task.agent, task.tenant);
    let _ = writeln!(o, "purpose   {}", task.intent.purpose);
    if let Some(w) = &task.intent.on_behalf_of {
        let _ = writeln!(o, "for       {w}");
    }
    if let Some(a) = &task.intent.approved_by {
        let _ = writeln!(o, "approved  {a}");
    }
    if let Some(by) = &task.revoked_by {
        let _ = writeln!(o, "revoked   by {by}");
    }
    if let Some(b) = &task.grant.budget {
        let _ = writeln!(
            o,
            "budget    {}",
            serde_json::to_string(b).unwrap_or_default()
        );
    }
    let _ = writeln!(
        o,
        "time      {} → {}{}",
        rfc3339(task.created_at),
        rfc3339(task.expires_at),
        task.ended_at
            .map(|t| format!(" (ended {})", rfc3339(t)))
            .unwrap_or_default()
    );
    let _ = writeln!(o, "trace     {}", task.trace_id);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<14} {:<22} {:<34} {:>5} {:>6} {:>6} {:>6}",
        "tool", "requested", "granted", "used", "calls", "denied", "beyond"
    );
    let mut tools: Vec<&String> = task.grant.tools.keys().collect();
    for t in actions.keys() {
        if !tools.contains(&t) {
            tools.push(t);
        }
    }
    for tool in tools {
        let requested = if !task.intent.tools.contains(tool) {
            "(not requested)".to_owned()
        } else {
            match task.intent.resources.get(tool) {
                Some(r) => r.join(", "),
                None => "(all)".into(),
            }
        };
        let granted = match task.grant.tools.get(tool) {
            Some(p) => p
                .iter()
                .map(|p| {
                    if p.is_empty() {
                        "(all)".to_owned()
                    } else {
                        p.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => "(not granted)".into(),
        };
        let a = actions.get(tool);
        let used = if a.is_some_and(|a| a.allowed > 0) {
            "yes"
        } else {
            "no"
        };
        let _ = writeln!(
            o,
            "{:<14} {:<22} {:<34} {:>5} {:>6} {:>6} {:>6}",
            truncate(tool, 14),
            truncate(&requested, 22),
            truncate(&granted, 34),
            used,
            a.map_or(0, |a| a.calls),
            a.map_or(0, |a| a.denied),
            a.map_or(0, |a| a.out_of_intent),
        );
    }
    let _ = writeln!(o);
    if unused.is_empty() {
        let _ = writeln!(o, "unused grants: none");
    } else {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            o,
            "unused grants: {} (granted, never used: trim them next time)",
            names.join(", ")
        );
    }
    if denials.is_empty() {
        let _ = writeln!(o, "denied attempts: none");
    } else {
        let _ = writeln!(
            o,
            "denied attempts: {} (last {} shown)",
            denials.len(),
            denials.len().min(5)
        );
        for d in denials.iter().rev().take(5).rev() {
            let _ = writeln!(
                o,
                "  {}  {} {}  {}",
                d.time,
                d.tool,
                d.resource.as_deref().unwrap_or(""),
                truncate(d.reason.as_deref().unwrap_or(""), 120)
            );
        }
    }
    o
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub(crate) fn policy(config: &Config, cmd: &PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check { strict } = cmd;
    let warnings = Host::policy_warnings(config)?;
    let (_, inv) = config.invocation_policy()?;
    let (_, iss) = config.issuance_policy()?;
    for (origin, w) in &warnings {
        eprintln!("warning: {origin}:{}: {}", w.line, w.message);
    }
    println!("ok: {inv}");
    println!("ok: {iss}");
    if *strict && !warnings.is_empty() {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit(config: &Config, cmd: &AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify {
        file,
        public_key,
        json,
    } = cmd;
    let public = match public_key {
        Some(text) => text
            .trim()
            .parse::<biscuit_auth::PublicKey>()
            .map_err(|e| anyhow::anyhow!("--public-key `{text}`: {e}"))?,
        None => RootKey::load(&config.root_key_file())
            .context("no --public-key given, so the configured root key is needed")?
            .public(),
    };
    let path = file.clone().unwrap_or_else(|| config.audit_file());
    let report = capgate_server::telemetry::audit::verify(&path, Some(&public))?;
    let intact = report.is_intact();
    if *json {
        let out = serde_json::json!({
            "intact": intact,
            "files": report.files,
            "lines": report.lines,
            "legacy_lines": report.legacy,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "checkpoints": report.checkpoints,
            "signed_through_seq": report.signed_through,
            "unsigned_tail": report.unsigned_tail,
            "torn_tail_bytes": report.torn_tail,
            "tamper": report.tamper.as_ref().map(|t| serde_json::json!({
                "file": t.file, "line": t.line, "what": t.what,
            })),
        });
        println!("{out:#}");
    } else if let Some(t) = &report.tamper {
        println!("BROKEN: {t}");
    } else if !intact {
        println!(
            "NOT ANCHORED: {} chained lines but no checkpoint signed by {public}: the chain \
             proves nothing",
            report.lines
        );
    } else {
        println!(
            "ok: {} lines in {} file(s), seq {} to {}, {} signed checkpoint(s)",
            report.lines,
            report.files.len(),
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.checkpoints
        );
        if report.first_seq.is_some_and(|s| s > 0) {
            println!(
                "note: the chain starts at seq {}: older lines were rotated away",
                report.first_seq.unwrap_or(0)
            );
        }
        if report.unsigned_tail > 0 {
            println!(
                "note: the last {} line(s) come after the last checkpoint: chained, not yet \
                 signed (capgate signs at shutdown; a crash leaves them so)",
                report.unsigned_tail
            );
        }
        if report.legacy > 0 {
            println!(
                "note: {} line(s) at the start predate the chain and are not protected",
                report.legacy
            );
        }
        if let Some(bytes) = report.torn_tail {
            println!(
                "note: the last line is torn ({bytes} bytes, a crash mid-write); capgate cuts \
                 it off at its next start"
            );
        }
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
