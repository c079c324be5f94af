//! Workload identity and holder-bound tokens, against the real binary: JWTs and DPoP proofs are
//! made by PyJWT (installed by this test into `target/jose-py`), keys are served as a JWKS by
//! Python's own HTTP server on loopback (and from a file), and every refusal is checked for
//! what it did not do: no task issued, no tool run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capgate_testkit::*;
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";

/// PyJWT with its crypto backend, installed once into `target/jose-py`.
fn python_path() -> PathBuf {
    pip_target("jose-py", "pyjwt[crypto]==2.10.1", "jwt")
}

fn jose(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/jose.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", python_path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "jose.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A workload platform: signing keys, the JWKS it publishes (over HTTP by Python's
/// `http.server`, and as a file), and the JWTs it signs.
struct Platform {
    dir: tempfile::TempDir,
    server: Child,
    port: u16,
}

impl Platform {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41235 (http://127.0.0.1:41235/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        let p = Platform { dir, server, port };
        p.keygen("k1");
        p.publish(&["k1"]);
        p
    }

    fn keygen(&self, kid: &str) {
        let jwk = jose(&["keygen", "ES256", kid, self.dir.path().to_str().unwrap()]);
        std::fs::write(self.dir.path().join(format!("{kid}.jwk")), jwk).unwrap();
    }

    fn publish(&self, kids: &[&str]) {
        let out = self.dir.path().join("jwks.json");
        let mut args = vec!["jwks".to_owned(), out.display().to_string()];
        for k in kids {
            args.push(
                self.dir
                    .path()
                    .join(format!("{k}.jwk"))
                    .display()
                    .to_string(),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        jose(&args);
    }

    fn jwks_url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    fn pem(&self, kid: &str) -> String {
        self.dir
            .path()
            .join(format!("{kid}.pem"))
            .display()
            .to_string()
    }

    /// The usual claims: this issuer, capgate's audience, ten minutes, tenant acme.
    fn claims(sub: &str) -> Value {
        json!({"iss": ISSUER, "aud": "capgate", "sub": sub, "tenant": "acme",
               "iat": now(), "exp": now() + 600})
    }

    fn jwt(&self, kid: &str, claims: &Value) -> String {
        jose(&["jwt", &self.pem(kid), "ES256", kid, &claims.to_string()])
    }

    fn jwt_with_header(&self, kid: &str, claims: &Value, header: &Value) -> String {
        jose(&[
            "jwt",
            &self.pem(kid),
            "ES256",
            kid,
            &claims.to_string(),
            &header.to_string(),
        ])
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// An installation trusting `ISSUER`, whose keys are at `jwks` (a URL or a file).
fn install(jwks: &str) -> Capgate {
    install_with(jwks, "")
}

fn install_with(jwks: &str, extra: &str) -> Capgate {
    Capgate::with_config(&format!(
        r#"[[identity.jwt]]
issuer = "{ISSUER}"
jwks = "{jwks}"
audience = "capgate"
agent = "{{sub}}"
tenant = "{{tenant}}"
tools = ["fs_read", "fs_list", "fs_write"]
{extra}
"#
    ))
}

fn intent() -> Value {
    json!({"purpose": "ci reads the docs", "tools": ["fs_read"], "resources": {"fs_read": ["acme/docs/"]}})
}

/// `POST /v1/tasks` with `auth` as the Authorization header and an optional DPoP proof.
async fn post_task(
    server: &Server,
    auth: &str,
    dpop: Option<&str>,
    body: &Value,
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/tasks", server.base()))
        .header("authorization", auth)
        .json(body);
    if let Some(p) = dpop {
        req = req.header("dpop", p);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, www, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_jwt_gets_a_task_whose_token_works_over_mcp() {
    let platform = Platform::start();
    let cg = install(&platform.jwks_url());
    let server = cg.serve_http();
    let jwt = platform.jwt("k1", &Platform::claims("ci-bot"));
    let (status, _, v) = post_task(&server, &format!("Bearer {jwt}"), None, &intent()).await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap();
    let id = v["task_id"].as_str().unwrap();

    let client = server.client(token).await;
    assert_eq!(
        tool_names(&client).await,
        vec!["fs_read", "task_begin", "task_end"]
    );
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    let d = call_denied(&client, "fs_read", json!({"path": "globex/plans/q3.txt"})).await;
    assert_eq!(d["decision"], "deny");
    client.cancel().await.unwrap();

    // The task is the workload's: its agent from the template, its issuer and subject named,
    // and it ends no later than the JWT.
    let shown = cg.show_task(id);
    assert_eq!(shown["task"]["agent"], "ci-bot");
    assert_eq!(shown["task"]["tenant"], "acme");
    assert_eq!(
        shown["task"]["grant"]["workload"],
        json!({"issuer": ISSUER, "subject": "ci-bot"})
    );
    let issuance: Vec<Value> = cg
        .audit()
        .into_iter()
        .filter(|l| l["kind"] == "issuance")
        .collect();
    assert_eq!(issuance.len(), 1);
    assert_eq!(issuance[0]["issuer"], ISSUER);
    assert_eq!(issuance[0]["subject"], "ci-bot");
    let log = std::fs::read_to_string(cg.state().join("audit.log")).unwrap();
    assert!(!log.contains(&jwt), "the JWT never reaches the audit log");
    let out = cg.run(&["token", "inspect", token]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("workload(\"https://issuer.test\", \"ci-bot\")"),
        "{text}"
    );
    let expiry = cg.show_task(id)["task"]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        expiry.as_str()
            <= capgate_core::time::rfc3339(UNIX_EPOCH + Duration::from_secs(now() + 601)).as_str()
    );

    // In-band too: an MCP session presenting the JWT begins its own task.
    let client = server.client(&jwt).await;
    let r = call_ok(&client, "task_begin", intent()).await;
    assert_eq!(r.structured_content.unwrap()["bound_to_session"], true);
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    client.cancel().await.unwrap();
}

/// An issuer whose keys cannot be had is capgate's (or the issuer's) problem: 503, never 401;
/// and a workload never speaks for an operator-minted agent that happens to share its id.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_keys_are_a_503_and_ids_do_not_collide() {
    let platform = Platform::start();
    let cg = install_with(
        &platform.jwks_url(),
        r#"
[[identity.jwt]]
issuer = "https://down.test"
jwks = "http://127.0.0.1:1/jwks.json"
audience = "capgate"
tenant = "{tenant}"
tools = ["fs_read"]
"#,
    );
    let server = cg.serve_http();
    let mut claims = Platform::claims("ci-bot");
    claims["iss"] = json!("https://down.test");
    let jwt = platform.jwt("k1", &claims);
    for _ in 0..2 {
        let (status, www, v) = post_task(&server, &format!("Bearer {jwt}"), None, &intent()).await;
        assert_eq!(status, 503, "{v}");
        assert!(www.is_empty(), "not a credential problem: {www}");
        assert_eq!(v["error"], "identity_unavailable", "{v}");
        assert_eq!(v["fault"], "server", "{v}");
    }
    assert_eq!(cg.task_list().lines().count(), 0);

    // The operator's agent `ci-bot` and the workload `ci-bot` are not one principal.
    let agent = cg.mint("ci-bot", "acme", &["fs_read"], &[]);
    let (status, _, v) = post_task(&server, &format!("Bearer {agent}"), None, &intent()).await;
    assert_eq!(status, 201, "{v}");
    let id = v["task_id"].as_str().unwrap();
    let workload = platform.jwt("k1", &Platform::claims("ci-bot"));
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/tasks/{id}", server.base()))
        .bearer_auth(&workload)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "a workload cannot end the operator agent's task"
    );
    assert!(cg.show_task(id)["task"]["end_reason"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_from_a_file_and_rotation_without_a_restart() {
    let platform = Platform::start();
    let cg = install(platform.jwks_file().to_str().unwrap());
    let server = cg.serve_http();
    let jwt = platform.jwt("k1", &Platform::claims("ci-bot"));
    let (status, _, v) = post_task(&server, &format!("Bearer {jwt}"), None, &intent()).await;
    assert_eq!(status, 201, "{v}");

    // The platform rotates: k2 is published, and a token signed with it is accepted once
    // capgate looks again (it looks on an unknown kid, at most once a second).
    platform.keygen("k2");
    platform.publish(&["k1", "k2"]);
    let jwt2 = platform.jwt("k2", &Platform::claims("ci-bot-2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, v) = post_task(&server, &format!("Bearer {jwt2}"), None, &intent()).await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 401, "{v}");
        assert!(
            Instant::now() < deadline,
            "the new key was never picked up: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_workload_jwts_are_refused_and_nothing_is_issued() {
    let platform = Platform::start();
    let cg = install(&platform.jwks_url());
    let server = cg.serve_http();
    let good = Platform::claims("ci-bot");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let public_jwk = std::fs::read_to_string(platform.dir.path().join("k1.jwk")).unwrap();
    let valid = platform.jwt("k1", &good);
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&e.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("root");
        parts[1] = e.encode(claims.to_string());
    }
    let tampered = parts.join(".");
    platform.keygen("stranger");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            platform.jwt("k1", &with("exp", json!(now() - 3600))),
            "expired",
        ),
        (
            "not yet valid",
            platform.jwt("k1", &with("nbf", json!(now() + 3600))),
            "not valid yet",
        ),
        (
            "wrong aud",
            platform.jwt("k1", &with("aud", json!("someone-else"))),
            "aud",
        ),
        (
            "wrong iss",
            platform.jwt("k1", &with("iss", json!("https://evil.test"))),
            "not trusted",
        ),
        (
            "unknown kid",
            platform.jwt("stranger", &good),
            "not in the key set",
        ),
        ("alg none", jose(&["none", &good.to_string()]), "header"),
        (
            "HS256 with the public key",
            jose(&["hs256", &public_jwk, &good.to_string(), "k1"]),
            "asymmetric",
        ),
        (
            "jku elsewhere",
            platform.jwt_with_header("k1", &good, &json!({"jku": "http://127.0.0.1:1/evil.json"})),
            "names its own key",
        ),
        (
            "embedded jwk",
            platform.jwt_with_header(
                "k1",
                &good,
                &json!({"jwk": serde_json::from_str::<Value>(&public_jwk).unwrap()}),
            ),
            "names its own key",
        ),
        ("tampered payload", tampered, "signature"),
        (
            "no tenant claim",
            platform.jwt("k1", &{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("tenant");
                c
            }),
            "tenant",
        ),
    ];
    for (what, jwt, says) in cases {
        let (status, www, v) = post_task(&server, &format!("Bearer {jwt}"), None, &intent()).await;
        assert_eq!(status, 401, "{what}: {v}");
        assert!(www.contains("invalid_token"), "{what}: {www}");
        assert!(
            v.to_string().contains(says),
            "{what}: expected `{says}` in {v}"
        );
    }
    assert_eq!(cg.task_list().lines().count(), 0, "nothing was issued");
    // A tenant capgate does not know is not one this issuer may vouch for.
    let initech = platform.jwt("k1", &with("tenant", json!("initech")));
    let (status, _, v) = post_task(&server, &format!("Bearer {initech}"), None, &intent()).await;
    assert_eq!(status, 401, "{v}");
    assert!(v.to_string().contains("may not vouch"), "{v}");
    // A `crit` extension capgate does not implement is refused, not ignored.
    let crit = platform.jwt_with_header("k1", &good, &json!({"crit": ["exp-v2"], "exp-v2": 1}));
    let (status, _, v) = post_task(&server, &format!("Bearer {crit}"), None, &intent()).await;
    assert_eq!(status, 401, "{v}");
    assert!(v.to_string().contains("crit"), "{v}");
    // Claims that map the workload to another tenant: its request for acme's files is refused
    // by the tenant rule.
    let globex = platform.jwt("k1", &with("tenant", json!("globex")));
    let (status, _, v) = post_task(&server, &format!("Bearer {globex}"), None, &intent()).await;
    assert_eq!(status, 403, "{v}");
    assert!(v.to_string().contains("cross-tenant"), "{v}");
    assert_eq!(cg.task_list().lines().count(), 0, "nothing was issued");
}

/// MCP over HTTP spoken by hand, with DPoP.
struct Wire {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
}

impl Wire {
    async fn post(&mut self, auth: &str, dpop: Option<&str>, body: Value) -> (u16, String, String) {
        let mut req = self
            .http
            .post(&self.url)
            .header("authorization", auth)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(p) = dpop {
            req = req.header("dpop", p);
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_owned());
        }
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, www, resp.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dpop_bound_task_token_needs_a_fresh_proof_for_its_key() {
    let platform = Platform::start();
    platform.keygen("holder");
    platform.keygen("thief");
    let cg = install(&platform.jwks_url());
    let server = cg.serve_http();
    let base = server.base();
    let holder = platform.pem("holder");
    let thief = platform.pem("thief");
    let proof = |key: &str, method: &str, url: &str, token: Option<&str>| {
        let mut args = vec!["dpop", key, "ES256", method, url];
        if let Some(t) = token {
            args.extend(["--ath", t]);
        }
        jose(&args)
    };
    let jwt = platform.jwt("k1", &Platform::claims("ci-bot"));
    let tasks_url = format!("{base}/v1/tasks");
    let p = proof(&holder, "POST", &tasks_url, None);
    let (status, _, v) = post_task(&server, &format!("Bearer {jwt}"), Some(&p), &intent()).await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let jkt = jose(&["thumbprint", &holder, "ES256"]);
    assert_eq!(
        cg.show_task(v["task_id"].as_str().unwrap())["task"]["grant"]["holder"],
        jkt
    );
    // The same proof again: refused, nothing issued.
    let (status, _, v) = post_task(&server, &format!("Bearer {jwt}"), Some(&p), &intent()).await;
    assert_eq!(status, 401, "{v}");
    assert!(v.to_string().contains("used before"), "{v}");

    let mcp = format!("{base}/mcp");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params":
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let mut wire = Wire {
        http: reqwest::Client::new(),
        url: mcp.clone(),
        session: None,
    };
    let dpop_auth = format!("DPoP {token}");
    let refused: Vec<(&str, String, Option<String>)> = vec![
        (
            "as a bearer token, no proof",
            format!("Bearer {token}"),
            None,
        ),
        ("DPoP without a proof", dpop_auth.clone(), None),
        (
            "a proof by another key",
            dpop_auth.clone(),
            Some(proof(&thief, "POST", &mcp, Some(&token))),
        ),
        (
            "a proof for another URL",
            dpop_auth.clone(),
            Some(proof(&holder, "POST", &tasks_url, Some(&token))),
        ),
        (
            "a proof for another method",
            dpop_auth.clone(),
            Some(proof(&holder, "GET", &mcp, Some(&token))),
        ),
        (
            "a proof without ath",
            dpop_auth.clone(),
            Some(proof(&holder, "POST", &mcp, None)),
        ),
        (
            "a proof for another token",
            dpop_auth.clone(),
            Some(proof(&holder, "POST", &mcp, Some(&jwt))),
        ),
    ];
    for (what, auth, dpop) in &refused {
        let (status, www, body) = wire.post(auth, dpop.as_deref(), init.clone()).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(www.starts_with("DPoP"), "{what}: {www}");
        assert!(
            www.contains("invalid_dpop_proof") || www.contains("invalid_token"),
            "{what}: {www}"
        );
    }
    // A proof whose `iat` is no time at all: refused, not a crash.
    let huge = jose(&[
        "dpop",
        &holder,
        "ES256",
        "POST",
        &mcp,
        "--ath",
        &token,
        "--iat",
        "18446744073709551615",
    ]);
    let (status, _, body) = wire.post(&dpop_auth, Some(&huge), init.clone()).await;
    assert_eq!(status, 401, "{body}");
    // The task API is behind the same door: no proof, no look at the task.
    let task_id = cg
        .task_list()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/tasks/{task_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A fresh proof for each request: served.
    let fresh = || proof(&holder, "POST", &mcp, Some(&token));
    let first = fresh();
    let (status, _, body) = wire.post(&dpop_auth, Some(&first), init.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = wire
        .post(
            &dpop_auth,
            Some(&fresh()),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    assert_eq!(status, 202);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "fs_read", "arguments": {"path": "acme/docs/readme.txt"}}});
    let (status, _, body) = wire.post(&dpop_auth, Some(&fresh()), call.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"isError\":false"), "{body}");
    // A replayed proof: refused.
    let (status, www, _) = wire.post(&dpop_auth, Some(&first), call.clone()).await;
    assert_eq!(status, 401);
    assert!(www.contains("invalid_dpop_proof"), "{www}");

    // A sub-agent's token derived from it stays bound to the same key.
    let derived = attenuate(&token, "check if operation(\"read\");");
    let derived_auth = format!("DPoP {derived}");
    let mut wire2 = Wire {
        http: reqwest::Client::new(),
        url: mcp.clone(),
        session: None,
    };
    let (status, _, _) = wire2
        .post(
            &derived_auth,
            Some(&proof(&thief, "POST", &mcp, Some(&derived))),
            init.clone(),
        )
        .await;
    assert_eq!(status, 401, "another key cannot use the derived token");
    let (status, _, body) = wire2
        .post(
            &derived_auth,
            Some(&proof(&holder, "POST", &mcp, Some(&derived))),
            init.clone(),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Over stdio no proof can be made: the bound token is refused by the guard itself.
    let client = cg.stdio_client(Some(&token)).await;
    let d = call_denied(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    assert_eq!(d["decision"], "deny", "{d}");
    client.cancel().await.unwrap();

    // No proof or JWT is logged in full.
    let log = std::fs::read_to_string(cg.state().join("audit.log")).unwrap();
    assert!(!log.contains(&first) && !log.contains(&jwt));
}

#[test]
fn agent_tokens_live_a_day_by_default() {
    let cg = Capgate::new();
    let out = cg.run(&[
        "token", "mint", "--agent", "a", "--tenant", "acme", "--tool", "fs_read",
    ]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let shown = cg.stdout_of(&["token", "inspect", token.trim()]);
    let tomorrow =
        capgate_core::time::rfc3339(SystemTime::now() + Duration::from_secs(86_400 + 60));
    let line = shown
        .lines()
        .find(|l| l.contains("expires"))
        .unwrap_or_default()
        .to_owned();
    let date = line.split_whitespace().last().unwrap_or_default();
    assert!(!date.is_empty() && date <= tomorrow.as_str(), "{shown}");
}
