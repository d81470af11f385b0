//! Nomade artifact layer (under construction).
