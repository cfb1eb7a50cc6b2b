#include "hypervisors/api_vmm.h"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "husk/numbers.h"
#include "husk/paths.h"
#include "husk/vm_template.h"
#include "hypervisors/jail.h"
#include "hypervisors/virtiofsd.h"
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

json calls_to_json(const std::vector<ApiCall>& calls) {
    json a = json::array();
    for (const auto& c : calls) {
        json j = {{"method", c.method}, {"path", c.path}};
        if (!c.body.is_null()) j["body"] = c.body;
        a.push_back(j);
    }
    return a;
}

std::string api_error_message(const std::string& body) {
    auto j = json::parse(body, nullptr, false);
    if (j.is_object() && j.contains("fault_message") && j["fault_message"].is_string())
        return j["fault_message"].get<std::string>();
    std::string s = body.substr(0, 512);
    for (char& c : s)
        if (c == '\n' || c == '\r' || static_cast<unsigned char>(c) < 0x20) c = ' ';
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s.empty() ? "(no message)" : s;
}

Result<http::Response> api_call(const std::string& socket, const ApiCall& call, int timeout_ms) {
    std::string what = call.method + " " + call.path;
    auto r = TRY_CTX(http::request(socket, call.method, call.path, call.body.is_null() ? "" : call.body.dump(), timeout_ms),
                     what);
    if (r.status < 200 || r.status > 299)
        return fail(what + ": " + std::to_string(r.status) + ": " + api_error_message(r.body), EIO);
    return r;
}

Result<void> ApiVm::pause() { return api_call(socket_, pause_).map([](auto&&) {}); }
Result<void> ApiVm::resume() { return api_call(socket_, resume_).map([](auto&&) {}); }

namespace {

// `fn` with `dir` made anew and empty; the directory goes after it,
// whatever happened (a snapshot lives there only while it is written or read).
template <typename Fn>
Result<void> in_snapshot_dir(const std::string& dir, Fn fn) {
    (void)sys::remove_all(dir);
    auto r = [&]() -> Result<void> {
        TRY(sys::mkdir_p(dir, 0700));
        return fn();
    }();
    (void)sys::remove_all(dir);
    return r;
}

}  // namespace

// Paused, snapshotted into a directory of its own, packed into `fd`; the
// directory goes. A save that fails runs the guest on; one that worked
// leaves it paused (resume runs it).
Result<void> ApiVm::checkpoint(int fd) {
    if (tmpl_.save.empty()) return fail("this VMM cannot save its guest", ENOTSUP);
    auto saved = in_snapshot_dir(snapshot_dir_, [&]() -> Result<void> {
        for (const auto& c : tmpl_.save) TRY(api_call(socket_, c, 60000));
        return pack_snapshot(snapshot_dir_, fd);
    });
    if (!saved) (void)api_call(socket_, resume_);
    return saved;
}

Result<void> ApiVm::save_template(int fd) {
    TRY(checkpoint(fd));
    return resume();
}

// `tag`, the calls that make `cfg`'s VM as the jail shows it, and the
// files it runs; for a `booted` guest (a checkpoint's) not what only a
// boot reads: the kernel command line (Firecracker's boot_args, Cloud
// Hypervisor's payload.cmdline), the kernel and the initrd.
static std::string calls_shape(const std::string& tag, const VmConfig& cfg, const std::string& binary,
                               std::vector<ApiCall> (*translate)(const VmConfig&), bool booted) {
    VmConfig seen = jailed_config(cfg);
    seen.incoming_fd = -1;
    if (booted) {
        seen.cmdline.clear();
        seen.boot = {};
    }
    return tag + "\n" + calls_to_json(translate(seen)).dump() + "\n" +
           (booted ? templates::file_identity(binary) : templates::vm_files_identity(binary, cfg.kernel, cfg.initrd));
}

std::string api_template_shape(const std::string& tag, const VmConfig& cfg, const std::string& binary,
                               std::vector<ApiCall> (*translate)(const VmConfig&)) {
    return cfg.template_shape ? calls_shape(tag, cfg, binary, translate, false) : "";
}

std::string api_vm_shape(const std::string& tag, const VmConfig& cfg, const std::string& binary,
                         std::vector<ApiCall> (*translate)(const VmConfig&)) {
    return cfg.template_shape ? "" : calls_shape(tag, cfg, binary, translate, true);
}

// The template call for a container's device `index` of one kind.
static Result<void> device_call(const std::string& socket, const std::vector<ApiCall>& calls, size_t index,
                                const char* what) {
    if (index >= calls.size()) return fail(std::string("no ") + what + " to give the VM", EINVAL);
    return api_call(socket, calls[index]).map([](auto&&) {});
}
Result<void> ApiVm::add_share(size_t index) { return device_call(socket_, tmpl_.shares, index, "share"); }
Result<void> ApiVm::add_nic(size_t index) { return device_call(socket_, tmpl_.nics, index, "NIC"); }
Result<void> ApiVm::add_disk(size_t index) { return device_call(socket_, tmpl_.disks, index, "disk"); }

