//! `relay mcp --as SENDER`: an MCP server on stdin/stdout (see `crate::mcp`)
//! whose every tool call speaks as SENDER. Exits 0 on EOF, SIGTERM or
//! SIGINT; stdout carries only the protocol, diagnostics go to stderr.

use crate::cli::McpArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};

/// Runs `relay mcp`.
pub fn run(ctx: &Ctx, args: &McpArgs) -> Result<()> {
    crate::subject::validate_subject(&args.sender, "sender (--as)")?;
    if args.sender == crate::notice::NOTICE_SENDER {
        return Err(Error::Usage(format!(
            "--as {} is relay's own failure-notice sender; pick the agent's identity, e.g. --as agent.backend",
            args.sender
        )));
    }
    eprintln!(
        "relay: MCP server on stdio for {} as '{}' ({} tools)",
        ctx.home.root().display(),
        args.sender,
        crate::mcp::tools::definitions().len()
    );
    crate::mcp::run_stdio(ctx.home.root().to_path_buf(), &args.sender)
}
