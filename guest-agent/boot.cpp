// The guest's boot (husk-agent as PID 1, boot.h): mounts, modules, the
// move off the initramfs, the share, the channel; and a template's attach.
#include "guest-agent/boot.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "guest-agent/cgroup.h"
#include "guest-agent/container.h"
#include "husk/hypervisor.h"
#include "husk/numbers.h"
#include "protocol/protocol.h"
#include "sys/netlink.h"
#include "sys/sys.h"

namespace husk::agent {

namespace {
// How long a restored template's virtio-fs device, added after the
// restore, may take to probe before its share mounts.
constexpr int kAttachShareWaitMs = 10000;
bool g_template = false;
// The vsock channel's listener (redial_listener).
sys::Fd g_vsock_listener;
}  // namespace

bool g_debug = false;

void say(const std::string& m) {
    if (!g_debug) return;
    std::string line = "husk-agent: " + m + "\n";
    int fd = ::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!::write(fd, line.data(), line.size());
        ::close(fd);
    }
}

[[noreturn]] void fatal(const std::string& m) {
    std::string line = "husk-agent: fatal: " + m + "\n";
    int fd = ::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0) (void)!::write(fd, line.data(), line.size());
    if (getpid() == 1) reboot(RB_POWER_OFF);  // QEMU runs with -no-reboot
    _exit(1);
}

Result<proto::BootParams> boot_params() {
    return proto::boot_params_from_cmdline(TRY(sys::read_file("/proc/cmdline")));
}

// Remove the initramfs contents (they are in RAM) except `keep`, never
// crossing into other mounts.
void free_initramfs(const std::string& dir, dev_t dev, const std::string& keep) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return;
    std::vector<std::string> names;
    while (auto* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
    for (auto& n : names) {
        std::string p = dir == "/" ? "/" + n : dir + "/" + n;
        if (p == keep) continue;
        struct stat st;
        if (::lstat(p.c_str(), &st) < 0 || st.st_dev != dev) continue;
        if (S_ISDIR(st.st_mode)) {
            free_initramfs(p, dev, keep);
            ::rmdir(p.c_str());
        } else {
            ::unlink(p.c_str());
        }
    }
}

// The guest's network is the container's: its loopback is up, as the
// network setup of runc's callers leaves it in a new netns.
Result<void> loopback_up() {
    sys::Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s) return fail_errno("socket");
    struct ifreq ifr;
    std::memset(&ifr, 0, sizeof ifr);
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) < 0) return fail_errno("lo: get flags");
    ifr.ifr_flags = short(ifr.ifr_flags | IFF_UP);
    if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) < 0) return fail_errno("lo: up");
    return {};
}

// The first disk holds the share as ext4. Its node appears once the block
// driver has probed (virtio_blk; UML's ubd is built in): wait briefly.
Result<void> mount_share_disk() {
    for (int i = 0; i < 500; ++i) {
        for (const char* dev : {"/dev/vda", "/dev/ubda"})
            if (sys::exists(dev)) return sys::mount(dev, agent::kShareMount, "ext4", MS_NOATIME, "");
        ::usleep(10000);
    }
    return fail("the share's disk (/dev/vda) never appeared", ENODEV);
}


Result<void> load_module(const std::string& path) {
    auto fd = TRY(sys::open(path, O_RDONLY));
    if (::syscall(SYS_finit_module, fd.get(), "", 0) < 0 && errno != EEXIST) return fail_errno("load module " + sys::basename(path));
    return {};
}