namespace {

constexpr const char* kPackMagic = "husk snapshot 1\n";

Result<void> copy_bytes(int from, int to, uint64_t n) {
    while (n > 0) {
        ssize_t w = ::sendfile(to, from, nullptr, size_t(std::min<uint64_t>(n, 1 << 30)));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return fail_errno("copy the snapshot");
        if (w == 0) return fail("the snapshot ends early", EIO);
        n -= uint64_t(w);
    }
    return {};
}

bool plain_name(const std::string& n) {
    return !n.empty() && n != "." && n != ".." && n.size() <= 255 && n.find('/') == std::string::npos &&
           n.find('\0') == std::string::npos && n.find('\n') == std::string::npos;
}

// One line of the pack's header, read a byte at a time (the bytes after
// it are a file's, read by sendfile from the offset we leave).
Result<std::string> read_line(int fd) {
    std::string line;
    for (;;) {
        char c;
        ssize_t r = ::read(fd, &c, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail_errno("read the snapshot");
        if (r == 0) return fail("the snapshot ends early", EIO);
        if (c == '\n') return line;
        if (line.size() > 300) return fail("not a packed snapshot (a header line is too long)", EINVAL);
        line += c;
    }
}

}  // namespace

Result<void> pack_snapshot(const std::string& dir, int fd) {
    TRY(sys::write_all(fd, kPackMagic));
    auto names = TRY(sys::list_dir(dir));
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
        auto f = TRY(sys::open(dir + "/" + n, O_RDONLY | O_NOFOLLOW));
        struct stat st{};
        if (::fstat(f.get(), &st) < 0) return fail_errno("stat " + dir + "/" + n);
        if (!S_ISREG(st.st_mode) || !plain_name(n)) return fail("the snapshot holds " + n + ", not a plain file", EINVAL);
        TRY(sys::write_all(fd, std::to_string(st.st_size) + " " + n + "\n"));
        TRY(copy_bytes(f.get(), fd, uint64_t(st.st_size)));
    }
    return sys::write_all(fd, "end\n");
}

Result<void> unpack_snapshot(int fd, const std::string& dir) {
    if (::lseek(fd, 0, SEEK_SET) < 0) return fail_errno("seek the template");
    struct stat st{};
    if (::fstat(fd, &st) < 0) return fail_errno("stat the template");
    if (TRY(read_line(fd)) + "\n" != kPackMagic) return fail("not a packed snapshot", EINVAL);
    for (;;) {
        std::string line = TRY(read_line(fd));
        if (line == "end") return {};
        size_t sp = line.find(' ');
        std::string size = line.substr(0, sp), name = sp == std::string::npos ? "" : line.substr(sp + 1);
        off_t at = ::lseek(fd, 0, SEEK_CUR);
        auto parsed = size.find_first_not_of("0123456789") == std::string::npos ? parse_number<uint64_t>(size) : std::nullopt;
        bool digits = parsed.has_value();
        uint64_t n = parsed.value_or(0);
        if (!digits || !plain_name(name) || at < 0 || n > uint64_t(st.st_size - at))
            return fail("not a packed snapshot (bad entry \"" + line.substr(0, 80) + "\")", EINVAL);
        auto out = TRY(sys::open(dir + "/" + name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600));
        TRY(copy_bytes(fd, out.get(), n));
    }
}

