//! Simulation tests of the core (see below).
