#include <linux/capability.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>

#include "golden.h"
#include "husk/sandbox.h"
#include "hypervisors/jail.h"
#include "hypervisors/vsock_backend.h"
#include "hypervisors/qemu/qemu.h"
#include "hypervisors/virtiofsd.h"

using namespace husk;

static Spec spec_from(const std::string& text) {
    auto s = parse_spec(text);
    REQUIRE(s);
    return *s;
}

static bool fake_is_dir(const std::string& p) { return p.find("file") == std::string::npos; }

static const char* kBundle = R"({
  "ociVersion": "1.0.2",
  "root": {"path": "rootfs", "readonly": true},
  "process": {"args": ["sh", "-c", "echo hi"], "cwd": "/work", "env": ["PATH=/bin", "A=b"],
              "user": {"uid": 1000, "gid": 100, "additionalGids": [5], "umask": 63}},
  "hostname": "box",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
    {"destination": "/etc/hosts", "source": "/run/file-hosts", "options": ["bind"]},
    {"destination": "/rel", "type": "bind", "source": "relative/dir"}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "uts"}],
    "resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 150000, "period": 100000},
                  "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}]},
    "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}],
    "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]
  }
})";

TEST_CASE("share plan: rootfs first, one entry per bind mount", "[translate]") {
    auto plan = plan_shares(spec_from(kBundle), "/bundle", fake_is_dir);
    REQUIRE(plan.entries.size() == 4);
    CHECK(plan.entries[0].name == "rootfs");
    CHECK(plan.entries[0].host_path == "/bundle/rootfs");
    CHECK_FALSE(plan.entries[0].readonly);  // read-only is applied in the guest after mount points exist
    CHECK(plan.entries[1].host_path == "/srv/data");
    CHECK(plan.entries[1].readonly);
    CHECK(plan.entries[1].recursive);
    CHECK_FALSE(plan.entries[2].directory);
    CHECK_FALSE(plan.entries[2].recursive);
    CHECK(plan.entries[3].host_path == "/bundle/relative/dir");
    CHECK(plan.mount_share == std::vector<std::string>{"", "m1", "m2", "m3"});
}

TEST_CASE("VM size follows the spec", "[translate]") {
    Spec s = spec_from(kBundle);
    CHECK(vm_memory_mib(s) == 256 + 64);
    CHECK(vm_vcpus(s, 8) == 2);  // 1.5 CPUs of quota round up
    CHECK(vm_vcpus(s, 1) == 1);  // never more than the host has
    s.memory_limit.reset();
    s.cpu_quota.reset();
    CHECK(vm_memory_mib(s) == 128 + 64);
    CHECK(vm_vcpus(s, 8) == 1);
    s.cpuset_cpus = "0-2,5";
    CHECK(vm_vcpus(s, 8) == 4);
    // Half a CPU of quota on two CPUs: two vCPUs, as runc lets it use both.
    s.cpu_quota = 50000;
    s.cpu_period = 100000;
    s.cpuset_cpus = "0-1";
    CHECK(vm_vcpus(s, 2) == 2);
    s.cpu_quota = 300000;
    CHECK(vm_vcpus(s, 8) == 3);  // the quota asks for more than the cpuset
}

TEST_CASE("cpusets: host CPU lists, and the guest's own vCPU ids", "[translate]") {
    CHECK(*parse_cpu_list("") == std::vector<unsigned>{});
    CHECK(*parse_cpu_list("3,0-1,1") == std::vector<unsigned>{0, 1, 3});
    for (const char* bad : {"a", "1-", "-1", "3-1", "1,,2", "99999", "1 2"}) {
        INFO(bad);
        CHECK_FALSE(parse_cpu_list(bad));
    }
    CHECK(guest_cpuset("0-1", 2) == "0-1");
    CHECK(guest_cpuset("2-3", 2) == "0-1");  // host CPUs 2 and 3 are the VM's vCPUs 0 and 1
    CHECK(guest_cpuset("5", 1) == "0");
    CHECK(guest_cpuset("1", 3) == "0");      // a quota of 3 CPUs, one CPU to run on
    std::vector<std::pair<std::string, std::string>> w = {{"cpuset.cpus", "6-7"}, {"cpuset.mems", "1"}, {"cpu.max", "50000 100000"}};
    auto uml = w;
    translate_cpusets(w, 2);
    CHECK(w == std::vector<std::pair<std::string, std::string>>{{"cpuset.cpus", "0-1"}, {"cpuset.mems", "0"}, {"cpu.max", "50000 100000"}});
    translate_cpusets(uml, 1, false);  // a guest kernel without cpusets: the host pins, alone
    CHECK(uml == std::vector<std::pair<std::string, std::string>>{{"cpu.max", "50000 100000"}});
}

