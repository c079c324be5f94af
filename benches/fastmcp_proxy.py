"""FastMCP's proxy in front of one upstream MCP server, for the gateway benchmark.

    python fastmcp_proxy.py (--port P | --stdio) (--upstream-url URL | --upstream-command CMD [ARG...])

Started by the load bench (`cargo bench --bench load -- --gateway --fastmcp-python PY`). The
proxy is built the way FastMCP documents it, `create_proxy(target)`, with FastMCP's defaults:
each request the proxy serves opens its own session to the upstream, so no request sees another
one's context (FastMCP's answer to "context mixing"). The upstream is started with this
process's environment, which the bench sets (it names the upstream's role).
"""

import argparse
import os

from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from fastmcp.server import create_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    listen = parser.add_mutually_exclusive_group(required=True)
    listen.add_argument("--port", type=int)
    listen.add_argument("--stdio", action="store_true")
    upstream = parser.add_mutually_exclusive_group(required=True)
    upstream.add_argument("--upstream-url")
    upstream.add_argument("--upstream-command", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    if args.upstream_url:
        target = StreamableHttpTransport(args.upstream_url)
    else:
        command, *rest = args.upstream_command
        target = StdioTransport(command, rest, env=dict(os.environ))
    proxy = create_proxy(target, name="fastmcp-proxy")

    if args.stdio:
        proxy.run(transport="stdio", show_banner=False, log_level="warning")
    else:
        # Stateful sessions and SSE answers, FastMCP's defaults, as for capgate's rmcp service;
        # no access log line per call, as capgate writes none to its log either.
        proxy.run(
            transport="http",
            host="127.0.0.1",
            port=args.port,
            path="/mcp",
            log_level="warning",
            show_banner=False,
            uvicorn_config={"access_log": False},
        )


if __name__ == "__main__":
    main()
