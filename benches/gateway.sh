#!/usr/bin/env bash
# The gateway comparison (issue 10): one upstream echo tool called directly, through capgate,
# through FastMCP's proxy and through ContextForge, alternately in one run (benches/load.rs
# --gateway, benches/load/gateway.rs).
#
#   bash benches/gateway.sh                              # the bare rmcp echo as the upstream
#   bash benches/gateway.sh --upstream python            # the same tool on FastMCP as the upstream
#   bash benches/gateway.sh --duration 2s --clients 1,8  # extra arguments go to the load bench
#
# FastMCP and ContextForge are installed with pip into benches/.venv and
# benches/.venv-contextforge (both git-ignored) on first use: their dependencies pin different
# versions of the same packages. If ContextForge cannot be installed, the comparison runs
# without it and says so.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

# venv DIR MODULE PACKAGE: a venv in DIR where `import MODULE` works, installing PACKAGE if not.
venv() {
    local dir="$1" module="$2" package="$3"
    if [ ! -x "$dir/bin/python" ]; then
        python3 -m venv "$dir"
    fi
    if ! "$dir/bin/python" -c "import $module" 2>/dev/null; then
        "$dir/bin/pip" install --quiet "$package" || return 1
    fi
}

# The versions BENCHMARKS.md reports; change them here to measure others.
if ! venv "$here/.venv" fastmcp "fastmcp==4.2.3"; then
    echo "gateway.sh: pip could not install fastmcp into $here/.venv (see pip's message above)" >&2
    exit 2
fi
args=(--fastmcp-python "$here/.venv/bin/python")
echo "gateway.sh: FastMCP $("$here/.venv/bin/python" -c 'import fastmcp; print(fastmcp.__version__)')"

if venv "$here/.venv-contextforge" mcpgateway "mcp-contextforge-gateway==1.0.7.post20260921"; then
    args+=(--contextforge-python "$here/.venv-contextforge/bin/python")
    echo "gateway.sh: ContextForge $("$here/.venv-contextforge/bin/pip" show mcp-contextforge-gateway | sed -n 's/^Version: //p')"
else
    echo "gateway.sh: ContextForge (mcp-contextforge-gateway) did not install; comparing without it" >&2
fi

cd "$repo"
cargo bench --bench load -- --gateway "${args[@]}" "$@"