TEST_CASE("OCI -> VmConfig -> QEMU argv (golden)", "[translate]") {
    HostFacts host;
    host.host_cpus = 4, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    VmConfig cfg = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    cfg.console_fd = 7;
    qemu::Options opt;
    check_golden("translate/qemu-microvm-tcg.argv", lines(qemu::translate(jailed_config(cfg), opt)));

    host.accel = Accel::Kvm;
    host.vsock = true;
    host.debug = true;
    // Two interfaces in the container's netns: the shim passes the first's
    // tap as an fd (vhost under KVM); the second is opened by name.
    NetInterface eth0, eth1;
    eth0.name = "eth0", eth0.mac = "02:00:00:00:00:01", eth0.mtu = 1400;
    eth1.name = "eth1", eth1.mac = "02:00:00:00:00:02";
    cfg = make_vm_config(spec_from(kBundle), host, state_sandbox_paths("/state/c,1"), {eth0, eth1},
                         {"tap0_husk", "tap1_husk"});
    cfg.channel.vsock_cid = 42;
    cfg.nics[0].fd = 9;
    cfg.nics[0].vhost = true;
    cfg.disks.push_back({"/img/disk.raw", true});
    opt.machine = "q35";
    opt.sandbox = false;
    check_golden("translate/qemu-q35-kvm-vsock.argv", lines(qemu::translate(jailed_config(cfg), opt)));
    // Unjailed (the KVM probe), host paths reach QEMU: a comma in one is doubled.
    auto raw = qemu::translate(cfg, opt);
    CHECK(std::find(raw.begin(), raw.end(),
                    "local,id=fs0,path=/state/c,,1/shared,security_model=passthrough,multidevs=remap") != raw.end());
}

TEST_CASE("a booted VM without /dev/vhost-vsock: husk-vsock's vhost-user-vsock device, RAM shared", "[translate]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hybrid_vsock = host.vsock_backend = true;
    VmConfig cfg = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    CHECK(cfg.channel.kind == ChannelKind::Vsock);
    CHECK(cfg.channel.vhost_socket == "/state/c1/vmm/vsock-vhost.sock");
    CHECK(cfg.channel.socket_path == "/state/c1/vmm/vsock.sock");
    cfg.console_fd = 7;
    qemu::Options opt;
    opt.machine = "q35";
    auto jailed = jailed_config(cfg);
    CHECK(jailed.channel.vhost_socket == "vsock-vhost.sock");  // in its working directory, the jail's /vmm
    check_golden("translate/qemu-q35-tcg-husk-vsock.argv", lines(qemu::translate(jailed, opt)));
    // On microvm, the virtio-mmio form of the same device.
    opt.machine = "microvm";
    auto micro = qemu::translate(jailed, opt);
    CHECK(std::find(micro.begin(), micro.end(), "vhost-user-vsock-device,chardev=vsock") != micro.end());
    // husk-vsock's command line: its two sockets as fds, the hybrid one by name.
    CHECK(husk_vsock_argv("/vmm-bin/husk-vsock", "vsock.sock", 3) ==
          std::vector<std::string>{"/vmm-bin/husk-vsock", "--socket-fd", "3", "--uds-fd", "4", "--uds", "vsock.sock",
                                   "--guest-cid", "3"});
}

