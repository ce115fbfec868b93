"""A small MCP server (stdio) whose tools change while it runs: calling `unlock` adds the
tool `secret` and sends notifications/tools/list_changed; `trace_context` tells the
traceparent its call carried in `_meta`. The tests of callboard's MCP client
start it with the `mcp` package that mcp-server-time installs."""

from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("changing-tools")


def secret() -> str:
    """Tells the secret."""
    return "42"


@app.tool()
async def unlock(ctx: Context) -> str:
    """Adds the tool `secret` and tells the client the tool list changed."""
    app.add_tool(secret)
    # Sessions of the initialize handshake (before 2026-07-28) get the notification directly.
    await ctx.session.send_tool_list_changed()
    return "unlocked"


@app.tool()
async def trace_context(ctx: Context) -> str:
    """Tells the W3C traceparent the call carried in its _meta ("none" without one)."""
    meta = ctx.request_context.meta
    if meta is None:
        return "none"
    if not isinstance(meta, dict):
        meta = {**(getattr(meta, "model_extra", None) or {}), **meta.model_dump(by_alias=True)}
    return str(meta.get("traceparent") or "none")


if __name__ == "__main__":
    app.run("stdio")
