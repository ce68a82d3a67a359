"""Talks to a Tollgate edge with the official MCP Python SDK (`mcp` on PyPI) and prints
what it saw as JSON on stdout (used by tests/stdio.rs).

Usage: python py_client.py MCP_URL BEARER_KEY TOOL ARGUMENTS_JSON CALLS
Lists the tools, then calls TOOL with ARGUMENTS_JSON CALLS times.
"""

import asyncio
import json
import sys

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, key: str, tool: str, arguments: dict, calls: int) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                listed = await session.list_tools()
                results = []
                for _ in range(calls):
                    result = await session.call_tool(tool, arguments)
                    results.append(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    print(
        json.dumps(
            {
                "server": init.server_info.model_dump(mode="json", by_alias=True, exclude_none=True),
                "tools": [t.name for t in listed.tools],
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: python py_client.py MCP_URL BEARER_KEY TOOL ARGUMENTS_JSON CALLS")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])))
