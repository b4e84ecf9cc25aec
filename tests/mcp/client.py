"""A real MCP client (the Python SDK's ClientSession) driven line by line.

Used by tests/surfaces/mcp.rs and bench/mcp.py. Connects to a server, then
reads one JSON command per line on stdin and answers each with one JSON
line on stdout:

  {"op": "list"}                              -> {"tools": [...]}   (name, description, inputSchema, annotations)
  {"op": "call", "name": N, "args": {...}}    -> {"isError": b, "text": s, "json": v|null, "structured": v|null}
  {"op": "bench", "name": N, "args": {...}, "n": K}  -> {"ms": [per-call milliseconds...]}
  {"op": "close"}                             -> {"closed": true}, then exit

The first line printed is {"initialize": {...}} (protocol version, server
info, capabilities, instructions). A failure prints {"exception": s}.

Usage:
  client.py stdio RELAY_BINARY ARGS...        spawn `relay mcp ...` as the server
  client.py http URL [HEADER=VALUE ...]       streamable HTTP (e.g. Authorization=Bearer T)
"""

import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def drive(session):
    init = await session.initialize()
    out({"initialize": dump(init)})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "list":
                result = await session.list_tools()
                out({"tools": [dump(t) for t in result.tools]})
            elif op == "call":
                r = dump(await session.call_tool(cmd["name"], cmd.get("args")))
                text = "".join(c.get("text", "") for c in r.get("content", []) if c.get("type") == "text")
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
                out({
                    "isError": bool(r.get("isError")),
                    "text": text,
                    "json": parsed,
                    "structured": r.get("structuredContent"),
                })
            elif op == "bench":
                times = []
                for _ in range(int(cmd["n"])):
                    t0 = time.perf_counter()
                    r = dump(await session.call_tool(cmd["name"], cmd.get("args")))
                    times.append((time.perf_counter() - t0) * 1000.0)
                    if r.get("isError"):
                        raise RuntimeError("bench call failed: " + json.dumps(r))
                out({"ms": times})
            elif op == "close":
                out({"closed": True})
                return
            else:
                out({"exception": "unknown op " + op})
        except Exception as e:  # noqa: BLE001 - reported to the test
            out({"exception": repr(e)})


async def main():
    kind = sys.argv[1]
    if kind == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=sys.argv[3:], env=dict(os.environ)
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await drive(session)
    elif kind == "http":
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = dict(h.split("=", 1) for h in sys.argv[3:])
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with streamable_http_client(sys.argv[2], http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await drive(session)
    else:
        raise SystemExit("usage: client.py stdio BINARY ARGS... | client.py http URL [H=V...]")


try:
    asyncio.run(main())
except BaseException as e:  # noqa: BLE001 - reported to the test
    if not isinstance(e, SystemExit):
        out({"exception": repr(e)})
        sys.exit(1)
    raise
