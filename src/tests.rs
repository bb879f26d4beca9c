//! Unit tests that need private access: the waiter slots and the hot path.
