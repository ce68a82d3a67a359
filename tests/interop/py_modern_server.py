"""An upstream MCP server on the official Python SDK (`mcp` 2.3 on PyPI), which speaks
2026-07-28 (stateless) and the 2025-11-25 handshake alike, over Streamable HTTP on
127.0.0.1:PORT/mcp. Its tools echo what they were called with, so a test sees what the
upstream acted on. Used by tests/protocol.rs.

Usage: python py_modern_server.py PORT  (0: a free port, printed on the first line of stdout)
"""

import sys
from typing import Annotated

from pydantic import Field

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("modern-k8s")

PUBLIC = "file:///etc/app/public.json"
SECRET = "file:///etc/app/secret.json"


@server.resource(PUBLIC)
def public_config() -> str:
    """A configuration file every grant may read."""
    return '{"replicas": 2}'


@server.resource(SECRET)
def secret_config() -> str:
    """A configuration file the tests' policies keep from agents."""
    return '{"password": "hunter2"}'


@server.tool()
async def k8s_touch_config(ctx: Context) -> str:
    """Tell `subscriptions/listen` streams that both configuration files changed, then that
    the tools list changed (nothing is changed)."""
    await ctx.notify_resource_updated(PUBLIC)
    await ctx.notify_resource_updated(SECRET)
    await ctx.notify_tools_changed()
    return "touched"


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
    # Port 0: the server binds a free port itself and prints it (a port chosen by the test and
    # bound later could be taken meanwhile by another process of a parallel test).
    import anyio
    import socket

    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, log_level="warning")
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[listener]))
