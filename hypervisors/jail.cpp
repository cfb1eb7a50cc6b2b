#include "hypervisors/jail.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "husk/paths.h"

namespace husk {

namespace {

tl::unexpected<Error> failed(const std::string& what, int err = errno) { return fail_errno("jail: " + what, err); }

// mkdir -p of `path`'s parents inside the jail (all on its tmpfs).
void make_parents(const std::string& path) {
    for (size_t i = 1; (i = path.find('/', i)) != std::string::npos; ++i) ::mkdir(path.substr(0, i).c_str(), 0755);
}

// A read-only remount keeps the flags the kernel locks on a bind mount
// made in a user namespace (nosuid, nodev, noexec of the source).
Result<void> remount_readonly(const std::string& target) {
    struct statvfs sv;
    if (::statvfs(target.c_str(), &sv) < 0) return failed("statvfs " + target);
    unsigned long keep = 0;
    if (sv.f_flag & ST_NOSUID) keep |= MS_NOSUID;
    if (sv.f_flag & ST_NODEV) keep |= MS_NODEV;
    if (sv.f_flag & ST_NOEXEC) keep |= MS_NOEXEC;
    if (::mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, nullptr) < 0)
        return failed("read-only " + target);
    return {};
}

Result<void> bind_into(const std::string& source, const std::string& target, bool readonly, bool recursive,
                      bool propagate = false) {
    struct stat st;
    if (::stat(source.c_str(), &st) < 0) return failed("stat " + source);
    make_parents(target);
    if (S_ISDIR(st.st_mode)) {
        if (::mkdir(target.c_str(), 0755) < 0 && errno != EEXIST) return failed("mkdir " + target);
    } else {
        int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) return failed("create " + target);
        ::close(fd);
    }
    if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND | (recursive ? MS_REC : 0), nullptr) < 0)
        return failed("bind " + source);
    // Only a share hears of the host's later mounts (its slave); the rest
    // is cut off from the host.
    if (!propagate && ::mount(nullptr, target.c_str(), nullptr, MS_REC | MS_PRIVATE, nullptr) < 0)
        return failed("make " + target + " private");
    if (readonly) return remount_readonly(target);
    return {};
}