TEST_CASE("a template's clone given husk-vsock once restored runs its template's argv", "[translate]") {
    // The template is saved on virtio-serial (QEMU 7.2 cannot save the
    // vsock device); the clone's config names husk-vsock's sockets for the
    // launcher and add_vsock, and QEMU's argv must stay the template's
    // byte for byte, or the migration stream would not load.
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.template_shape = true;
    host.share_fs = ShareFs::VirtioFs;
    VmConfig maker = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    VmConfig clone = maker;
    clone.channel.vhost_socket = "/state/c1/vmm/vsock-vhost.sock";
    clone.channel.plugged_uds = "/state/c1/vmm/vsock.sock";
    clone.channel.vsock_cid = 3;
    CHECK(clone.channel.kind == ChannelKind::VirtioSerial);
    qemu::Options opt;
    opt.machine = "q35";
    auto argv = qemu::translate(jailed_config(clone), opt);
    CHECK(argv == qemu::translate(jailed_config(maker), opt));
    CHECK(std::find(argv.begin(), argv.end(), "pcie-root-port,id=husk.hp4,chassis=5") != argv.end());  // add_vsock's port
    for (const auto& a : argv) CHECK_THAT(a, !Catch::Contains("vsock"));
    CHECK(jailed_config(clone).channel.vhost_socket == "vsock-vhost.sock");  // what add_vsock names to QEMU
    // A 9p template's RAM is QEMU's own, not a memfd husk-vsock could map:
    // the shim does not plug the device there (start_vmm).
    host.share_fs = ShareFs::NineP;
    argv = qemu::translate(jailed_config(make_vm_config(spec_from(kBundle), host, state_sandbox_paths())), opt);
    CHECK(std::find_if(argv.begin(), argv.end(), [](const std::string& a) { return a.find("share=on") != a.npos; }) ==
          argv.end());
}

TEST_CASE("a VM that can be given memory: virtio-mem, none of it plugged, on q35 only", "[translate]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hotplug_mib = 2048;
    VmConfig cfg = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    CHECK(cfg.hotplug_mib == 2048);
    CHECK(cfg.boot.mem);
    CHECK_THAT(cfg.cmdline, Catch::Contains("memhp_default_state=online_movable"));
    qemu::Options opt;
    opt.machine = "q35";
    auto argv = qemu::translate(jailed_config(cfg), opt);
    auto has = [&](const std::string& a) { return std::find(argv.begin(), argv.end(), a) != argv.end(); };
    CHECK(has(std::to_string(cfg.memory_mib) + ",maxmem=" + std::to_string(cfg.memory_mib + 2048) + "M"));
    CHECK(has("memory-backend-ram,id=hotmem,size=2048M"));
    CHECK(has("virtio-mem-pci,id=hotmem0,memdev=hotmem,requested-size=0,block-size=2M"));
    opt.machine = "microvm";  // virtio-mem is PCI only: a plain -m
    argv = qemu::translate(jailed_config(cfg), opt);
    CHECK(!has("memory-backend-ram,id=hotmem,size=2048M"));
    CHECK(has(std::to_string(cfg.memory_mib)));
    host.hotplug_mib = 0;
    CHECK_THAT(make_vm_config(spec_from(kBundle), host, state_sandbox_paths()).cmdline, !Catch::Contains("husk.mem"));
}

TEST_CASE("a VM has vCPUs to spare, offline: the guest brings up what the limits ask for", "[translate]") {
    HostFacts host;
    host.host_cpus = 16, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.cpu_hotplug = true;
    VmConfig cfg = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    REQUIRE(cfg.vcpus == 2);  // kBundle's 1.5 CPUs of quota
    CHECK(cfg.max_vcpus == defaults::kMaxStandbyVcpus);  // 8 of the host's 16
    CHECK_THAT(cfg.cmdline, Catch::EndsWith(" maxcpus=2") || Catch::Contains(" maxcpus=2 "));
    for (const char* machine : {"q35", "microvm"}) {
        qemu::Options opt;
        opt.machine = machine;
        auto argv = qemu::translate(jailed_config(cfg), opt);
        CHECK(*std::next(std::find(argv.begin(), argv.end(), "-smp")) == "8");
    }
    host.host_cpus = 2;  // no more than the host has
    CHECK(make_vm_config(spec_from(kBundle), host, state_sandbox_paths()).max_vcpus == 2);
    CHECK_THAT(make_vm_config(spec_from(kBundle), host, state_sandbox_paths()).cmdline, !Catch::Contains("maxcpus"));
    host.cpu_hotplug = false;
    CHECK(make_vm_config(spec_from(kBundle), host, state_sandbox_paths()).max_vcpus == 0);
}

TEST_CASE("update's CPU limits ask for vCPUs as create's do", "[translate]") {
    VcpuWants w = vcpu_wants(spec_from(kBundle));
    CHECK(w.total(8) == 2);
    w.update({{"cpu.max", "300000 100000"}});
    CHECK(w.total(8) == 3);
    CHECK(w.total(2) == 2);  // never more than the VM can have
    w.update({{"cpu.max", "max 100000"}, {"cpuset.cpus", "0-3,6"}});
    CHECK(w.total(8) == 5);  // no quota now; the cpuset asks for 5
    w.update({{"cpuset.cpus", "1"}, {"cpu.max", "50000 100000"}});
    CHECK(w.total(8) == 1);
    w.update({{"memory.max", "100"}});  // not a CPU limit: nothing changes
    CHECK(w.total(8) == 1);
}

