"""ContextForge (PyPI mcp-contextforge-gateway) in front of one upstream MCP server, for the load bench.

    .venv-contextforge/bin/python benches/contextforge_gateway.py --port P --state DIR \
        (--upstream-url URL | [--upstream-env NAME=VALUE...] --upstream-command CMD [ARG...])

Runs the gateway (`mcpgateway` CLI: uvicorn, one worker) on 127.0.0.1:P with a fresh SQLite database
and its logs in DIR, plus `mcpgateway.translate` to put a stdio upstream on streamable HTTP; registers
the upstream, bundles its tools in a virtual server, prints one line once that server's MCP endpoint
lists the echo tool, `contextforge: serving MCP at <URL> tool <TOOLNAME> auth <TOKEN>`, and runs until
SIGTERM/SIGINT. Children never outlive it. On failure: the reason on stderr, exit status 1.
"""

import argparse
import ctypes
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PYTHON = sys.executable  # the ContextForge venv's python: its CLIs run as -m modules
ADMIN_EMAIL = "admin@example.com"  # ContextForge's default bootstrap admin
UPSTREAM_NAME = "upstream"  # its slug prefixes the tool names: "upstream-echo"


class Failure(Exception):
    """A reason to give up, for stderr."""


class Stopped(BaseException):
    """SIGTERM/SIGINT: unwinds whatever runs (setup too) into the cleanup in main()."""


def bound_port(port: int = 0) -> int:
    """Binds and releases 127.0.0.1:port (0: any free one), as uvicorn will bind it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise Failure(f"port {port}: {e}")
        return s.getsockname()[1]


def gateway_env(state: Path) -> dict:
    """The children's whole environment, built from scratch so that nothing in the user's (nor a
    .env in the cwd: the children run in DIR) changes how ContextForge behaves."""
    password = lambda: "Aa1!" + secrets.token_urlsafe(24)  # passes its password policy
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),  # for --upstream-command
        "HOME": os.environ.get("HOME", str(state)),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # logs complete and in order when a failure quotes their tail
        # Its leader-election and migration locks live in the temp dir: private per instance.
        "TMPDIR": str(state / "tmp"),
        # Required secrets, fresh per run (it refuses to start on the placeholders).
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "PLATFORM_ADMIN_EMAIL": ADMIN_EMAIL,
        "PLATFORM_ADMIN_PASSWORD": password(),
        "BASIC_AUTH_PASSWORD": password(),  # basic auth stays off (default), but not "changeme"
        "DATABASE_URL": f"sqlite:///{state / 'mcp.db'}",
        "MCPGATEWAY_UI_ENABLED": "false",
        "MCPGATEWAY_ADMIN_API_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        # Its SSRF guard rejects loopback upstreams by default, and every upstream here is one.
        "SSRF_ALLOW_LOCALHOST": "true",
        # Its default rate limiter allows 100 requests/min (+20 burst) per IP and user on
        # /servers/*, then locks the client out: a load bench would measure 429s.
        "RATE_LIMITING_ENABLED": "false",
    }


def _die_with_parent() -> None:
    # Children get SIGTERM even if this script is SIGKILLed: no orphan outlives a bench.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, name: str, argv: list, env: dict, state: Path):
        self.name, self.log = name, state / f"{name}.log"
        with open(self.log, "wb") as log:
            # Own process group, so translate's stdio server (a grandchild) is stopped with it.
            self.proc = subprocess.Popen(argv, env=env, cwd=state, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise Failure(f"{self.name} exited with status {self.proc.returncode}\n{self.tail()}")

    def tail(self, lines: int = 12) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {self.name}.log: {line[:500]}" for line in text)

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the leader, or the group never looks empty
                try:
                    os.killpg(self.proc.pid, 0)  # the stdio server may outlive translate a moment
                except ProcessLookupError:
                    return
                time.sleep(0.1)


def wait_until(child: Child, what: str, timeout: float, probe) -> None:
    deadline = time.monotonic() + timeout
    while True:
        child.check()
        try:
            if probe():
                return
        except (OSError, Failure):
            pass
        if time.monotonic() > deadline:
            raise Failure(f"{child.name}: {what} not within {timeout:.0f}s\n{child.tail()}")
        time.sleep(0.3)


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as e:
            raise Failure(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')[:1000]}")

    def json(self, method: str, path: str, body=None):
        return json.loads(self.call(method, path, body)[2])


def mcp_tool_names(api: Api, path: str) -> list:
    """initialize + tools/list on the virtual server's endpoint, as a client will reach it."""
    accept = {"Accept": "application/json, text/event-stream"}
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}
    _, headers, _ = api.call("POST", path, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}, accept)
    accept.update((k, v) for k, v in headers.items() if k.lower() == "mcp-session-id")  # if stateful
    api.call("POST", path, {"jsonrpc": "2.0", "method": "notifications/initialized"}, accept)
    body = api.call("POST", path, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, accept)[2]
    if not body.lstrip().startswith("{"):  # an SSE-framed reply
        body = next(line[5:] for line in body.splitlines() if line.startswith("data:"))
    reply = json.loads(body)
    if "result" not in reply:
        raise Failure(f"tools/list on {path} failed: {body[:1000]}")
    return [t["name"] for t in reply["result"]["tools"]]


