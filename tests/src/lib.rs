//! End-to-end test fixtures for voxlb.
