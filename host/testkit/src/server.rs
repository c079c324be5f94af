//! Running servers for end-to-end tests: `capgate serve --http` as a child process, and a plain
//! HTTP origin that counts what it is asked (so a test can prove a refused fetch sent nothing).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::service::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use crate::client::Client;

/// A running `capgate serve --http`.
pub struct Server {
    child: Child,
    pub addr: String,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn capgate serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving MCP at http://").nth(1)
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(rest.split("/mcp").next().unwrap_or("").to_owned());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("capgate serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            stderr: log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `POST /v1/tasks` with `body`, as `token`, presenting `approval` as `Capgate-Approval`
    /// when given.
    pub async fn post_task(
        &self,
        token: &str,
        approval: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1/tasks", self.base()))
            .bearer_auth(token)
            .json(body);
        if let Some(a) = approval {
            req = req.header("capgate-approval", a);
        }
        req.send().await.expect("POST /v1/tasks")
    }

    /// `POST /v1/tasks` with `body`, as `token`, which must be refused with `status`; the JSON
    /// body of the refusal.
    pub async fn post_task_refused(
        &self,
        token: &str,
        body: &serde_json::Value,
        status: u16,
    ) -> serde_json::Value {
        let resp = self.post_task(token, None, body).await;
        assert_eq!(resp.status(), status, "POST /v1/tasks {body}");
        resp.json().await.expect("a JSON body")
    }

    /// `method /v1/tasks/{id}` (`GET` to read a task, `DELETE` to end it), as `token`.
    pub async fn task_request(
        &self,
        method: reqwest::Method,
        id: &str,
        token: &str,
    ) -> reqwest::Response {
        reqwest::Client::new()
            .request(method, format!("{}/v1/tasks/{id}", self.base()))
            .bearer_auth(token)
            .send()
            .await
            .expect("a request to /v1/tasks/ID")
    }

    /// The JSON body of [`Server::task_request`]'s answer.
    pub async fn task_json(
        &self,
        method: reqwest::Method,
        id: &str,
        token: &str,
    ) -> serde_json::Value {
        let resp = self.task_request(method, id, token).await;
        resp.json().await.expect("a JSON body")
    }

    /// An rmcp client presenting `token` as Bearer.
    pub async fn client(&self, token: &str) -> Client {
        ().serve(self.transport(token))
            .await
            .expect("http client initialize")
    }

    /// The streamable HTTP transport presenting `token`, for clients with their own handler.
    pub fn transport(&self, token: &str) -> StreamableHttpClientTransport<reqwest::Client> {
        let cfg =
            StreamableHttpClientTransportConfig::with_uri(self.url()).auth_header(token.to_owned());
        StreamableHttpClientTransport::from_config(cfg)
    }

    /// Sends SIGTERM and waits for exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
        }
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP server on loopback that answers every GET with `hello from <path>` (paths
/// starting with `/redirect` get a 302 to `/elsewhere`) and counts the requests it received, so
/// a test can prove a refused fetch made no request.
pub struct Origin {
    pub addr: std::net::SocketAddr,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    pub paths: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    pub fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (h, p) = (Arc::clone(&hits), Arc::clone(&paths));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                p.lock().unwrap().push(path.clone());
                if path.starts_with("/redirect") {
                    let _ = write!(
                        s,
                        "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    continue;
                }
                let body = format!("hello from {path}");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Origin { addr, hits, paths }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An MCP session over streamable HTTP spoken by hand (reqwest and JSON bodies, no MCP library),
/// to check what a client of any language sees on the wire.
pub struct RawSession {
    http: reqwest::Client,
    url: String,
    token: String,
    session: Option<String>,
    next_id: u64,
}

impl Server {
    /// Initializes a raw session presenting `token`.
    pub async fn raw_session(&self, token: &str) -> RawSession {
        crate::init_crypto();
        let mut s = RawSession {
            http: reqwest::Client::new(),
            url: self.url(),
            token: token.to_owned(),
            session: None,
            next_id: 1,
        };
        let init = s
            .request(
                "initialize",
                serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}),
            )
            .await;
        assert!(init.get("result").is_some(), "initialize: {init}");
        s.post(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        s
    }
}

impl RawSession {
    /// Sends one request and returns the JSON-RPC response (`result` or `error`).
    pub async fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let messages = self.post(body).await;
        messages
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no response to `{method}`"))
    }

    /// The session id the server gave this session.
    pub fn session_id(&self) -> &str {
        self.session.as_deref().expect("an initialized session")
    }

    /// POSTs one message in this session without waiting on anything else of the session (so
    /// several can be in flight); the JSON-RPC messages of the reply.
    pub async fn send(&self, body: serde_json::Value) -> Vec<serde_json::Value> {
        let (messages, _) = self.post_as(&self.token, body).await;
        messages
    }

    /// Calls `tool` as request `id` without panicking on any failure (for load and fault tests,
    /// where a server may be killed mid-call): the call's `result`, or what went wrong.
    pub async fn try_call(
        &self,
        id: u64,
        tool: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.map_err(|e| format!("POST /mcp: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("body: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST /mcp: {status}: {text}"));
        }
        let answer = std::iter::once(text.as_str())
            .chain(text.lines().filter_map(|l| l.strip_prefix("data:")))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .find(|m| m["id"] == id)
            .ok_or_else(|| format!("no answer to request {id}: {text}"))?;
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| format!("error answer: {answer}"))
    }

    /// POSTs one message; the JSON-RPC messages of the reply (a JSON body or an SSE stream).
    async fn post(&mut self, body: serde_json::Value) -> Vec<serde_json::Value> {
        let token = self.token.clone();
        let (messages, session) = self.post_as(&token, body).await;
        if session.is_some() {
            self.session = session;
        }
        messages
    }

    async fn post_as(
        &self,
        token: &str,
        body: serde_json::Value,
    ) -> (Vec<serde_json::Value>, Option<String>) {
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.expect("POST /mcp");
        assert!(resp.status().is_success(), "POST /mcp: {}", resp.status());
        let session = resp
            .headers()
            .get("mcp-session-id")
            .map(|s| s.to_str().unwrap().to_owned());
        let sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let text = resp.text().await.expect("response body");
        if !sse {
            let one = serde_json::from_str(&text)
                .map(|v| vec![v])
                .unwrap_or_default();
            return (one, session);
        }
        let messages = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect();
        (messages, session)
    }
}
