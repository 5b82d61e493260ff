//! `.dockerignore` with Docker's exact semantics, so `slipway submit` sends the context
//! `docker build` would: moby's `patternmatcher` and `ignorefile`, and the docker CLI's rules.
//!
//! Docker turns each pattern into a Go regular expression (or, as an optimisation, a plain
//! string comparison). Neither `globset` (`**` only as a whole component, `{a,b}`, `[!a]`) nor a
//! translation for the `regex` crate (whose class syntax differs from Go's) matches that
//! exactly, so this module ports the translation and runs the few constructs it can produce
//! (literals, `[^/]`, `[^/]*`, `(.*/)?`, `.*`, classes, `^`) on a small NFA. Docker's regex
//! accidents that have no glob meaning (`\d` or `[[:alpha:]]` becoming regex classes, `*`
//! inside `[...]`) are refused as unsupported rather than imitated.

/// Why a `.dockerignore` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerIgnoreError {
    /// A line that is only `!`.
    #[error("line {line}: illegal exclusion pattern \"!\"")]
    IllegalExclusion { line: usize },
    /// A pattern Docker refuses too (`filepath.ErrBadPattern`).
    #[error("line {line}: syntax error in pattern {pattern:?}")]
    BadPattern { line: usize, pattern: String },
    /// A pattern Docker would read as a regular expression rather than a glob.
    #[error("line {line}: pattern {pattern:?} uses {feature}, which slipway does not support")]
    Unsupported {
        line: usize,
        pattern: String,
        feature: &'static str,
    },
}

/// A parsed `.dockerignore`: decides which context paths stay on the client.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Parses the file's text as the docker CLI reads it: a leading UTF-8 BOM dropped, lines
    /// starting with `#` skipped, the rest trimmed, blank ones skipped, `!` marking an
    /// exception, each pattern cleaned like Go's `filepath.Clean` with a leading `/` removed.
    pub fn parse(text: &str) -> Result<Self, DockerIgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ignore = DockerIgnore::default();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let line_text = line.trim();
            if line_text.is_empty() {
                continue;
            }
            let (exception, pattern) = match line_text.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line_text),
            };
            let mut pattern = if pattern.is_empty() {
                String::new()
            } else {
                clean(pattern)
            };
            if pattern.len() > 1 && pattern.starts_with('/') {
                pattern.remove(0);
            }
            if exception {
                pattern.insert(0, '!');
            }
            ignore.push(index + 1, &pattern)?;
        }
        Ok(ignore)
    }

    /// Whether `rel_path` (clean, relative, `/`-separated) stays out of the context: the last
    /// pattern matching it or one of its parent directories decides (moby's
    /// `MatchesOrParentMatches`).
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let parents: Vec<&str> = rel_path
            .match_indices('/')
            .map(|(slash, _)| &rel_path[..slash])
            .collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that would change the verdict needs evaluating.
            if pattern.exception != excluded {
                continue;
            }
            let matched =
                pattern.matches(rel_path) || parents.iter().any(|parent| pattern.matches(parent));
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether any pattern is an exception (`!...`).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|pattern| pattern.exception)
    }

    /// Whether an exception could re-include something under the excluded directory
    /// `rel_dir`, so the walk must still enter it. The docker CLI's test, kept as is: an
    /// exception counts only if its text starts with `rel_dir/` (so `!**/keep` does not).
    pub fn may_reinclude_under(&self, rel_dir: &str) -> bool {
        let dir_slash = format!("{rel_dir}/");
        self.patterns
            .iter()
            .filter(|pattern| pattern.exception)
            .any(|pattern| format!("{}/", pattern.text).starts_with(&dir_slash))
    }

    /// Makes sure the Dockerfile and `.dockerignore` are sent even if excluded, the way the
    /// docker CLI does (`TrimBuildFilesFromExcludes`): by appending exceptions for them.
    /// `dockerfile` is clean and relative to the context. An error here carries line 0.
    pub fn keep_build_files(&mut self, dockerfile: &str) -> Result<(), DockerIgnoreError> {
        for path in [".dockerignore", dockerfile] {
            if self.is_excluded(path) {
                self.push(0, &format!("!{path}"))?;
            }
        }
        Ok(())
    }

    /// Adds one pattern as moby's `patternmatcher.New` does.
    fn push(&mut self, line: usize, pattern: &str) -> Result<(), DockerIgnoreError> {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Ok(());
        }
        let cleaned = clean(pattern);
        let (exception, text) = match cleaned.strip_prefix('!') {
            Some("") => return Err(DockerIgnoreError::IllegalExclusion { line }),
            Some(rest) => (true, rest),
            None => (false, cleaned.as_str()),
        };
        let bad = || DockerIgnoreError::BadPattern {
            line,
            pattern: text.to_owned(),
        };
        if !glob_syntax_ok(text.as_bytes()) {
            return Err(bad());
        }
        let matcher = compile(text).map_err(|problem| match problem {
            CompileProblem::Bad => bad(),
            CompileProblem::Unsupported(feature) => DockerIgnoreError::Unsupported {
                line,
                pattern: text.to_owned(),
                feature,
            },
        })?;
        self.patterns.push(Pattern {
            text: text.to_owned(),
            exception,
            matcher,
        });
        Ok(())
    }
}

