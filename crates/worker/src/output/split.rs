//! Cutting one output stream (a pipe's bytes) into log entries: one per line, an over-long
//! line into chunks of at most [`MAX_ENTRY_BYTES`].

use super::Chunk;

/// The most bytes of output one log entry carries (64 KiB). A longer line — including a
/// `\r` progress bar, which never ends a line — becomes several entries: every one but the
/// last is marked as continued, and joined with the next on display.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// Splits a byte stream into [`Chunk`]s. It holds at most one entry's worth of bytes plus
/// the last read, however long a line gets.
pub struct Splitter {
    pending: Vec<u8>,
    limit: usize,
    secrets: Vec<Vec<u8>>,
}

impl Splitter {
    /// A splitter cutting at `limit` bytes that never ends a chunk inside one of `secrets`
    /// (so that redacting each chunk still finds every secret).
    pub fn new(limit: usize, secrets: &[&str]) -> Self {
        Splitter {
            pending: Vec::new(),
            limit: limit.max(4),
            secrets: secrets
                .iter()
                .filter(|s| s.len() > 1)
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Takes the next bytes read; hands every finished line, and every full chunk of a line
    /// still going, to `emit`.
    pub fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(Chunk)) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line_end = start + end;
            self.emit_line(start, line_end, emit);
            start = line_end + 1;
        }
        // A line longer than the limit is cut as soon as that is certain.
        while self.pending.len() - start > self.limit {
            let cut = self.cut_point(&self.pending[start..]);
            emit(chunk(&self.pending[start..start + cut], true));
            start += cut;
        }
        self.pending.drain(..start);
    }

    /// Ends the stream: a last line without a newline is emitted too.
    pub fn finish(&mut self, emit: &mut impl FnMut(Chunk)) {
        if !self.pending.is_empty() {
            self.emit_line(0, self.pending.len(), emit);
            self.pending.clear();
        }
    }

    /// Emits `pending[start..end]` (a whole line, or the rest of a cut one) without the
    /// `\r`s that end it, in chunks.
    fn emit_line(&self, start: usize, end: usize, emit: &mut impl FnMut(Chunk)) {
        let mut line = &self.pending[start..end];
        while let [rest @ .., b'\r'] = line {
            line = rest;
        }
        while line.len() > self.limit {
            let cut = self.cut_point(line);
            emit(chunk(&line[..cut], true));
            line = &line[cut..];
        }
        // Always emitted, even empty: it ends a line that was cut before.
        emit(chunk(line, false));
    }

    /// Where to cut `bytes` (longer than the limit): at the limit, moved back to the start of
    /// a UTF-8 character and to before the beginning of any secret that would be cut.
    fn cut_point(&self, bytes: &[u8]) -> usize {
        let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
        let mut cut = self.limit;
        // A UTF-8 character is at most 4 bytes: more continuation bytes mean it is not UTF-8.
        while cut > self.limit - 3 && is_continuation(bytes[cut]) {
            cut -= 1;
        }
        if is_continuation(bytes[cut]) {
            cut = self.limit;
        }
        for secret in &self.secrets {
            let started = (1..secret.len())
                .rev()
                .find(|&k| k < cut && bytes[..cut].ends_with(&secret[..k]));
            if let Some(k) = started {
                cut -= k;
            }
        }
        cut
    }
}

