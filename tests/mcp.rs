//! MCP servers as tool sources, against real servers: `server-everything` over stdio and
//! streamable HTTP, `mcp-server-time` over stdio.

mod mcp_support;

use std::sync::Arc;
use std::time::Duration;

use callboard::context::RunContext;
use callboard::mcp::{McpServer, McpServerConfig, Phase};
use callboard::tool::{Tool, ToolContext, ToolSource};

const READY: Duration = Duration::from_secs(60);

fn ctx(tool: &str) -> ToolContext<()> {
    ToolContext::new(
        RunContext::new(Arc::new(()), "run_t".into()),
        tool,
        "call_1",
    )
}

async fn tool_named(server: &McpServer, name: &str) -> Arc<dyn Tool<()>> {
    let tools = ToolSource::<()>::list_tools(server).await.expect("tools");
    tools
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

#[tokio::test]
async fn stdio_everything_lists_and_calls_tools() {
    let Some(bin) = mcp_support::everything() else {
        return;
    };
    let server = McpServer::start(McpServerConfig::stdio(
        "everything",
        "node",
        &[bin.to_str().unwrap(), "stdio"],
    ))
    .unwrap();
    server.wait_ready(READY).await.unwrap();
    let st = server.status();
    assert_eq!(st.state, Phase::Ready);
    for t in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(
            st.tools.iter().any(|n| n == t),
            "{t} missing from {:?}",
            st.tools
        );
    }
    let echo = tool_named(&server, "echo").await;
    let out = echo
        .invoke(ctx("echo"), r#"{"message":"hi there"}"#.into())
        .await
        .unwrap();
    assert_eq!(out, "Echo: hi there");
    let sum = tool_named(&server, "get-sum").await;
    let out = sum
        .invoke(ctx("get-sum"), r#"{"a":2,"b":40}"#.into())
        .await
        .unwrap();
    assert_eq!(out, "The sum of 2 and 40 is 42.");
    server.shutdown();
    assert!(server.wait_for(READY, |s| s.state == Phase::Stopped).await);
}
