//! Shared helpers of Colony's runnable examples.
