//! Nomade wire layer (under construction).
