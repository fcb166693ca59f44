//! Maglev tables, built once per backend set.
//!
//! Every change (a health event, a CLI drain, a reload) re-plans the whole
//! data plane, but only the services whose backend set (addresses, weights,
//! ids) or table size changed need a new table: the others get the table
//! built last time for exactly the same input. Building a 655 373-slot table
//! for 1000 compilers takes tens of milliseconds; comparing the input takes
//! microseconds. So a health event rebuilds the tables of the services it
//! touches, and no other.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lb_common::maglev::{self, Entry, MaglevError};

/// Services whose last table is kept. Far above any real configuration
/// (64 services at most); past it the memo starts again empty.
const MAX_MEMO: usize = 1024;

struct Built {
    entries: Vec<Entry>,
    size: u32,
    table: Arc<Vec<u32>>,
}

/// Last table per service name.
static MEMO: Mutex<Option<HashMap<String, Built>>> = Mutex::new(None);

/// The Maglev table of `service` for `entries` and `size`: the one built
/// last time if the input is the same, else a new one (remembered).
pub fn build(service: &str, entries: &[Entry], size: u32) -> Result<Vec<u32>, MaglevError> {
    let hit = {
        let memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
        memo.as_ref()
            .and_then(|m| m.get(service))
            .filter(|b| b.size == size && b.entries == entries)
            .map(|b| Arc::clone(&b.table))
    };
    if let Some(t) = hit {
        return Ok(t.as_ref().clone());
    }
    let table = maglev::build(entries, size)?;
    count_build(service);
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let m = memo.get_or_insert_with(HashMap::new);
    if m.len() >= MAX_MEMO {
        m.clear();
    }
    m.insert(
        service.to_string(),
        Built {
            entries: entries.to_vec(),
            size,
            table: Arc::new(table.clone()),
        },
    );
    Ok(table)
}

/// Builds done (not served from the memo) since the process started: what
/// a test checks to see that an unrelated service was not rebuilt.
pub fn builds_of(service: &str) -> u64 {
    BUILDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(service).copied())
        .unwrap_or(0)
}

static BUILDS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

fn count_build(service: &str) {
    let mut b = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    *b.get_or_insert_with(HashMap::new)
        .entry(service.to_string())
        .or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn entries(n: u8, weight: u32) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::from_addr(IpAddr::V4(Ipv4Addr::new(10, 9, 0, i)), weight, i.into()))
            .collect()
    }

    #[test]
    fn same_input_is_not_rebuilt_and_a_change_is() {
        let svc = "tables-unit-test";
        let a = build(svc, &entries(5, 1), 1009).unwrap();
        let n = builds_of(svc);
        assert_eq!(build(svc, &entries(5, 1), 1009).unwrap(), a);
        assert_eq!(builds_of(svc), n, "same input served from the memo");
        let b = build(svc, &entries(4, 1), 1009).unwrap();
        assert_eq!(builds_of(svc), n + 1);
        assert_eq!(b, maglev::build(&entries(4, 1), 1009).unwrap());
        build(svc, &entries(4, 2), 1009).unwrap();
        build(svc, &entries(4, 2), 1013).unwrap();
        assert_eq!(builds_of(svc), n + 3, "weights and size are input too");
    }
}
