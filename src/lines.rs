//! Cutting streamed text into lines: build output from dockerd and logs read over HTTP both
//! arrive in chunks that end anywhere.

/// Cuts a byte stream into lines whatever the chunk boundaries; a line split across chunks (even
/// inside a UTF-8 character) comes out whole.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The start of a line whose '\n' has not arrived yet.
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, chunk: &[u8], on_line: &mut dyn FnMut(&str)) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..end]);
            emit(&self.partial, on_line);
            self.partial.clear();
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// Emits the last line when the stream did not end with '\n'.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            emit(&self.partial, on_line);
            self.partial.clear();
        }
    }
}

fn emit(line: &[u8], on_line: &mut dyn FnMut(&str)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    on_line(&String::from_utf8_lossy(line));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        let mut collect = |line: &str| lines.push(line.to_string());
        for chunk in chunks {
            splitter.push(chunk, &mut collect);
        }
        splitter.finish(&mut collect);
        lines
    }

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        let lines = split(&[b"step 1/3\nste", b"p 2/", b"3\n\nstep 3/3\r\n", b"done"]);
        assert_eq!(lines, ["step 1/3", "step 2/3", "", "step 3/3", "done"]);
    }

    #[test]
    fn a_character_split_across_chunks_is_kept() {
        let bytes = "caf\u{e9}\n".as_bytes();
        assert_eq!(split(&[&bytes[..4], &bytes[4..]]), ["caf\u{e9}"]);
    }

    #[test]
    fn a_stream_ending_with_newline_has_no_empty_last_line() {
        assert_eq!(split(&[b"a\n", b"b\n"]), ["a", "b"]);
    }

    #[test]
    fn empty_lines_are_kept_and_carriage_returns_trimmed() {
        assert_eq!(split(&[b"a\r\n\n", b"b\r", b"\n"]), ["a", "", "b"]);
    }

    #[test]
    fn a_chunk_that_only_completes_a_line_emits_it() {
        assert_eq!(split(&[b"partial", b"\n"]), ["partial"]);
    }
}
