//! What the daemon must remember across restarts beyond its config file:
//! the CLI's changes (an overlay on the config's backend lists) and the ids
//! it handed out.
//!
//! Ids matter as much as the overlay: the pinned flow table records a backend
//! *id* and *generation* per flow, so a restarted daemon must give every
//! backend the id it had, or established connections would be sent to
//! whichever backend inherited the id. Service ids are kept by name for the
//! same reason (the VIP map and the per-service tables are indexed by them).
//!
//! The file is versioned JSON, written atomically (temp file, fsync, rename,
//! fsync of the directory) with mode 0600.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use lb_common::maps::{MAX_BACKENDS, MAX_SERVICES};
use serde::{Deserialize, Serialize};

/// Version of the state file layout.
pub const STATE_VERSION: u32 = 1;
/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// Errors of the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: state file version {found}, this voxlb reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: refusing a world-writable state directory (chmod o-w)")]
    WorldWritable { path: PathBuf },
    #[error("no free backend id (all {MAX_BACKENDS} in use)")]
    BackendIdsExhausted,
    #[error("no free service id (all {MAX_SERVICES} in use)")]
    ServiceIdsExhausted,
}

/// The CLI's changes to one compiler service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverlay {
    /// Backends added with `voxlb backend add` (not in the config).
    #[serde(default)]
    pub added: BTreeMap<IpAddr, AddedBackend>,
    /// Config backends removed with `voxlb backend remove`.
    #[serde(default)]
    pub removed: BTreeSet<IpAddr>,
    /// Backends drained with `voxlb backend drain`.
    #[serde(default)]
    pub drained: BTreeSet<IpAddr>,
    /// Weights set with `voxlb backend weight` on config backends.
    #[serde(default)]
    pub weights: BTreeMap<IpAddr, u32>,
    /// Backends removed (CLI, or dropped from the config on reload) whose
    /// established flows are still finishing: they keep their id and
    /// generation, take no new flows, and are freed when their last flow
    /// ends or their deadline passes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retiring: BTreeMap<IpAddr, Retiring>,
}

/// A backend being retired: what it was (to revive it as it was, and to
/// show it) and when its grace ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retiring {
    pub name: Option<String>,
    pub weight: u32,
    pub mac: Option<[u8; 6]>,
    /// Its priority tier, given back if it is added again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tier: u32,
    /// Wall-clock end of the grace (ms since the Unix epoch): a restart or a
    /// kill -9 does not give the backend a new grace.
    pub deadline_unix_ms: u64,
}

/// Now, in ms since the Unix epoch (for [`Retiring::deadline_unix_ms`]).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ServiceOverlay {
    /// Whether the overlay changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.drained.is_empty()
            && self.weights.is_empty()
            && self.retiring.is_empty()
    }
}

/// A backend added at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedBackend {
    pub name: Option<String>,
    pub weight: u32,
    pub mac: Option<[u8; 6]>,
    /// Priority tier (`voxlb backend add --tier`). Tier 0 is not written,
    /// so a state file without tiers stays readable by an older voxlb.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tier: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Who holds (or last held) a backend id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSlot {
    pub service: String,
    pub address: IpAddr,
    /// Bumped each time the id passes to a different backend.
    pub generation: u32,
    /// False once the backend is gone: the id may be reused (with a new
    /// generation), or given back to the same backend if it returns first.
    pub in_use: bool,
}

/// Everything persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Per compiler service, by name.
    #[serde(default)]
    pub overlays: BTreeMap<String, ServiceOverlay>,
    /// Service name -> service id.
    #[serde(default)]
    pub service_ids: BTreeMap<String, u32>,
    /// Backend id -> holder.
    #[serde(default)]
    pub backend_slots: BTreeMap<u32, BackendSlot>,
}

impl State {
    /// An empty state of the current version.
    pub fn new() -> State {
        State {
            version: STATE_VERSION,
            ..State::default()
        }
    }