Result<void> enter(const Jail& j, uid_t uid, gid_t gid) {
    if (j.user_ns) TRY_CTX(sys::map_ids_to_root(uid, gid), "jail");
    // Nothing mounted here may reach the host, nor anything there reach
    // us, but what is later bound under a share the shim made shared (a
    // pod member's rootfs): each mount is the host's slave until bound
    // (below), the share's bind stays one.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) < 0) return failed("make / a slave");
    const std::string& r = j.root;
    if (::mount("tmpfs", r.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0) return failed("tmpfs on " + r);
    if (::mount(nullptr, r.c_str(), nullptr, MS_PRIVATE, nullptr) < 0) return failed("make " + r + " private");
    for (const auto& m : j.mounts) TRY(bind_into(m.source, r + m.target, m.readonly, m.recursive, m.propagate));
    for (const auto& [path, target] : j.links)
        if (::symlink(target.c_str(), (r + path).c_str()) < 0) return failed("symlink " + path);
    for (const auto& d : j.devices) TRY(bind_into(d, r + d, false, false));
    ::mkdir((r + "/tmp").c_str(), 0755);
    if (::mount("tmpfs", (r + "/tmp").c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) return failed("tmpfs on /tmp");
    // A fresh proc of the jail's own pid namespace: the host's would show
    // /proc/1/root, the whole host.
    ::mkdir((r + "/proc").c_str(), 0555);
    if (::mount("proc", (r + "/proc").c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0)
        return failed("mount proc");
    if (::chdir(r.c_str()) < 0) return failed("chdir " + r);
    if (::syscall(SYS_pivot_root, ".", ".") < 0) return failed("pivot_root");
    if (::umount2(".", MNT_DETACH) < 0) return failed("detach the host's root");
    if (::chdir("/") < 0) return failed("chdir /");
    if (::mount(nullptr, "/", nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) < 0)
        return failed("read-only /");
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return failed("no_new_privs");
    for (int c = 0; c <= CAP_LAST_CAP; ++c)
        if (std::find(j.keep_caps.begin(), j.keep_caps.end(), c) == j.keep_caps.end() &&
            ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
            return failed("drop capability " + std::to_string(c));
    return {};
}

}  // namespace

Jail base_jail(const std::string& root) {
    Jail j;
    j.root = root;
    j.mounts.push_back({"/usr", "/usr", true, false});
    for (const char* d : {"/lib", "/lib64", "/bin", "/sbin"}) {
        struct stat st;
        if (::lstat(d, &st) < 0) continue;
        if (S_ISLNK(st.st_mode)) {
            if (auto t = sys::read_link(d)) j.links.push_back({d, *t});
        } else if (S_ISDIR(st.st_mode)) {
            j.mounts.push_back({d, d, true, false});
        }
    }
    j.devices = {"/dev/null", "/dev/zero", "/dev/urandom"};
    j.user_ns = ::geteuid() != 0;
    return j;
}

std::string jail_binary(Jail& jail, const std::string& binary, const std::string& name) {
    if (binary.rfind("/usr/", 0) == 0) return binary;
    std::string in_jail = std::string(kJailBin) + "/" + (name.empty() ? sys::basename(binary) : name);
    jail.mounts.push_back({binary, in_jail, true, false});
    return in_jail;
}

std::vector<int> file_server_caps() {
    return {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD};
}

void jail_spawn(const Jail& jail, sys::SpawnOptions& o) {
    o.clone_flags = CLONE_NEWNS | CLONE_NEWPID | (jail.user_ns ? CLONE_NEWUSER : 0);
    uid_t uid = ::geteuid();
    gid_t gid = ::getegid();
    bool lifeline = jail.lifeline_fd >= 0;
    if (lifeline) {
        o.fds.push_back({jail.lifeline_fd, kLifelineFd});
        o.die_with_parent = false;  // the lifeline says when to go
    }
    o.in_child = [jail, uid, gid, lifeline]() -> Result<void> {
        TRY(enter(jail, uid, gid));
        // We are pid 1 of the jail's pid namespace, which the kernel shields
        // from every signal it has no handler for, its own abort() included
        // (UML aborts on a guest panic, and would then spin). So pid 1 stays
        // a reaper and the VMM runs as its child; the reaper exits with the
        // VMM's status, and killing it takes the whole namespace.
        pid_t vmm = ::fork();
        if (vmm < 0) return failed("fork");
        if (vmm == 0) {
            if (lifeline) ::close(kLifelineFd);
            return {};
        }
        ::prctl(PR_SET_NAME, "husk-jail-init", 0, 0, 0);
        if (lifeline) {
            // The VMM's owner may hand it to another process (a pod's VM
            // outliving its first container's shim): live while any holds
            // the lifeline's write end, and take the VMM along when none does.
            int keep = kLifelineFd;
            sys::close_fds_except(3, &keep, 1);
            int pidfd = int(::syscall(SYS_pidfd_open, vmm, 0));
            for (;;) {
                pollfd p[2] = {{kLifelineFd, POLLIN, 0}, {pidfd, POLLIN, 0}};
                ::poll(p, pidfd >= 0 ? 2 : 1, 1000);
                for (;;) {
                    int st;
                    pid_t r = ::waitpid(-1, &st, WNOHANG);
                    if (r == vmm) ::_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
                    if (r <= 0) break;
                }
                if (p[0].revents) {
                    ::kill(-1, SIGKILL);  // every process of the jail's pid namespace
                    ::_exit(137);
                }
            }
        }
        sys::close_fds_except(3, nullptr, 0);  // the spawn's error pipe too: the VMM reports exec failures
        for (;;) {
            int st;
            pid_t r = ::waitpid(-1, &st, 0);
            if (r == vmm) ::_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            if (r < 0 && errno == ECHILD) ::_exit(127);
        }
    };
}

std::string jail_disk_path(size_t i) { return "/disk" + std::to_string(i); }
std::string jail_share_path(size_t i) { return "/share" + std::to_string(i); }

VmConfig jailed_config(const VmConfig& cfg) {
    VmConfig in = cfg;
    in.kernel = kJailKernel;
    if (!cfg.initrd.empty()) in.initrd = kJailInitrd;
    for (size_t i = 0; i < in.disks.size(); ++i) in.disks[i].path = jail_disk_path(i);
    for (size_t i = 0; i < in.shares.size(); ++i) {
        in.shares[i].host_path = jail_share_path(i);
        if (!in.shares[i].socket_path.empty()) in.shares[i].socket_path = sys::basename(in.shares[i].socket_path);
    }
    // Its sockets are in its working directory, the jail's /vmm.
    if (!in.channel.socket_path.empty()) in.channel.socket_path = sys::basename(in.channel.socket_path);
    if (!in.channel.vhost_socket.empty()) in.channel.vhost_socket = sys::basename(in.channel.vhost_socket);
    if (!in.control_socket.empty()) in.control_socket = sys::basename(in.control_socket);
    return in;
}

Result<VmmJail> vmm_jail(const VmConfig& cfg, const std::string& workdir, const std::string& binary) {
    std::string root = workdir + "/vmm-root", vmm_dir = workdir + "/" + kVmmDirName;
    for (const auto& d : {root, vmm_dir})
        if (::mkdir(d.c_str(), 0700) < 0 && errno != EEXIST) return fail_errno("mkdir " + d);
    VmmJail v{base_jail(root), ""};
    Jail& j = v.jail;
    j.lifeline_fd = cfg.lifeline_fd;
    if (!binary.empty()) {
        // The VMM runs from /usr, which the jail has; one from elsewhere
        // (a test's stand-in, a /usr/local build) is bound in on its own.
        std::string real = sys::find_program(binary).value_or(binary);
        v.binary = jail_binary(j, sys::realpath(real).value_or(real), sys::basename(binary));
    }
    j.mounts.push_back({cfg.kernel, kJailKernel, true, false});
    if (!cfg.initrd.empty()) j.mounts.push_back({cfg.initrd, kJailInitrd, true, false});
    for (size_t i = 0; i < cfg.disks.size(); ++i)
        j.mounts.push_back({cfg.disks[i].path, jail_disk_path(i), cfg.disks[i].readonly, false});
    // A share it serves brings its submounts (the rootfs and the spec's
    // binds); a virtio-fs share is virtiofsd's to serve, not the VMM's.
    bool serves = false;
    for (size_t i = 0; i < cfg.shares.size(); ++i) {
        if (cfg.shares[i].fs == ShareFs::VirtioFs) continue;
        serves = true;
        j.mounts.push_back({cfg.shares[i].host_path, jail_share_path(i), cfg.shares[i].readonly, true, true});
    }
    j.mounts.push_back({vmm_dir, kJailVmmDir, false, false});
    if (cfg.accel == Accel::Kvm && sys::exists("/dev/kvm")) j.devices.push_back("/dev/kvm");
    if (cfg.channel.kind == ChannelKind::Vsock && cfg.channel.socket_path.empty()) j.devices.push_back("/dev/vhost-vsock");
    bool by_name = false, vhost = false;
    for (const auto& n : cfg.nics) {
        by_name |= n.fd < 0;
        vhost |= n.vhost && cfg.accel == Accel::Kvm;
    }
    if (by_name) j.devices.push_back("/dev/net/tun");  // a persistent tap, opened by name
    if (vhost) j.devices.push_back("/dev/vhost-net");
    // Serving a share, it creates and chowns files there for the guest.
    // Else its files, devices and taps are root's, which it is: nothing more.
    if (serves) j.keep_caps = file_server_caps();
    return v;
}

}  // namespace husk