/// One pattern; `text` is the cleaned pattern without its `!`.
#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    exception: bool,
    matcher: Matcher,
}

/// How Docker matches a pattern: plain comparisons when it can, the regular expression
/// otherwise (`matchType` in moby's patternmatcher).
#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    /// The pattern ends in `**` (after literals only): the text before it is a prefix.
    Prefix,
    /// The pattern starts with `**` and has only literals after it.
    Suffix,
    Tokens(Vec<Token>),
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.text,
            Matcher::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Matcher::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/') == Some(path)
            }
            Matcher::Tokens(tokens) => tokens_match(tokens, path),
        }
    }
}

/// The pieces of the regular expression Docker builds from a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: `[^/]`.
    OneButSlash,
    /// `*`: `[^/]*`.
    ManyButSlash,
    /// `**` before more pattern: `(.*/)?`, any number of whole directories.
    AnyDirs,
    /// `**` at the end: `.*`.
    AnyRest,
    /// `[...]`, as Go's regexp reads it (a negated class matches `/` too).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// A `^` outside a class, which stays a start-of-text anchor in Docker's regex.
    Start,
}

enum CompileProblem {
    Bad,
    Unsupported(&'static str),
}

/// Ports `Pattern.compile` from moby's patternmatcher, including which match type it picks.
fn compile(pattern: &str) -> Result<Matcher, CompileProblem> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut detected = Detected::Exact;
    let mut tokens = Vec::new();
    let mut at = 0;
    let mut first = true;
    while at < chars.len() {
        let ch = chars[at];
        at += 1;
        match ch {
            '*' if chars.get(at) == Some(&'*') => {
                at += 1;
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        tokens.push(Token::AnyRest);
                        detected = Detected::Regexp;
                    }
                } else {
                    tokens.push(Token::AnyDirs);
                    detected = Detected::Regexp;
                }
                if first {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::ManyButSlash);
                detected = Detected::Regexp;
            }
            '?' => {
                tokens.push(Token::OneButSlash);
                detected = Detected::Regexp;
            }
            '\\' => {
                let escaped = chars.get(at).copied().ok_or(CompileProblem::Bad)?;
                at += 1;
                tokens.push(Token::Literal(escaped_literal(escaped)?));
                detected = Detected::Regexp;
            }
            '[' => {
                let (class, next) = compile_class(&chars, at)?;
                tokens.push(class);
                at = next;
                detected = Detected::Regexp;
            }
            ']' => {
                tokens.push(Token::Literal(']'));
                detected = Detected::Regexp;
            }
            '^' => tokens.push(Token::Start),
            other => tokens.push(Token::Literal(other)),
        }
        first = false;
    }
    Ok(match detected {
        Detected::Exact => Matcher::Exact,
        Detected::Prefix => Matcher::Prefix,
        Detected::Suffix => Matcher::Suffix,
        Detected::Regexp => Matcher::Tokens(tokens),
    })
}

/// What `\c` means in Go's regexp: ASCII punctuation (and other non-alphanumerics) stand for
/// themselves; letters and digits are regex escapes (`\d`, `\n`, `\b`...); anything else is a
/// syntax error.
fn escaped_literal(ch: char) -> Result<char, CompileProblem> {
    if ch.is_ascii_alphanumeric() {
        Err(CompileProblem::Unsupported(
            "a regular-expression escape like \\d",
        ))
    } else if ch.is_ascii() {
        Ok(ch)
    } else {
        Err(CompileProblem::Bad)
    }
}

