"""An upstream MCP server on the official Python SDK (`mcp` 2.3 on PyPI), which speaks
2026-07-28 (stateless) and the 2025-11-25 handshake alike, over Streamable HTTP on
127.0.0.1:PORT/mcp. Its tools echo what they were called with, so a test sees what the
upstream acted on. Used by tests/protocol.rs.

Usage: python py_modern_server.py PORT
"""

import sys
from typing import Annotated

from pydantic import Field

from mcp.server.mcpserver import MCPServer

server = MCPServer("modern-k8s")


@server.tool()
def k8s_rollout_pause(namespace: str, name: str) -> str:
    """Pause a deployment's rollout (nothing is changed)."""
    return f"paused {namespace}/{name}"


@server.tool()
def k8s_delete_namespace(namespace: str) -> str:
    """Delete a namespace (nothing is changed)."""
    return f"deleted {namespace}"


@server.tool()
def k8s_scale(
    namespace: str,
    region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
    replicas: int,
) -> str:
    """Scale in a region; the region travels in an Mcp-Param-Region header too (nothing is changed)."""
    return f"scaled {namespace} in {region} to {replicas}"


if __name__ == "__main__":
    print(f"listening on http://127.0.0.1:{sys.argv[1]}/mcp", flush=True)
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
