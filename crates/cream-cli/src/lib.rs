//! cream-cli: the stage binaries. Each binary in `src/bin/` is a thin `main` over library code;
//! [`flags`] is the one place that defines flags shared by several binaries.

pub mod flags;