// The share: a copy on the first disk ("disk": VMMs with no shared
// filesystem), virtio-fs ("virtiofs"), UML's hostfs (its path in the
// VMM's jail is on the command line), or 9p. A virtio-fs device added
// after boot (a restored template's) may still be probing: wait up to
// `wait_ms` for its tag.
Result<void> mount_share(const std::string& kind, const std::string& hostfs, int wait_ms) {
    Result<void> r;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    for (;;) {
        if (kind == "disk")
            r = mount_share_disk();
        else if (kind == "virtiofs")
            r = sys::mount("husk", agent::kShareMount, "virtiofs", 0, "");
        else if (!hostfs.empty())
            r = sys::mount("none", agent::kShareMount, "hostfs", 0, hostfs.c_str());
        else
            // cache=mmap: a shared writable mmap works (9p's default refuses
            // it with EINVAL); reads and writes still go to the host each time.
            r = sys::mount("husk", agent::kShareMount, "9p", 0,
                           "trans=virtio,version=9p2000.L,msize=262144,access=client,posixacl,cache=mmap");
        if (r || std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (r) say("share mounted");
    return r;
}

// Every free page of the guest taken and given back, a few MiB at a time
// while more than 16 MiB stay free. The kernel zeroes what it hands out,
// so a template's freed pages (the initramfs, the modules' copies) cost
// its stream a flag a page instead of their bytes (77 -> 56 MiB).
void cycle_free_memory() {
    constexpr size_t kChunk = 8u << 20;
    constexpr uint64_t kLeaveKiB = 16 << 10;  // for the kernel meanwhile
    std::vector<void*> taken;
    for (;;) {
        auto info = sys::read_file("/proc/meminfo").value_or("");
        auto at = info.find("MemFree:");
        if (at == std::string::npos || std::strtoull(info.c_str() + at + 8, nullptr, 10) < kLeaveKiB + (kChunk >> 10)) break;
        void* p = ::mmap(nullptr, kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) break;
        taken.push_back(p);
    }
    for (void* p : taken) ::munmap(p, kChunk);
}

Result<void> early_init() {
    ::mkdir("/dev", 0755);
    ::mkdir("/proc", 0555);
    ::mkdir("/sys", 0555);
    TRY(sys::mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"));
    TRY(sys::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC));
    TRY(sys::mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC));
    auto boot = TRY(boot_params());
    g_debug = boot.debug;
    if (boot.probe) {
        // The host is checking that guests boot under its accelerator.
        int fd = ::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
        std::string m = std::string("\n") + kProbeMarker + "\n";
        if (fd >= 0) (void)!::write(fd, m.data(), m.size());
        reboot(RB_POWER_OFF);
    }
    say("started");

    // Modules, in the order rootfs-builder wrote (dependencies first). A
    // UML guest runs its own kernel, with what it needs built in but IPv6:
    // that module comes from the host's UML package, and a guest without
    // it gets IPv4 only (the kernel may not be the one it was built for).
    std::string order;
    g_template = boot.template_boot;
    const std::string& share = boot.share;
    bool uml = boot.vmm == "uml";
    if (uml && boot.net) {
        order = sys::read_file("/lib/modules/uml/order.net").value_or("");
    } else if (!uml) {
        order = sys::read_file("/lib/modules/order").value_or("");
        // The share's filesystem: 9p unless the host says virtio-fs (or a
        // disk). A template is attached to either, and may carry NICs.
        if (share == "virtiofs" || g_template) order += sys::read_file("/lib/modules/order.virtiofs").value_or("");
        if ((share != "disk" && share != "virtiofs") || g_template) order += sys::read_file("/lib/modules/order.9p").value_or("");
        // (A template on virtio-serial too: its clones may be given a vsock
        // device once restored, which binds to the driver loaded now.)
        if (boot.channel == "vsock" || g_template) order += sys::read_file("/lib/modules/order.vsock").value_or("");
        if (boot.net || g_template) order += sys::read_file("/lib/modules/order.net").value_or("");
        if (share == "disk") order += sys::read_file("/lib/modules/order.disk").value_or("");
    }
    for (const auto& name : sys::lines(order)) {
        auto r = load_module("/lib/modules/" + name);
        if (r) continue;
        if (!uml) return r;
        say(r.error().message + "; no IPv6 in this guest");
        break;
    }
    say("modules loaded");

    // pivot_root cannot leave the initramfs, so the guest's root becomes
    // a tmpfs (as switch_root does) before any container is built.
    struct stat rootst;
    ::stat("/", &rootst);
    TRY(sys::mkdir_p("/newroot", 0755));
    TRY(sys::mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"));
    for (auto d : {"dev", "proc", "sys", "run", "tmp"}) TRY(sys::mkdir_p(std::string("/newroot/") + d, 0755));
    for (auto d : {"dev", "proc", "sys"}) TRY(sys::mount(std::string("/") + d, std::string("/newroot/") + d, "", MS_MOVE));
    // virtio_mem, for a VM that may be given memory: loaded when it first
    // is (Agent::do_memory), not at boot (~80 ms of TCG a boot).
    if (!uml && boot.mem) {
        std::string late = sys::read_file("/lib/modules/order.mem").value_or("");
        TRY(sys::mkdir_p(std::string("/newroot") + kLateModules, 0700));
        TRY(sys::write_file(std::string("/newroot") + kLateModules + "/order", late));
        for (const auto& name : sys::lines(late))
            TRY(sys::write_file(std::string("/newroot") + kLateModules + "/" + name, TRY(sys::read_file("/lib/modules/" + name, 16 << 20))));
    }
    free_initramfs("/", rootst.st_dev, "/newroot");
    TRY(sys::chdir("/newroot"));
    TRY(sys::mount(".", "/", "", MS_MOVE));
    TRY(sys::chroot("."));
    TRY(sys::chdir("/"));

    TRY(agent::init_cgroups());
    TRY(sys::mkdir_p(agent::kShareMount, 0755));
    TRY(loopback_up());
    if (g_template) {
        // Nothing of any container's yet: the host saves this guest as a
        // template once we say HELLO, and attach() brings the share.
        cycle_free_memory();
        say("template: waiting to be attached");
        return {};
    }
    TRY(mount_share(share, boot.hostfs, 0));
    return {};
}

Result<sys::Fd> open_serial_channel() {
    // The port's node appears once virtio_console has probed: wait briefly.
    for (int attempt = 0; attempt < 1000; ++attempt) {
        if (DIR* d = ::opendir("/sys/class/virtio-ports")) {
            std::string found;
            while (auto* e = ::readdir(d)) {
                std::string n = e->d_name;
                if (n[0] == '.') continue;
                auto name = sys::read_file("/sys/class/virtio-ports/" + n + "/name").value_or("");
                if (name.rfind(proto::kSerialPortName, 0) == 0) found = n;
            }
            ::closedir(d);
            if (!found.empty()) {
                auto fd = sys::open("/dev/" + found, O_RDWR | O_NONBLOCK);
                if (fd) return fd;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return fail("virtio-serial port " + std::string(proto::kSerialPortName) + " not found", ENODEV);
}

// A UML console line (conN=fd:...) carries the channel: a tty, made
// 8-bit clean before anything is sent on it.
Result<sys::Fd> open_tty_channel(const std::string& name) {
    if (name.size() < 4 || name.compare(0, 3, "tty") != 0 ||
        !std::all_of(name.begin() + 3, name.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return fail("bad channel name " + name, EINVAL);
    auto fd = TRY(sys::open("/dev/" + name, O_RDWR | O_NONBLOCK | O_NOCTTY));
    struct termios t;
    if (::tcgetattr(fd.get(), &t) < 0) return fail_errno("tcgetattr /dev/" + name);
    ::cfmakeraw(&t);
    if (::tcsetattr(fd.get(), TCSANOW, &t) < 0) return fail_errno("tcsetattr /dev/" + name);
    (void)::tcflush(fd.get(), TCIOFLUSH);
    return fd;
}

namespace {
Result<sys::Fd> vsock_listener() {
    sys::Fd s(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) return fail_errno("vsock socket");
    sockaddr_vm addr{};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = proto::kAgentVsockPort;
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return fail_errno("vsock bind");
    if (::listen(s.get(), 1) < 0) return fail_errno("vsock listen");
    return s;
}
}  // namespace

Result<void> listen_vsock_for_clones() {
    g_vsock_listener = TRY(vsock_listener());
    return {};
}

Result<sys::Fd> open_vsock_channel() {
    auto s = TRY(vsock_listener());
    auto c = TRY(sys::accept(s.get(), SOCK_NONBLOCK));
    // Kept: a template's clone, or a VM restored from a checkpoint, has a
    // new host that dials again (the VMM's restore resets vsock connections).
    g_vsock_listener = std::move(s);
    return c;
}

int redial_listener(bool quiesced) { return g_template || quiesced ? g_vsock_listener.get() : -1; }

bool template_boot() { return g_template; }

// What a template's guest is told once it is a container's VM (its maker,
// right after the save, or a clone, right after the restore): what a boot
// would have read from the command line, and what each clone must not
// share with its siblings: the random state (the host's bytes mixed in and
// the crng reseeded at once: the kernel would otherwise reseed only within
// a minute) and the clock. boot_id is drawn at its first read, which
// happens after this.
Result<void> attach(const proto::Attach& p) {
    if (!g_template) return fail("this guest did not boot as a template", EPROTO);
    g_template = false;
    g_debug = p.debug;
    {
        auto fd = TRY(sys::open("/dev/urandom", O_WRONLY));
        std::vector<uint32_t> words((sizeof(rand_pool_info) + p.entropy.size() + 3) / 4 + 1, 0);
        auto* info = reinterpret_cast<rand_pool_info*>(words.data());
        info->entropy_count = int(p.entropy.size() * 8);
        info->buf_size = int(p.entropy.size());
        std::memcpy(info->buf, p.entropy.data(), p.entropy.size());
        if (::ioctl(fd.get(), RNDADDENTROPY, info) < 0) return fail_errno("attach: add entropy");
        if (::ioctl(fd.get(), RNDRESEEDCRNG) < 0) return fail_errno("attach: reseed the crng");
    }
    timespec ts{time_t(p.realtime_ns / 1000000000), long(p.realtime_ns % 1000000000)};
    if (::clock_settime(CLOCK_REALTIME, &ts) < 0) return fail_errno("attach: set the clock");
    if (p.debug) (void)sys::write_file("/proc/sys/kernel/printk", "7");
    say("attached to its container's host (" + p.share + ")");
    // The template's NICs (one it held) take on the container's MACs,
    // which create's network configuration finds them by.
    if (!p.macs.empty()) TRY_CTX(sys::set_macs(p.macs, kAttachShareWaitMs), "attach");
    // vCPUs beyond the boot one (a template boots with one online).
    unsigned n = 1;
    for (const auto& [cpu, f] : cpu_online_files()) {
        if (n >= p.vcpus) break;
        TRY_CTX(sys::write_file(f, "1"), "attach: online cpu" + std::to_string(cpu));
        ++n;
    }
    return mount_share(p.share, "", kAttachShareWaitMs);
}

std::vector<std::pair<unsigned, std::string>> cpu_online_files() {
    std::vector<std::pair<unsigned, std::string>> out;
    for (const auto& e : sys::list_dir("/sys/devices/system/cpu").value_or(std::vector<std::string>{}))
        if (auto n = e.rfind("cpu", 0) == 0 ? parse_number<unsigned>(std::string_view(e).substr(3)) : std::nullopt) {
            std::string f = "/sys/devices/system/cpu/" + e + "/online";
            if (sys::exists(f)) out.emplace_back(*n, f);
        }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace husk::agent