/// Reads a class whose `[` precedes `chars[start]`, as Go's regexp reads the text Docker
/// passes on. Returns the token and the index after the closing `]`.
fn compile_class(chars: &[char], start: usize) -> Result<(Token, usize), CompileProblem> {
    let mut at = start;
    let negated = chars.get(at) == Some(&'^');
    if negated {
        at += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let ch = *chars.get(at).ok_or(CompileProblem::Bad)?;
        if ch == ']' && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, at + 1));
        }
        let (low, next) = class_char(chars, at)?;
        at = next;
        let mut high = low;
        if chars.get(at) == Some(&'-') && chars.get(at + 1).is_some_and(|ch| *ch != ']') {
            (high, at) = class_char(chars, at + 1)?;
            if high < low {
                return Err(CompileProblem::Bad);
            }
        }
        ranges.push((low, high));
    }
}

fn class_char(chars: &[char], at: usize) -> Result<(char, usize), CompileProblem> {
    match *chars.get(at).ok_or(CompileProblem::Bad)? {
        '\\' => {
            let escaped = *chars.get(at + 1).ok_or(CompileProblem::Bad)?;
            Ok((escaped_literal(escaped)?, at + 2))
        }
        '*' | '?' => Err(CompileProblem::Unsupported("`*` or `?` inside [...]")),
        '[' if chars.get(at + 1) == Some(&':') => {
            Err(CompileProblem::Unsupported("a POSIX class like [:alpha:]"))
        }
        ch => Ok((ch, at + 1)),
    }
}

/// Runs the tokens as an NFA over `path`, anchored at both ends. State `k` means "before
/// token `k`"; `inside[k]` means "inside the `.*` of an [`Token::AnyDirs`] at `k`".
fn tokens_match(tokens: &[Token], path: &str) -> bool {
    let states = tokens.len() + 1;
    let mut before = vec![false; states];
    let mut inside = vec![false; states];
    before[0] = true;
    close(tokens, &mut before, &mut inside, true);
    for ch in path.chars() {
        let mut next_before = vec![false; states];
        let mut next_inside = vec![false; states];
        for (k, token) in tokens.iter().enumerate() {
            if before[k] {
                match token {
                    Token::Literal(literal) if *literal == ch => next_before[k + 1] = true,
                    Token::OneButSlash if ch != '/' => next_before[k + 1] = true,
                    Token::ManyButSlash if ch != '/' => next_before[k] = true,
                    Token::AnyRest if ch != '\n' => next_before[k] = true,
                    Token::Class { negated, ranges } => {
                        let in_class = ranges
                            .iter()
                            .any(|(low, high)| (*low..=*high).contains(&ch));
                        if in_class != *negated {
                            next_before[k + 1] = true;
                        }
                    }
                    _ => {}
                }
            }
            if inside[k] {
                if ch != '\n' {
                    next_inside[k] = true;
                }
                if ch == '/' {
                    next_before[k + 1] = true;
                }
            }
        }
        before = next_before;
        inside = next_inside;
        close(tokens, &mut before, &mut inside, false);
        if !before.iter().chain(&inside).any(|active| *active) {
            return false;
        }
    }
    before[tokens.len()]
}

/// Follows the moves that consume nothing; they only go forward, so one pass suffices.
fn close(tokens: &[Token], before: &mut [bool], inside: &mut [bool], at_start: bool) {
    for (k, token) in tokens.iter().enumerate() {
        if !before[k] {
            continue;
        }
        match token {
            Token::ManyButSlash | Token::AnyRest => before[k + 1] = true,
            Token::AnyDirs => {
                before[k + 1] = true;
                inside[k] = true;
            }
            Token::Start if at_start => before[k + 1] = true,
            _ => {}
        }
    }
}

/// Whether Go's `filepath.Match` accepts the pattern's syntax (it is what moby checks with
/// `filepath.Match(pattern, ".")`): a port of `scanChunk` and the syntax side of `matchChunk`.
fn glob_syntax_ok(mut pattern: &[u8]) -> bool {
    while !pattern.is_empty() {
        while pattern.first() == Some(&b'*') {
            pattern = &pattern[1..];
        }
        let mut in_range = false;
        let mut end = 0;
        while end < pattern.len() {
            match pattern[end] {
                b'\\' if end + 1 < pattern.len() => end += 1,
                b'[' => in_range = true,
                b']' => in_range = false,
                b'*' if !in_range => break,
                _ => {}
            }
            end += 1;
        }
        let (chunk, rest) = pattern.split_at(end);
        if !chunk_syntax_ok(chunk) {
            return false;
        }
        pattern = rest;
    }
    true
}

