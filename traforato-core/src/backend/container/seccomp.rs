//! The sandbox's seccomp filter, compiled with `seccompiler`: a deny list on top of the user
//! namespace and the dropped capabilities. Denied calls fail with `EPERM`; `clone3` fails with
//! `ENOSYS` (its flags live in memory a filter cannot read) so libc falls back to `clone`,
//! whose flags are checked.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Calls a sandbox never needs: mounts and namespaces, kernel modules and kexec, bpf and perf,
/// the kernel keyring, clocks, swap, reboot, file handles, accounting, the kernel log, and
/// io_uring (a large attack surface that bypasses this filter for the I/O it performs).
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_fanotify_init,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// x86-only legacy and port-I/O calls.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[i64] = &[
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_nfsservctl,
    libc::SYS__sysctl,
];

#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[i64] = &[];

/// On x86_64 the x32 ABI reaches the same handlers with this bit set in the call number; the
/// filter denies those numbers too.
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        format!(
            "seccomp filters are not supported on {}",
            std::env::consts::ARCH
        )
    })
}

/// Every number a call can be made with on this architecture.
fn numbers(nr: i64) -> Vec<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        vec![nr, nr | X32_BIT]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        vec![nr]
    }
}

/// A rule matching calls whose first argument has the `CLONE_NEWUSER` bit.
fn new_user_namespace_rule() -> Result<SeccompRule, String> {
    let bit = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bit), bit)
        .map_err(|e| e.to_string())?;
    SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
}

/// The two programs to install, in order: the deny list, then the `clone3` redirect.
pub(crate) fn programs() -> Result<Vec<BpfProgram>, String> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in DENIED.iter().chain(DENIED_ARCH) {
        for n in numbers(*nr) {
            rules.insert(n, Vec::new());
        }
    }
    // Creating user namespaces (the door to unprivileged mounts and much kernel surface) is
    // denied; other clone/unshare flags need capabilities the sandbox does not have.
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        for n in numbers(nr) {
            rules.insert(n, vec![new_user_namespace_rule()?]);
        }
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let mut clone3 = BTreeMap::new();
    for n in numbers(libc::SYS_clone3) {
        clone3.insert(n, Vec::new());
    }
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for filter in [deny, clone3] {
        out.push(BpfProgram::try_from(filter).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Installs the filters on the calling thread (and so on every process it forks). Sets
/// `no_new_privs` first, as unprivileged filter installation requires.
pub(crate) fn install() -> Result<(), String> {
    for program in programs()? {
        seccompiler::apply_filter(&program).map_err(|e| format!("install seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_arch() {
        let programs = programs().unwrap();
        assert_eq!(programs.len(), 2);
        // The deny list is larger than the clone3 redirect and within the kernel's cap.
        assert!(programs[0].len() > programs[1].len());
        assert!(programs[0].len() < 4096);
    }

    #[test]
    fn every_denied_number_is_distinct() {
        let mut all: Vec<i64> = DENIED.iter().chain(DENIED_ARCH).copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
