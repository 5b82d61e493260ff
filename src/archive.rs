//! The source archive checker: decides whether an uploaded build context (`.tgz`) is safe to
//! hand to Docker, streaming it once in bounded memory and unpacking nothing.
//!
//! Every entry must stay inside the context: no absolute paths, no `..` above the root, no
//! member written through a symlink, no symlink or hard link that leads out, no devices. Sizes
//! are checked against [`ArchiveLimits`] from the tar headers, before the data is read, and the
//! decompressed bytes spent on tar metadata are bounded too, so a gzip bomb fails fast.

use std::cell::Cell;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

/// Most decompressed bytes of tar metadata (headers, PAX records, GNU long names, the padding
/// of the previous member) one member may carry. Go's archive/tar, which unpacks the context
/// inside Docker, refuses PAX and long-name records over 1 MiB, so this refuses nothing Docker
/// would take, and it caps what the tar crate buffers in memory for one member.
const MEMBER_HEADER_BYTES_MAX: u64 = 1 << 20;

/// Tar metadata allowed per member on average, on top of [`MEMBER_HEADER_BYTES_MAX`]. A plain
/// member spends at most 1535 bytes (header and padding) and a PAX record a few hundred more;
/// the allowance stops a bomb hidden in headers after a few KiB per real entry.
const HEADER_BYTES_PER_MEMBER: u64 = 8 << 10;

/// Longest path shown in an error message; the rest is elided.
const SHOWN_PATH_CHARS: usize = 200;

/// The bounds an upload must stay within; they come from the server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Sum of the sizes of all entries once unpacked.
    pub max_context_bytes: u64,
    /// Tar members, PAX global headers included.
    pub max_entries: u64,
    /// Bytes in an entry's path or link target.
    pub max_path_len: usize,
}

/// What an accepted archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Files, directories and links (PAX global headers are not counted).
    pub entries: u64,
    /// Sum of the entries' sizes.
    pub unpacked_bytes: u64,
}

/// Why an upload was refused. The message names the offending path; [`ArchiveError::code`]
/// is a stable identifier for API clients.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The body does not start with the gzip magic bytes.
    #[error("the upload is not gzip-compressed")]
    NotGzip,
    /// The body starts like gzip but does not inflate.
    #[error("the upload's gzip stream is corrupt: {detail}")]
    CorruptGzip { detail: String },
    /// The body inflates but is not a tar archive (or a truncated one).
    #[error("the upload is gzip-compressed but not a valid tar archive: {detail}")]
    NotTar { detail: String },
    /// A zero-length body, or an archive with no entries.
    #[error("the archive is empty")]
    Empty,
    /// An absolute path, or `..` climbing above the root.
    #[error("entry {path} escapes the build context")]
    PathEscapes { path: String },
    /// A member whose path goes through a symlink: unpacking it would write wherever the link
    /// points.
    #[error("entry {path} is written through a symlink")]
    PathThroughSymlink { path: String },
    /// A symlink or hard link that leads out of the context, or a hard link to nothing.
    #[error("link {path} -> {target} {problem}")]
    LinkEscapes {
        path: String,
        target: String,
        problem: &'static str,
    },
    /// Devices, fifos and other types a build context has no use for.
    #[error("entry {path} has unsupported type: {kind}")]
    UnsupportedEntry { path: String, kind: String },
    /// The entries' sizes add up to more than `max_context_bytes`.
    #[error("entry {path} takes the unpacked build context over {limit} bytes")]
    ContextTooLarge { path: String, limit: u64 },
    /// Tar metadata larger than any real archive needs (a bomb hidden in headers).
    #[error("the tar headers of member {member} exceed the {limit}-byte allowance")]
    HeadersTooLarge { member: u64, limit: u64 },
    /// More than `max_entries` members.
    #[error("entry {path} is past the limit of {limit} entries")]
    TooManyEntries { path: String, limit: u64 },
    /// A path or link target longer than `max_path_len`.
    #[error("entry {path} has a path or link target longer than {limit} bytes")]
    PathTooLong { path: String, limit: usize },
    /// A path no file system can hold.
    #[error("entry {path} is not a valid path: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The build's Dockerfile is not a regular file in the archive.
    #[error("the Dockerfile {path} is not a regular file in the archive")]
    DockerfileMissing { path: String },
    /// Reading the upload itself failed.
    #[error("reading the upload failed: {0}")]
    Io(#[source] io::Error),
}

impl ArchiveError {
    /// A stable snake_case identifier, one per variant.
    pub fn code(&self) -> &'static str {
        match self {
            ArchiveError::NotGzip => "not_gzip",
            ArchiveError::CorruptGzip { .. } => "corrupt_gzip",
            ArchiveError::NotTar { .. } => "not_tar",
            ArchiveError::Empty => "empty_archive",
            ArchiveError::PathEscapes { .. } => "path_escapes",
            ArchiveError::PathThroughSymlink { .. } => "path_through_symlink",
            ArchiveError::LinkEscapes { .. } => "link_escapes",
            ArchiveError::UnsupportedEntry { .. } => "unsupported_entry",
            ArchiveError::ContextTooLarge { .. } => "context_too_large",
            ArchiveError::HeadersTooLarge { .. } => "headers_too_large",
            ArchiveError::TooManyEntries { .. } => "too_many_entries",
            ArchiveError::PathTooLong { .. } => "path_too_long",
            ArchiveError::InvalidPath { .. } => "invalid_path",
            ArchiveError::DockerfileMissing { .. } => "dockerfile_missing",
            ArchiveError::Io(_) => "io",
        }
    }
}

