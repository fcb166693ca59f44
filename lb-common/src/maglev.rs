//! Maglev consistent hashing (being written).
