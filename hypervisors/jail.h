// The VMM's jail: what a VMM process sees of the host. It runs in its own
// mount and pid namespaces (and user namespace when the caller is not
// root), with a fresh tmpfs as its root that holds only what it serves
// (the sandbox's shared directory) and what it needs to run (/usr read-only,
// a few device nodes, its own /tmp and /proc). Firecracker's jailer has the
// same idea; UML needs it most, because hostfs can open any host path the
// UML process can see.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "husk/hypervisor.h"
#include "sys/sys.h"

namespace husk {

struct JailMount {
    std::string source;  // host path (file or directory)
    std::string target;  // absolute path inside the jail
    bool readonly = true;
    bool recursive = false;  // bring the submounts along (the shared dir has them)
    // Stay the host's slave: mounts made later under the source reach the
    // jail (a share, which a pod's later containers are bound into).
    bool propagate = false;
};

struct Jail {
    // An empty host directory the jail's tmpfs root is mounted on (in the
    // jail's namespace only: the host keeps seeing it empty).
    std::string root;
    std::vector<JailMount> mounts;  // in order, after /usr and the /lib links
    std::vector<std::pair<std::string, std::string>> links;  // symlinks made in the jail: (path, target)
    std::vector<std::string> devices;  // host device nodes, bound at the same path
    std::vector<int> keep_caps;  // the bounding set left after entering; the rest go
    bool user_ns = false;  // the caller is not root: become root of a new user namespace
    // VmConfig::lifeline_fd: the reaper ends the jail once no process
    // holds the pipe's write end (instead of dying with its parent).
    int lifeline_fd = -1;
};
inline constexpr int kLifelineFd = 100;  // the lifeline's number in the jail's reaper

// What an ordinary VMM needs besides its own files: /usr (libraries,
// firmware) and the /lib, /lib64, /bin links a merged-/usr host has.
Jail base_jail(const std::string& root);

// `binary` (a real path) as `jail` sees it: itself under /usr, which
// every jail has; else bound in read-only at /vmm-bin/<name> (`name`:
// its own, unless given: the name it was found by).
std::string jail_binary(Jail& jail, const std::string& binary, const std::string& name = "");

// The file-owner capabilities a VMM that serves a shared directory keeps:
// it creates and chowns files there for the guest.
std::vector<int> file_server_caps();

// Set up `spawn` to start its child inside `jail`: the clone flags and the
// in-child step. The child's cwd is then a path inside the jail.
void jail_spawn(const Jail& jail, sys::SpawnOptions& o);

// Every driver's VMM runs in a jail laid out alike: what it is given at
// fixed paths, and <workdir>/vmm (where all its sockets are, the ones it
// serves and the ones it connects to) as its working directory.
inline constexpr const char* kJailVmmDir = "/vmm";
inline constexpr const char* kJailBin = "/vmm-bin";  // a VMM binary from outside /usr
inline constexpr const char* kJailKernel = "/kernel";
inline constexpr const char* kJailInitrd = "/initrd.img";
std::string jail_disk_path(size_t i);   // /disk<i>
std::string jail_share_path(size_t i);  // /share<i>

// `cfg` as the jailed VMM sees it: kernel, initrd, disks and shares at
// their jail paths, its sockets by name in its working directory. Pure.
VmConfig jailed_config(const VmConfig& cfg);

struct VmmJail {
    Jail jail;
    std::string binary;  // `binary` as the jail sees it ("" when none was given)
};

// The jail for a VMM that runs `cfg` (host paths) in `workdir`: base_jail
// plus the kernel, initrd, disks and shares at jailed_config's paths,
// <workdir>/vmm at /vmm, the VMM binary when it lives outside /usr, and
// the devices `cfg` needs (/dev/kvm, /dev/vhost-vsock, /dev/vhost-net,
// /dev/net/tun for taps opened by name). It keeps the file-owner
// capabilities when it serves a share, none otherwise. Makes
// <workdir>/vmm-root and <workdir>/vmm.
Result<VmmJail> vmm_jail(const VmConfig& cfg, const std::string& workdir, const std::string& binary = "");

}  // namespace husk
