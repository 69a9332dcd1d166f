//! Reading a tool's stdout or stderr as fast as it comes: cut into lines and chunks
//! ([`Splitter`]), secrets redacted, handed to the sink and to the tail kept for an error.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::follow::Followed;
use super::{BackendError, ERROR_TAIL_LINES, LineSink};
use crate::output::{Chunk, MAX_ENTRY_BYTES, Splitter};

/// What replaces a secret that turns up in output.
const REDACTED: &str = "<redacted>";
/// How much of a pipe is read at once.
const READ_BYTES: usize = 64 * 1024;
/// How much of each output line an error's tail keeps.
pub(super) const TAIL_ENTRY_BYTES: usize = 1024;

/// Reads `reader` until its end or a read error, as fast as it delivers, into `out` and the
/// tail; an error only when `out` overflows.
pub(super) async fn pump(
    mut reader: Followed,
    out: Option<&LineSink>,
    secrets: &[&str],
    tail: &Mutex<VecDeque<String>>,
) -> Result<(), BackendError> {
    let mut splitter = Splitter::new(MAX_ENTRY_BYTES, secrets);
    let mut chunks = Vec::new();
    let mut buf = vec![0; READ_BYTES];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.feed(&buf[..n], &mut |c| chunks.push(c)),
        }
        deliver(&mut chunks, out, secrets, tail)?;
    }
    splitter.finish(&mut |c| chunks.push(c));
    deliver(&mut chunks, out, secrets, tail)
}

/// Redacts `chunks` and hands them to `out` and the tail; an error when `out` overflowed.
fn deliver(
    chunks: &mut Vec<Chunk>,
    out: Option<&LineSink>,
    secrets: &[&str],
    tail: &Mutex<VecDeque<String>>,
) -> Result<(), BackendError> {
    let mut overflow = None;
    for chunk in chunks.drain(..) {
        let chunk = Chunk {
            text: redact(chunk.text, secrets),
            ..chunk
        };
        keep_in_tail(tail, &chunk.text);
        if let Some(Err(e)) = out.map(|out| out.push(chunk)) {
            overflow = Some(e);
        }
    }
    overflow.map_or(Ok(()), |e| Err(BackendError::OutputBacklog(e)))
}

/// Keeps the start of `text` as the newest of the last [`ERROR_TAIL_LINES`] entries.
fn keep_in_tail(tail: &Mutex<VecDeque<String>>, text: &str) {
    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    if tail.len() == ERROR_TAIL_LINES {
        tail.pop_front();
    }
    let mut end = text.len().min(TAIL_ENTRY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = text[..end].to_string();
    if end < text.len() {
        kept.push('…');
    }
    tail.push_back(kept);
}

/// `line` with every non-empty secret replaced.
fn redact(line: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(line, |line, secret| {
            if line.contains(secret) {
                line.replace(secret, REDACTED)
            } else {
                line
            }
        })
}
