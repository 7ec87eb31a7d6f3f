//! JWT parsing and local checks (being written).
