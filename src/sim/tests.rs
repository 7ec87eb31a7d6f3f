//! Socket-level tests of the sim.
