//! The netlink neighbour-table reader against a real kernel table: in a
//! network namespace of the test thread's own, with entries put there by
//! `ip neigh`. Needs root (unshare, creating links).

use std::{collections::HashMap, net::IpAddr, process::Command};

use voxlb::neigh::{MacResolver, NetlinkResolver};

fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_dump_holds_the_usable_neighbours_of_the_chosen_interfaces() {
    lb_testkit::require_root!("a network namespace of its own");
    // The namespace belongs to this thread alone (and the `ip` processes it
    // starts); it and its links vanish when the thread ends, pass or fail.
    std::thread::spawn(|| {
        // SAFETY: unshare has no memory preconditions; it moves this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        ip("link add vxn0 type veth peer name vxn1");
        ip("link add vxn2 type veth peer name vxn3");
        for l in ["vxn0", "vxn1", "vxn2", "vxn3"] {
            ip(&format!("link set {l} up"));
        }
        ip("addr add 10.9.0.1/24 dev vxn0");
        ip("neigh add 10.9.0.2 lladdr 02:00:00:00:09:02 dev vxn0 nud permanent");
        ip("neigh add fd09::2 lladdr 02:00:00:00:09:06 dev vxn0 nud reachable");
        ip("neigh add 10.9.1.2 lladdr 02:00:00:00:09:12 dev vxn2 nud permanent");

        let mut only_vxn0 = NetlinkResolver::new(&["vxn0".into()]);
        let t: HashMap<IpAddr, [u8; 6]> = only_vxn0.table().expect("dump");
        assert_eq!(t.get(&addr("10.9.0.2")), Some(&[2, 0, 0, 0, 9, 2]));
        assert_eq!(t.get(&addr("fd09::2")), Some(&[2, 0, 0, 0, 9, 6]));
        assert!(
            !t.contains_key(&addr("10.9.1.2")),
            "a neighbour of another interface: {t:?}"
        );

        // No named interface exists: every interface's neighbours.
        let all = NetlinkResolver::new(&["nosuch0".into()]).table().unwrap();
        assert_eq!(all.get(&addr("10.9.1.2")), Some(&[2, 0, 0, 0, 9, 18]));

        // Soliciting makes the kernel start resolving (an incomplete entry
        // appears), and an unresolved entry is not handed out as usable.
        only_vxn0.solicit(addr("10.9.0.77"));
        let mut seen = String::new();
        for _ in 0..50 {
            seen = ip("neigh show 10.9.0.77 dev vxn0");
            if !seen.trim().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!seen.trim().is_empty(), "solicit made no neighbour entry");
        assert!(!seen.contains("lladdr"), "nothing can answer: {seen}");
        assert!(!only_vxn0.table().unwrap().contains_key(&addr("10.9.0.77")));
    })
    .join()
    .unwrap();
}
