//! The raw `bpf(2)` pin calls aya does not offer for a path it did not
//! create (`BPF_OBJ_GET`, `BPF_OBJ_PIN`), and the bpffs check.

use super::*;

/// `union bpf_attr` as the BPF_OBJ_PIN and BPF_OBJ_GET commands read it.
#[repr(C)]
#[derive(Default)]
pub(super) struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

pub(super) const BPF_OBJ_PIN: libc::c_long = 6;

pub(super) const BPF_OBJ_GET: libc::c_long = 7;

pub(super) fn bpf_obj(cmd: libc::c_long, path: &Path, fd: u32) -> std::io::Result<libc::c_long> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for the OBJ commands, its
    // size is passed, and `c` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut ObjAttr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// A new descriptor of the BPF object pinned at `path`.
pub(super) fn bpf_obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = bpf_obj(BPF_OBJ_GET, path, 0)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pin the BPF object behind `fd` at `path`.
pub(super) fn bpf_obj_pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    bpf_obj(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(|_| ())
}

pub(crate) fn check_bpffs(dir: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(other)?;
    // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(other(format!(
            "statfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(other(format!(
            "{} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`",
            dir.display()
        )));
    }
    Ok(())
}
