//! Turning docker's JSON message streams into log lines: `stream` chunks split on '\n' (a line
//! may span chunks), and `status` events reduced to one line per state change.

use std::collections::HashMap;

/// Reassembles complete lines from chunks that may end mid-line.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    /// The tail of the last chunk that had no '\n' yet.
    partial: String,
}

impl LineSplitter {
    /// Emits every line `chunk` completes, keeping an unfinished tail for the next chunk.
    pub(crate) fn push(&mut self, chunk: &str, emit: &mut dyn FnMut(&str)) {
        let mut rest = chunk;
        while let Some(newline) = rest.find('\n') {
            let (head, tail) = rest.split_at(newline);
            if self.partial.is_empty() {
                emit(trim_carriage_return(head));
            } else {
                self.partial.push_str(head);
                emit(trim_carriage_return(&self.partial));
                self.partial.clear();
            }
            rest = &tail[1..];
        }
        self.partial.push_str(rest);
    }

    /// Emits the unfinished tail, if any: the stream ended without a final '\n'.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            emit(trim_carriage_return(&self.partial));
            self.partial.clear();
        }
    }
}

fn trim_carriage_return(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

/// Reduces `status` events (pull and push progress) to one line per layer state change.
#[derive(Debug, Default)]
pub(crate) struct ProgressLines {
    /// The last status reported per layer id ("" for events without one).
    last_status: HashMap<String, String>,
}

impl ProgressLines {
    /// The line to log for this event, or `None` when it repeats a state already reported
    /// (a progress tick of "Pushing", a second "Waiting" for the same layer).
    ///
    /// `is_tick` marks events that carry progress counters. Events without a layer id (bollard's
    /// push messages drop it) are deduplicated only when they are ticks, so that every layer's
    /// "Preparing"/"Pushed" still shows.
    pub(crate) fn line(&mut self, id: Option<&str>, status: &str, is_tick: bool) -> Option<String> {
        let key = id.unwrap_or("");
        let repeated = self.last_status.get(key).is_some_and(|last| last == status);
        if repeated && (is_tick || id.is_some()) {
            return None;
        }
        self.last_status.insert(key.to_owned(), status.to_owned());
        Some(match id {
            Some(id) if !id.is_empty() => format!("{id}: {status}"),
            _ => status.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        for chunk in chunks {
            splitter.push(chunk, &mut |line| lines.push(line.to_owned()));
        }
        splitter.finish(&mut |line| lines.push(line.to_owned()));
        lines
    }

    #[test]
    fn chunk_with_several_lines_emits_each() {
        assert_eq!(split(&["a\nb\n"]), ["a", "b"]);
    }

    #[test]
    fn line_spanning_chunks_is_emitted_once_complete() {
        assert_eq!(
            split(&["Step 1", "/2 : FR", "OM x\n ---> 1"]),
            ["Step 1/2 : FROM x", " ---> 1"]
        );
    }

    #[test]
    fn unterminated_tail_is_flushed_at_the_end() {
        assert_eq!(split(&["done\nno newline"]), ["done", "no newline"]);
    }

    #[test]
    fn empty_lines_are_kept_and_carriage_returns_trimmed() {
        assert_eq!(split(&["a\r\n\n", "b\r", "\n"]), ["a", "", "b"]);
    }

    #[test]
    fn chunk_that_only_completes_a_line_emits_it() {
        assert_eq!(split(&["partial", "\n"]), ["partial"]);
    }

    #[test]
    fn progress_ticks_of_one_layer_give_one_line() {
        let mut progress = ProgressLines::default();
        let lines: Vec<_> = [
            ("Pushing", true),
            ("Pushing", true),
            ("Pushing", true),
            ("Pushed", false),
        ]
        .into_iter()
        .filter_map(|(status, tick)| progress.line(Some("abc"), status, tick))
        .collect();
        assert_eq!(lines, ["abc: Pushing", "abc: Pushed"]);
    }

    #[test]
    fn state_changes_without_layer_id_are_all_kept() {
        let mut progress = ProgressLines::default();
        let lines: Vec<_> = [
            ("Preparing", false),
            ("Preparing", false),
            ("Pushing", true),
            ("Pushing", true),
            ("Pushed", false),
            ("Pushed", false),
        ]
        .into_iter()
        .filter_map(|(status, tick)| progress.line(None, status, tick))
        .collect();
        assert_eq!(
            lines,
            ["Preparing", "Preparing", "Pushing", "Pushed", "Pushed"]
        );
    }
}