TEST_CASE("a virtio-fs share: shared guest RAM, a vhost-user-fs device, virtiofsd jailed beside QEMU (golden)", "[translate]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hotplug_mib = 2048;
    host.share_fs = ShareFs::VirtioFs;
    VmConfig cfg = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    cfg.console_fd = 7;
    REQUIRE(cfg.shares.size() == 1);
    CHECK(cfg.shares[0].fs == ShareFs::VirtioFs);
    CHECK(cfg.shares[0].socket_path == "/state/c1/vmm/fs.sock");
    CHECK(cfg.shares[0].cache == "auto");
    CHECK(cfg.boot.share == "virtiofs");
    qemu::Options opt;
    opt.machine = "q35";
    // Every byte of guest RAM (the hot-pluggable part too) is a shared
    // memfd that virtiofsd maps; QEMU reaches it by socket name in /vmm.
    check_golden("translate/qemu-q35-virtiofs.argv", lines(qemu::translate(jailed_config(cfg), opt)));
    // The VMM's jail does not see the share (virtiofsd serves it) and keeps
    // no file-server capabilities.
    char tmpl[] = "/tmp/husk-unit-jail.XXXXXX";
    REQUIRE(::mkdtemp(tmpl));
    auto j = vmm_jail(cfg, tmpl);
    REQUIRE(j);
    CHECK(std::none_of(j->jail.mounts.begin(), j->jail.mounts.end(), [](const JailMount& m) { return m.target == "/share0"; }));
    CHECK(j->jail.keep_caps.empty());
    cfg.shares[0].fs = ShareFs::NineP;  // QEMU's own 9p server: the share and the file-server capabilities
    j = vmm_jail(cfg, tmpl);
    CHECK(std::any_of(j->jail.mounts.begin(), j->jail.mounts.end(), [](const JailMount& m) { return m.target == "/share0"; }));
    CHECK(j->jail.keep_caps == file_server_caps());
    std::filesystem::remove_all(tmpl);
    host.share_fs = ShareFs::NineP;
    auto nine = make_vm_config(spec_from(kBundle), host, state_sandbox_paths());
    CHECK(nine.shares[0].fs == ShareFs::NineP);
    CHECK_THAT(nine.cmdline, !Catch::Contains("husk.share"));
    auto argv = qemu::translate(jailed_config(nine), opt);
    CHECK(std::find(argv.begin(), argv.end(), "memory-backend-ram,id=hotmem,size=2048M") != argv.end());
    CHECK(std::find(argv.begin(), argv.end(), "q35") != argv.end());  // no memory-backend: QEMU's own RAM
}

TEST_CASE("virtiofsd's command line: its own sandbox, the share's cache, submounts, guest-local locks", "[translate]") {
    Share s;
    s.tag = "husk", s.host_path = "/state/c1/shared", s.fs = ShareFs::VirtioFs, s.cache = "always";
    s.socket_path = "/state/c1/vmm/fs.sock";
    auto a = virtiofsd_argv(s, "/usr/lib/qemu/virtiofsd", 20000);
    CHECK(a == std::vector<std::string>{"/usr/lib/qemu/virtiofsd", "--fd=3", "-o", "source=/share", "-o", "sandbox=namespace",
                                        "-o", "cache=always", "-o", "announce_submounts", "-o", "xattr", "-o", "no_posix_lock",
                                        "-o", "no_flock", "-o", "log_level=warn", "--thread-pool-size=0",
                                        "--rlimit-nofile=20000"});
    auto caps = virtiofsd_caps();
    for (int c : {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETUID, CAP_SETGID, CAP_MKNOD, CAP_SETFCAP, CAP_SYS_ADMIN})
        CHECK(std::find(caps.begin(), caps.end(), c) != caps.end());
    for (int c : {CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_NET_RAW})
        CHECK(std::find(caps.begin(), caps.end(), c) == caps.end());
}

