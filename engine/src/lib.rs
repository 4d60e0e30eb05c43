//! Referee engine: bounded frame pipeline, sessions, tracker, verdicts, artifacts, feed hub
