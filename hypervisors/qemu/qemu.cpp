#include "hypervisors/qemu/qemu.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "husk/defaults.h"
#include "husk/paths.h"
#include "husk/vm_template.h"
#include "hypervisors/jail.h"
#include "hypervisors/process_vm.h"
#include "hypervisors/qemu/qmp.h"
#include "hypervisors/virtiofsd.h"
#include "hypervisors/vsock_backend.h"
#include "sys/sys.h"

namespace husk::qemu {

// microvm has only virtio-mmio; every other machine gets virtio-pci.
static std::string virtio(const Options& opt, const std::string& dev) {
    return dev + (opt.microvm() ? "-device" : "-pci");
}

static std::string escape(const std::string& v) {
    // QEMU option values use ',' as separator; ",," is a literal comma.
    std::string out;
    for (char c : v) {
        out.push_back(c);
        if (c == ',') out.push_back(',');
    }
    return out;
}

std::string hotplug_port(unsigned i) { return "husk.hp" + std::to_string(i); }

std::vector<std::string> translate(const VmConfig& cfg, const Options& opt) {
    std::vector<std::string> a = {opt.binary};
    auto add = [&](std::initializer_list<std::string> xs) { a.insert(a.end(), xs); };
    add({"-name", "husk"});
    // A vhost-user daemon (virtiofsd) reads and writes the guest's memory
    // itself: all of it is then a shared memory file, not QEMU's private
    // anonymous memory.
    bool shared_ram = std::any_of(cfg.shares.begin(), cfg.shares.end(), [](const Share& s) { return s.fs == ShareFs::VirtioFs; }) ||
                      (cfg.channel.kind == ChannelKind::Vsock && !cfg.channel.vhost_socket.empty());  // husk-vsock too
    std::string ram_backend = shared_ram ? "memory-backend-memfd" : "memory-backend-ram";
    std::string ram_share = shared_ram ? ",share=on" : "";
    if (shared_ram) {
        // A template's RAM is allocated at once (one populating pass, not
        // a fault a page): QEMU 7.2 reads every page the stream says is
        // zero before it skips it, which on a memfd faults each one in
        // anyway (56k faults for 192 MiB; on anonymous memory the read
        // maps the zero page). The restore took ~730 ms with them, ~500
        // without, here. Guest pages it frees go back through free page
        // reporting, as before.
        add({"-object", ram_backend + ",id=ram,size=" + std::to_string(cfg.memory_mib) + "M" + ram_share +
                            (cfg.template_shape ? ",prealloc=on" : "")});
        add({"-M", opt.machine + ",memory-backend=ram"});
    } else {
        add({"-M", opt.machine});
    }
    if (cfg.accel == Accel::Kvm) add({"-accel", "kvm", "-cpu", "host"});
    else add({"-accel", "tcg,tb-size=" + std::to_string(defaults::kTcgCodeCacheMiB)});
    bool hotplug = cfg.hotplug_mib && !opt.microvm();  // virtio-mem is PCI only
    if (hotplug) add({"-m", std::to_string(cfg.memory_mib) + ",maxmem=" + std::to_string(cfg.memory_mib + cfg.hotplug_mib) + "M"});
    else add({"-m", std::to_string(cfg.memory_mib)});
    // Every vCPU the VM may use, from the start (the guest brings up
    // `vcpus` of them; the others wait offline for update). Not QEMU's
    // vCPU hotplug: under TCG, 7.2 aborts when a vCPU is added after the
    // code cache's regions are all taken (tcg/region.c:372), which one
    // exec was enough for here; and microvm has no ACPI hotplug at all.
    add({"-smp", std::to_string(cfg.all_vcpus())});
    add({"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"});
    std::string cmdline = cfg.cmdline + " console=ttyS0";
    if (opt.tcg_tsc_khz && cfg.accel != Accel::Kvm) cmdline += " tsc_early_khz=" + std::to_string(opt.tcg_tsc_khz);
    proto::BootParams boot = cfg.boot;
    if (cfg.channel.kind != ChannelKind::None) boot.channel = cfg.channel.kind == ChannelKind::Vsock ? "vsock" : "serial";
    cmdline += proto::to_cmdline(boot);
    add({"-kernel", cfg.kernel, "-initrd", cfg.initrd, "-append", cmdline});
    add({"-chardev", "file,id=con,path=/proc/self/fd/" + std::to_string(kConsoleFd), "-serial", "chardev:con"});
    if (cfg.channel.kind == ChannelKind::VirtioSerial) {
        add({"-device", virtio(opt, "virtio-serial") + ",max_ports=2"});
        add({"-chardev", "socket,id=agent,path=" + escape(cfg.channel.socket_path)});
        add({"-device", "virtserialport,chardev=agent,name=husk.agent"});
    } else if (cfg.channel.kind == ChannelKind::Vsock && !cfg.channel.vhost_socket.empty()) {
        // husk-vsock (vsock_backend.h) serves the device; it says the CID.
        add({"-chardev", "socket,id=vsock,path=" + escape(cfg.channel.vhost_socket)});
        add({"-device", virtio(opt, "vhost-user-vsock") + ",chardev=vsock"});
    } else if (cfg.channel.kind == ChannelKind::Vsock) {
        add({"-device", virtio(opt, "vhost-vsock") + ",guest-cid=" + std::to_string(cfg.channel.vsock_cid)});
    }
    for (size_t i = 0; i < cfg.shares.size(); ++i) {
        const auto& s = cfg.shares[i];
        std::string id = "fs" + std::to_string(i);
        if (s.fs == ShareFs::VirtioFs) {
            if (cfg.template_shape) continue;  // added once the guest is up (add_share)
            add({"-chardev", "socket,id=" + id + ",path=" + escape(s.socket_path)});
            add({"-device", virtio(opt, "vhost-user-fs") + ",chardev=" + id + ",tag=" + s.tag + ",queue-size=1024"});
            continue;
        }
        add({"-fsdev", "local,id=" + id + ",path=" + escape(s.host_path) +
                           ",security_model=passthrough,multidevs=remap" + (s.readonly ? ",readonly=on" : "")});
        add({"-device", virtio(opt, "virtio-9p") + ",fsdev=" + id + ",mount_tag=" + s.tag});
    }
    for (size_t i = 0; i < cfg.disks.size(); ++i) {
        std::string id = "disk" + std::to_string(i);
        add({"-drive", "file=" + escape(cfg.disks[i].path) + ",if=none,id=" + id + ",format=raw" +
                           (cfg.disks[i].readonly ? ",readonly=on" : "")});
        add({"-device", virtio(opt, "virtio-blk") + ",drive=" + id});
    }
    for (size_t i = 0; i < cfg.nics.size() && !cfg.template_shape; ++i) {  // a template's are added later (add_nic)
        std::string id = "net" + std::to_string(i);
        const auto& n = cfg.nics[i];
        std::string tap = n.fd >= 0 ? "fd=" + std::to_string(kFirstNicFd + int(i))
                                    : "ifname=" + n.tap + ",script=no,downscript=no";
        add({"-netdev", "tap,id=" + id + "," + tap + (n.vhost && cfg.accel == Accel::Kvm ? ",vhost=on" : "")});
        add({"-device", virtio(opt, "virtio-net") + ",netdev=" + id + ",mac=" + n.mac +
                            (n.mtu != 1500 ? ",host_mtu=" + std::to_string(n.mtu) : "")});
    }
    if (cfg.free_page_reporting) add({"-device", virtio(opt, "virtio-balloon") + ",free-page-reporting=on"});
    if (hotplug) {
        // None of it plugged (nor backed) until set_hotplug_memory asks.
        add({"-object", ram_backend + ",id=hotmem,size=" + std::to_string(cfg.hotplug_mib) + "M" + ram_share});
        add({"-device", "virtio-mem-pci,id=" + std::string(kHotplugDevice) + ",memdev=hotmem,requested-size=0,block-size=" +
                            std::to_string(defaults::kHotplugBlockMiB) + "M"});
    }
    if (cfg.template_shape) {
        // Ports for what is plugged in after the save (virtio-fs, NICs,
        // husk-vsock's device),
        // and a generation id the guest's kernel reseeds its RNG from when
        // it changes (each clone gets its own: guid=auto at every start).
        for (unsigned i = 0; i < kHotplugPorts; ++i)
            add({"-device", "pcie-root-port,id=" + hotplug_port(i) + ",chassis=" + std::to_string(i + 1)});
        add({"-device", "vmgenid,guid=auto"});
    }
    if (cfg.incoming_fd >= 0) add({"-incoming", "fd:" + std::to_string(kIncomingFd)});
    if (!cfg.control_socket.empty()) {
        add({"-chardev", "socket,id=qmp,path=" + escape(cfg.control_socket)});
        add({"-mon", "chardev=qmp,mode=control"});
    }
    if (opt.sandbox) add({"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"});
    return a;
}

Capabilities QemuHypervisor::capabilities() const {
    Capabilities c;
    c.pause = true;
    c.shares = true;
    c.vsock = vsock_available();
    // Without /dev/vhost-vsock, a device of our own (husk-vsock).
    c.vsock_backend = !c.vsock && !find_husk_vsock().empty();
    c.kvm = detect_accel() == Accel::Kvm;
    c.control_socket = true;
    c.nic_fd = true;  // -netdev tap,fd=N
    c.memory_hotplug = !opt_.microvm();
    c.cpu_hotplug = true;  // offline vCPUs, onlined by the agent
    // Not on microvm (virtio-mmio): there QEMU 7.2's vhost-user-fs-device
    // mounts, and then the first container's create hangs in the guest on
    // the share, every time (under TCG here, HUSK_TEST_KVM_SHAPE=1; KVM
    // could not be tried). 9p over virtio-mmio works, so it serves.
    c.virtio_fs = !opt_.microvm();
    // Its hot-added share needs a PCIe port: not on microvm (virtio-mmio).
    c.templates = !opt_.microvm();
    c.template_nics = kVsockHotplugPort - 1;  // port 0 the share's, the last husk-vsock's
    c.checkpoint = true;
    c.bzimage = true;     // -kernel takes one (q35 and microvm)
    c.elf_kernel = true;  // and a vmlinux with a PVH note, as husk's own
    return c;
}

std::string QemuHypervisor::argv_shape(const std::string& tag, const VmConfig& cfg, bool booted) const {
    VmConfig seen = opt_.jail ? jailed_config(cfg) : cfg;
    seen.incoming_fd = -1;
    std::string text = tag + "\n";
    auto argv = translate(seen, opt_);
    for (size_t i = 0; i < argv.size(); ++i) {
        // A booted guest has read its command line: what it says now
        // (--debug, quiet) does not matter to it.
        if (booted && i > 0 && argv[i - 1] == "-append") continue;
        text += argv[i] + "\n";
    }
    std::string binary = sys::find_program(opt_.binary).value_or(opt_.binary);
    // A booted guest does not read its kernel and initrd files again either.
    if (booted) return text + templates::file_identity(binary);
    return text + templates::vm_files_identity(binary, cfg.kernel, cfg.initrd);
}

std::string QemuHypervisor::template_shape(const VmConfig& cfg) const {
    // The argv the VMM runs with, as its jail sees it: the same for every
    // container of this shape (sockets by name, the share at /share0).
    if (!capabilities().templates || !cfg.template_shape || !opt_.jail) return "";
    return argv_shape("qemu template 1", cfg, false);
}

// QEMU loads a migration stream into a VM with the same devices: the same
// argv (a VMM that is not jailed names the container's state directory in
// it, so its checkpoint restores under the same --root and id only).
std::string QemuHypervisor::vm_shape(const VmConfig& cfg) const {
    if (cfg.template_shape) return "";
    return argv_shape("qemu vm 1", cfg, true);
}

std::string QemuHypervisor::guest_kernel() const { return find_guest_kernel(); }

std::string QemuHypervisor::unavailable() const {
    return sys::find_program(opt_.binary) ? "" : opt_.binary + " not found (apt install qemu-system-x86)";
}

namespace {

class QemuVm : public ProcessVm {
public:
    // `boot_files`: the kernel and initrd as QEMU names them.
    QemuVm(pid_t pid, std::vector<std::string> boot_files, const VmConfig& seen, const Options& opt)
        : ProcessVm(pid), boot_files_(std::move(boot_files)), shares_(seen.shares), nics_(seen.nics), accel_(seen.accel), opt_(opt),
          vsock_vhost_(seen.channel.plugged_uds.empty() ? "" : seen.channel.vhost_socket) {}
    // A template's NICs are plugged in after its boot (or restore): their
    // taps wait here until then.
    std::vector<sys::Fd> nic_fds_;