fn chunk_syntax_ok(mut chunk: &[u8]) -> bool {
    while let Some(&byte) = chunk.first() {
        chunk = &chunk[1..];
        match byte {
            b'[' => {
                if chunk.first() == Some(&b'^') {
                    chunk = &chunk[1..];
                }
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let Some(rest) = class_escape(chunk) else {
                        return false;
                    };
                    chunk = rest;
                    if chunk.first() == Some(&b'-') {
                        let Some(rest) = class_escape(&chunk[1..]) else {
                            return false;
                        };
                        chunk = rest;
                    }
                    ranges += 1;
                }
            }
            b'\\' => {
                if chunk.is_empty() {
                    return false;
                }
                chunk = &chunk[1..];
            }
            _ => {}
        }
    }
    true
}

/// `getEsc` from Go's filepath: one class character, escaped or not, that must be followed
/// by more pattern.
fn class_escape(chunk: &[u8]) -> Option<&[u8]> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return None,
        Some(b'\\') => {
            chunk = &chunk[1..];
            chunk.first()?;
        }
        Some(_) => {}
    }
    let width = match chunk[0] {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    let rest = chunk.get(width..)?;
    (!rest.is_empty()).then_some(rest)
}

/// Go's `filepath.Clean` for `/`-separated paths: the shortest equivalent path.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).expect("valid .dockerignore")
    }

    #[test]
    fn exact_name_excludes_that_path() {
        let ignore = ignore("secret.txt");
        assert!(ignore.is_excluded("secret.txt"));
        assert!(!ignore.is_excluded("other.txt"));
    }

    #[test]
    fn star_does_not_cross_slashes() {
        let ignore = ignore("*.md");
        assert!(ignore.is_excluded("README.md"));
        assert!(!ignore.is_excluded("docs/guide.md"));
    }

    #[test]
    fn question_mark_matches_one_character_but_not_a_slash() {
        let ignore = ignore("a?c");
        assert!(ignore.is_excluded("abc"));
        assert!(!ignore.is_excluded("a/c"));
        assert!(!ignore.is_excluded("abbc"));
    }

    #[test]
    fn double_star_at_the_start_matches_at_any_depth() {
        let ignore = ignore("**/*.log");
        assert!(ignore.is_excluded("debug.log"));
        assert!(ignore.is_excluded("a/b/debug.log"));
        assert!(!ignore.is_excluded("a/b/debug.txt"));
    }

    #[test]
    fn double_star_in_the_middle_matches_zero_or_more_directories() {
        let ignore = ignore("a/**/z");
        assert!(ignore.is_excluded("a/z"));
        assert!(ignore.is_excluded("a/b/c/z"));
        assert!(!ignore.is_excluded("a/bz"));
    }

    #[test]
    fn double_star_at_the_end_matches_everything_below() {
        let ignore = ignore("build/**");
        assert!(ignore.is_excluded("build/out/app"));
        assert!(!ignore.is_excluded("build"));
    }

    #[test]
    fn double_star_before_a_suffix_matches_it_anywhere() {
        // Docker's suffix optimisation: `**.go` is "ends with .go".
        let ignore = ignore("**.go");
        assert!(ignore.is_excluded("main.go"));
        assert!(ignore.is_excluded("cmd/tool/main.go"));
        assert!(!ignore.is_excluded("main.rs"));
    }

    #[test]
    fn double_star_after_a_prefix_matches_anything_starting_with_it() {
        let ignore = ignore("foo**");
        assert!(ignore.is_excluded("foobar"));
        assert!(ignore.is_excluded("foo/deep/file"));
        assert!(!ignore.is_excluded("barfoo"));
    }

    #[test]
    fn directory_pattern_excludes_its_contents() {
        let ignore = ignore("node_modules");
        assert!(ignore.is_excluded("node_modules"));
        assert!(ignore.is_excluded("node_modules/left-pad/index.js"));
        assert!(!ignore.is_excluded("src/node_modules.txt"));
    }

    #[test]
    fn exception_reincludes_a_file_inside_an_excluded_directory() {
        let ignore = ignore("logs\n!logs/keep.log\n");
        assert!(!ignore.is_excluded("logs/keep.log"));
        assert!(ignore.is_excluded("logs/other.log"));
        assert!(ignore.is_excluded("logs"));
    }

    #[test]
    fn last_matching_pattern_wins() {
        assert!(!ignore("*.txt\n!keep.txt").is_excluded("keep.txt"));
        assert!(ignore("!keep.txt\n*.txt").is_excluded("keep.txt"));
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let ignore = ignore("# a comment\n\n   \n\t\nsecret\n");
        assert!(ignore.is_excluded("secret"));
        assert!(!ignore.is_excluded("# a comment"));
    }

    #[test]
    fn hash_after_leading_space_is_a_pattern_not_a_comment() {
        assert!(ignore("  #notes").is_excluded("#notes"));
    }

    #[test]
    fn leading_slash_and_dot_slash_are_dropped() {
        assert!(ignore("/secret").is_excluded("secret"));
        assert!(ignore("./secret").is_excluded("secret"));
        assert!(ignore("!/secret\n").patterns[0].exception);
        assert!(ignore("a/../secret/").is_excluded("secret"));
    }

    #[test]
    fn whitespace_and_bom_and_crlf_are_trimmed() {
        let ignore = ignore("\u{feff}first\r\n  second  \r\n!  third\r\n");
        assert!(ignore.is_excluded("first"));
        assert!(ignore.is_excluded("second"));
        assert!(ignore.has_exceptions());
    }

    #[test]
    fn character_classes_match_like_docker() {
        let ignore = ignore("file[0-9].txt\n[^a]x");
        assert!(ignore.is_excluded("file7.txt"));
        assert!(!ignore.is_excluded("filex.txt"));
        assert!(ignore.is_excluded("bx"));
        assert!(!ignore.is_excluded("ax"));
    }

    #[test]
    fn backslash_escapes_a_special_character() {
        let ignore = ignore("\\*.txt");
        assert!(ignore.is_excluded("*.txt"));
        assert!(!ignore.is_excluded("a.txt"));
    }

    #[test]
    fn regex_characters_are_literal() {
        assert!(ignore("a+b(c).txt").is_excluded("a+b(c).txt"));
        assert!(ignore("x.y*").is_excluded("x.yz"));
        assert!(!ignore("x.y*").is_excluded("xzyz"));
    }

    #[test]
    fn lone_exclamation_mark_is_an_error() {
        let result = DockerIgnore::parse("ok\n!\n");
        assert_eq!(
            result.unwrap_err(),
            DockerIgnoreError::IllegalExclusion { line: 2 }
        );
    }

    #[test]
    fn unclosed_class_is_a_syntax_error() {
        let result = DockerIgnore::parse("[abc");
        assert!(matches!(
            result,
            Err(DockerIgnoreError::BadPattern { line: 1, .. })
        ));
    }

    #[test]
    fn trailing_backslash_is_a_syntax_error() {
        let result = DockerIgnore::parse("abc\\");
        assert!(matches!(result, Err(DockerIgnoreError::BadPattern { .. })));
    }

    #[test]
    fn regex_escape_is_unsupported() {
        let result = DockerIgnore::parse("file\\d");
        assert!(matches!(result, Err(DockerIgnoreError::Unsupported { .. })));
    }

    #[test]
    fn has_exceptions_reports_exclamation_patterns() {
        assert!(!ignore("a\nb").has_exceptions());
        assert!(ignore("a\n!b").has_exceptions());
    }

    #[test]
    fn exception_under_a_directory_keeps_it_walkable() {
        let ignore = ignore("vendor\n!vendor/keep/me.txt\n!**/other");
        assert!(ignore.may_reinclude_under("vendor"));
        assert!(ignore.may_reinclude_under("vendor/keep"));
        assert!(!ignore.may_reinclude_under("target"));
    }

    #[test]
    fn build_files_are_kept_even_when_excluded() {
        let mut ignore = ignore("*\n");
        ignore.keep_build_files("docker/Dockerfile").expect("valid");
        assert!(!ignore.is_excluded(".dockerignore"));
        assert!(!ignore.is_excluded("docker/Dockerfile"));
        assert!(ignore.is_excluded("docker"));
        assert!(ignore.may_reinclude_under("docker"));
    }

    #[test]
    fn start_anchor_stays_an_anchor_in_regex_patterns() {
        // Docker passes `^` to its regex: `^a*` means "starts with a".
        assert!(ignore("^a*").is_excluded("abc"));
        // Without other special characters it is a plain comparison.
        assert!(ignore("^a").is_excluded("^a"));
    }

    #[test]
    fn clean_matches_go() {
        assert_eq!(clean("./a/./b/"), "a/b");
        assert_eq!(clean("a/../.."), "..");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("."), ".");
        assert_eq!(clean("!/"), "!");
    }
}
