"""Calls a tool that needs an operator's approval through a Tollgate edge with the official
MCP Python SDK (`mcp` 2.3) in MCP 2026-07-28, as a client that supports URL-mode
elicitation. When the gateway asks the user to follow the approval (an
`InputRequiredResult` with a URL elicitation), this client plays the operator too: it
resolves the approval named by the URL's fragment through the operators' API
(`ADMIN_URL/admin/approvals/{id}/{VERB}`, VERB "approve" or "deny"), then accepts, and the SDK
retries the call. Prints the elicitations it saw and the call's result as JSON on stdout
(used by tests/protocol.rs).

Usage: python py_approval_client.py MCP_URL BEARER_KEY ADMIN_URL OPERATOR_KEY VERB TOOL ARGUMENTS_JSON
VERB may also be "decline": the user declines to follow the approval.
"""

import asyncio
import json
import sys

import urllib.error
import urllib.request

import anyio
import mcp_types as types

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def describe(e: BaseException) -> str:
    inner = getattr(e, "exceptions", None)
    if inner:
        return f"{type(e).__name__}: " + "; ".join(describe(x) for x in inner)
    return f"{type(e).__name__}: {e}"


async def main(url: str, key: str, admin: str, operator_key: str, verb: str, tool: str, arguments: dict) -> None:
    seen: list = []

    async def on_elicit(context, params):
        dumped = params.model_dump(mode="json", by_alias=True, exclude_none=True)
        seen.append(dumped)
        if verb == "decline":
            return types.ElicitResult(action="decline")
        approval = dumped.get("url", "").rsplit("#", 1)[-1]

        def resolve() -> int:
            request = urllib.request.Request(
                f"{admin}/admin/approvals/{approval}/{verb}",
                data=json.dumps({"reason": f"the operator said {verb} in a test"}).encode(),
                headers={"Authorization": f"Bearer {operator_key}", "Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status
            except urllib.error.HTTPError as e:
                return e.code

        dumped["operator_status"] = await anyio.to_thread.run_sync(resolve)
        return types.ElicitResult(action="accept")

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    out: dict = {}
    async with http:
        try:
            async with Client(
                streamable_http_client(url, http_client=http), mode="2026-07-28", elicitation_callback=on_elicit
            ) as client:
                result = await client.call_tool(tool, arguments)
                out["result"] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        except Exception as e:
            out["error"] = describe(e)
    out["elicitations"] = seen
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 8:
        sys.exit("usage: python py_approval_client.py MCP_URL BEARER_KEY ADMIN_URL OPERATOR_KEY VERB TOOL ARGUMENTS_JSON")
    asyncio.run(main(*sys.argv[1:7], json.loads(sys.argv[7])))
