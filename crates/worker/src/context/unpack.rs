//! Format detection and the archive walkers. Every entry goes through [`Tree`], which
//! alone decides what may be written where.

use std::cell::Cell;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use super::tree::{Tree, read_error, show};
use super::{ContextError, Limits};

/// Bytes looked at to recognise a format: one tar header.
const HEAD: usize = 512;
/// What the tar reader may pull between two entries: padding, headers and the extension
/// data (long names, pax records) that the tar crate buffers in memory. Real extension
/// data is a few KiB; a decompression bomb hidden in a pax header must not fill memory.
const HEADER_BUDGET: u64 = 1 << 20;
/// Dictionary memory an xz stream may ask for, in KiB: `xz -9` needs 64 MiB.
const XZ_MEM_LIMIT_KIB: u32 = 256 * 1024;
/// Longest symlink target stored as zip entry content.
const MAX_LINK_TARGET: u64 = 4096;

/// What the first bytes of a build package say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gzip,
    Bzip2,
    Xz,
    Zip,
    Tar,
    Text,
    Unknown,
}

/// Recognises a format from its first bytes (up to [`HEAD`]); names are never trusted.
fn detect(head: &[u8]) -> Kind {
    if head.starts_with(&[0x1f, 0x8b]) {
        Kind::Gzip
    } else if head.starts_with(b"BZh") {
        Kind::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Kind::Xz
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Kind::Zip
    } else if is_tar(head) {
        Kind::Tar
    } else if !head.is_empty() && is_text(head, true) {
        Kind::Text
    } else {
        Kind::Unknown
    }
}

