//! Nomade node layer (under construction).
