//! Starting and stopping one child process.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use crate::StdioSettings;

/// How long a child may take to exit once its stdin is closed, before it is killed.
const GRACE: Duration = Duration::from_secs(2);

/// A started child and its pipes.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Starts the server's command with piped stdio. The child gets the bridge's environment
/// without its `TOLLGATE_*` variables (they may hold credentials), plus the configured
/// `env`; it is killed if its handle is dropped.
pub(crate) fn spawn(settings: &StdioSettings) -> Result<Started, String> {
    let (program, args) = settings
        .command
        .split_first()
        .ok_or_else(|| "the command is empty".to_owned())?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command.envs(&settings.env);
    if let Some(cwd) = &settings.cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start stdio MCP server \"{}\" ({program:?}): {e}", settings.name))?;
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(format!(
            "stdio MCP server \"{}\": its pipes could not be opened",
            settings.name
        ));
    };
    Ok(Started {
        child,
        stdin,
        stdout,
        stderr,
    })
}

/// Stops a child whose stdin was closed: it gets [`GRACE`] to exit on its own (the MCP
/// stdio shutdown), then it is killed.
pub(crate) async fn stop(child: &mut Child) -> std::io::Result<ExitStatus> {
    if let Ok(status) = tokio::time::timeout(GRACE, child.wait()).await {
        return status;
    }
    child.kill().await?;
    child.wait().await
}
