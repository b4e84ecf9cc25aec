#!/usr/bin/env bash
# Makes the Python venv whose `mcp` package (the MCP Python SDK, a real MCP
# client) drives `relay mcp` in tests/surfaces/mcp.rs and bench/mcp.py.
# Usage: tests/mcp/venv.sh [DIR]   (default: tests/mcp/.venv; the tests
# look there, or at $RELAY_MCP_VENV). Idempotent: an existing venv whose
# `mcp` imports is kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${RELAY_MCP_VENV:-$here/.venv}}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "tests/mcp/venv.sh: $venv already has mcp"
  exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import mcp, importlib.metadata as m; print("tests/mcp/venv.sh: mcp", m.version("mcp"), "in", __import__("sys").prefix)'
