//! Turning docker's progress events into log lines: `status` events reduced to one line per
//! state change (`stream` chunks are cut into lines by `crate::lines`).

use std::collections::HashMap;

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