/// Checks a gzip-compressed tar stream entry by entry and returns what it holds. Blocking:
/// call it from a blocking thread. `dockerfile` is a path inside the context
/// (`Dockerfile`, `./docker/Dockerfile`).
pub fn check_archive(
    gzipped: impl Read,
    limits: &ArchiveLimits,
    dockerfile: &str,
) -> Result<ArchiveSummary, ArchiveError> {
    let stream = StreamState::default();
    let mut upload = Upload {
        inner: gzipped,
        stream: &stream,
    };
    let mut magic = Vec::with_capacity(2);
    (&mut upload)
        .take(2)
        .read_to_end(&mut magic)
        .map_err(ArchiveError::Io)?;
    match magic.as_slice() {
        [] => return Err(ArchiveError::Empty),
        [0x1f, 0x8b] => {}
        _ => return Err(ArchiveError::NotGzip),
    }
    let inflated = Inflated {
        inner: MultiGzDecoder::new(io::Cursor::new(magic).chain(upload)),
        stream: &stream,
    };
    let mut archive = tar::Archive::new(inflated);
    let mut entries = archive.entries().map_err(|err| stream.blame(err, 1))?;
    let mut checker = Checker::new(limits);
    loop {
        stream.allow_headers(checker.header_allowance());
        let before = stream.inflated.get();
        let next = entries.next();
        checker.header_bytes += stream.inflated.get() - before;
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(err)) => return Err(stream.blame(err, checker.members + 1)),
        };
        let Some(size) = checker.admit(&entry)? else {
            // A PAX global header: tar skips its data as metadata of the next member.
            continue;
        };
        stream.allow_data(size);
        let read = io::copy(&mut entry, &mut io::sink())
            .map_err(|err| stream.blame(err, checker.members))?;
        if read != size {
            return Err(ArchiveError::NotTar {
                detail: format!("entry {} is truncated", shown(&entry.path_bytes())),
            });
        }
    }
    checker.finish(dockerfile)
}

/// What the readers beneath the tar parser saw, so an error coming out of `tar` is blamed on
/// the right layer, and how many decompressed bytes the parser may still read.
#[derive(Default)]
struct StreamState {
    upload_failed: Cell<bool>,
    gzip_failed: Cell<bool>,
    /// Decompressed bytes handed to the tar parser so far.
    inflated: Cell<u64>,
    /// The parser may read up to this many decompressed bytes in total.
    allowed_until: Cell<u64>,
    /// Size of the current header allowance, reported if it is exceeded.
    header_allowance: Cell<u64>,
    headers_exceeded: Cell<bool>,
}

impl StreamState {
    fn allow_headers(&self, allowance: u64) {
        self.header_allowance.set(allowance);
        self.allowed_until
            .set(self.inflated.get().saturating_add(allowance));
    }

    fn allow_data(&self, size: u64) {
        self.allowed_until
            .set(self.inflated.get().saturating_add(size));
    }

    fn blame(&self, err: io::Error, member: u64) -> ArchiveError {
        if self.upload_failed.get() {
            ArchiveError::Io(err)
        } else if self.headers_exceeded.get() {
            ArchiveError::HeadersTooLarge {
                member,
                limit: self.header_allowance.get(),
            }
        } else if self.gzip_failed.get() {
            ArchiveError::CorruptGzip {
                detail: err.to_string(),
            }
        } else {
            ArchiveError::NotTar {
                detail: err.to_string(),
            }
        }
    }
}

/// The raw upload; remembers whether reading it failed.
struct Upload<'s, R> {
    inner: R,
    stream: &'s StreamState,
}

impl<R: Read> Read for Upload<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|err| {
            if err.kind() != io::ErrorKind::Interrupted {
                self.stream.upload_failed.set(true);
            }
        })
    }
}

/// The decompressed stream the tar parser reads; counts bytes and refuses to go past the
/// current allowance.
struct Inflated<'s, R> {
    inner: R,
    stream: &'s StreamState,
}

impl<R: Read> Read for Inflated<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = self.stream.allowed_until.get() - self.stream.inflated.get();
        if room == 0 {
            self.stream.headers_exceeded.set(true);
            return Err(io::Error::other("tar metadata exceeds its byte allowance"));
        }
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        match self.inner.read(&mut buf[..len]) {
            Ok(read) => {
                self.stream
                    .inflated
                    .set(self.stream.inflated.get() + read as u64);
                Ok(read)
            }
            Err(err) => {
                if err.kind() != io::ErrorKind::Interrupted {
                    self.stream.gzip_failed.set(true);
                }
                Err(err)
            }
        }
    }
}

/// What a path names once the archive is unpacked (hard links are files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// Why a path is unsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsafe {
    /// `..` climbs above the root.
    Escapes,
    /// The path passes through a symlink where that is not allowed.
    ThroughSymlink,
}

/// The unpacked context as far as the checks need it: what each path written so far is.
///
/// A path is identified by a chain of hashes, one per component (`hash(parent, name)`), so
/// every prefix of a path is looked up in O(1) without building prefix strings and the map
/// holds 16 bytes per entry. The hasher is keyed at random per archive, so an uploader cannot
/// craft colliding names.
struct Tree {
    hasher: RandomState,
    kinds: HashMap<u64, Kind>,
}

