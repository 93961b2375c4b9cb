//! `aic devnet restart|kill NAME --data-dir DIR`: the running devnet's control socket
//! (`run/control.sock` in its data dir), through which an operator restarts a service the devnet
//! started as a process, as a supervisor would, or kills one (SIGKILL: a crash, for drills) for a
//! later restart. One request a connection: `restart NAME` or `kill NAME`, then one line back —
//! what was done, or `error: …`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line the devnet reads.
const MAX_REQUEST_BYTES: u64 = 256;

#[derive(Args, Clone, Debug)]
pub struct RestartArgs {
    /// The service: scheduler-1, storage-2, compute-3, gateway, …
    pub name: String,
    /// The running devnet's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("control.sock")
}

/// Binds the control socket, replacing one a previous devnet left.
pub fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(data_dir);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))
}

/// A request to the devnet.
pub enum Request {
    Restart(String),
    Kill(String),
}

/// Reads one request from a connection; a malformed one is answered here and yields `None`.
pub async fn read_request(stream: &mut UnixStream) -> Option<Request> {
    let mut line = String::new();
    let read = BufReader::new(&mut *stream)
        .take(MAX_REQUEST_BYTES)
        .read_line(&mut line)
        .await;
    let request = match (read, line.trim().split_once(' ')) {
        (Ok(_), Some(("restart", name))) if !name.is_empty() => Some(Request::Restart(name.to_string())),
        (Ok(_), Some(("kill", name))) if !name.is_empty() => Some(Request::Kill(name.to_string())),
        _ => None,
    };
    if request.is_none() {
        answer(
            stream,
            Err(anyhow::anyhow!(
                "the devnet understands `restart NAME` and `kill NAME`"
            )),
        )
        .await;
    }
    request
}

/// Answers a request with one line.
pub async fn answer(stream: &mut UnixStream, outcome: anyhow::Result<String>) {
    let line = match outcome {
        Ok(done) => format!("{done}\n"),
        Err(error) => format!("error: {error:#}\n"),
    };
    let _ = stream.write_all(line.as_bytes()).await;
}

/// The client side: asks the devnet to `verb` (restart, kill) a service and prints its answer.
pub async fn ask(verb: &str, args: RestartArgs) -> anyhow::Result<()> {
    let path = socket_path(&args.data_dir);
    let mut stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no devnet is serving from {} (is it running, with --processes and without --once?)",
            args.data_dir.display()
        )
    })?;
    stream
        .write_all(format!("{verb} {}\n", args.name).as_bytes())
        .await?;
    let mut line = String::new();
    BufReader::new(stream).take(4096).read_line(&mut line).await?;
    match line.trim().strip_prefix("error: ") {
        Some(error) => bail!("{error}"),
        None if line.trim().is_empty() => bail!("the devnet closed the connection without an answer"),
        None => {
            println!("{}", line.trim());
            Ok(())
        }
    }
}
