"""A small MCP server (stdio) whose tools change while it runs: calling `unlock` adds the
tool `secret` and sends notifications/tools/list_changed. The tests of callboard's MCP client
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


if __name__ == "__main__":
    app.run("stdio")