    // QEMU maps the kernel ELF and the initrd and keeps both for a reset
    // (fw_cfg, ROM blobs); -no-reboot means there is none. Their pages
    // (~64 MiB: Debian's vmlinux is big) are file cache: give them back.
    Result<uint64_t> booted() override { return page_out(boot_files_); }

    Result<void> attach_control(int fd) override {
        qmp_ = Qmp(sys::Fd(fd));
        return qmp_.handshake(10000);
    }

    Result<void> stop() override {
        if (pid_ <= 0) return {};
        if (qmp_.connected()) (void)qmp_.execute("quit", nullptr, 1000);
        else ::kill(pid_, SIGTERM);
        if (!wait_exit(2000)) kill_now();
        return {};
    }

    Result<void> pause() override { return qmp_.execute("stop").map([](auto&&) {}); }
    Result<void> set_hotplug_memory(uint64_t mib) override {
        nlohmann::json args = {{"path", std::string("/machine/peripheral/") + kHotplugDevice},
                     {"property", "requested-size"},
                     {"value", mib << 20}};
        return qmp_.execute("qom-set", args).map([](auto&&) {});
    }
    Result<void> resume() override { return qmp_.execute("cont").map([](auto&&) {}); }

    // Paused, the whole guest goes to `fd` as a migration stream (RAM
    // included: zero pages cost a flag each), then it runs on. No share is
    // mounted (a mounted 9p blocks migration) and no vhost-user device is
    // plugged (they cannot be migrated): the template shape.
    Result<void> save_template(int fd) override {
        TRY(checkpoint(fd));
        return qmp_.execute("cont").map([](auto&&) {});
    }