TEST_CASE("the share's filesystem: virtio-fs where it can be, 9p where not, and why", "[translate]") {
    Spec s = spec_from(kBundle);
    auto pick = [&](const std::string& config, bool driver, bool daemon, bool rootless, bool nine_p = true) {
        return choose_share_fs(s, config, ShareSupport{nine_p, driver, daemon, rootless});
    };
    CHECK(pick("", true, true, false)->fs == ShareFs::VirtioFs);
    CHECK(pick("", true, true, false)->why == "the default");
    CHECK(pick("", false, true, false)->fs == ShareFs::NineP);
    CHECK_THAT(pick("", false, true, false)->why, Catch::Contains("no virtio-fs"));
    CHECK_THAT(pick("", true, false, false)->why, Catch::Contains("no virtiofsd") && Catch::Contains("qemu-system-common"));
    CHECK_THAT(pick("", true, true, true)->why, Catch::Contains("rootless"));
    CHECK(pick("9p", true, true, false)->fs == ShareFs::NineP);
    CHECK(pick("virtiofs", true, true, false)->fs == ShareFs::VirtioFs);
    CHECK_THAT(pick("virtiofs", true, false, false).error().message, Catch::Contains("config file's share=virtiofs"));
    CHECK_THAT(pick("ext4", true, true, false).error().message, Catch::Contains("expected \"virtiofs\" or \"9p\""));
    // A driver with no 9p (Cloud Hypervisor): virtio-fs, or nothing to share with.
    CHECK(pick("", true, true, false, false)->fs == ShareFs::VirtioFs);
    CHECK_THAT(pick("", true, false, false, false).error().message, Catch::Contains("no virtiofsd") && Catch::Contains("no 9p"));
    CHECK_THAT(pick("9p", true, true, false, false).error().message, Catch::Contains("share=9p: the driver has no 9p"));
    s.annotations[kAnnotationShare] = "9p";  // the annotation over the config file
    CHECK(pick("virtiofs", true, true, false)->fs == ShareFs::NineP);
    s.annotations[kAnnotationShare] = "virtiofs";
    CHECK_THAT(pick("", true, true, true).error().message, Catch::Contains("annotation org.husk.share=virtiofs: rootless"));
    CHECK(check_share_annotation(s));
    s.annotations[kAnnotationShare] = "nfs";
    CHECK_THAT(check_share_annotation(s).error().message, Catch::Contains("annotation org.husk.share: expected"));
}

TEST_CASE("OCI -> agent create request (golden)", "[translate]") {
    Spec s = spec_from(kBundle);
    auto plan = plan_shares(s, "/bundle", fake_is_dir);
    auto cg = guest_cgroup_files(s.resources.is_object() ? s.resources : nlohmann::json::object(), "linux.resources");
    REQUIRE(cg);
    proto::Create c = agent_create_params(s, plan, *cg);
    c.container = "box";
    check_golden("translate/agent-create.json", proto::to_json(c).dump(2) + "\n");
    // What the agent decodes is what was sent.
    auto back = proto::decode<proto::Create>(proto::to_json(c), "create");
    INFO((back ? "" : back.error().message));
    REQUIRE(back);
    CHECK(*back == c);
    // org.husk.stdio=console: the init gets the guest's terminal (24x80
    // unless the spec sized one), the spec's process otherwise unchanged.
    CHECK_FALSE(c.process.terminal);
    s.annotations["org.husk.stdio"] = "console";
    proto::Create con = agent_create_params(s, plan, *cg);
    CHECK(con.process.terminal);
    REQUIRE(con.process.console_size);
    CHECK(con.process.console_size->rows == 24);
    CHECK(con.process.console_size->cols == 80);
    CHECK(con.process.args == c.process.args);
    s.annotations["org.husk.stdio"] = "init";
    CHECK_FALSE(agent_create_params(s, plan, *cg).process.terminal);
}

TEST_CASE("a terminal process carries its console size to the agent; a probe VM has no channel", "[translate]") {
    SpecProcess p;
    p.args = {"sh"};
    p.terminal = true;
    p.console_height = 24;
    p.console_width = 80;
    auto j = proto::to_json(agent_process_params(p));
    CHECK(j["terminal"] == true);
    CHECK(j["console_size"] == nlohmann::json{{"rows", 24}, {"cols", 80}});
    p.terminal = false;
    CHECK_FALSE(agent_process_params(p).console_size);

    VmConfig cfg;
    cfg.kernel = "/k";
    cfg.initrd = "/i";
    cfg.channel.kind = ChannelKind::None;
    qemu::Options opt;
    opt.binary = "qemu";
    opt.machine = "microvm";
    auto argv = qemu::translate(cfg, opt);
    CHECK(std::find(argv.begin(), argv.end(), "virtserialport,chardev=agent,name=husk.agent") == argv.end());
    CHECK(std::none_of(argv.begin(), argv.end(), [](auto& a) { return a.find("vsock") != std::string::npos; }));
}

