// The syscall layer: thin wrappers returning Result. Nothing else in husk
// calls mount, pivot_root, clone & co. directly.
#pragma once
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk::sys {

// Files
Result<Fd> open(const std::string& path, int flags, mode_t mode = 0);
Result<std::string> read_file(const std::string& path, size_t limit = 16 << 20);
Result<std::string> read_link(const std::string& path);
// `rel` under the directory `root` as if `root` were "/" (openat2's
// RESOLVE_IN_ROOT): no "..", absolute path or symlink in an image leads
// out of it, and magic links (/proc/self/...) are refused. Close-on-exec.
Result<Fd> open_in_root(int root, const std::string& rel, int flags);
// An executable by name, as execvp finds it (a name with '/' as it is).
std::optional<std::string> find_program(const std::string& name);
// The first regular executable file `name` in the directories of `path`
// (colon-separated; an empty entry is "."). The host's PATH above, a
// container's in the guest (agent: find_executable).
std::optional<std::string> search_path(const std::string& name, const std::string& path);
Result<void> write_file(const std::string& path, const std::string& data, mode_t mode = 0644);
// write to "<path>.tmp" then rename: readers never see a partial file.
Result<void> write_file_atomic(const std::string& path, const std::string& data, mode_t mode = 0644);
// `from` into a new file `to` (replaced if it exists), holes kept holes
// (a disk image is mostly holes).
Result<void> copy_file_sparse(const std::string& from, const std::string& to, mode_t mode = 0600);
Result<void> mkdir_p(const std::string& path, mode_t mode = 0755);
// Recursive remove that never crosses into another filesystem (a mount
// point left by mistake is refused, not emptied).
Result<void> remove_all(const std::string& path);
bool exists(const std::string& path);
bool is_dir(const std::string& path);
// The names in a directory (not "." and ".."), sorted.
Result<std::vector<std::string>> list_dir(const std::string& path);
std::string dirname(const std::string& path);
std::string basename(const std::string& path);
inline bool is_absolute(const std::string& path) { return !path.empty() && path[0] == '/'; }
// The lines of a text ('\n'-separated), empty ones left out: order files,
// modules.dep, modules.builtin.
std::vector<std::string> lines(const std::string& text);
Result<std::string> realpath(const std::string& path);

// I/O
Result<void> write_all(int fd, const void* data, size_t len);
inline Result<void> write_all(int fd, const std::string& s) { return write_all(fd, s.data(), s.size()); }
Result<std::string> read_to_eof(int fd, size_t limit = 16 << 20);
Result<std::pair<Fd, Fd>> pipe(int flags = O_CLOEXEC);
Result<std::pair<Fd, Fd>> socketpair(int type);
Result<Fd> dup(int fd);  // close-on-exec, never 0-2
Result<void> set_nonblock(int fd, bool on);
Result<void> set_cloexec(int fd, bool on);
// poll() one fd for events; false on timeout.
Result<bool> wait_fd(int fd, short events, int timeout_ms);
// Milliseconds from now until `deadline` (<= 0 once it has passed).
inline int ms_left(std::chrono::steady_clock::time_point deadline) {
    return int(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
}

// Unix sockets. Paths longer than sun_path are reached through
// /proc/self/fd/<dirfd>/<name>, so deep --root directories work.
Result<Fd> unix_listen(const std::string& path, int backlog = 16);
Result<Fd> unix_connect(const std::string& path, int type = SOCK_STREAM);
// SCM_RIGHTS: `data` (at least one byte goes) with up to kMaxPassedFds fds.
constexpr size_t kMaxPassedFds = 64;  // a pod member: its stdio and one mount tree per share entry
Result<void> send_fds(int sock, const std::string& data, const std::vector<int>& fds);
// One recvmsg of up to `max` bytes; received fds are appended (owned) even
// on error. Returns the bytes ("" at EOF).
Result<std::string> recv_fds(int sock, size_t max, std::vector<Fd>& fds);

// Terminals
struct Pty {
    Fd master, slave;
    std::string name;  // "/dev/pts/N" as the devpts instance of `ptmx` sees it
};
Result<Pty> open_pty(const std::string& ptmx = "/dev/ptmx");
// The host side of a relayed terminal: raw (the guest's pty alone does
// echo, line editing and ^C) and our controlling tty (we are a session
// leader), so the caller's resizes reach us as SIGWINCH.
Result<void> take_relay_tty(int slave);
// A terminal's size, if it is one and the size is set (rows and cols > 0).
std::optional<struct winsize> window_size(int fd);
// Hand the master to a runc-style --console-socket (the name goes along).
Result<void> send_console(const std::string& socket_path, const Pty& pty);
Result<Fd> accept(int listen_fd, int flags = 0);

// Mounts and namespaces
Result<void> mount(const std::string& src, const std::string& dst, const std::string& type,
                   unsigned long flags, const std::string& data = "");
Result<void> umount(const std::string& target, int flags = 0);
// A bind source opened once (O_PATH, following symlinks as runc does) and
// what it is: the check and the bind act on the same file, so a path
// swapped for a symlink after the open binds nothing else.
struct BindSource {
    Fd fd;
    bool directory = false;
    // `fd` is a detached copy of the mount tree (open_tree), made where
    // the path means what its caller meant (another mount namespace).
    bool detached = false;
};
Result<BindSource> open_bind_source(const std::string& path);
// A detached copy of the mount tree at `path` (with its submounts when
// `recursive`), for a process in another mount namespace to attach.
Result<Fd> open_tree_clone(const std::string& path, bool recursive);
// A BindSource for a tree open_tree_clone made.
Result<BindSource> detached_source(Fd tree);
// Bind `src` on `dst` (MS_REC with `recursive`; then read-only if asked).
// `readonly`: the top mount; `recursive_readonly`: every mount of the tree
// (mount_setattr AT_RECURSIVE).
Result<void> bind_mount(const BindSource& src, const std::string& dst, bool recursive, bool readonly,
                        bool recursive_readonly = false);
// The mount points strictly below `dir` in a /proc/self/mountinfo text,
// relative to it, parents first (octal escapes decoded).
std::vector<std::string> mounts_under(const std::string& mountinfo, const std::string& dir);
Result<void> pivot_root(const std::string& new_root, const std::string& put_old);
Result<void> unshare(int flags);
// In a fresh user namespace: map `uid`/`gid` (ids outside) to 0, denying
// setgroups as an unprivileged process must. "" or what failed; safe in
// a child between clone and exec (no allocation but the message).
Result<void> map_ids_to_root(uid_t uid, gid_t gid);
// Become root of a user namespace of our own, our ids mapped to 0, as
// `unshare -r` does. The process must be single-threaded.
Result<void> become_userns_root();
Result<void> chroot(const std::string& path);
Result<void> chdir(const std::string& path);

// Locks
Result<void> flock(int fd, int op);

// Processes
// Start time (clock ticks since boot, /proc/<pid>/stat field 22): pid plus
// start time names a process even after its pid is reused.
std::optional<unsigned long long> proc_start_time(pid_t pid);
// Alive = exists, same start time, and not a zombie.
bool process_alive(pid_t pid, unsigned long long start_time);
// Wait (not as parent) for an arbitrary process to exit; false on timeout.
bool wait_process_exit(pid_t pid, unsigned long long start_time, std::chrono::milliseconds timeout);
Result<Fd> pidfd_open(pid_t pid);
// The children of `pid` (its main thread's, /proc/<pid>/task/<pid>/children).
std::vector<pid_t> child_pids(pid_t pid);

// A range of another process's address space.
struct MemRange {
    uintptr_t start = 0;
    size_t len = 0;
};
// The ranges of /proc/<pid>/maps text that map one of `paths` (as that
// process names them). Pure.
std::vector<MemRange> file_mappings(const std::string& maps, const std::vector<std::string>& paths);
// process_madvise(2) over `ranges` of the process behind `pidfd`: the bytes
// advised (for MADV_PAGEOUT the kernel still skips pages another process
// maps). Needs CAP_SYS_NICE (and ptrace read access to the process).
Result<uint64_t> process_madvise(int pidfd, const std::vector<MemRange>& ranges, int advice);

std::string self_exe_dir();

struct SpawnOptions {
    // (fd here, fd number in the child). Unmapped 0-2 are inherited; every
    // other fd is closed in the child.
    std::vector<std::pair<int, int>> fds;
    std::string cwd;                // chdir before exec, if set
    bool die_with_parent = false;   // PR_SET_PDEATHSIG=SIGKILL
    std::string path;               // execve this (argv[0] is then only the name); else execvp(argv[0])
    std::optional<std::vector<std::string>> env;  // the whole environment; else ours
    std::vector<std::string> cgroups;  // cgroup directories the child joins before exec
    // Namespaces the child starts in (CLONE_NEW*; clone3 instead of fork).
    // A child in a new pid namespace has no parent there to check on.
    uint64_t clone_flags = 0;
    // Runs in the child after its fds are in place and before cwd/exec; an
    // error is spawn()'s. The child is single-threaded and may allocate.
    std::function<Result<void>()> in_child;
};
// Between fork and exec (no allocation): close every fd from `low` up but
// the n in `keep`, or mark every fd from `low` up close-on-exec, however
// high the fds go (close_range(2), one by one without it).
void close_fds_except(int low, const int* keep, size_t n);
void cloexec_from(int low);

// fork + execvp with an empty signal mask. A failure before or at exec is
// reported here (the child is reaped), never by a child that runs on.
Result<pid_t> spawn(const std::vector<std::string>& argv, const SpawnOptions& o);

// Open /dev/null on any of fds 0-2 that is closed, so later opens never
// land there and get mistaken for stdio.
void ensure_std_fds();

// Block `signals` and return a signalfd (non-blocking, close-on-exec)
// that reads them: how the shim's and the agent's loops take signals.
Result<Fd> signalfd_of(std::initializer_list<int> signals);
// No signal blocked (a child about to exec: a mask survives exec).
void unblock_all_signals();

// Terminate with `sig` (default action, no core file) so the parent's wait
// status matches a process that died of it; 128+sig if it does not kill.
[[noreturn]] void die_of_signal(int sig);

}  // namespace husk::sys