    // Paused, saved, left paused: a completed migration has flushed the
    // disks and let go of them (a `cont` takes them back). A failed one is
    // run on at once.
    Result<void> checkpoint(int fd) override {
        TRY(qmp_.execute("stop"));
        auto done = [&]() -> Result<void> {
            // QEMU 7.2 throttles migration to 128 MiB/s by default: a
            // file takes what it is given.
            TRY(qmp_.execute("migrate-set-parameters", {{"max-bandwidth", int64_t(1) << 40}}));
            TRY(qmp_.execute_with_fd("getfd", {{"fdname", "husk-save"}}, fd));
            TRY(qmp_.execute("migrate", {{"uri", "fd:husk-save"}}));
            auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
            for (;;) {
                auto st = TRY(qmp_.execute("query-migrate"));
                std::string status = st.is_object() && st.contains("status") && st["status"].is_string() ? st["status"].get<std::string>() : "";
                if (status == "completed") return {};
                if (status == "failed" || status == "cancelled") {
                    bool why = st.contains("error-desc") && st["error-desc"].is_string();
                    return fail("qemu: migration " + status + (why ? ": " + st["error-desc"].get<std::string>() : ""), EIO);
                }
                if (std::chrono::steady_clock::now() > deadline) return fail("qemu: saving the VM took over 60 s", ETIMEDOUT);
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        }();
        if (!done) (void)qmp_.execute("cont");
        return done;
    }

    // The template was saved paused, so its restore ends paused: once
    // the load is done, run it.
    Result<void> run_restored() override {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        for (;;) {
            auto st = TRY(qmp_.execute("query-status"));
            std::string status = st.is_object() && st.contains("status") && st["status"].is_string() ? st["status"].get<std::string>() : "";
            if (status == "running") return {};
            if (status == "paused") return qmp_.execute("cont").map([](auto&&) {});
            if (status != "inmigrate" && status != "prelaunch")
                return fail("qemu: the restored guest is " + (status.empty() ? std::string("in no known state") : status), EIO);
            if (std::chrono::steady_clock::now() > deadline) return fail("qemu: the restore took over 20 s", ETIMEDOUT);
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }

    Result<void> add_share(size_t index) override {
        if (index >= shares_.size() || shares_[index].fs != ShareFs::VirtioFs) return fail("no virtio-fs share to add", EINVAL);
        const Share& s = shares_[index];
        std::string id = "fs" + std::to_string(index);

        nlohmann::json chardev = {{"id", id},
                                  {"backend", {{"type", "socket"},
                                               {"data", {{"addr", {{"type", "unix"}, {"data", {{"path", s.socket_path}}}}},
                                                         {"server", false}}}}}};
        TRY(qmp_.execute("chardev-add", chardev));
        std::string dev = virtio(opt_, "vhost-user-fs");
        TRY(qmp_.execute("device_add", {{"driver", dev}, {"id", id + "dev"}, {"chardev", id}, {"tag", s.tag},
                                        {"queue-size", 1024}, {"bus", hotplug_port(0)}}));
        return {};
    }

    Result<void> add_vsock() override {
        if (vsock_vhost_.empty()) return fail("no husk-vsock to plug in", EINVAL);
        nlohmann::json chardev = {{"id", "vsock"},
                                  {"backend", {{"type", "socket"},
                                               {"data", {{"addr", {{"type", "unix"}, {"data", {{"path", vsock_vhost_}}}}},
                                                         {"server", false}}}}}};
        TRY(qmp_.execute("chardev-add", chardev));
        TRY(qmp_.execute("device_add", {{"driver", virtio(opt_, "vhost-user-vsock")}, {"id", "vsockdev"},
                                        {"chardev", "vsock"}, {"bus", hotplug_port(kVsockHotplugPort)}}));
        return {};
    }

    Result<void> add_nic(size_t index) override {
        if (index >= nics_.size() || index + 1 >= kVsockHotplugPort || !nic_fds_[index]) return fail("no NIC to add", EINVAL);
        const Nic& n = nics_[index];
        std::string id = "net" + std::to_string(index);
        TRY(qmp_.execute_with_fd("getfd", {{"fdname", "tap" + std::to_string(index)}}, nic_fds_[index].get()));
        nic_fds_[index].reset();  // QEMU's now
        nlohmann::json netdev = {{"type", "tap"}, {"id", id}, {"fd", "tap" + std::to_string(index)}};
        if (n.vhost && accel_ == Accel::Kvm) netdev["vhost"] = true;
        TRY(qmp_.execute("netdev_add", netdev));
        nlohmann::json dev = {{"driver", virtio(opt_, "virtio-net")}, {"id", "nic" + std::to_string(index)}, {"netdev", id},
                              {"mac", n.mac}, {"bus", hotplug_port(unsigned(index) + 1)}};
        if (n.mtu != 1500) dev["host_mtu"] = n.mtu;
        TRY(qmp_.execute("device_add", dev));
        return {};
    }

private:
    Qmp qmp_;
    std::vector<std::string> boot_files_;
    std::vector<Share> shares_;  // as the VMM sees them
    std::vector<Nic> nics_;
    Accel accel_;
    Options opt_;
    std::string vsock_vhost_;  // husk-vsock's socket, for add_vsock (as QEMU names it)
};

}  // namespace

Result<std::unique_ptr<Vm>> QemuHypervisor::launch(const VmConfig& cfg, const std::string& workdir,
                                                   const std::string& log_path) {
    auto log = TRY(sys::open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600));
    auto devnull = TRY(sys::open("/dev/null", O_RDONLY));
    sys::SpawnOptions o;
    o.fds = {{devnull.get(), 0}, {log.get(), 1}, {log.get(), 2}};
    if (cfg.console_fd >= 0) o.fds.push_back({cfg.console_fd, kConsoleFd});
    for (size_t i = 0; i < cfg.nics.size() && !cfg.template_shape; ++i)
        if (cfg.nics[i].fd >= 0) o.fds.push_back({cfg.nics[i].fd, kFirstNicFd + int(i)});
    if (cfg.incoming_fd >= 0) o.fds.push_back({cfg.incoming_fd, kIncomingFd});
    o.die_with_parent = true;  // the VMM must not outlive its shim
    // Each virtio-fs share's daemon first: QEMU connects to its socket.
    auto daemons = TRY(start_share_daemons(cfg, workdir, log_path));
    // And husk-vsock, whose socket QEMU's vsock device connects to.
    if (!cfg.channel.vhost_socket.empty()) daemons.add(TRY(start_husk_vsock(cfg, workdir, log_path)));
    VmConfig seen = opt_.jail ? jailed_config(cfg) : cfg;  // the paths QEMU is given
    Options in = opt_;
    if (opt_.jail) {
        // Its own mount and pid namespaces, a root that shows only what it
        // serves (jail.h), on top of its seccomp sandbox.
        auto [j, binary] = TRY(vmm_jail(cfg, workdir, opt_.binary));
        in.binary = binary;
        o.path = binary;
        jail_spawn(j, o);
        o.cwd = kJailVmmDir;
    } else {
        o.cwd = workdir;
    }
    std::vector<std::string> argv = translate(seen, in);
    pid_t pid = TRY_CTX(sys::spawn(argv, o), "launch qemu");
    auto vm = std::make_unique<QemuVm>(pid, std::vector<std::string>{seen.kernel, seen.initrd}, seen, in);
    for (const auto& n : cfg.nics) vm->nic_fds_.push_back(cfg.template_shape && n.fd >= 0 ? TRY(sys::dup(n.fd)) : sys::Fd());
    for (pid_t d : daemons.release()) vm->adopt(d);
    return std::unique_ptr<Vm>(std::move(vm));
}

}  // namespace husk::qemu
