"""Talks to a Tollgate edge with the official MCP Python SDK (`mcp` 2.3) in a chosen
protocol mode and prints what it saw as JSON on stdout (used by tests/protocol.rs).

Usage: python py_modern_client.py MCP_URL BEARER_KEY MODE TOOL ARGUMENTS_JSON CALLS
MODE is "auto", "legacy" or a stateless revision such as "2026-07-28". Lists the tools,
then calls TOOL with ARGUMENTS_JSON CALLS times; errors are reported, not raised.
"""

import asyncio
import json
import sys

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def describe(e: BaseException) -> str:
    """An exception with the ones a task group wrapped, for the test's message."""
    inner = getattr(e, "exceptions", None)
    if inner:
        return f"{type(e).__name__}: " + "; ".join(describe(x) for x in inner)
    return f"{type(e).__name__}: {e}"


async def main(url: str, key: str, mode: str, tool: str, arguments: dict, calls: int) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    out: dict = {"mode": mode}
    async with http:
        try:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                session = getattr(client, "_session", None)
                out["protocol"] = getattr(session, "protocol_version", None)
                listed = await client.list_tools()
                out["tools"] = [t.name for t in listed.tools]
                results = []
                for _ in range(calls):
                    try:
                        result = await client.call_tool(tool, arguments)
                        results.append(result.model_dump(mode="json", by_alias=True, exclude_none=True))
                    except Exception as e:  # a refusal the SDK raises
                        results.append({"exception": f"{type(e).__name__}: {e}"})
                out["results"] = results
        except Exception as e:
            out["error"] = describe(e)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit("usage: python py_modern_client.py MCP_URL BEARER_KEY MODE TOOL ARGUMENTS_JSON CALLS")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]), int(sys.argv[6])))