/// Parent "node" of top-level names.
const ROOT: u64 = 0;

impl Tree {
    fn child(&self, parent: u64, name: &[u8]) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    fn is_symlink(&self, node: u64) -> bool {
        self.kinds.get(&node) == Some(&Kind::Symlink)
    }

    /// Where a member's path (or a hard link's target) lands: the node of every component.
    /// `..` may not climb above the root and no component but the last may be a symlink:
    /// unpacking would follow it, and no context packer writes members beneath a symlink.
    fn locate(&self, path: &[u8]) -> Result<Vec<u64>, Unsafe> {
        let names: Vec<&[u8]> = components(path).collect();
        let mut nodes: Vec<u64> = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            if *name == b".." {
                nodes.pop().ok_or(Unsafe::Escapes)?;
                continue;
            }
            let node = self.child(nodes.last().copied().unwrap_or(ROOT), name);
            if index + 1 < names.len() && self.is_symlink(node) {
                return Err(Unsafe::ThroughSymlink);
            }
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// Checks that a symlink's `target`, resolved from the directory `link_dir` holding the
    /// link, stays inside. Going through other symlinks is fine (each is checked in turn),
    /// but `..` after one is refused: it climbs from wherever that link points, which the
    /// lexical path does not show.
    fn follow(&self, link_dir: &[u64], target: &[u8]) -> Result<(), Unsafe> {
        let mut nodes = link_dir.to_vec();
        let mut via_symlink = nodes.iter().any(|node| self.is_symlink(*node));
        for name in components(target) {
            if name == b".." {
                if via_symlink {
                    return Err(Unsafe::ThroughSymlink);
                }
                nodes.pop().ok_or(Unsafe::Escapes)?;
                continue;
            }
            let node = self.child(nodes.last().copied().unwrap_or(ROOT), name);
            via_symlink |= self.is_symlink(node);
            nodes.push(node);
        }
        Ok(())
    }
}

/// A path's components, without empty ones and `.`.
fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|byte| *byte == b'/')
        .filter(|name| !name.is_empty() && *name != b".")
}

/// A symlink kept for a last check once the whole archive is known: a link written later may
/// change where this one leads.
struct PendingSymlink {
    order: u64,
    path: String,
    target: Vec<u8>,
    dir: Vec<u64>,
}

/// The per-entry checks and what they remember between entries.
struct Checker<'l> {
    limits: &'l ArchiveLimits,
    tree: Tree,
    symlinks: HashMap<u64, PendingSymlink>,
    /// Every tar member the parser yielded, PAX global headers included.
    members: u64,
    entries: u64,
    unpacked_bytes: u64,
    /// Decompressed bytes the parser spent outside entry data.
    header_bytes: u64,
}

impl<'l> Checker<'l> {
    fn new(limits: &'l ArchiveLimits) -> Self {
        Checker {
            limits,
            tree: Tree {
                hasher: RandomState::new(),
                kinds: HashMap::new(),
            },
            symlinks: HashMap::new(),
            members: 0,
            entries: 0,
            unpacked_bytes: 0,
            header_bytes: 0,
        }
    }

    /// How many decompressed bytes the parser may spend on the next member's metadata.
    fn header_allowance(&self) -> u64 {
        let earned = MEMBER_HEADER_BYTES_MAX
            .saturating_add(self.members.saturating_mul(HEADER_BYTES_PER_MEMBER));
        earned
            .saturating_sub(self.header_bytes)
            .min(MEMBER_HEADER_BYTES_MAX)
    }

