#include "hypervisors/uml/uml.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "husk/paths.h"
#include "hypervisors/jail.h"
#include "hypervisors/process_vm.h"
#include "hypervisors/uml/mconsole.h"
#include "sys/sys.h"

namespace husk::uml {

std::string kernel_path() {
    const char* env = ::getenv("HUSK_UML");
    return env && *env ? env : kDefaultKernel;
}

std::vector<std::string> translate(const VmConfig& cfg) {
    std::vector<std::string> a = {kArgv0, "mem=" + std::to_string(cfg.memory_mib) + "M", "initrd=" + cfg.initrd,
                                  std::string("uml_dir=") + kJailVmmDir,
                                  std::string("umid=") + kUmid};
    // Every line is off but the two we use: con0 is the kernel console
    // (output only), con1 the agent's channel.
    a.insert(a.end(), {"con=null", "ssl=null", "con0=null,fd:" + std::to_string(kConsoleFd)});
    if (cfg.channel.kind != ChannelKind::None)
        a.push_back("con1=fd:" + std::to_string(kChannelFd) + ",fd:" + std::to_string(kChannelFd));
    // The vector driver's tap transport attaches to the (persistent) tap by
    // name, with vnet headers: gro=1 lets TSO/GSO segments and checksum
    // offload through, as QEMU's virtio-net has them. Measured (bench/README,
    // 2026-12-06): 211-263 MiB/s out of the guest and 224-327 in, against
    // 119 and 130 with the legacy tuntap transport, 135-183 and 142-229 for
    // QEMU under TCG.
    // The guest's NIC carries the container's MAC.
    for (size_t i = 0; i < cfg.nics.size(); ++i)
        a.push_back("vec" + std::to_string(i) + ":transport=tap,ifname=" + cfg.nics[i].tap + ",mac=" + cfg.nics[i].mac +
                    ",gro=1");
    for (size_t i = 0; i < cfg.disks.size(); ++i)
        a.push_back("ubd" + std::to_string(i) + (cfg.disks[i].readonly ? "r" : "") + "=" + cfg.disks[i].path);
    std::istringstream words(cfg.cmdline);
    for (std::string w; words >> w;) a.push_back(w);
    a.push_back("console=tty0");
    proto::BootParams boot = cfg.boot;
    boot.vmm = "uml";
    if (cfg.channel.kind != ChannelKind::None) boot.channel = "tty1";
    if (!cfg.shares.empty()) boot.hostfs = cfg.shares[0].host_path;
    std::istringstream husk_words(proto::to_cmdline(boot));
    for (std::string w; husk_words >> w;) a.push_back(w);
    return a;
}

Capabilities UmlHypervisor::capabilities() const {
    Capabilities c;
    c.pause = true;
    c.shares = true;
    // UML's line driver deactivates its input interrupt when the guest's
    // tty throttles (4 KiB unread in n_tty) and never reactivates it on
    // unthrottle: input stops for good. A window well under 4 KiB keeps
    // the tty from ever throttling.
    c.stdin_window = 2048;
    // The same for everything the shim sends: a create request over 4 KiB
    // (a long command line, a seccomp profile) stalled the line the same way.
    c.channel_window = 2048;
    c.max_vcpus = 1;  // Debian's UML is built with NR_CPUS=1,
    c.guest_cpusets = false;  // and without CONFIG_CPUSETS
    return c;
}

std::string UmlHypervisor::unavailable() const {
    std::string k = kernel_path();
    return ::access(k.c_str(), X_OK) == 0 ? "" : k + " not found (apt install user-mode-linux)";
}

namespace {

class UmlVm : public ProcessVm {
public:
    UmlVm(pid_t pid, std::string mconsole) : ProcessVm(pid), mconsole_(std::move(mconsole)) {}
    // stop() kills our child, pid 1 of the jail's pid namespace (UML's
    // parent): that takes every UML host process with it.
    Result<void> pause() override { return mconsole_command(mconsole_, "stop", 5000).map([](auto&&) {}); }
    Result<void> resume() override { return mconsole_command(mconsole_, "go", 5000).map([](auto&&) {}); }

private:
    std::string mconsole_;
};

}  // namespace

Result<std::unique_ptr<Vm>> UmlHypervisor::launch(const VmConfig& cfg, const std::string& workdir,
                                                  const std::string& log_path) {
    if (cfg.shares.size() > 1) return fail("uml: one shared directory at most", EINVAL);
    auto log = TRY(sys::open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600));
    auto devnull = TRY(sys::open("/dev/null", O_RDONLY));
    // Jailed (jail.h): hostfs can open any path the UML process can see.
    // UML is its own binary: the kernel.
    Jail j = TRY(vmm_jail(cfg, workdir)).jail;
    sys::SpawnOptions o;
    o.fds = {{devnull.get(), 0}, {log.get(), 1}, {log.get(), 2}};
    if (cfg.console_fd >= 0) o.fds.push_back({cfg.console_fd, kConsoleFd});
    sys::Fd chan;
    if (cfg.channel.kind != ChannelKind::None) {
        // UML has no socket client: connect for it and hand it the stream.
        chan = TRY_CTX(sys::unix_connect(cfg.channel.socket_path), "uml channel");
        o.fds.push_back({chan.get(), kChannelFd});
    }
    o.cwd = "/";
    o.path = kJailKernel;
    o.env = std::vector<std::string>{"PATH=/usr/bin:/bin", "TMPDIR=/tmp"};
    o.die_with_parent = true;  // the VMM must not outlive its shim
    jail_spawn(j, o);
    pid_t pid = TRY_CTX(sys::spawn(translate(jailed_config(cfg)), o), "launch uml");
    return std::unique_ptr<Vm>(
        std::make_unique<UmlVm>(pid, workdir + "/" + kVmmDirName + "/" + kUmid + "/mconsole"));
}

}  // namespace husk::uml
