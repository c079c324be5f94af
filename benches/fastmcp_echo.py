"""The load benchmark's echo tool on FastMCP, served over streamable HTTP at /mcp.

Started by benches/fastmcp.sh; the same load client that drives capgate drives this server.
The tool matches capgate's benchmark echo: one required string argument, returned as text.
With --stdio (and no --port) it speaks MCP on stdin/stdout instead, for gateways that bridge
a stdio server (benches/contextforge_gateway.py --upstream-command).
"""

import argparse

from fastmcp import FastMCP

mcp = FastMCP("fastmcp-echo")


@mcp.tool
def echo(text: str) -> str:
    """Returns its text argument."""
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--port", type=int)
    mode.add_argument("--stdio", action="store_true")
    args = parser.parse_args()
    if args.stdio:
        # No banner (stdout is the protocol stream) and quiet logs, as in the HTTP mode.
        mcp.run(transport="stdio", show_banner=False, log_level="warning")
        return
    # FastMCP's defaults otherwise (stateful sessions, SSE responses), like capgate's rmcp
    # service; access logging off, as capgate logs no line per call either.
    mcp.run(
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