fn chunk(bytes: &[u8], continues: bool) -> Chunk {
    // Tools print UTF-8, but a RUN step may print anything: never fail on it.
    Chunk {
        text: String::from_utf8_lossy(bytes).into_owned(),
        continues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(limit: usize, secrets: &[&str], reads: &[&[u8]]) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut splitter = Splitter::new(limit, secrets);
        for read in reads {
            splitter.feed(read, &mut |c| out.push(c));
        }
        splitter.finish(&mut |c| out.push(c));
        out
    }

    fn whole(text: &str) -> Chunk {
        Chunk {
            text: text.into(),
            continues: false,
        }
    }

    fn part(text: &str) -> Chunk {
        Chunk {
            text: text.into(),
            continues: true,
        }
    }

    /// The lines the chunks make when joined as the log display joins them.
    fn joined(chunks: &[Chunk]) -> Vec<String> {
        let mut lines = vec![String::new()];
        for c in chunks {
            lines.last_mut().unwrap().push_str(&c.text);
            if !c.continues {
                lines.push(String::new());
            }
        }
        lines.pop();
        lines
    }

    #[test]
    fn lines_are_cut_at_newlines_whatever_the_reads() {
        let out = split(
            MAX_ENTRY_BYTES,
            &[],
            &[b"one\ntw", b"o\r\n", b"\nthr", b"ee"],
        );
        assert_eq!(out, [whole("one"), whole("two"), whole(""), whole("three")]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_entry_one_byte_more_is_two() {
        let exact = "a".repeat(MAX_ENTRY_BYTES);
        let out = split(MAX_ENTRY_BYTES, &[], &[format!("{exact}\n").as_bytes()]);
        assert_eq!(out, [whole(&exact)]);
        // Without its newline, fed in small reads: still one entry.
        let reads: Vec<&[u8]> = exact.as_bytes().chunks(1000).collect();
        assert_eq!(split(MAX_ENTRY_BYTES, &[], &reads), [whole(&exact)]);

        let longer = format!("{exact}b");
        let out = split(MAX_ENTRY_BYTES, &[], &[longer.as_bytes()]);
        assert_eq!(out, [part(&exact), whole("b")]);
        assert_eq!(out[0].text.len(), MAX_ENTRY_BYTES);
    }

    #[test]
    fn cuts_fall_on_utf8_character_boundaries() {
        // "é" is 2 bytes, "€" 3, "😀" 4: each placed to straddle the limit.
        for ch in ["é", "€", "😀"] {
            for offset in 1..ch.len() {
                let line = format!("{}{ch}tail", "a".repeat(MAX_ENTRY_BYTES - offset));
                let out = split(MAX_ENTRY_BYTES, &[], &[line.as_bytes()]);
                assert_eq!(out.len(), 2, "{ch} at -{offset}");
                assert!(out[0].continues);
                assert_eq!(out[0].text.len(), MAX_ENTRY_BYTES - offset);
                assert!(out[1].text.starts_with(ch), "{ch} kept whole");
                assert_eq!(joined(&out), std::slice::from_ref(&line));
            }
        }
    }

    #[test]
    fn invalid_utf8_is_cut_at_the_limit_and_replaced() {
        let bytes = vec![0x80u8; 10];
        let out = split(4, &[], &[&bytes]);
        assert_eq!(
            out.iter().map(|c| c.text.chars().count()).sum::<usize>(),
            10
        );
        assert!(out.iter().all(|c| c.text.chars().all(|c| c == '\u{fffd}')));
    }

    #[test]
    fn a_long_line_without_newline_and_a_progress_bar_split_and_join_back() {
        let bar: String = (0..=100).map(|p| format!("{p:>3}% [####]\r")).collect();
        let text = format!("{bar}\nnext\n{}", "x".repeat(50));
        let reads: Vec<&[u8]> = text.as_bytes().chunks(7).collect();
        let out = split(64, &[], &reads);
        assert!(out.iter().all(|c| c.text.len() <= 64));
        assert_eq!(
            joined(&out),
            [
                bar.trim_end_matches('\r').to_string(),
                "next".into(),
                "x".repeat(50)
            ]
        );
        assert!(out.iter().filter(|c| c.continues).count() > 10);
    }

    #[test]
    fn a_secret_is_never_cut_in_two() {
        let line = format!("{}hunter2 after", "a".repeat(60));
        let out = split(64, &["hunter2"], &[line.as_bytes()]);
        assert_eq!(out[0].text, "a".repeat(60));
        assert!(out[1].text.starts_with("hunter2"), "{out:?}");
        assert_eq!(joined(&out), [line]);
    }
}
