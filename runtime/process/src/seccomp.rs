//! The sandbox's seccomp filter, compiled with Firecracker's `seccompiler` and handed to
//! bubblewrap (`--seccomp FD`), which installs it right before it executes the job.
//!
//! A deny list (Docker's default profile is the model): every system call runs except
//! those that reach outside the sandbox or into the kernel's rarely hardened corners,
//! which fail with `EPERM`. Without the network grant, `socket` is refused for every
//! address family except `AF_UNIX`. `clone3` answers `ENOSYS` (its flags sit behind a
//! pointer a filter cannot read), so the C library falls back to `clone`, whose
//! namespace flags the filter can see and refuses.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// System calls no job may make: mounts and namespaces, tracing other processes,
/// kernel modules and keyrings, BPF and perf, io_uring (its own syscall surface),
/// clock and reboot.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
];

fn arch() -> Result<TargetArch, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        "riscv64" => Ok(TargetArch::riscv64),
        other => Err(format!("no seccomp filter for the {other} architecture")),
    }
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

/// The filters for one job, each as the bytes bubblewrap reads (`--add-seccomp-fd`):
/// `struct sock_filter`s in the machine's byte order.
pub(crate) fn programs(network: bool) -> Result<Vec<Vec<u8>>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED {
        // An empty rule list matches the call unconditionally.
        rules.insert(nr, Vec::new());
    }
    // clone(flags, ...) on x86_64 and aarch64 alike: flags are the first argument.
    let mut clone_rules = Vec::new();
    // Namespace flags a `clone` may not carry.
    for flag in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ] {
        let flag = flag as u64;
        clone_rules.push(rule(vec![condition(0, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    if !network {
        rules.insert(libc::SYS_socket, vec![rule(vec![condition(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?])?]);
    }
    // The x32 ABI (x86_64 numbers with bit 30 set) passes the architecture check:
    // refuse the same calls, and every x32 socket, outright. (Most kernels are built
    // without x32; this holds where one is not.)
    if std::env::consts::ARCH == "x86_64" {
        const X32: i64 = 0x4000_0000;
        let x32: Vec<i64> = rules.keys().copied().chain([libc::SYS_socket, libc::SYS_clone3]).collect();
        for nr in x32 {
            rules.insert(nr | X32, Vec::new());
        }
    }
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch()?)
        .map_err(|e| e.to_string())?;
    let deny: BpfProgram = deny.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    // One filter maps every matched call to one action; clone3's ENOSYS is a second
    // filter. The kernel runs both and the stricter answer wins.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    let clone3: BpfProgram = clone3.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    Ok(vec![encode(&deny), encode(&clone3)])
}

fn encode(program: &BpfProgram) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    bytes
}
