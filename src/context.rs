//! Packs a build context directory into the gzip'd tar `slipway submit` uploads, leaving out
//! what `.dockerignore` excludes exactly as `docker build` would.
//!
//! Entries are written in a fixed order (each directory's names sorted byte-wise, depth
//! first, like Go's `filepath.WalkDir`), paths relative to the directory, symlinks as
//! symlinks. Ownership is not sent (uid and gid 0); mode and mtime are, as Docker's are.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::dockerignore::{DockerIgnore, DockerIgnoreError};

/// gzip level for uploads: the fast end, since packing sits in front of every submit and
/// source trees compress well anyway.
const COMPRESSION_LEVEL: u32 = 1;

/// What went into the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedContext {
    /// Regular files written.
    pub files: u64,
    /// Sum of their sizes, uncompressed.
    pub bytes: u64,
}

/// Why a context could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The Dockerfile path is not a regular file inside the context directory.
    #[error("the Dockerfile {dockerfile} is not a regular file inside {}", dir.display())]
    DockerfileMissing { dockerfile: String, dir: PathBuf },
    /// `.dockerignore` exists but could not be read.
    #[error("reading {} failed: {source}", path.display())]
    ReadIgnoreFile { path: PathBuf, source: io::Error },
    /// `.dockerignore` has a pattern Docker (or slipway) refuses.
    #[error("invalid .dockerignore: {0}")]
    InvalidIgnoreFile(#[from] DockerIgnoreError),
    /// A directory of the context could not be listed.
    #[error("reading directory {} failed: {source}", path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    /// A file or symlink of the context could not be read.
    #[error("reading {} failed: {source}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    /// A file changed size while it was being packed.
    #[error("{} changed while it was being packed", path.display())]
    FileChanged { path: PathBuf },
    /// A socket, fifo or device, which a build context cannot carry.
    #[error("{} is not a regular file, directory or symlink", path.display())]
    UnsupportedFile { path: PathBuf },
    /// Writing the archive failed.
    #[error("writing the context archive failed: {0}")]
    Write(#[source] io::Error),
}

/// Writes the gzip'd tar of `dir` to `out`, honouring `dir/.dockerignore`. `dockerfile` is the
/// Dockerfile's path relative to `dir`; it and `.dockerignore` are always sent, as the docker
/// CLI sends them.
pub fn pack_context(
    dir: &Path,
    dockerfile: &str,
    out: impl Write,
) -> Result<PackedContext, ContextError> {
    let dockerfile = clean_relative(dockerfile).ok_or_else(|| missing(dir, dockerfile))?;
    let is_file = fs::symlink_metadata(dir.join(&dockerfile)).is_ok_and(|meta| meta.is_file());
    if !is_file {
        return Err(missing(dir, &dockerfile));
    }
    let mut ignore = read_ignore_file(dir)?;
    ignore.keep_build_files(&dockerfile)?;

    let gzip = GzEncoder::new(out, Compression::new(COMPRESSION_LEVEL));
    let mut packer = Packer {
        ignore,
        tar: tar::Builder::new(gzip),
        packed: PackedContext { files: 0, bytes: 0 },
    };
    packer.pack_dir(dir, "")?;
    let gzip = packer.tar.into_inner().map_err(ContextError::Write)?;
    gzip.finish().map_err(ContextError::Write)?;
    Ok(packer.packed)
}

fn missing(dir: &Path, dockerfile: &str) -> ContextError {
    ContextError::DockerfileMissing {
        dockerfile: dockerfile.to_owned(),
        dir: dir.to_owned(),
    }
}

/// `path` without `.` components and resolved `..`, or `None` if it is absolute, empty or
/// leaves the directory.
fn clean_relative(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn read_ignore_file(dir: &Path) -> Result<DockerIgnore, ContextError> {
    let path = dir.join(".dockerignore");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(DockerIgnore::parse(&text)?),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
        Err(source) => Err(ContextError::ReadIgnoreFile { path, source }),
    }
}

struct Packer<W: Write> {
    ignore: DockerIgnore,
    tar: tar::Builder<GzEncoder<W>>,
    packed: PackedContext,
}

impl<W: Write> Packer<W> {
    /// Packs the contents of `path`, whose path in the archive is `rel` (`""` for the root).
    fn pack_dir(&mut self, path: &Path, rel: &str) -> Result<(), ContextError> {
        let read_dir_failed = |source| ContextError::ReadDir {
            path: path.to_owned(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(read_dir_failed)? {
            names.push(entry.map_err(read_dir_failed)?.file_name());
        }
        names.sort();
        for name in names {
            let child = path.join(&name);
            let name = name.to_string_lossy();
            let child_rel = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            self.pack_entry(&child, &child_rel)?;
        }
        Ok(())
    }

    fn pack_entry(&mut self, path: &Path, rel: &str) -> Result<(), ContextError> {
        let meta = fs::symlink_metadata(path).map_err(|source| read_failed(path, source))?;
        if self.ignore.is_excluded(rel) {
            // Like the docker CLI: walk an excluded directory (without sending it) only if
            // an exception may bring back something inside it.
            if meta.is_dir() && self.ignore.has_exceptions() && self.ignore.may_reinclude_under(rel)
            {
                self.pack_dir(path, rel)?;
            }
            return Ok(());
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        let file_type = meta.file_type();
        if file_type.is_dir() {
            self.tar
                .append_data(&mut header, rel, io::empty())
                .map_err(ContextError::Write)?;
            self.pack_dir(path, rel)
        } else if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(|source| read_failed(path, source))?;
            self.tar
                .append_link(&mut header, rel, target)
                .map_err(ContextError::Write)
        } else if file_type.is_file() {
            self.pack_file(path, rel, header)
        } else {
            Err(ContextError::UnsupportedFile {
                path: path.to_owned(),
            })
        }
    }

    fn pack_file(
        &mut self,
        path: &Path,
        rel: &str,
        mut header: tar::Header,
    ) -> Result<(), ContextError> {
        let file = File::open(path).map_err(|source| read_failed(path, source))?;
        let size = file
            .metadata()
            .map_err(|source| read_failed(path, source))?
            .len();
        header.set_size(size);
        let mut contents = FileContents {
            inner: file.take(size),
            left: size,
            failed: false,
        };
        match self.tar.append_data(&mut header, rel, &mut contents) {
            Err(source) if contents.failed => return Err(read_failed(path, source)),
            Err(source) => return Err(ContextError::Write(source)),
            // The file shrank after its size went into the header.
            Ok(()) if contents.left > 0 => {
                return Err(ContextError::FileChanged {
                    path: path.to_owned(),
                });
            }
            Ok(()) => {}
        }
        self.packed.files += 1;
        self.packed.bytes += size;
        Ok(())
    }
}

/// A file's contents as the header announced them: at most `size` bytes (a file that grew is
/// cut at the size already written), noting a shortfall and whether reading failed.
struct FileContents {
    inner: io::Take<File>,
    left: u64,
    failed: bool,
}

impl Read for FileContents {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(read) => {
                self.left -= read as u64;
                Ok(read)
            }
            Err(err) => {
                if err.kind() != io::ErrorKind::Interrupted {
                    self.failed = true;
                }
                Err(err)
            }
        }
    }
}

fn read_failed(path: &Path, source: io::Error) -> ContextError {
    ContextError::ReadFile {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use tempfile::TempDir;

    /// A context directory holding `files` (parents created) and a Dockerfile.
    fn context(files: &[(&str, &str)]) -> TempDir {
        let dir = TempDir::new().expect("temp dir");
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write Dockerfile");
        for (path, contents) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
            fs::write(path, contents).expect("write file");
        }
        dir
    }

    fn pack_bytes(dir: &Path, dockerfile: &str) -> Vec<u8> {
        let mut out = Vec::new();
        pack_context(dir, dockerfile, &mut out).expect("pack");
        out
    }

    /// The archive's entries in order: `dir/`, `file`, `link -> target`.
    fn listing(archive: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(GzDecoder::new(archive));
        let entries = archive.entries().expect("entries");
        entries
            .map(|entry| {
                let entry = entry.expect("entry");
                let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                match entry.header().entry_type() {
                    tar::EntryType::Directory => format!("{path}/"),
                    tar::EntryType::Symlink => {
                        let target = entry.link_name_bytes().expect("link target");
                        format!("{path} -> {}", String::from_utf8_lossy(&target))
                    }
                    _ => path,
                }
            })
            .collect()
    }

    fn packed(dir: &Path) -> Vec<String> {
        listing(&pack_bytes(dir, "Dockerfile"))
    }

    #[test]
    fn context_is_packed_in_sorted_order_with_relative_paths() {
        let dir = context(&[
            ("src/main.rs", "fn main() {}\n"),
            ("src/lib/a.rs", ""),
            ("a.txt", "a"),
        ]);
        fs::create_dir(dir.path().join("empty")).expect("mkdir");
        assert_eq!(
            packed(dir.path()),
            [
                "Dockerfile",
                "a.txt",
                "empty/",
                "src/",
                "src/lib/",
                "src/lib/a.rs",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn packed_context_counts_files_and_bytes() {
        let dir = context(&[("a.txt", "12345"), ("sub/b.txt", "123")]);
        let summary = pack_context(dir.path(), "Dockerfile", io::sink()).expect("pack");
        assert_eq!(
            summary,
            PackedContext {
                files: 3,
                bytes: 13 + 5 + 3
            }
        );
    }

    #[test]
    fn file_contents_and_mode_are_kept() {
        let dir = context(&[("run.sh", "#!/bin/sh\n")]);
        let script = dir.path().join("run.sh");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let bytes = pack_bytes(dir.path(), "Dockerfile");
        let mut archive = tar::Archive::new(GzDecoder::new(bytes.as_slice()));
        let mut entry = archive
            .entries()
            .expect("entries")
            .map(|entry| entry.expect("entry"))
            .find(|entry| entry.path_bytes().as_ref() == b"run.sh")
            .expect("run.sh packed");
        assert_eq!(entry.header().mode().expect("mode") & 0o777, 0o755);
        let mut contents = String::new();
        entry.read_to_string(&mut contents).expect("read");
        assert_eq!(contents, "#!/bin/sh\n");
    }

    #[test]
    fn packing_twice_gives_identical_archives() {
        let dir = context(&[("b", "b"), ("a/x", "x"), ("a/y", "y")]);
        assert_eq!(
            pack_bytes(dir.path(), "Dockerfile"),
            pack_bytes(dir.path(), "Dockerfile")
        );
    }

    #[test]
    fn symlinks_are_stored_as_symlinks_and_not_followed() {
        let dir = context(&[("src/main.rs", "")]);
        symlink("src/main.rs", dir.path().join("file-link")).expect("symlink");
        symlink("src", dir.path().join("dir-link")).expect("symlink");
        symlink("/etc/passwd", dir.path().join("outside")).expect("symlink");
        assert_eq!(
            packed(dir.path()),
            [
                "Dockerfile",
                "dir-link -> src",
                "file-link -> src/main.rs",
                "outside -> /etc/passwd",
                "src/",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn ignored_files_are_left_out() {
        let dir = context(&[
            (".dockerignore", "*.log\n"),
            ("app.log", ""),
            ("app.rs", ""),
            ("sub/app.log", ""),
        ]);
        // `*` does not cross `/`: sub/app.log stays.
        assert_eq!(
            packed(dir.path()),
            [
                ".dockerignore",
                "Dockerfile",
                "app.rs",
                "sub/",
                "sub/app.log"
            ]
        );
    }

    #[test]
    fn double_star_patterns_reach_any_depth() {
        let dir = context(&[
            (".dockerignore", "**/*.log\ncache/**\n"),
            ("a/b/c.log", ""),
            ("a/b/c.rs", ""),
            ("cache/x/y", ""),
        ]);
        assert_eq!(
            packed(dir.path()),
            [
                ".dockerignore",
                "Dockerfile",
                "a/",
                "a/b/",
                "a/b/c.rs",
                "cache/"
            ]
        );
    }

    #[test]
    fn excluded_directory_is_left_out_with_its_contents() {
        let dir = context(&[
            (".dockerignore", "target\n"),
            ("target/debug/app", ""),
            ("src/target.rs", ""),
        ]);
        assert_eq!(
            packed(dir.path()),
            [".dockerignore", "Dockerfile", "src/", "src/target.rs"]
        );
    }

    #[test]
    fn exception_reincludes_a_file_inside_an_excluded_directory() {
        let dir = context(&[
            (".dockerignore", "vendor\n!vendor/keep/me.txt\n"),
            ("vendor/keep/me.txt", ""),
            ("vendor/keep/not-me.txt", ""),
            ("vendor/other.txt", ""),
        ]);
        // The excluded directories themselves are not sent, as with the docker CLI.
        assert_eq!(
            packed(dir.path()),
            [".dockerignore", "Dockerfile", "vendor/keep/me.txt"]
        );
    }

    #[test]
    fn exception_not_naming_the_excluded_directory_does_not_reopen_it() {
        // The docker CLI skips `vendor` because no exception starts with `vendor/`.
        let dir = context(&[
            (".dockerignore", "vendor\n!**/keep.txt\n"),
            ("vendor/keep.txt", ""),
            ("keep.txt", ""),
        ]);
        assert_eq!(
            packed(dir.path()),
            [".dockerignore", "Dockerfile", "keep.txt"]
        );
    }

    #[test]
    fn last_matching_pattern_wins() {
        let dir = context(&[
            (".dockerignore", "!a.txt\n*.txt\n!b.txt\n"),
            ("a.txt", ""),
            ("b.txt", ""),
        ]);
        assert_eq!(packed(dir.path()), [".dockerignore", "Dockerfile", "b.txt"]);
    }

    #[test]
    fn comments_blank_lines_and_leading_slashes_are_handled() {
        let dir = context(&[
            (".dockerignore", "# secrets\n\n/secret\n./notes\n"),
            ("secret", ""),
            ("notes", ""),
            ("sub/secret", ""),
        ]);
        assert_eq!(
            packed(dir.path()),
            [".dockerignore", "Dockerfile", "sub/", "sub/secret"]
        );
    }

    #[test]
    fn dockerfile_and_dockerignore_are_sent_even_when_excluded() {
        let dir = context(&[(".dockerignore", "*\n"), ("src/main.rs", "")]);
        assert_eq!(packed(dir.path()), [".dockerignore", "Dockerfile"]);
    }

    #[test]
    fn dockerfile_in_an_excluded_directory_is_sent() {
        let dir = context(&[
            (".dockerignore", "docker\n"),
            ("docker/Dockerfile", ""),
            ("docker/other", ""),
        ]);
        let listing = listing(&pack_bytes(dir.path(), "./docker/Dockerfile"));
        assert_eq!(
            listing,
            [".dockerignore", "Dockerfile", "docker/Dockerfile"]
        );
    }

    #[test]
    fn missing_dockerfile_is_an_error() {
        let dir = context(&[]);
        let result = pack_context(dir.path(), "Containerfile", io::sink());
        assert!(
            matches!(result, Err(ContextError::DockerfileMissing { dockerfile, .. }) if dockerfile == "Containerfile")
        );
    }

    #[test]
    fn dockerfile_outside_the_context_is_missing() {
        let dir = context(&[]);
        let result = pack_context(&dir.path().join("sub"), "../Dockerfile", io::sink());
        assert!(matches!(
            result,
            Err(ContextError::DockerfileMissing { .. })
        ));
    }

    #[test]
    fn invalid_pattern_is_an_error() {
        let dir = context(&[(".dockerignore", "ok\n[unclosed\n")]);
        let result = pack_context(dir.path(), "Dockerfile", io::sink());
        assert!(matches!(
            result,
            Err(ContextError::InvalidIgnoreFile(
                DockerIgnoreError::BadPattern { line: 2, .. }
            ))
        ));
    }

    #[test]
    fn socket_in_the_context_is_an_error() {
        let dir = context(&[]);
        let socket = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind socket");
        let result = pack_context(dir.path(), "Dockerfile", io::sink());
        assert!(matches!(result, Err(ContextError::UnsupportedFile { path }) if path == socket));
    }

    #[test]
    fn excluded_socket_is_ignored() {
        let dir = context(&[(".dockerignore", "*.sock\n")]);
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock"))
            .expect("bind socket");
        assert_eq!(packed(dir.path()), [".dockerignore", "Dockerfile"]);
    }

    #[test]
    fn unreadable_directory_is_an_error() {
        let dir = context(&[("locked/file", "")]);
        let locked = dir.path().join("locked");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
        if fs::read_dir(&locked).is_ok() {
            // Running as root: permissions cannot make a directory unreadable.
            return;
        }
        let result = pack_context(dir.path(), "Dockerfile", io::sink());
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod back");
        assert!(matches!(result, Err(ContextError::ReadDir { path, .. }) if path == locked));
    }
}