namespace {

std::string log_tail(const std::string& path) {
    std::string s = sys::read_file(path).value_or("");
    if (s.size() > 1024) s = s.substr(s.size() - 1024);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s.empty() ? "" : kVmmLogTail + s;
}

// The API socket answers, or the VMM died, or time ran out.
Result<void> wait_for_api(const std::string& socket, pid_t pid, int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        if (sys::unix_connect(socket)) return {};
        siginfo_t info{};  // WNOWAIT: the Vm reaps it
        if (::waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid)
            return fail("exited before serving its API", ECHILD);
        if (std::chrono::steady_clock::now() >= deadline) return fail("its API socket never appeared", ETIMEDOUT);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

}  // namespace

Result<std::unique_ptr<Vm>> launch_api_vmm(const ApiVmmLaunch& l, const VmConfig& cfg, const std::string& workdir,
                                           const std::string& log_path) {
    for (const auto& sh : cfg.shares)
        if (sh.fs != ShareFs::VirtioFs) return fail(l.name + ": no 9p (a share is virtio-fs, or the rootfs goes on a disk)", EINVAL);
    auto daemons = TRY(start_share_daemons(cfg, workdir, log_path));
    auto log = TRY(sys::open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600));
    auto devnull = TRY(sys::open("/dev/null", O_RDWR));
    // The VMM runs jailed (jail.h): its own mount and pid namespaces, a
    // tmpfs root with the binary, kernel, initrd, disks, its working
    // directory and log, /usr read-only, /dev/kvm and /dev/net/tun; no
    // capabilities. What it serves from its working directory (the API
    // and vsock sockets) is state/<id>/vmm/ on the host.
    auto [j, binary] = TRY(vmm_jail(cfg, workdir, l.argv[0]));
    j.mounts.push_back({log_path, kApiJailLog, false, false});
    std::string socket = workdir + "/" + kVmmDirName + "/" + l.socket;
    ::unlink(socket.c_str());
    if (cfg.template_shape && !l.tmpl.disks.empty())
        TRY(sys::open(workdir + "/" + kVmmDirName + "/" + kPlaceholderDiskName, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    std::vector<std::string> argv = l.argv;
    argv[0] = binary;
    sys::SpawnOptions o;
    o.fds = {{devnull.get(), 0}, {cfg.console_fd >= 0 ? cfg.console_fd : devnull.get(), 1}, {log.get(), 2}};
    o.path = argv[0];
    o.die_with_parent = true;  // the VMM must not outlive its shim
    // The test suite's stand-in (HUSK_TEST_VMM_STANDIN=1) records the calls
    // it gets to a file of the test's: that file goes into the jail too.
    const char* standin = ::getenv("HUSK_TEST_VMM_STANDIN");
    const char* record = ::getenv("HUSK_STANDIN_RECORD");
    if (standin && std::string(standin) == "1" && record && *record) {
        TRY(sys::open(record, O_WRONLY | O_CREAT | O_APPEND, 0600));
        j.mounts.push_back({record, "/standin-record", false, false});
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e)
            if (std::string(*e).rfind("HUSK_STANDIN_RECORD=", 0) != 0) env.push_back(*e);
        env.push_back("HUSK_STANDIN_RECORD=/standin-record");
        o.env = env;
    }
    jail_spawn(j, o);
    o.cwd = kJailVmmDir;  // inside the jail
    pid_t pid = TRY_CTX(sys::spawn(argv, o), "launch " + l.name);
    std::string snapshot_dir = workdir + "/" + kVmmDirName + "/" + kSnapshotDirName;
    auto vm = std::make_unique<ApiVm>(pid, socket, snapshot_dir, l);
    for (pid_t d : daemons.release()) vm->adopt(d);
    auto fail_with_log = [&](const Error& e) { return fail(l.name + ": " + e.message + log_tail(log_path), e.code); };
    if (auto r = wait_for_api(socket, pid, 5000); !r) return fail_with_log(r.error());
    if (cfg.incoming_fd >= 0) {
        // A template: its files where the VMM reads them, for as long as
        // it does (the guest's memory is its own once restored).
        if (l.tmpl.restore.empty()) return fail(l.name + ": this VMM cannot restore a guest", ENOTSUP);
        auto restored = in_snapshot_dir(snapshot_dir, [&]() -> Result<void> {
            TRY_CTX(unpack_snapshot(cfg.incoming_fd, snapshot_dir), "the template");
            for (const auto& c : l.tmpl.restore) TRY(api_call(socket, c, 20000));
            return {};
        });
        if (!restored) return fail_with_log(restored.error());
        return std::unique_ptr<Vm>(std::move(vm));
    }
    for (const auto& c : l.calls)
        if (auto r = api_call(socket, c, 10000); !r) return fail_with_log(r.error());
    return std::unique_ptr<Vm>(std::move(vm));
}

Capabilities ApiHypervisor::capabilities() const {
    Capabilities c;
    c.pause = true;
    c.vsock = true;
    c.hybrid_vsock = true;
    c.kvm = true;
    c.checkpoint = true;  // the same snapshot calls as a template's
    c.elf_kernel = true;  // an image's vmlinux, as husk's own (PVH)
    return c;
}

std::string ApiHypervisor::guest_kernel() const { return find_guest_kernel(); }

Result<std::unique_ptr<Vm>> ApiHypervisor::launch(const VmConfig& cfg, const std::string& workdir,
                                                  const std::string& log_path) {
    // Configured with the paths it sees in its jail.
    return launch_api_vmm(plan(jailed_config(cfg), kApiJailLog), cfg, workdir, log_path);
}

std::string find_vmm_binary(const char* env, const char* name) {
    if (const char* e = ::getenv(env); e && *e) return e;
    return sys::find_program(name).value_or("");
}

std::string kvm_vmm_unavailable(const std::string& binary, const char* package_hint) {
    if (binary.empty() || ::access(binary.c_str(), X_OK) != 0)
        return (binary.empty() ? std::string("binary") : binary) + " not found (" + package_hint + ")";
    // The test suite's stand-in VMM (tests/lib/standin_vmm.py) speaks the
    // API and runs the guest under QEMU TCG: it needs no KVM.
    const char* standin = ::getenv("HUSK_TEST_VMM_STANDIN");
    bool kvm_needed = !(standin && std::string(standin) == "1");
    if (kvm_needed && ::access("/dev/kvm", R_OK | W_OK) != 0) return "needs /dev/kvm, which this host does not have";
    return "";
}

}  // namespace husk
