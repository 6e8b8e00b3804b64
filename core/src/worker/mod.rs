//! The worker's state machine (being written).
