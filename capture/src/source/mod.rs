//! Frame sources (in progress).
