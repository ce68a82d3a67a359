"""Opens a `subscriptions/listen` stream (MCP 2026-07-28) through a Tollgate edge with the
official MCP Python SDK (`mcp` 2.3), asking for tools-list changes and updates of the given
resource URIs; then calls TOOL (which makes the upstream publish its events) and prints what
the stream acknowledged and delivered, as JSON on stdout (used by tests/protocol.rs).

Usage: python py_listen_client.py MCP_URL BEARER_KEY TOOL URIS_JSON
The stream is read until a tools-list change arrives (or 15 s pass).
"""

import asyncio
import json
import sys

import anyio

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def describe(e: BaseException) -> str:
    inner = getattr(e, "exceptions", None)
    if inner:
        return f"{type(e).__name__}: " + "; ".join(describe(x) for x in inner)
    return f"{type(e).__name__}: {e}"


async def main(url: str, key: str, tool: str, uris: list) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    out: dict = {}
    async with http:
        try:
            async with Client(streamable_http_client(url, http_client=http), mode="2026-07-28") as client:
                async with client.listen(tools_list_changed=True, resource_subscriptions=uris) as sub:
                    out["honored"] = sub.honored.model_dump(mode="json", by_alias=True, exclude_none=True)
                    called = await client.call_tool(tool, {})
                    out["call"] = called.model_dump(mode="json", by_alias=True, exclude_none=True)
                    events = []
                    with anyio.fail_after(15):
                        async for event in sub:
                            events.append({"kind": type(event).__name__, "uri": getattr(event, "uri", None)})
                            if type(event).__name__ == "ToolsListChanged":
                                break
                    out["events"] = events
        except Exception as e:
            out["error"] = describe(e)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python py_listen_client.py MCP_URL BEARER_KEY TOOL URIS_JSON")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
