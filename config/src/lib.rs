//! Typed settings for the referee daemon and tools: TOML file, REFEREE_* environment, CLI overrides