    /// The id of a service, allocating the lowest free one for a new name.
    pub fn service_id(&mut self, name: &str) -> Result<u32, StateError> {
        if let Some(id) = self.service_ids.get(name) {
            return Ok(*id);
        }
        let used: BTreeSet<u32> = self.service_ids.values().copied().collect();
        let id = (0..MAX_SERVICES)
            .find(|i| !used.contains(i))
            .ok_or(StateError::ServiceIdsExhausted)?;
        self.service_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Forget the ids of services that no longer exist.
    pub fn retain_services(&mut self, keep: &BTreeSet<&str>) {
        self.service_ids.retain(|n, _| keep.contains(n.as_str()));
        self.overlays.retain(|n, _| keep.contains(n.as_str()));
    }

    /// The (id, generation) of a backend of a service, allocating if needed.
    ///
    /// Order of preference: the slot this backend already holds or last held
    /// (same id, same generation: its recorded flows stay valid); a never-used
    /// id; the lowest released id, whose generation is bumped.
    pub fn backend_id(&mut self, service: &str, address: IpAddr) -> Result<(u32, u32), StateError> {
        if let Some((id, slot)) = self
            .backend_slots
            .iter_mut()
            .find(|(_, s)| s.service == service && s.address == address)
        {
            slot.in_use = true;
            return Ok((*id, slot.generation));
        }
        let fresh = (0..MAX_BACKENDS).find(|i| !self.backend_slots.contains_key(i));
        let (id, generation) = match fresh {
            Some(id) => (id, 1),
            None => {
                let (id, slot) = self
                    .backend_slots
                    .iter()
                    .find(|(_, s)| !s.in_use)
                    .ok_or(StateError::BackendIdsExhausted)?;
                (*id, slot.generation.wrapping_add(1).max(1))
            }
        };
        self.backend_slots.insert(
            id,
            BackendSlot {
                service: service.to_owned(),
                address,
                generation,
                in_use: true,
            },
        );
        Ok((id, generation))
    }

    /// Mark every slot not in `keep` (service, address) as released.
    pub fn release_others(&mut self, keep: &BTreeSet<(String, IpAddr)>) {
        for slot in self.backend_slots.values_mut() {
            if !keep.contains(&(slot.service.clone(), slot.address)) {
                slot.in_use = false;
            }
        }
    }

    /// Take the generations found in the data plane into account, for a
    /// state file that is older than the pinned maps (or was lost): an id
    /// whose data-plane generation is ahead of ours, or that holds another
    /// backend than we think, gets a generation past the data plane's, so no
    /// flow recorded against the old holder can match.
    pub fn adopt_generation(&mut self, id: u32, dp_generation: u32, same_backend: bool) {
        match self.backend_slots.get_mut(&id) {
            Some(slot) => {
                if !same_backend && dp_generation >= slot.generation {
                    slot.generation = dp_generation.wrapping_add(1).max(1);
                } else if dp_generation > slot.generation {
                    slot.generation = dp_generation;
                }
            }
            None if dp_generation != 0 => {
                // Unknown holder: reserve nothing, but make the next holder's
                // generation differ from the one flows may carry.
                self.backend_slots.insert(
                    id,
                    BackendSlot {
                        service: String::new(),
                        address: IpAddr::from([0, 0, 0, 0]),
                        generation: dp_generation,
                        in_use: false,
                    },
                );
            }
            None => {}
        }
    }
}

/// The state file of a state directory.
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Open (creating it 0700 if needed) a state directory. Refuses a
    /// world-writable one.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_owned(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let meta = std::fs::metadata(dir).map_err(io)?;
        if crate::config::is_world_writable(&meta) {
            return Err(StateError::WorldWritable {
                path: dir.to_owned(),
            });
        }
        Ok(StateStore {
            dir: dir.to_owned(),
        })
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Read the state; a missing file is an empty state.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new()),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        // Read the version alone first, so a newer layout is reported as
        // such rather than as an unknown field.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if v.version != STATE_VERSION {
            return Err(StateError::Version {
                path,
                found: v.version,
            });
        }
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Write the state atomically: a reader (or a crash) sees either the old
    /// file or the new one, never a mix.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Io { path: p, source }
        };
        let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
        text.push(b'\n');
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let d = std::fs::File::open(&self.dir).map_err(io(&self.dir))?;
        d.sync_all().map_err(io(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ids_are_stable_and_reuse_bumps_generation() {
        let mut s = State::new();
        let a = s.backend_id("c", ip("10.0.0.1")).unwrap();
        let b = s.backend_id("c", ip("10.0.0.2")).unwrap();
        assert_eq!(a, (0, 1));
        assert_eq!(b, (1, 1));
        assert_eq!(s.backend_id("c", ip("10.0.0.1")).unwrap(), (0, 1));
        // Same address in another service: another id.
        assert_eq!(s.backend_id("d", ip("10.0.0.1")).unwrap(), (2, 1));
        let keep: BTreeSet<_> = [("c".to_owned(), ip("10.0.0.2"))].into();
        s.release_others(&keep);
        // A returning backend gets its old id back, same generation.
        assert_eq!(s.backend_id("c", ip("10.0.0.1")).unwrap(), (0, 1));
    }

    #[test]
    fn released_ids_are_reused_with_a_new_generation_when_full() {
        let mut s = State::new();
        for i in 0..MAX_BACKENDS {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            s.backend_id("c", a).unwrap();
        }
        assert!(matches!(
            s.backend_id("c", ip("192.0.2.1")),
            Err(StateError::BackendIdsExhausted)
        ));
        let keep: BTreeSet<_> = (1..MAX_BACKENDS)
            .map(|i| {
                (
                    "c".to_owned(),
                    IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                )
            })
            .collect();
        s.release_others(&keep);
        assert_eq!(s.backend_id("c", ip("192.0.2.1")).unwrap(), (0, 2));
    }

    #[test]
    fn save_load_round_trip_is_atomic_and_private() {
        let dir = std::env::temp_dir().join(format!("voxlb-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), State::new());
        let mut s = State::new();
        s.service_id("compilers").unwrap();
        s.backend_id("compilers", ip("2001:db8::1")).unwrap();
        let o = s.overlays.entry("compilers".into()).or_default();
        o.drained.insert(ip("2001:db8::1"));
        o.added.insert(
            ip("10.0.0.9"),
            AddedBackend {
                name: Some("c9".into()),
                weight: 5,
                mac: None,
                tier: 0,
            },
        );
        o.added.insert(
            ip("10.0.0.10"),
            AddedBackend {
                name: None,
                weight: 100,
                mac: None,
                tier: 2,
            },
        );
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        // Tier 0 is left out of the file (older readers deny unknown
        // fields); another tier is kept.
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert_eq!(text.matches("\"tier\"").count(), 1, "{text}");
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join("state.json.tmp").exists());
        std::fs::write(store.path(), "{\"version\": 99}").unwrap();
        assert!(matches!(
            store.load(),
            Err(StateError::Version { found: 99, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn world_writable_state_dir_is_refused() {
        let dir = std::env::temp_dir().join(format!("voxlb-state-ww-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            StateStore::open(&dir),
            Err(StateError::WorldWritable { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
