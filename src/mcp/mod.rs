//! The MCP server (`relay mcp` on stdio, `/mcp` in `relay serve` over
//! streamable HTTP), built on rmcp: tool list and calls, each call run on a
//! worker thread with a pooled context (see `tools`). The sender of every
//! call is the identity the server was started with.
//!
//! Only `relay mcp` and `relay serve` start a runtime; this module never
//! does so on its own except in `run_stdio`.

pub mod dispatch;
pub mod tools;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ServerHandler, ServiceExt};
use serde_json::Value;

use crate::config::{self, Config};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::request::Cancel;

/// The identity of calls over `relay serve`'s `/mcp`, as DorkOS's external
/// MCP surface (`relay.external.mcp`).
pub const HTTP_SENDER: &str = "relay.external.mcp";
/// Worker threads running tool calls at once.
const WORKERS: usize = 8;
/// How long a stop waits for calls still running (their waits are cancelled).
const GRACE: Duration = Duration::from_secs(5);

/// What to tell the model about this server.
const INSTRUCTIONS: &str = "relay: reliable local messaging between agents. You send as a fixed identity; read your own endpoint with relay_inbox, ask and wait with relay_send_and_wait. Refusals carry a code and, when retrying can help, retryAfterMs.";

/// The MCP server for one identity on one home; clones share everything.
#[derive(Clone)]
pub struct RelayMcp(Arc<Inner>);

struct Inner {
    home: PathBuf,
    sender: String,
    /// Contexts not in use by a call, each with the `relay.db` it saw last.
    pool: Mutex<Vec<(Ctx, Option<DbFile>)>>,
    /// The last config that parsed: a bad edit keeps serving with it.
    config: Mutex<Option<Config>>,
    /// Ends the waits of running `relay_send_and_wait` calls at shutdown.
    cancel: Cancel,
    /// When idle dispatch inboxes were last swept (`dispatch`).
    swept: Mutex<Option<Instant>>,
    /// Ends the streamable-HTTP sessions of `http_service` at shutdown.
    end_sessions: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    tools: Vec<Tool>,
}

/// The device and inode of `relay.db`: a replaced index is reopened.
type DbFile = (u64, u64);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RelayMcp {
    /// A server for `home` speaking as `sender` (a valid subject; checked
    /// by the caller).
    #[must_use]
    pub fn new(home: PathBuf, sender: &str) -> Self {
        let tools = tools::definitions()
            .into_iter()
            .map(|d| {
                let schema: JsonObject = match d.schema {
                    Value::Object(m) => m,
                    _ => JsonObject::new(),
                };
                let mut ann = ToolAnnotations::new().read_only(d.read_only);
                if !d.read_only {
                    ann = ann.destructive(d.destructive).idempotent(d.idempotent);
                } else {
                    ann = ann.idempotent(true);
                }
                Tool::new(d.name, d.description, Arc::new(schema)).annotate(ann.open_world(false))
            })
            .collect();
        RelayMcp(Arc::new(Inner {
            home,
            sender: sender.to_string(),
            pool: Mutex::new(Vec::new()),
            config: Mutex::new(None),
            cancel: Cancel::new(),
            swept: Mutex::new(None),
            end_sessions: Mutex::new(None),
            tools,
        }))
    }

    /// Ends every running wait (`relay_send_and_wait`) now and any started
    /// later: the server is stopping.
    pub fn stop(&self) {
        self.0.cancel.cancel();
    }

    /// Ends the streamable-HTTP sessions of `http_service` (their event
    /// streams would otherwise hold serve's graceful shutdown for its whole
    /// grace): after `stop`, once the cancelled calls have answered.
    pub fn end_sessions(&self) {
        if let Some(end) = lock(&self.0.end_sessions).as_ref() {
            end();
        }
    }

    /// Runs `f` on a pooled context (with the current config).
    fn with_ctx<T>(&self, f: impl FnOnce(&mut Ctx) -> T) -> Result<T> {
        use std::os::unix::fs::MetadataExt;
        let pooled = lock(&self.0.pool).pop();
        let (mut ctx, seen) = match pooled {
            Some(c) => c,
            None => (Ctx::new(Some(self.0.home.clone()), true, true)?, None),
        };
        // A replaced index (doctor --repair) is opened afresh.
        let db = std::fs::metadata(ctx.home.db_file())
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if db != seen {
            ctx.close_store();
        }
        {
            let mut last = lock(&self.0.config);
            match config::load(&ctx.home.config_file()) {
                Ok(c) => *last = Some(c),
                Err(e) if last.is_none() => return Err(e),
                Err(e) => crate::output::warn(&format!("{e}; using the last config that parsed")),
            }
            if let Some(c) = last.as_ref() {
                ctx.home.set_payload_cap(c.max_payload_bytes);
                ctx.config = c.clone();
            }
        }
        let out = f(&mut ctx);
        lock(&self.0.pool).push((ctx, db));
        Ok(out)
    }

    /// One call, on this thread; idle dispatch inboxes of this identity
    /// are swept first if `every` has passed since the last sweep.
    fn call_blocking(&self, name: &str, args: Value) -> tools::ToolResult {
        let sender = self.0.sender.clone();
        let cancel = self.0.cancel.clone();
        self.with_ctx(|ctx| {
            self.sweep_if_due(ctx, dispatch::SWEEP_AFTER_CALLS);
            tools::call(ctx, &sender, &cancel, name, args)
        })
        .unwrap_or_else(|e| tools::ToolResult::setup_failed(&e))
    }

    /// Sweeps this identity's idle dispatch inboxes every
    /// `dispatch::sweep_when_idle()` whether or not calls come (a server
    /// with calls also sweeps on them), on the blocking pool, until the
    /// task is aborted or the runtime stops. A tick right after a sweep on
    /// calls (less than `SWEEP_AFTER_CALLS` ago) does nothing.
    #[must_use]
    pub fn spawn_idle_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = dispatch::sweep_when_idle();
        let skip_after = every.min(dispatch::SWEEP_AFTER_CALLS);
        tokio::spawn(async move {
            let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                idle.tick().await;
                let me = me.clone();
                // One sweep at a time: the next tick waits for this one.
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = me.with_ctx(|ctx| me.sweep_if_due(ctx, skip_after));
                })
                .await;
            }
        })
    }

    /// Removes this identity's dispatch inboxes idle past their TTL
    /// (`dispatch::sweep`), unless a sweep ran less than `every` ago.
    fn sweep_if_due(&self, ctx: &Ctx, every: Duration) {
        {
            let mut last = lock(&self.0.swept);
            if last.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *last = Some(Instant::now());
        }
        let sender = self.0.sender.as_str();
        dispatch::sweep(ctx, |mb| tools::owner_of(mb).is_some_and(|o| o == sender));
    }
}

