//! Nomade crdt layer (under construction).
