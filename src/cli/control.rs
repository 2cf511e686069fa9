//! The control socket: how `dsfs get/put/ls/rm/stat/cid/import/fsck` reach a store that a
//! mount daemon has open.
//!
//! A store's files are locked by the one process that has them open, so while a store is
//! mounted a second process cannot open it. The mount daemon therefore listens on a Unix
//! socket named after the store's [home](crate::spec::StoreSpec::home) (in the abstract
//! namespace: nothing is left on disk, and no path length limit applies), and a command that
//! finds the store locked sends its command line there; the daemon runs it against the store
//! it serves, so the datastore API and the mounted files stay two views of one store.
//!
//! Both ends check who is at the other end (`SO_PEERCRED`): the daemon serves only its own
//! user and root, and a command talks only to a daemon of its own user or root, so the socket
//! is private to the store's owner although its name is public.
//!
//! The protocol is one JSON line (the request), then the command's standard input until the
//! client shuts its side down; the daemon answers with frames of a tag byte (`o` standard
//! output, `e` standard error, `x` exit status), a big-endian u32 length and the bytes.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use serde::{Deserialize, Serialize};

use super::{Cli, CmdIo, Command};
use crate::datastore::{Error, ErrorKind};
use crate::index::IndexedStore;

/// The longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
enum Request {
    /// Who serves the store: answers with the daemon's pid and mount point.
    Who,
    /// Run a command line (the arguments after the program name) in directory `cwd`.
    Run { args: Vec<String>, cwd: PathBuf },
}

/// The abstract socket name for a store's home.
fn socket_name(home: &Path) -> String {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(home.as_os_str().as_encoded_bytes());
    format!("dsfs-control/{:016x}", h.finish())
}

fn address(home: &Path) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(socket_name(home).as_bytes())
}

/// Whether a peer with effective user `uid` may talk to this process.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == crate::sys::effective_ids().0
}

/// How long a command waits for the kernel to be told of the keys it changed.
const CHANGES_HANDLED: std::time::Duration = std::time::Duration::from_secs(10);

/// A running control socket; dropping it stops accepting commands.
pub struct Server {
    stop: Arc<AtomicBool>,
    home: PathBuf,
}

/// What the daemon knows about itself, for commands and messages.
struct Served {
    store: Arc<IndexedStore>,
    description: String,
    mountpoint: PathBuf,
}

impl Server {
    /// Listens for commands on `home`'s socket and runs them against `store`.
    pub fn start(
        home: &Path,
        store: Arc<IndexedStore>,
        description: String,
        mountpoint: &Path,
    ) -> io::Result<Server> {
        let listener = UnixListener::bind_addr(&address(home)?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Served {
            store,
            description,
            mountpoint: mountpoint.to_path_buf(),
        });
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("dsfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    match crate::sys::peer_credentials(&conn) {
                        Ok((_, uid)) if trusted(uid) => {}
                        Ok((pid, uid)) => {
                            log::warn!(
                                "control socket: refused a command from user {uid} (pid {pid})"
                            );
                            continue;
                        }
                        Err(e) => {
                            log::warn!("control socket: cannot identify a client: {e}");
                            continue;
                        }
                    }
                    let served = served.clone();
                    let spawned = std::thread::Builder::new()
                        .name("dsfs-command".into())
                        .spawn(move || {
                            if let Err(e) = handle(conn, &served) {
                                log::debug!("control socket: client gone: {e}");
                            }
                        });
                    if let Err(e) = spawned {
                        log::warn!("control socket: cannot start a command thread: {e}");
                    }
                }
            })?;
        Ok(Server {
            stop,
            home: home.to_path_buf(),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so that it sees the flag and closes the socket.
        if let Ok(addr) = address(&self.home) {
            let _ = UnixStream::connect_addr(&addr);
        }
    }
}