def setup(args, children: list) -> str:
    state = Path(args.state).resolve()
    (state / "tmp").mkdir(parents=True, exist_ok=True)
    for old in state.glob("mcp.db*"):  # a fresh database: a rerun would clash with the last one
        old.unlink()
    env = gateway_env(state)
    bound_port(args.port)  # else a foreign listener on P would pass for the gateway

    upstream_url = args.upstream_url
    if args.upstream_command:
        # Streamable HTTP at /mcp (translate's default is SSE). It feeds every session into the one
        # stdio process and matches replies by JSON-RPC id alone, while the gateway opens an
        # upstream session per call with ids from 0: concurrent calls get each other's replies.
        # The command runs in the caller's cwd (relative paths); translate itself runs in DIR.
        tport, command = bound_port(), shlex.join(["env", "-C", os.getcwd(), "--", *args.upstream_env, *args.upstream_command])
        translate = Child("translate", [PYTHON, "-m", "mcpgateway.translate", "--stdio", command,
                                        "--expose-streamable-http", "--host", "127.0.0.1", "--port", str(tport),
                                        "--logLevel", "warning"], env, state)
        children.append(translate)
        wait_until(translate, "listening", 60,
                   lambda: socket.create_connection(("127.0.0.1", tport), 1).close() or True)
        upstream_url = f"http://127.0.0.1:{tport}/mcp"

    # The `mcpgateway` CLI: uvicorn running mcpgateway.main:app, one worker; no access log.
    gateway = Child("gateway", [PYTHON, "-m", "mcpgateway.cli", "--host", "127.0.0.1", "--port", str(args.port),
                                "--log-level", "warning", "--no-access-log"], env, state)
    children.append(gateway)

    # The token the documented way (mcpgateway.utils.create_jwt_token), while the gateway boots.
    # --admin adds the admin claims with teams=null; a bare --username token is "public-only" in
    # 1.0.7: it works, but logs two RBAC warnings per tool call.
    # --secret=VALUE: a random secret may begin with "-", which argparse would take for an option.
    mint = subprocess.run([PYTHON, "-m", "mcpgateway.utils.create_jwt_token", "--username", ADMIN_EMAIL,
                           "--admin", "--full-name", "Benchmark Admin", "--exp", "10080",
                           f"--secret={env['JWT_SECRET_KEY']}"], env=env, cwd=state, capture_output=True,
                          text=True, timeout=120)
    if mint.returncode != 0 or not mint.stdout.strip():
        raise Failure(f"create_jwt_token failed ({mint.returncode}): {mint.stderr[-2000:]}")
    token = mint.stdout.strip().splitlines()[-1]
    api = Api(f"http://127.0.0.1:{args.port}", token)
    # The first start runs all its migrations: seconds, more on a busy machine.
    wait_until(gateway, "GET /health", 180, lambda: api.call("GET", "/health", timeout=5)[0] == 200)

    # Registration connects to the upstream and lists its tools before it answers (the poll is
    # for GATEWAY_ASYNC_LIFECYCLE_ENABLED=true, where that happens in the background).
    gw = api.json("POST", "/gateways", {"name": UPSTREAM_NAME, "url": upstream_url, "transport": "STREAMABLEHTTP"})
    tools = []

    def discovered():
        listed = api.json("GET", f"/tools?gateway_id={gw['id']}&limit=0")
        tools[:] = [t for t in listed if t.get("gatewayId") == gw["id"]]
        return any(t["originalName"] == "echo" for t in tools)

    wait_until(gateway, f"an echo tool discovered on {upstream_url}", 60, discovered)
    tool = next(t["name"] for t in tools if t["originalName"] == "echo")

    server = api.json("POST", "/servers", {"server": {"name": "bench", "associated_tools": [t["id"] for t in tools]}})
    path = f"/servers/{server['id']}/mcp"  # the virtual server's streamable HTTP endpoint
    listed = mcp_tool_names(api, path)
    if tool not in listed:
        raise Failure(f"{path} lists {listed}, not {tool}")
    return f"contextforge: serving MCP at {api.base}{path} tool {tool} auth {token}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="directory for the SQLite database and the logs")
    parser.add_argument("--upstream-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the stdio upstream (the gateway's own is built from scratch)")
    upstream = parser.add_mutually_exclusive_group(required=True)
    upstream.add_argument("--upstream-url", help="the upstream's streamable HTTP MCP endpoint")
    upstream.add_argument("--upstream-command", nargs=argparse.REMAINDER, help="a stdio MCP server's command")
    args = parser.parse_args()
    if args.upstream_command is not None and not args.upstream_command:
        parser.error("--upstream-command needs a command")

    def on_signal(signum, _frame):
        raise Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    children, ready = [], False
    try:
        print(setup(args, children), flush=True)
        ready = True
        while True:
            for child in children:
                child.check()  # a gateway that dies mid-bench must not go unnoticed
            time.sleep(0.5)
    except Stopped as e:
        if ready:
            return 0
        print(f"contextforge_gateway.py: stopped by signal {e.args[0]} before it was ready", file=sys.stderr)
    except Exception as e:  # a Failure, or e.g. a REST call that timed out
        print(f"contextforge_gateway.py: {e if isinstance(e, Failure) else repr(e)}", file=sys.stderr)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        for child in reversed(children):
            child.stop()
    return 1


if __name__ == "__main__":
    sys.exit(main())