impl ServerHandler for RelayMcp {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("relay", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.0.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.0.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, McpError> {
        let me = self.clone();
        let name: Cow<'static, str> = request.name;
        let args = request.arguments.map_or(Value::Null, Value::Object);
        let out = tokio::task::spawn_blocking(move || me.call_blocking(&name, args))
            .await
            .map_err(|e| McpError::internal_error(format!("a tool call stopped: {e}"), None))?;
        let text = out.text();
        let mut result = if out.is_error {
            CallToolResult::error(vec![ContentBlock::text(text)])
        } else {
            CallToolResult::success(vec![ContentBlock::text(text)])
        };
        if out.structured {
            result.structured_content = Some(out.value);
        }
        Ok(result.into())
    }
}

/// Serves MCP on stdin/stdout until EOF, SIGTERM or SIGINT (exit 0 for
/// each): the runtime lives only here.
pub fn run_stdio(home: PathBuf, sender: &str) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: what.into(),
        source: e,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(WORKERS)
        .build()
        .map_err(|e| io("cannot start the MCP server runtime", e))?;
    let server = RelayMcp::new(home, sender);
    let result = runtime.block_on(serve_stdio(server.clone()));
    // Calls still waiting end now; their reply endpoints are removed.
    server.stop();
    runtime.shutdown_timeout(GRACE);
    result
}

async fn serve_stdio(server: RelayMcp) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: what.into(),
        source: e,
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| io("cannot handle SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| io("cannot handle SIGINT", e))?;
    let transport = rmcp::transport::io::stdio_pipes();
    let running = tokio::select! {
        r = server.clone().serve(transport) => r,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let running = match running {
        Ok(r) => r,
        // The client left before (or during) the handshake: nothing to do.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => return Ok(()),
        Err(e) => {
            return Err(Error::Usage(format!(
                "MCP handshake failed: {e}; relay mcp speaks MCP (JSON-RPC) on stdin/stdout: start it from an MCP client"
            )));
        }
    };
    // EOF ends `waiting`; a signal drops it, which stops the service.
    // Meanwhile idle dispatch inboxes are swept also when no call comes.
    let sweeper = server.spawn_idle_sweeper();
    tokio::select! {
        _ = running.waiting() => {}
        _ = term.recv() => server.stop(),
        _ = int.recv() => server.stop(),
    }
    sweeper.abort();
    Ok(())
}

/// The streamable-HTTP MCP service `relay serve` mounts at `/mcp`, of
/// `server` (`RelayMcp::new(home, HTTP_SENDER)`, whose idle sweeper serve
/// runs), behind serve's guard (Host, Origin, token).
pub fn http_service(
    server: RelayMcp,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    RelayMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    // serve's guard checks Host, Origin and the token before this sees a
    // request; checking them again here would only disagree with it.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins();
    // For `end_sessions`.
    let token = config.cancellation_token.clone();
    *lock(&server.0.end_sessions) = Some(Box::new(move || token.cancel()));
    StreamableHttpService::new(move || Ok(server.clone()), Arc::default(), config)
}
