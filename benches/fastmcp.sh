#!/usr/bin/env bash
# Peer comparison: capgate against FastMCP (Python) on the same echo tool, under the same load
# client (benches/load.rs), alternately in one run. Prints capgate's calls/s ratio to FastMCP.
#
#   bash benches/fastmcp.sh                     # default load settings
#   bash benches/fastmcp.sh --duration 2s       # extra arguments go to the load bench
#
# FastMCP is installed with pip into benches/.venv (git-ignored) on first use.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import fastmcp' 2>/dev/null; then
    if ! "$venv/bin/pip" install --quiet fastmcp; then
        echo "fastmcp.sh: pip could not install fastmcp into $venv (see pip's message above);" >&2
        echo "fastmcp.sh: no comparison was run." >&2
        exit 2
    fi
fi
echo "fastmcp.sh: FastMCP $("$venv/bin/python" -c 'import fastmcp; print(fastmcp.__version__)'), $("$venv/bin/python" --version)"

# A free loopback port, chosen by the kernel.
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
log="$(mktemp)"
"$venv/bin/python" "$here/fastmcp_echo.py" --port "$port" >"$log" 2>&1 &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

# Wait (at most 30 s) until it accepts connections.
for _ in $(seq 300); do
    if "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.1).close()" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "fastmcp.sh: the FastMCP server exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done

cd "$repo"
cargo bench --bench load -- \
    --compare-url "http://127.0.0.1:$port/mcp" \
    --compare-name fastmcp \
    --compare-pid "$server" \
    "$@"