/// A tar header: the ustar magic, or (pre-POSIX tar) a checksum that adds up.
fn is_tar(head: &[u8]) -> bool {
    if head.len() < HEAD {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let field = &head[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return false;
    }
    let Some(stored) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| u32::from_str_radix(d, 8).ok())
    else {
        return false;
    };
    let sum: u32 = head[..HEAD]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

/// Valid UTF-8 without NUL bytes; with `partial`, a sequence cut off at the end is allowed
/// (the rest of it is in the next chunk).
fn is_text(bytes: &[u8], partial: bool) -> bool {
    if bytes.contains(&0) {
        return false;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => partial && e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4,
    }
}

/// Unpacks a build package into `dest` (created if missing), detecting its format by
/// content: a tar (plain, gzip, bzip2 or xz), a zip, or a lone text Dockerfile, which is
/// written as `dest/Dockerfile`.
///
/// Nothing outside `dest` is written, whatever the bytes; on error `dest` may hold part of
/// the package, and the caller removes it.
pub fn unpack<R: Read + Seek>(
    mut data: R,
    dest: &Path,
    limits: &Limits,
) -> Result<(), ContextError> {
    let start = data
        .stream_position()
        .map_err(|e| ContextError::io("reading the build package", e))?;
    let head =
        read_head(&mut data).map_err(|e| ContextError::io("reading the build package", e))?;
    data.seek(SeekFrom::Start(start))
        .map_err(|e| ContextError::io("reading the build package", e))?;
    let mut tree = Tree::new(dest, limits)?;
    match detect(&head) {
        Kind::Gzip => unpack_compressed("gzip", flate2::read::MultiGzDecoder::new(data), &mut tree),
        Kind::Bzip2 => {
            unpack_compressed("bzip2", bzip2::read::MultiBzDecoder::new(data), &mut tree)
        }
        Kind::Xz => unpack_compressed(
            "xz",
            lzma_rust2::XzReader::new_mem_limit(data, true, XZ_MEM_LIMIT_KIB),
            &mut tree,
        ),
        Kind::Zip => unpack_zip(data, &mut tree),
        Kind::Tar => unpack_tar(data, &mut tree),
        Kind::Text => unpack_dockerfile(data, &mut tree),
        Kind::Unknown if head.is_empty() => {
            Err(ContextError::Format("the build package is empty".into()))
        }
        Kind::Unknown => Err(ContextError::Format(
            "the build package is neither a tar or zip archive nor a text Dockerfile".into(),
        )),
    }
}

/// Reads up to [`HEAD`] bytes (fewer only at the end of the stream).
fn read_head(data: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD);
    data.take(HEAD as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// A compressed stream must hold a tar archive.
fn unpack_compressed(
    codec: &str,
    mut stream: impl Read,
    tree: &mut Tree,
) -> Result<(), ContextError> {
    let head = read_head(&mut stream).map_err(|e| {
        ContextError::Format(format!("the build package is not valid {codec} data: {e}"))
    })?;
    if !is_tar(&head) {
        return Err(ContextError::Format(format!(
            "the build package is {codec}-compressed but does not contain a tar archive"
        )));
    }
    unpack_tar(Cursor::new(head).chain(stream), tree)
}

/// A reader that refuses to give more than its budget, and says so afterwards.
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<u64>>,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.left.get();
        if left == 0 {
            self.exceeded.set(true);
            return Err(io::Error::other("tar header budget exceeded"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// Walks a tar stream entry by entry (never `Archive::unpack`, which trusts too much).
fn unpack_tar(stream: impl Read, tree: &mut Tree) -> Result<(), ContextError> {
    let left = Rc::new(Cell::new(HEADER_BUDGET));
    let exceeded = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(Budgeted {
        inner: stream,
        left: left.clone(),
        exceeded: exceeded.clone(),
    });
    let tar_error = |e: io::Error| {
        if exceeded.get() {
            ContextError::TooLarge(format!(
                "the build package has tar headers larger than {HEADER_BUDGET} bytes"
            ))
        } else {
            ContextError::Format(format!("the build package is not a valid tar archive: {e}"))
        }
    };
    let mut entries = archive.entries().map_err(tar_error)?;
    loop {
        // Everything of the previous entry has been read, so what the reader pulls now is
        // padding and headers only.
        left.set(HEADER_BUDGET);
        let mut entry = match entries.next() {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(tar_error(e)),
        };
        // Entry data is counted (and bounded) by the tree as it is written.
        left.set(u64::MAX);
        tree.count_entry()?;
        let name = entry.path_bytes().into_owned();
        unpack_tar_entry(&name, &mut entry, tree)?;
        tree.drain(&name, &mut entry)?;
    }
    Ok(())
}

/// Hands one tar entry to the tree according to its type; devices and pipes are refused.
fn unpack_tar_entry<R: Read>(
    name: &[u8],
    entry: &mut tar::Entry<'_, R>,
    tree: &mut Tree,
) -> Result<(), ContextError> {
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header.mode().unwrap_or(0o644);
    let declared = entry.size();
    use tar::EntryType as T;
    match kind {
        // Pre-POSIX tars mark directories only by the trailing slash.
        T::Regular if name.ends_with(b"/") => tree.dir(name, mode),
        T::Regular | T::Continuous | T::GNUSparse => tree.file(name, mode, declared, entry),
        T::Directory => tree.dir(name, mode),
        T::Symlink | T::Link => {
            let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
                return Err(ContextError::Format(format!(
                    "link {} has no target",
                    show(name)
                )));
            };
            if kind == T::Symlink {
                tree.symlink(name, &target)
            } else {
                tree.hardlink(name, &target)
            }
        }
        T::Char | T::Block => Err(ContextError::Hostile(format!(
            "archive entry {} is a device file, which a build context may not contain",
            show(name)
        ))),
        T::Fifo => Err(ContextError::Hostile(format!(
            "archive entry {} is a named pipe, which a build context may not contain",
            show(name)
        ))),
        // Metadata for other entries (the tar crate applies what it understands).
        T::XGlobalHeader | T::XHeader => Ok(()),
        other => Err(ContextError::Format(format!(
            "archive entry {} has an unsupported type ({:?})",
            show(name),
            other.as_byte() as char
        ))),
    }
}

/// Walks a zip archive's central directory entry by entry.
fn unpack_zip(data: impl Read + Seek, tree: &mut Tree) -> Result<(), ContextError> {
    let mut zip = zip::ZipArchive::new(data).map_err(|e| {
        ContextError::Format(format!("the build package is not a valid zip archive: {e}"))
    })?;
    for i in 0..zip.len() {
        tree.count_entry()?;
        let mut file = zip.by_index(i).map_err(|e| {
            ContextError::Format(format!("cannot read zip entry number {}: {e}", i + 1))
        })?;
        // Some Windows zippers write `\` as the separator, which would hide a `..\`.
        let name: Vec<u8> = file
            .name_raw()
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect();
        let mode = file.unix_mode();
        match mode.map(|m| m & 0o170_000) {
            Some(0o020_000 | 0o060_000) => {
                return Err(ContextError::Hostile(format!(
                    "archive entry {} is a device file, which a build context may not contain",
                    show(&name)
                )));
            }
            Some(0o010_000 | 0o140_000) => {
                return Err(ContextError::Hostile(format!(
                    "archive entry {} is a named pipe or socket, which a build context may not contain",
                    show(&name)
                )));
            }
            _ => {}
        }
        if file.is_symlink() {
            let mut target = Vec::new();
            (&mut file)
                .take(MAX_LINK_TARGET + 1)
                .read_to_end(&mut target)
                .map_err(|e| read_error(&name, e))?;
            if target.len() as u64 > MAX_LINK_TARGET {
                return Err(ContextError::Format(format!(
                    "symlink {} has a target longer than {MAX_LINK_TARGET} bytes",
                    show(&name)
                )));
            }
            tree.symlink(&name, &target)?;
        } else if file.is_dir() || name.ends_with(b"/") {
            tree.dir(&name, mode.unwrap_or(0o755))?;
        } else {
            let declared = file.size();
            tree.file(&name, mode.unwrap_or(0o644), declared, &mut file)?;
        }
    }
    Ok(())
}

/// A reader that notices the first byte that makes its stream not text.
struct TextCheck<R> {
    inner: R,
    /// An incomplete UTF-8 sequence carried over from the previous read.
    carry: Vec<u8>,
    not_text: Rc<Cell<bool>>,
}

impl<R: Read> Read for TextCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut chunk = std::mem::take(&mut self.carry);
        chunk.extend_from_slice(&buf[..n]);
        let at_end = n == 0;
        if !is_text(&chunk, !at_end) {
            self.not_text.set(true);
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not text"));
        }
        if let Err(e) = std::str::from_utf8(&chunk) {
            self.carry = chunk[e.valid_up_to()..].to_vec();
        }
        Ok(n)
    }
}

/// A package that is no archive but text is taken to be the Dockerfile itself.
fn unpack_dockerfile(data: impl Read, tree: &mut Tree) -> Result<(), ContextError> {
    tree.count_entry()?;
    let not_text = Rc::new(Cell::new(false));
    let mut reader = TextCheck {
        inner: data,
        carry: Vec::new(),
        not_text: not_text.clone(),
    };
    match tree.file(b"Dockerfile", 0o644, 0, &mut reader) {
        Err(_) if not_text.get() => Err(ContextError::Format(
            "the build package is neither a tar or zip archive nor a text Dockerfile".into(),
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Kind::Gzip);
        assert_eq!(detect(b"BZh91AY"), Kind::Bzip2);
        assert_eq!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), Kind::Xz);
        assert_eq!(detect(b"PK\x03\x04rest"), Kind::Zip);
        assert_eq!(detect(b"PK\x05\x06"), Kind::Zip);
        assert_eq!(detect(b"FROM scratch\n"), Kind::Text);
        assert_eq!(detect(b""), Kind::Unknown);
        assert_eq!(detect(&[0u8; 512]), Kind::Unknown);
        assert_eq!(detect(&[0xff, 0xfe, 0x00]), Kind::Unknown);
    }

    #[test]
    fn old_tar_header_is_recognised_by_checksum() {
        let mut header = tar::Header::new_old();
        header.set_path("Dockerfile").expect("path");
        header.set_size(0);
        header.set_cksum();
        assert_eq!(detect(header.as_bytes()), Kind::Tar);
        let mut broken = *header.as_bytes();
        broken[0] ^= 1;
        assert_eq!(detect(&broken), Kind::Unknown);
    }

    #[test]
    fn text_check_allows_split_sequences_only_mid_stream() {
        let e_acute = "é".as_bytes();
        assert!(is_text(&e_acute[..1], true));
        assert!(!is_text(&e_acute[..1], false));
        assert!(!is_text(b"a\0b", true));
    }
}
