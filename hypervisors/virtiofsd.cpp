#include "hypervisors/virtiofsd.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "hypervisors/jail.h"
#include "sys/sys.h"

namespace husk {

std::string find_virtiofsd() {
    if (const char* e = std::getenv("HUSK_VIRTIOFSD"); e && *e) return sys::find_program(e).value_or("");
    for (const char* p : {"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"})
        if (::access(p, X_OK) == 0) return p;
    return sys::find_program("virtiofsd").value_or("");
}

std::vector<std::string> virtiofsd_argv(const Share& share, const std::string& binary, unsigned long nofile) {
    std::vector<std::string> a = {binary, "--fd=" + std::to_string(kVirtiofsdSocketFd)};
    for (const std::string& o : {
             std::string("source=") + kVirtiofsdSource,
             // Its own mount, pid and net namespaces inside the jail's,
             // pivot_root into the share (chroot mode loses /proc, which
             // its capability handling reads, and is killed by its own
             // seccomp filter).
             std::string("sandbox=namespace"),
             "cache=" + share.cache,
             // Each host mount under the share (the rootfs, every bind) is a
             // mount of its own in the guest too, so inode numbers from two
             // host filesystems never meet on one st_dev.
             std::string("announce_submounts"),
             std::string("xattr"),
             // Locks stay in the guest kernel, which every process that
             // uses the share runs on: blocking F_SETLKW and flock work
             // (virtiofsd's remote locks refuse to block).
             std::string("no_posix_lock"),
             std::string("no_flock"),
             std::string("log_level=warn"),
         })
        a.insert(a.end(), {"-o", o});
    // Requests are served on the virtqueue's thread, with no pool of
    // threads: a pool of 16 measured within noise on bench/fs's workload
    // (14.8 s against 15.4 s, one run, two host CPUs) and costs threads.
    a.push_back("--thread-pool-size=0");
    a.push_back("--rlimit-nofile=" + std::to_string(nofile));
    return a;
}

std::vector<int> virtiofsd_caps() {
    auto c = file_server_caps();
    // SYS_ADMIN for its namespaces and pivot_root, SETPCAP to drop what it
    // no longer needs from its bounding set once they are made.
    for (int x : {CAP_SETUID, CAP_SETGID, CAP_SETFCAP, CAP_SYS_ADMIN, CAP_SETPCAP}) c.push_back(x);
    return c;
}

Result<pid_t> start_virtiofsd(const VmConfig& cfg, size_t index, const std::string& workdir, const std::string& log_path) {
    const Share& share = cfg.shares.at(index);
    std::string binary = find_virtiofsd();
    if (binary.empty()) return fail("virtiofsd not found (apt install qemu-system-common, or set HUSK_VIRTIOFSD)", ENOENT);
    binary = sys::realpath(binary).value_or(binary);
    std::string root = workdir + "/vfsd-root" + std::to_string(index);
    if (::mkdir(root.c_str(), 0700) < 0 && errno != EEXIST) return fail_errno("mkdir " + root);
    Jail j = base_jail(root);
    std::string in_jail = jail_binary(j, binary);
    // The share with its submounts, and later ones (a pod's members).
    j.mounts.push_back({share.host_path, kVirtiofsdSource, share.readonly, true, true});
    j.keep_caps = virtiofsd_caps();
    j.lifeline_fd = cfg.lifeline_fd;

    struct rlimit rl {};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    unsigned long nofile = std::min<unsigned long>(rl.rlim_max, 1000000);

    auto listen = TRY_CTX(sys::unix_listen(share.socket_path, 1), "virtiofsd socket");
    auto log = TRY(sys::open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600));
    auto devnull = TRY(sys::open("/dev/null", O_RDONLY));
    sys::SpawnOptions o;
    o.fds = {{devnull.get(), 0}, {log.get(), 1}, {log.get(), 2}, {listen.get(), kVirtiofsdSocketFd}};
    o.die_with_parent = true;
    o.path = in_jail;
    jail_spawn(j, o);
    o.cwd = "/";
    return TRY_CTX(sys::spawn(virtiofsd_argv(share, in_jail, nofile), o), "launch virtiofsd");
}

ShareDaemons::~ShareDaemons() {
    for (pid_t p : pids_) {
        ::kill(p, SIGKILL);
        while (::waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
        }
    }
}

Result<ShareDaemons> start_share_daemons(const VmConfig& cfg, const std::string& workdir, const std::string& log_path) {
    ShareDaemons d;
    for (size_t i = 0; i < cfg.shares.size(); ++i)
        if (cfg.shares[i].fs == ShareFs::VirtioFs) d.add(TRY(start_virtiofsd(cfg, i, workdir, log_path)));
    return d;
}

}  // namespace husk