TEST_CASE("microvm, the KVM configuration: no virtio-fs; under TCG the guest is given the TSC's rate", "[translate]") {
    qemu::Options micro;
    micro.machine = "microvm";
    qemu::Options q35;
    q35.machine = "q35";
    CHECK_FALSE(qemu::QemuHypervisor(micro).capabilities().virtio_fs);
    CHECK(qemu::QemuHypervisor(q35).capabilities().virtio_fs);
    CHECK(choose_share_fs(Spec{}, "", share_support(qemu::QemuHypervisor(micro).capabilities(), true, false))->fs == ShareFs::NineP);

    VmConfig cfg;
    cfg.kernel = "/k";
    cfg.initrd = "/i";
    micro.tcg_tsc_khz = 2596138;
    auto append = [&](const VmConfig& c) {
        auto argv = qemu::translate(c, micro);
        auto it = std::find(argv.begin(), argv.end(), "-append");
        REQUIRE(it != argv.end());
        return *(it + 1);
    };
    CHECK(append(cfg).find(" tsc_early_khz=2596138") != std::string::npos);
    cfg.accel = Accel::Kvm;  // kvm-clock: nothing to calibrate
    CHECK(append(cfg).find("tsc_early_khz") == std::string::npos);
}

TEST_CASE("capabilities, rlimits and oomScoreAdj become numbers for the agent", "[translate]") {
    auto p = parse_process_file(R"({"args":["sh"],"cwd":"/",
        "capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_BOGUS"],"ambient":["CAP_NET_BIND_SERVICE"]},
        "rlimits":[{"type":"RLIMIT_NOFILE","soft":10,"hard":20},{"type":"RLIMIT_CORE","soft":0,"hard":18446744073709551615}],
        "oomScoreAdj":-17})", "p.json");
    REQUIRE(p);
    auto j = proto::to_json(agent_process_params(*p));
    CHECK(j["capabilities"]["bounding"] == nlohmann::json{0, 21});  // CAP_BOGUS skipped
    CHECK(j["capabilities"]["ambient"] == nlohmann::json{10});
    CHECK(j["capabilities"]["effective"] == nlohmann::json::array());
    CHECK(unknown_capabilities(*p) == std::vector<std::string>{"CAP_BOGUS"});
    CHECK(j["rlimits"] == nlohmann::json::parse(R"([{"resource":7,"soft":10,"hard":20},
                                                    {"resource":4,"soft":0,"hard":18446744073709551615}])"));
    CHECK(j["oom_score_adj"] == -17);
    // No capabilities object: the agent leaves them alone (runc does too).
    auto q = parse_process_file(R"({"args":["sh"],"cwd":"/"})", "q.json");
    CHECK_FALSE(agent_process_params(*q).capabilities);
}

TEST_CASE("a bind of the host's cgroup v1 tree becomes the guest's writable cgroup2 (podman's systemd mode on v1)",
          "[translate]") {
    // What podman writes for /sbin/init on a cgroup v1 host.
    Spec s;
    s.mounts = {{"/proc", "proc", "proc", {}},
                {"/sys/fs/cgroup", "cgroup", "cgroup", {"rprivate", "nosuid", "ro"}},
                {"/sys/fs/cgroup/systemd", "bind", "/sys/fs/cgroup/systemd", {"bind", "rprivate"}},
                {"/data", "bind", "/srv/data", {"rbind"}}};
    auto dropped = adapt_host_cgroup_binds(s);
    CHECK(dropped == std::vector<std::string>{"/sys/fs/cgroup/systemd"});
    REQUIRE(s.mounts.size() == 3);
    CHECK(s.mounts[1].options == std::vector<std::string>{"rprivate", "nosuid", "rw"});
    CHECK(s.mounts[2].destination == "/data");
    // Nothing of the host's cgroups bound: nothing changes (a read-only cgroup stays so).
    Spec plain;
    plain.mounts = {{"/sys/fs/cgroup", "cgroup", "cgroup", {"ro"}}, {"/cg", "bind", "/sys/fs/cgroup/cpu", {"bind"}}};
    CHECK(adapt_host_cgroup_binds(plain).empty());
    CHECK(plain.mounts.size() == 2);
    CHECK(plain.mounts[0].options == std::vector<std::string>{"ro"});
}
