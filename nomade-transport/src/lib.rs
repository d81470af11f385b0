//! Nomade transport layer (under construction).