    /// Checks one member from its header alone. Returns the size of the data to read next,
    /// or `None` for a member that is metadata only.
    fn admit<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<Option<u64>, ArchiveError> {
        self.members += 1;
        let raw_path = entry.path_bytes();
        let path = shown(&raw_path);
        if self.members > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                path,
                limit: self.limits.max_entries,
            });
        }
        if raw_path.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                path,
                limit: self.limits.max_path_len,
            });
        }
        let entry_type = entry.header().entry_type();
        let kind = match entry_type {
            EntryType::Regular | EntryType::Link => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::XGlobalHeader => return Ok(None),
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    path,
                    kind: describe(other),
                });
            }
        };
        let size = entry.size();
        match self.unpacked_bytes.checked_add(size) {
            Some(total) if total <= self.limits.max_context_bytes => {}
            _ => {
                return Err(ArchiveError::ContextTooLarge {
                    path,
                    limit: self.limits.max_context_bytes,
                });
            }
        }
        let nodes = self.locate_member(&raw_path, &path, kind)?;
        // An empty `nodes` is the root itself, as `./` in archives made with `tar -C dir .`.
        if let Some((&node, dir)) = nodes.split_last() {
            let target = entry.link_name_bytes().unwrap_or_default();
            match entry_type {
                EntryType::Link => self.check_hard_link(&path, &target)?,
                EntryType::Symlink => self.check_symlink(&path, &target, dir)?,
                _ => {}
            }
            self.record(node, kind, path, &target, dir);
        }
        self.entries += 1;
        self.unpacked_bytes += size;
        Ok(Some(size))
    }

    /// Records what a checked member's path now is.
    fn record(&mut self, node: u64, kind: Kind, path: String, target: &[u8], dir: &[u64]) {
        if kind == Kind::Symlink {
            let link = PendingSymlink {
                order: self.members,
                path,
                target: target.to_vec(),
                dir: dir.to_vec(),
            };
            self.symlinks.insert(node, link);
        } else {
            self.symlinks.remove(&node);
        }
        self.tree.kinds.insert(node, kind);
    }

    fn locate_member(&self, raw: &[u8], path: &str, kind: Kind) -> Result<Vec<u64>, ArchiveError> {
        if raw.contains(&0) {
            return Err(ArchiveError::InvalidPath {
                path: path.to_owned(),
                reason: "it contains a NUL byte",
            });
        }
        if raw.starts_with(b"/") {
            return Err(ArchiveError::PathEscapes {
                path: path.to_owned(),
            });
        }
        let nodes = self.tree.locate(raw).map_err(|problem| match problem {
            Unsafe::Escapes => ArchiveError::PathEscapes {
                path: path.to_owned(),
            },
            Unsafe::ThroughSymlink => ArchiveError::PathThroughSymlink {
                path: path.to_owned(),
            },
        })?;
        if nodes.is_empty() && kind != Kind::Dir {
            return Err(ArchiveError::InvalidPath {
                path: path.to_owned(),
                reason: "only a directory can name the root of the context",
            });
        }
        Ok(nodes)
    }

    fn check_hard_link(&self, path: &str, target: &[u8]) -> Result<(), ArchiveError> {
        self.check_link_target(path, target)?;
        let problem = match self.tree.locate(target) {
            Err(Unsafe::Escapes) => "leaves the build context",
            Err(Unsafe::ThroughSymlink) => "resolves through a symlink",
            Ok(nodes) => match nodes.last().and_then(|node| self.tree.kinds.get(node)) {
                Some(Kind::File) => return Ok(()),
                Some(Kind::Symlink) => "names a symlink, which would move it",
                Some(Kind::Dir) | None => "names no regular file earlier in the archive",
            },
        };
        Err(link_escapes(path, target, problem))
    }

    fn check_symlink(&self, path: &str, target: &[u8], dir: &[u64]) -> Result<(), ArchiveError> {
        self.check_link_target(path, target)?;
        self.tree
            .follow(dir, target)
            .map_err(|problem| link_escapes(path, target, symlink_problem(problem)))
    }

    /// The checks a link target needs whatever the link's type.
    fn check_link_target(&self, path: &str, target: &[u8]) -> Result<(), ArchiveError> {
        if target.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                path: path.to_owned(),
                limit: self.limits.max_path_len,
            });
        }
        if target.contains(&0) {
            return Err(ArchiveError::InvalidPath {
                path: path.to_owned(),
                reason: "its link target contains a NUL byte",
            });
        }
        if target.starts_with(b"/") {
            return Err(link_escapes(path, target, "leaves the build context"));
        }
        Ok(())
    }

    /// The checks that need the whole archive: symlinks against the final tree, and the
    /// Dockerfile.
    fn finish(self, dockerfile: &str) -> Result<ArchiveSummary, ArchiveError> {
        if self.entries == 0 {
            return Err(ArchiveError::Empty);
        }
        let mut symlinks: Vec<&PendingSymlink> = self.symlinks.values().collect();
        symlinks.sort_by_key(|link| link.order);
        for link in symlinks {
            self.tree
                .follow(&link.dir, &link.target)
                .map_err(|problem| {
                    link_escapes(&link.path, &link.target, symlink_problem(problem))
                })?;
        }
        let is_file = !dockerfile.starts_with('/')
            && matches!(
                self.tree.locate(dockerfile.as_bytes()),
                Ok(nodes) if nodes.last().and_then(|node| self.tree.kinds.get(node)) == Some(&Kind::File)
            );
        if !is_file {
            return Err(ArchiveError::DockerfileMissing {
                path: dockerfile.to_owned(),
            });
        }
        Ok(ArchiveSummary {
            entries: self.entries,
            unpacked_bytes: self.unpacked_bytes,
        })
    }
}

fn symlink_problem(problem: Unsafe) -> &'static str {
    match problem {
        Unsafe::Escapes => "leaves the build context",
        Unsafe::ThroughSymlink => "climbs with `..` out of another symlink",
    }
}

fn link_escapes(path: &str, target: &[u8], problem: &'static str) -> ArchiveError {
    ArchiveError::LinkEscapes {
        path: path.to_owned(),
        target: shown(target),
        problem,
    }
}

fn describe(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::Char => "character device".to_owned(),
        EntryType::Block => "block device".to_owned(),
        EntryType::Fifo => "fifo".to_owned(),
        EntryType::Continuous => "contiguous file".to_owned(),
        EntryType::GNUSparse => "GNU sparse file".to_owned(),
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
            "long-name or PAX header without a ustar or GNU header".to_owned()
        }
        other => format!("type flag {:?}", char::from(other.as_byte())),
    }
}

