"""The load benchmark's echo tool on FastMCP, served over streamable HTTP at /mcp.

Started by benches/fastmcp.sh; the same load client that drives capgate drives this server.
The tool matches capgate's benchmark echo: one required string argument, returned as text.
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
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
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