/// Writes one frame.
fn frame(mut w: &UnixStream, tag: u8, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

/// A `Write` that sends what it is given as frames of one tag.
struct FrameWriter<'a> {
    stream: &'a UnixStream,
    tag: u8,
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(1 << 20);
        frame(self.stream, self.tag, &buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn who(served: &Served) -> String {
    format!(
        "mounted at {} by dsfs (pid {})",
        served.mountpoint.display(),
        std::process::id()
    )
}

/// Serves one client: reads its request, runs it, sends the output and the exit status.
fn handle(stream: UnixStream, served: &Served) -> io::Result<()> {
    let mut input = BufReader::new(&stream);
    let mut line = String::new();
    (&mut input).take(MAX_REQUEST).read_line(&mut line)?;
    let request: Request =
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let (args, cwd) = match request {
        Request::Who => {
            frame(&stream, b'o', who(served).as_bytes())?;
            return frame(&stream, b'x', &[0]);
        }
        Request::Run { args, cwd } => (args, cwd),
    };
    let cli = match Cli::try_parse_from(std::iter::once("dsfs".to_owned()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            frame(&stream, b'e', e.to_string().as_bytes())?;
            return frame(&stream, b'x', &[2]);
        }
    };
    log::info!("control socket: running {:?}", cli.command);
    let mut out = FrameWriter {
        stream: &stream,
        tag: b'o',
    };
    let mut err = FrameWriter {
        stream: &stream,
        tag: b'e',
    };
    let io = CmdIo {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        cwd: Some(cwd),
        live: Some(who(served)),
    };
    let status = match super::execute(&cli.command, &served.store, &served.description, None, io) {
        Ok(code) if code == ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        Err(e) => {
            frame(&stream, b'e', format!("dsfs: {e}\n").as_bytes())?;
            1
        }
    };
    // What the command changed is visible in the mount when it returns (see `index::changes`).
    if !served
        .store
        .index()
        .wait_for_changes_handled(CHANGES_HANDLED)
    {
        log::warn!(
            "control socket: the kernel was not told of every change within {CHANGES_HANDLED:?}"
        );
    }
    frame(&stream, b'x', &[status])
}

/// Connects to the daemon serving `home`, if one answers and may be trusted.
fn connect(home: &Path) -> Result<Option<UnixStream>, Error> {
    let Ok(stream) =
        UnixStream::connect_addr(&address(home).map_err(|e| Error::io("control socket", e))?)
    else {
        return Ok(None);
    };
    let (pid, uid) = crate::sys::peer_credentials(&stream)
        .map_err(|e| Error::io("identifying the dsfs daemon", e))?;
    if !trusted(uid) {
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "{} is in use, and the process answering for it (pid {pid}) belongs to user {uid}; not sending it anything",
                home.display()
            ),
        ));
    }
    Ok(Some(stream))
}

/// Reads frames until the exit status, copying output to ours.
fn relay(stream: &UnixStream) -> Result<u8, Error> {
    let fail = |e| Error::io("reading from the dsfs daemon", e);
    let mut reader = BufReader::new(stream);
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr().lock();
    loop {
        let mut head = [0u8; 5];
        reader.read_exact(&mut head).map_err(fail)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut data = vec![0u8; len];
        reader.read_exact(&mut data).map_err(fail)?;
        match head[0] {
            b'o' => stdout
                .write_all(&data)
                .map_err(|e| Error::io("writing output", e))?,
            b'e' => {
                let _ = stderr.write_all(&data);
            }
            b'x' => {
                stdout.flush().map_err(|e| Error::io("writing output", e))?;
                return Ok(data.first().copied().unwrap_or(1));
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("the dsfs daemon sent an unknown frame {other:#x}"),
                ));
            }
        }
    }
}

/// Who has `home` open: "mounted at M by dsfs (pid N)", if a daemon answers.
pub fn holder(home: &Path) -> Option<String> {
    let stream = connect(home).ok()??;
    send(&stream, &Request::Who).ok()?;
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reader = BufReader::new(&stream);
    let mut head = [0u8; 5];
    reader.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut data = vec![0u8; len.min(4096)];
    reader.read_exact(&mut data).ok()?;
    (head[0] == b'o').then(|| String::from_utf8_lossy(&data).into_owned())
}

fn send(mut stream: &UnixStream, request: &Request) -> io::Result<()> {
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Runs this process's command line in the daemon serving `home`. `None` when no daemon
/// answers (the store is locked by something else).
pub fn forward(home: &Path, command: &Command) -> Result<Option<ExitCode>, Error> {
    let Some(stream) = connect(home)? else {
        return Ok(None);
    };
    let args = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<Vec<String>, OsString>>()
        .map_err(|a| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{a:?} is not UTF-8, so it cannot be sent to the dsfs daemon that has {} open",
                    home.display()
                ),
            )
        })?;
    let cwd = std::env::current_dir().map_err(|e| Error::io("finding the current directory", e))?;
    let fail = |e| Error::io("talking to the dsfs daemon", e);
    send(&stream, &Request::Run { args, cwd }).map_err(fail)?;
    if reads_stdin(command) {
        io::copy(&mut io::stdin().lock(), &mut &stream).map_err(fail)?;
    }
    stream.shutdown(std::net::Shutdown::Write).map_err(fail)?;
    Ok(Some(ExitCode::from(relay(&stream)?)))
}

/// Whether a command reads its standard input.
fn reads_stdin(command: &Command) -> bool {
    let stdin = |f: &Option<PathBuf>| f.as_deref().is_none_or(|p| p == Path::new("-"));
    match command {
        Command::Put { file, .. } => stdin(file),
        Command::PutBlock { file, .. } => stdin(file),
        Command::Init
        | Command::Get { .. }
        | Command::Ls { .. }
        | Command::Rm { .. }
        | Command::Stat { .. }
        | Command::Cid { .. }
        | Command::Import { .. }
        | Command::Add { .. }
        | Command::Cat { .. }
        | Command::Fsck { .. }
        | Command::Reindex
        | Command::Mount { .. }
        | Command::Umount { .. } => false,
    }
}
