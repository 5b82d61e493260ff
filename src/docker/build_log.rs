//! What the classic builder's plain-text log tells us: which step runs, how many steps ran and
//! came from cache, which intermediate container a RUN step uses, and the final image id.

use super::DockerError;

/// State read from the build log, one complete line at a time.
#[derive(Debug, Default)]
pub(crate) struct BuildLog {
    /// The step now running, for naming it when it fails.
    current_step: Option<Step>,
    /// "Step N/M" lines seen: steps that actually ran.
    pub(crate) total_steps: u32,
    /// " ---> Using cache" lines seen.
    pub(crate) cached_steps: u32,
    /// The intermediate container of the running RUN step (" ---> Running in <id>"), so that a
    /// cancelled build can make sure it is gone.
    pub(crate) running_container: Option<String>,
    /// From "Successfully built <id>": the image id when the daemon sends no `aux` ID.
    pub(crate) built_image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// "3/5"
    number: String,
    /// "RUN exit 3"
    instruction: String,
}

/// The classic builder's message for a RUN that exited non-zero: "The command '…' returned a
/// non-zero code: 3".
const NON_ZERO_EXIT: &str = "returned a non-zero code";

impl BuildLog {
    /// Reads one complete log line.
    pub(crate) fn observe(&mut self, line: &str) {
        let line = line.trim();
        if let Some(step) = parse_step(line) {
            self.current_step = Some(step);
            self.total_steps += 1;
            self.running_container = None;
        } else if let Some(arrow) = line.strip_prefix("---> ") {
            if arrow == "Using cache" {
                self.cached_steps += 1;
            } else if let Some(container) = arrow.strip_prefix("Running in ") {
                self.running_container = Some(container.trim().to_owned());
            }
        } else if line.starts_with("Removing intermediate container ") {
            self.running_container = None;
        } else if let Some(id) = line.strip_prefix("Successfully built ") {
            self.built_image = Some(id.trim().to_owned());
        }
    }

    /// The error for a build that the daemon ended with `message`: the failing step when a RUN
    /// exited non-zero, docker's message verbatim otherwise.
    pub(crate) fn failure(&self, message: String) -> DockerError {
        match &self.current_step {
            Some(step) if message.contains(NON_ZERO_EXIT) => DockerError::StepFailed {
                step: step.number.clone(),
                instruction: step.instruction.clone(),
                message,
            },
            _ => DockerError::BuildFailed { message },
        }
    }
}

/// Whether a `stream` chunk is one of the builder's own messages. They come as separate chunks,
/// so a RUN whose output lacks a final newline ("hello" then "Removing intermediate container …")
/// still ends its line where the builder's message starts.
pub(crate) fn starts_builder_message(chunk: &str) -> bool {
    const BUILDER_MESSAGES: [&str; 4] = [
        "Step ",
        " ---> ",
        "Removing intermediate container ",
        "Successfully ",
    ];
    BUILDER_MESSAGES
        .iter()
        .any(|prefix| chunk.starts_with(prefix))
}

/// Parses "Step 3/5 : RUN exit 3".
fn parse_step(line: &str) -> Option<Step> {
    let rest = line.strip_prefix("Step ")?;
    let (number, instruction) = rest.split_once(" : ")?;
    let (done, total) = number.split_once('/')?;
    let is_count = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_count(done) || !is_count(total) {
        return None;
    }
    Some(Step {
        number: number.to_owned(),
        instruction: instruction.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> BuildLog {
        let mut log = BuildLog::default();
        for line in lines {
            log.observe(line);
        }
        log
    }

    const CACHED_REBUILD: &[&str] = &[
        "Step 1/3 : FROM slipway-test/busybox:1",
        " ---> a779fb57e560",
        "Step 2/3 : RUN echo one",
        " ---> Using cache",
        " ---> 1f2e3d4c5b6a",
        "Step 3/3 : COPY . /app",
        " ---> Using cache",
        " ---> 0a9b8c7d6e5f",
        "Successfully built 0a9b8c7d6e5f",
        "Successfully tagged slipway/hello:1",
    ];

    #[test]
    fn steps_and_cache_hits_are_counted() {
        let log = read(CACHED_REBUILD);
        assert_eq!((log.total_steps, log.cached_steps), (3, 2));
    }

    #[test]
    fn successfully_built_gives_the_image_id() {
        assert_eq!(
            read(CACHED_REBUILD).built_image.as_deref(),
            Some("0a9b8c7d6e5f")
        );
    }

    #[test]
    fn running_container_is_known_until_removed() {
        let mut log = read(&[
            "Step 1/2 : FROM slipway-test/busybox:1",
            " ---> a779fb57e560",
            "Step 2/2 : RUN sleep 300",
            " ---> Running in 41cc6a62e210",
        ]);
        assert_eq!(log.running_container.as_deref(), Some("41cc6a62e210"));
        log.observe("Removing intermediate container 41cc6a62e210");
        assert_eq!(log.running_container, None);
    }

    #[test]
    fn non_zero_run_names_the_failing_step() {
        let log = read(&["Step 3/5 : RUN exit 3", " ---> Running in 41cc6a62e210"]);
        let error =
            log.failure("The command '/bin/sh -c exit 3' returned a non-zero code: 3".into());
        assert_eq!(
            error.to_string(),
            "step 3/5 `RUN exit 3` failed: The command '/bin/sh -c exit 3' returned a non-zero code: 3"
        );
    }

    #[test]
    fn other_failures_keep_dockers_message_verbatim() {
        let log = read(&["Step 2/2 : COPY missing /"]);
        let message = "COPY failed: file not found in build context or excluded by .dockerignore: stat missing: file does not exist";
        match log.failure(message.into()) {
            DockerError::BuildFailed { message: got } => assert_eq!(got, message),
            other => panic!("expected BuildFailed, got {other:?}"),
        }
    }

    #[test]
    fn builder_messages_are_told_from_run_output() {
        assert!(starts_builder_message(
            "Removing intermediate container b5079ebfa3c6\n"
        ));
        assert!(starts_builder_message(" ---> Running in b5079ebfa3c6\n"));
        assert!(!starts_builder_message("hello from the context"));
    }

    #[test]
    fn lines_that_only_look_like_steps_are_ignored() {
        let log = read(&["Step one : RUN x", "Step 1/x : RUN y", "Step 1/2: RUN z"]);
        assert_eq!(log.total_steps, 0);
    }
}
