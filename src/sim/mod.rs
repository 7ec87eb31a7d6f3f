//! The simulated API server (being written).