/// A path for an error message: lossily decoded and cut short.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(SHOWN_PATH_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    const LIMITS: ArchiveLimits = ArchiveLimits {
        max_context_bytes: 1 << 20,
        max_entries: 100,
        max_path_len: 1024,
    };

    /// One tar member, written with a raw header so tests can use names and targets that
    /// `tar::Header::set_path` refuses.
    #[derive(Clone, Copy)]
    enum Member<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Special(&'a str, EntryType),
        /// A PAX extended header whose `path` record applies to the next member.
        PaxPath(&'a [u8]),
        PaxGlobal(&'a [u8]),
    }

    fn raw_header(name: &[u8], entry_type: EntryType, size: u64, link: &str) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(entry_type);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        header
    }

    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        // The length counts itself: "<len> <key>=<value>\n".
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while (len.to_string().len() + rest) != len {
            len += 1;
        }
        let mut record = format!("{len} {key}=").into_bytes();
        record.extend_from_slice(value);
        record.push(b'\n');
        record
    }

    fn tar_of(members: &[Member]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for member in members {
            let (header, data): (tar::Header, Vec<u8>) = match member {
                Member::File(path, data) => (
                    raw_header(path.as_bytes(), EntryType::Regular, data.len() as u64, ""),
                    data.to_vec(),
                ),
                Member::Dir(path) => (
                    raw_header(path.as_bytes(), EntryType::Directory, 0, ""),
                    vec![],
                ),
                Member::Symlink(path, target) => (
                    raw_header(path.as_bytes(), EntryType::Symlink, 0, target),
                    vec![],
                ),
                Member::HardLink(path, target) => (
                    raw_header(path.as_bytes(), EntryType::Link, 0, target),
                    vec![],
                ),
                Member::Special(path, entry_type) => {
                    (raw_header(path.as_bytes(), *entry_type, 0, ""), vec![])
                }
                Member::PaxPath(path) => {
                    let record = pax_record("path", path);
                    (
                        raw_header(b"PaxHeader", EntryType::XHeader, record.len() as u64, ""),
                        record,
                    )
                }
                Member::PaxGlobal(comment) => {
                    let record = pax_record("comment", comment);
                    (
                        raw_header(
                            b"pax_global_header",
                            EntryType::XGlobalHeader,
                            record.len() as u64,
                            "",
                        ),
                        record,
                    )
                }
            };
            builder
                .append(&header, data.as_slice())
                .expect("append member");
        }
        builder.into_inner().expect("finish tar")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("finish gzip")
    }

    fn tgz(members: &[Member]) -> Vec<u8> {
        gzip(&tar_of(members))
    }

    fn check(upload: &[u8]) -> Result<ArchiveSummary, ArchiveError> {
        check_archive(upload, &LIMITS, "Dockerfile")
    }

    /// A minimal valid context with `extra` members after the Dockerfile.
    fn with_dockerfile(extra: &[Member]) -> Result<ArchiveSummary, ArchiveError> {
        let mut members = vec![Member::File("Dockerfile", b"FROM scratch\n")];
        members.extend_from_slice(extra);
        check(&tgz(&members))
    }

    #[test]
    fn valid_context_with_nested_dirs_and_inner_symlink_is_accepted() {
        let upload = tgz(&[
            Member::Dir("./"),
            Member::File("./Dockerfile", b"FROM scratch\n"),
            Member::Dir("src/"),
            Member::Dir("src/app/"),
            Member::File("src/app/main.rs", b"fn main() {}\n"),
            Member::Symlink("src/app/lib.rs", "../shared/lib.rs"),
            Member::Dir("src/shared/"),
            Member::File("src/shared/lib.rs", b"pub fn lib() {}\n"),
        ]);
        let summary = check(&upload).expect("valid context");
        assert_eq!(
            summary,
            ArchiveSummary {
                entries: 8,
                unpacked_bytes: 13 + 13 + 16
            }
        );
    }

    #[test]
    fn zero_length_upload_is_empty() {
        assert!(matches!(check(b""), Err(ArchiveError::Empty)));
    }

    #[test]
    fn gzip_of_nothing_is_empty() {
        assert!(matches!(check(&gzip(b"")), Err(ArchiveError::Empty)));
    }

    #[test]
    fn tar_with_no_entries_is_empty() {
        assert!(matches!(check(&tgz(&[])), Err(ArchiveError::Empty)));
    }

    #[test]
    fn uncompressed_tar_is_not_gzip() {
        let upload = tar_of(&[Member::File("Dockerfile", b"FROM scratch\n")]);
        assert!(matches!(check(&upload), Err(ArchiveError::NotGzip)));
    }

    #[test]
    fn one_byte_upload_is_not_gzip() {
        assert!(matches!(check(&[0x1f]), Err(ArchiveError::NotGzip)));
    }

    #[test]
    fn gzip_of_text_is_not_tar() {
        let upload = gzip(&b"this is not a tar archive\n".repeat(40));
        assert!(matches!(check(&upload), Err(ArchiveError::NotTar { .. })));
    }

    #[test]
    fn truncated_tar_is_not_tar() {
        let mut tar = tar_of(&[Member::File("Dockerfile", &[b'x'; 2000])]);
        tar.truncate(1024);
        assert!(matches!(
            check(&gzip(&tar)),
            Err(ArchiveError::NotTar { .. })
        ));
    }

    #[test]
    fn corrupt_deflate_data_is_corrupt_gzip() {
        let mut upload = gzip(&[7u8; 4096]);
        // Past the 10-byte gzip header, into the deflate stream.
        for byte in &mut upload[10..14] {
            *byte = 0xff;
        }
        assert!(matches!(
            check(&upload),
            Err(ArchiveError::CorruptGzip { .. })
        ));
    }

    #[test]
    fn failing_reader_is_io() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ))
            }
        }
        let upload = tgz(&[Member::File("Dockerfile", b"FROM scratch\n")]);
        let reader = upload[..20].chain(Broken);
        let result = check_archive(reader, &LIMITS, "Dockerfile");
        assert!(matches!(result, Err(ArchiveError::Io(_))));
    }

    #[test]
    fn file_with_parent_path_is_rejected() {
        let result = with_dockerfile(&[Member::File("../etc/passwd", b"root")]);
        let err = result.expect_err("escapes");
        assert!(matches!(&err, ArchiveError::PathEscapes { path } if path == "../etc/passwd"));
        assert_eq!(
            err.to_string(),
            "entry ../etc/passwd escapes the build context"
        );
    }

    #[test]
    fn dir_with_parent_path_is_rejected() {
        let result = with_dockerfile(&[Member::Dir("a/../../x/")]);
        assert!(matches!(result, Err(ArchiveError::PathEscapes { .. })));
    }

    #[test]
    fn symlink_with_parent_path_is_rejected() {
        let result = with_dockerfile(&[Member::Symlink("../link", "Dockerfile")]);
        assert!(matches!(result, Err(ArchiveError::PathEscapes { .. })));
    }

    #[test]
    fn hard_link_with_parent_path_is_rejected() {
        let result = with_dockerfile(&[Member::HardLink("../link", "Dockerfile")]);
        assert!(matches!(result, Err(ArchiveError::PathEscapes { .. })));
    }

    #[test]
    fn absolute_path_is_rejected() {
        let result = with_dockerfile(&[Member::File("/etc/passwd", b"root")]);
        assert!(matches!(result, Err(ArchiveError::PathEscapes { path }) if path == "/etc/passwd"));
    }

    #[test]
    fn pax_long_name_with_parent_path_is_rejected() {
        let long = format!("{}/{}", "a".repeat(60), "../".repeat(30) + "etc/passwd");
        assert!(long.len() > 100);
        let result = with_dockerfile(&[
            Member::PaxPath(long.as_bytes()),
            Member::File("innocent", b"x"),
        ]);
        assert!(matches!(result, Err(ArchiveError::PathEscapes { path }) if path == long));
    }

    #[test]
    fn pax_long_name_inside_the_context_is_accepted() {
        let long = format!("{}/file", "d".repeat(150));
        let result = with_dockerfile(&[
            Member::PaxPath(long.as_bytes()),
            Member::File("short", b"x"),
        ]);
        assert_eq!(result.expect("long name").entries, 2);
    }

    #[test]
    fn parent_path_that_stays_inside_is_accepted() {
        let result = with_dockerfile(&[Member::File("./a/./b/../c", b"x")]);
        assert_eq!(result.expect("stays inside").entries, 2);
    }

    #[test]
    fn member_written_through_a_symlink_is_rejected() {
        let result = with_dockerfile(&[
            Member::Dir("sub/"),
            Member::Symlink("link", "sub"),
            Member::File("link/file", b"x"),
        ]);
        assert!(
            matches!(result, Err(ArchiveError::PathThroughSymlink { path }) if path == "link/file")
        );
    }

    #[test]
    fn path_with_nul_byte_is_invalid() {
        let result = with_dockerfile(&[Member::PaxPath(b"a\0b"), Member::File("innocent", b"x")]);
        assert!(matches!(result, Err(ArchiveError::InvalidPath { .. })));
    }

    #[test]
    fn file_naming_the_root_is_invalid() {
        let result = with_dockerfile(&[Member::File("./", b"x")]);
        assert!(matches!(result, Err(ArchiveError::InvalidPath { .. })));
    }

    #[test]
    fn symlink_to_absolute_target_is_rejected() {
        let err = with_dockerfile(&[Member::Symlink("etc", "/etc")]).expect_err("absolute");
        assert!(
            matches!(&err, ArchiveError::LinkEscapes { path, target, .. } if path == "etc" && target == "/etc")
        );
        assert_eq!(err.to_string(), "link etc -> /etc leaves the build context");
    }

    #[test]
    fn symlink_climbing_out_of_the_context_is_rejected() {
        let result = with_dockerfile(&[Member::Symlink("a/link", "../../secret")]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { .. })));
    }

    #[test]
    fn symlink_climbing_to_the_root_is_accepted() {
        let result = with_dockerfile(&[Member::Symlink("a/link", "../Dockerfile")]);
        assert_eq!(result.expect("inside").entries, 2);
    }

    #[test]
    fn symlink_climbing_out_of_another_symlink_is_rejected() {
        // a/b/s -> x (via ../../x); a/b/t -> s/../../.. is inside on paper, but climbs from x.
        let result = with_dockerfile(&[
            Member::Symlink("a/b/s", "../../x"),
            Member::Symlink("a/b/t", "s/../../.."),
        ]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { path, .. }) if path == "a/b/t"));
    }

    #[test]
    fn symlink_is_rechecked_against_links_written_after_it() {
        let result = with_dockerfile(&[
            Member::Symlink("a/b/t", "s/../../.."),
            Member::Symlink("a/b/s", "../../x"),
        ]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { path, .. }) if path == "a/b/t"));
    }

    #[test]
    fn hard_link_to_absolute_target_is_rejected() {
        let result = with_dockerfile(&[Member::HardLink("passwd", "/etc/passwd")]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { .. })));
    }

    #[test]
    fn hard_link_climbing_out_of_the_context_is_rejected() {
        let result = with_dockerfile(&[Member::HardLink("passwd", "../etc/passwd")]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { .. })));
    }

    #[test]
    fn hard_link_to_missing_entry_is_rejected() {
        let err = with_dockerfile(&[Member::HardLink("copy", "nowhere")]).expect_err("missing");
        assert!(matches!(&err, ArchiveError::LinkEscapes { .. }));
        assert_eq!(
            err.to_string(),
            "link copy -> nowhere names no regular file earlier in the archive"
        );
    }

    #[test]
    fn hard_link_to_later_entry_is_rejected() {
        let result = with_dockerfile(&[
            Member::HardLink("copy", "later"),
            Member::File("later", b"x"),
        ]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { .. })));
    }

    #[test]
    fn hard_link_to_symlink_is_rejected() {
        let result = with_dockerfile(&[
            Member::Symlink("a/b/up", "../../Dockerfile"),
            Member::HardLink("moved", "a/b/up"),
        ]);
        assert!(matches!(result, Err(ArchiveError::LinkEscapes { .. })));
    }

    #[test]
    fn hard_link_to_earlier_file_is_accepted() {
        let result = with_dockerfile(&[Member::HardLink("copy", "./Dockerfile")]);
        assert_eq!(result.expect("inside").entries, 2);
    }

    #[test]
    fn character_device_is_unsupported() {
        let result = with_dockerfile(&[Member::Special("null", EntryType::Char)]);
        assert!(
            matches!(result, Err(ArchiveError::UnsupportedEntry { path, .. }) if path == "null")
        );
    }

    #[test]
    fn block_device_is_unsupported() {
        let result = with_dockerfile(&[Member::Special("sda", EntryType::Block)]);
        assert!(matches!(result, Err(ArchiveError::UnsupportedEntry { .. })));
    }

    #[test]
    fn fifo_is_unsupported() {
        let result = with_dockerfile(&[Member::Special("pipe", EntryType::Fifo)]);
        assert!(matches!(result, Err(ArchiveError::UnsupportedEntry { .. })));
    }

    #[test]
    fn pax_global_header_is_accepted_and_not_counted() {
        // What `git archive` writes first.
        let result = with_dockerfile(&[Member::PaxGlobal(b"0123456789abcdef")]);
        assert_eq!(result.expect("git archive").entries, 1);
    }

    #[test]
    fn context_at_the_size_limit_is_accepted() {
        let limits = ArchiveLimits {
            max_context_bytes: 20,
            ..LIMITS
        };
        let upload = tgz(&[
            Member::File("Dockerfile", &[b'x'; 10]),
            Member::File("b", &[b'x'; 10]),
        ]);
        let summary = check_archive(upload.as_slice(), &limits, "Dockerfile").expect("at limit");
        assert_eq!(summary.unpacked_bytes, 20);
    }

    #[test]
    fn context_over_the_size_limit_is_rejected() {
        let limits = ArchiveLimits {
            max_context_bytes: 19,
            ..LIMITS
        };
        let upload = tgz(&[
            Member::File("Dockerfile", &[b'x'; 10]),
            Member::File("b", &[b'x'; 10]),
        ]);
        let result = check_archive(upload.as_slice(), &limits, "Dockerfile");
        assert!(
            matches!(result, Err(ArchiveError::ContextTooLarge { path, limit: 19 }) if path == "b")
        );
    }

    /// Counts the compressed bytes the checker pulled from the upload.
    struct Counted<R> {
        inner: R,
        read: std::rc::Rc<Cell<u64>>,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let read = self.inner.read(buf)?;
            self.read.set(self.read.get() + read as u64);
            Ok(read)
        }
    }

    /// A gzip stream of `zeros` zero bytes as concatenated 1 MiB gzip members (multi-member
    /// gzip, which Docker's reader accepts too), so it is cheap to build and never held
    /// inflated in memory.
    fn gzipped_zeros(zeros: u64) -> Vec<u8> {
        const CHUNK: u64 = 1 << 20;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        io::copy(&mut io::repeat(0).take(CHUNK), &mut encoder).expect("compress");
        let chunk = encoder.finish().expect("finish gzip");
        chunk.repeat((zeros / CHUNK) as usize)
    }

    #[test]
    fn gzip_bomb_is_rejected_before_it_is_inflated() {
        const GIB: u64 = 1 << 30;
        let mut upload =
            gzip(&raw_header(b"Dockerfile", EntryType::Regular, GIB, "").as_bytes()[..]);
        upload.extend(gzipped_zeros(GIB));
        let compressed = upload.len() as u64;
        let read = std::rc::Rc::new(Cell::new(0));
        let reader = Counted {
            inner: upload.as_slice(),
            read: read.clone(),
        };
        let result = check_archive(reader, &LIMITS, "Dockerfile");
        assert!(matches!(result, Err(ArchiveError::ContextTooLarge { .. })));
        assert!(
            read.get() < compressed / 10,
            "read {} of {compressed} bytes",
            read.get()
        );
    }

    #[test]
    fn bomb_hidden_in_a_pax_header_is_rejected() {
        let header = raw_header(b"PaxHeader", EntryType::XHeader, 1 << 30, "");
        let mut upload = gzip(header.as_bytes());
        upload.extend(gzipped_zeros(1 << 30));
        let result = check(&upload);
        assert!(matches!(
            result,
            Err(ArchiveError::HeadersTooLarge {
                member: 1,
                limit: MEMBER_HEADER_BYTES_MAX
            })
        ));
    }

    #[test]
    fn entries_at_the_limit_are_accepted() {
        let limits = ArchiveLimits {
            max_entries: 2,
            ..LIMITS
        };
        let upload = tgz(&[Member::File("Dockerfile", b"x"), Member::File("b", b"x")]);
        let summary = check_archive(upload.as_slice(), &limits, "Dockerfile").expect("at limit");
        assert_eq!(summary.entries, 2);
    }

    #[test]
    fn entries_over_the_limit_are_rejected() {
        let limits = ArchiveLimits {
            max_entries: 2,
            ..LIMITS
        };
        let upload = tgz(&[
            Member::File("Dockerfile", b"x"),
            Member::File("b", b"x"),
            Member::File("c", b"x"),
        ]);
        let result = check_archive(upload.as_slice(), &limits, "Dockerfile");
        assert!(
            matches!(result, Err(ArchiveError::TooManyEntries { path, limit: 2 }) if path == "c")
        );
    }

    #[test]
    fn path_over_the_length_limit_is_rejected() {
        let limits = ArchiveLimits {
            max_path_len: 10,
            ..LIMITS
        };
        let upload = tgz(&[
            Member::File("Dockerfile", b"x"),
            Member::File("abcdefghijk", b"x"),
        ]);
        let result = check_archive(upload.as_slice(), &limits, "Dockerfile");
        assert!(matches!(
            result,
            Err(ArchiveError::PathTooLong { limit: 10, .. })
        ));
    }

    #[test]
    fn link_target_over_the_length_limit_is_rejected() {
        let limits = ArchiveLimits {
            max_path_len: 10,
            ..LIMITS
        };
        let upload = tgz(&[
            Member::File("Dockerfile", b"x"),
            Member::Symlink("l", "abcdefghijk"),
        ]);
        let result = check_archive(upload.as_slice(), &limits, "Dockerfile");
        assert!(matches!(result, Err(ArchiveError::PathTooLong { path, .. }) if path == "l"));
    }

    #[test]
    fn missing_dockerfile_is_rejected() {
        let upload = tgz(&[Member::File("README", b"x")]);
        let result = check(&upload);
        assert!(
            matches!(result, Err(ArchiveError::DockerfileMissing { path }) if path == "Dockerfile")
        );
    }

    #[test]
    fn dockerfile_that_is_a_directory_is_missing() {
        let upload = tgz(&[
            Member::Dir("Dockerfile/"),
            Member::File("Dockerfile/x", b"x"),
        ]);
        assert!(matches!(
            check(&upload),
            Err(ArchiveError::DockerfileMissing { .. })
        ));
    }

    #[test]
    fn dockerfile_that_is_a_symlink_is_missing() {
        let upload = tgz(&[
            Member::File("real", b"x"),
            Member::Symlink("Dockerfile", "real"),
        ]);
        assert!(matches!(
            check(&upload),
            Err(ArchiveError::DockerfileMissing { .. })
        ));
    }

    #[test]
    fn dockerfile_path_is_normalised_like_entries() {
        let upload = tgz(&[Member::File("./docker/Dockerfile", b"FROM scratch\n")]);
        let summary =
            check_archive(upload.as_slice(), &LIMITS, "docker/./Dockerfile").expect("found");
        assert_eq!(summary.entries, 1);
    }

    #[test]
    fn every_variant_has_its_own_stable_code() {
        let text = || String::from("x");
        let codes = [
            ArchiveError::NotGzip,
            ArchiveError::CorruptGzip { detail: text() },
            ArchiveError::NotTar { detail: text() },
            ArchiveError::Empty,
            ArchiveError::PathEscapes { path: text() },
            ArchiveError::PathThroughSymlink { path: text() },
            ArchiveError::LinkEscapes {
                path: text(),
                target: text(),
                problem: "",
            },
            ArchiveError::UnsupportedEntry {
                path: text(),
                kind: text(),
            },
            ArchiveError::ContextTooLarge {
                path: text(),
                limit: 1,
            },
            ArchiveError::HeadersTooLarge {
                member: 1,
                limit: 1,
            },
            ArchiveError::TooManyEntries {
                path: text(),
                limit: 1,
            },
            ArchiveError::PathTooLong {
                path: text(),
                limit: 1,
            },
            ArchiveError::InvalidPath {
                path: text(),
                reason: "",
            },
            ArchiveError::DockerfileMissing { path: text() },
            ArchiveError::Io(io::Error::other("x")),
        ]
        .map(|err| err.code());
        assert_eq!(
            codes,
            [
                "not_gzip",
                "corrupt_gzip",
                "not_tar",
                "empty_archive",
                "path_escapes",
                "path_through_symlink",
                "link_escapes",
                "unsupported_entry",
                "context_too_large",
                "headers_too_large",
                "too_many_entries",
                "path_too_long",
                "invalid_path",
                "dockerfile_missing",
                "io",
            ]
        );
    }
}
