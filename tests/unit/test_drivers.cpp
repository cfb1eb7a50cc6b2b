// The REST-API drivers (Firecracker, Cloud Hypervisor): their translation
// (golden), the HTTP framing, the hybrid vsock handshake (against a real
// unix socket), and the rootfs disk image (built for real, read back with
// debugfs).
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include <fcntl.h>

#include "golden.h"
#include "husk/disk_image.h"
#include "husk/sandbox.h"
#include "husk/vm_template.h"
#include "hypervisors/api_vmm.h"
#include "hypervisors/cloud-hypervisor/cloud_hypervisor.h"
#include "hypervisors/firecracker/firecracker.h"
#include "hypervisors/http.h"
#include "hypervisors/jail.h"
#include "hypervisors/vsock.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;

namespace {

Spec small_spec(const std::string& annotations = "{}") {
    auto s = parse_spec(R"({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"},
                            "annotations": )" + annotations + R"(,
                            "linux": {"resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 200000, "period": 100000}}}})");
    REQUIRE(s);
    return *s;
}

VmConfig api_vm_config() {
    HostFacts host;
    host.host_cpus = 4, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hybrid_vsock = true;
    host.share_disk = "/state/c1/share.img";
    NetInterface eth0;
    eth0.name = "eth0", eth0.mac = "02:42:ac:11:00:02", eth0.mtu = 1400;
    // The tap's name is the shim's pick (tap0_husk was a pod sibling's).
    return make_vm_config(small_spec(), host, state_sandbox_paths(), {eth0},
                          {"tap1_husk"});
}

}  // namespace

TEST_CASE("VmConfig -> Firecracker API calls (golden)", "[drivers]") {
    VmConfig cfg = api_vm_config();
    REQUIRE(cfg.shares.empty());
    REQUIRE(cfg.disks.size() == 1);
    REQUIRE(cfg.channel.kind == ChannelKind::Vsock);
    REQUIRE(cfg.channel.socket_path == "/state/c1/vmm/vsock.sock");
    check_golden("translate/firecracker.json", calls_to_json(firecracker::translate(jailed_config(cfg))).dump(2) + "\n");
    auto argv = firecracker::command("/usr/bin/firecracker", "/state/c1/vmm.log");
    CHECK(argv == std::vector<std::string>{"/usr/bin/firecracker", "--api-sock", "api.sock", "--id", "husk", "--log-path",
                                           "/state/c1/vmm.log", "--level", "Warning"});
}

TEST_CASE("VmConfig -> Cloud Hypervisor API calls (golden)", "[drivers]") {
    VmConfig cfg = api_vm_config();
    check_golden("translate/cloud-hypervisor.json",
                 calls_to_json(cloud_hypervisor::translate(jailed_config(cfg))).dump(2) + "\n");
    CHECK(cloud_hypervisor::command("ch") == std::vector<std::string>{"ch", "--api-socket", "path=api.sock"});
}

TEST_CASE("Cloud Hypervisor shares the rootfs over virtio-fs where virtiofsd can serve it (golden)", "[drivers]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hybrid_vsock = true;
    host.share_fs = ShareFs::VirtioFs;
    VmConfig cfg = make_vm_config(small_spec(), host, state_sandbox_paths());
    REQUIRE(cfg.disks.empty());
    check_golden("translate/cloud-hypervisor-virtiofs.json",
                 calls_to_json(cloud_hypervisor::translate(jailed_config(cfg))).dump(2) + "\n");
    cloud_hypervisor::CloudHypervisor ch;
    auto caps = ch.capabilities();
    CHECK(caps.shares);
    CHECK(caps.virtio_fs);
    CHECK_FALSE(caps.nine_p);
    // No virtiofsd, or rootless: no share at all, so the rootfs goes on a disk.
    CHECK(share_support(caps, true, false).virtio_fs_usable());
    CHECK_FALSE(share_support(caps, false, false).virtio_fs_usable());
    CHECK_FALSE(share_support(caps, true, true).virtio_fs_usable());
    CHECK_FALSE(share_support(caps, false, false).any());
    auto none = host_share(share_support(caps, false, false), "cloud-hypervisor", "");
    CHECK(none.name == "disk");  // (not "9p": it has none)
    CHECK_THAT(none.why, Catch::StartsWith("disk:"));
    CHECK(host_share(share_support(caps, true, false), "cloud-hypervisor", "").name == "virtiofs");
    CHECK(host_share(share_support(caps, true, true), "cloud-hypervisor", "").name == "disk");
    // QEMU: virtio-fs, or 9p saying why; UML: hostfs.
    Capabilities q;
    q.shares = q.virtio_fs = true;
    CHECK(host_share(share_support(q, true, false), "qemu", "").name == "virtiofs");
    auto nine = host_share(share_support(q, true, true), "qemu", "");
    CHECK(nine.name == "9p");
    CHECK_THAT(nine.why, Catch::Contains("rootless"));
    CHECK(host_share(share_support(Capabilities{.shares = true}, false, false), "uml", "").name == "hostfs");
}

// A template-shaped VM's boot calls and its template calls, as one golden document.
static nlohmann::json template_golden(const std::vector<ApiCall>& boot, const ApiTemplateCalls& t) {
    return {{"boot", calls_to_json(boot)},       {"save", calls_to_json(t.save)}, {"restore", calls_to_json(t.restore)},
            {"shares", calls_to_json(t.shares)}, {"nics", calls_to_json(t.nics)}, {"disks", calls_to_json(t.disks)}};
}

TEST_CASE("Cloud Hypervisor templates: the VM without the container's share and NICs, then snapshot, restore, hot-add (golden)",
          "[drivers][templates]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hybrid_vsock = true;
    host.share_fs = ShareFs::VirtioFs;
    host.template_shape = true;
    NetInterface eth0;
    eth0.name = "eth0", eth0.mac = "02:42:ac:11:00:02", eth0.mtu = 1400;
    VmConfig cfg = make_vm_config(small_spec(), host, state_sandbox_paths(), {eth0}, {"tap1_husk"});
    REQUIRE(cfg.template_shape);
    VmConfig seen = jailed_config(cfg);
    auto t = cloud_hypervisor::template_calls(seen);
    nlohmann::json all = template_golden(cloud_hypervisor::translate(seen), t);
    check_golden("translate/cloud-hypervisor-template.json", all.dump(2) + "\n");
    // What makes the template holds nothing of this container's.
    auto create = all["boot"][0]["body"];
    CHECK_FALSE(create.contains("fs"));
    CHECK_FALSE(create.contains("net"));
    CHECK(create["memory"]["shared"] == true);  // vm.add-fs needs it
    CHECK(t.shares.size() == 1);
    CHECK(t.nics.size() == 1);
    cloud_hypervisor::CloudHypervisor ch;
    CHECK(ch.capabilities().templates);
    CHECK(ch.capabilities().template_nics >= 3);
    // Containers of one shape share a template whatever their own taps,
    // MACs and state directories; another memory size is another shape.
    std::string shape = ch.template_shape(cfg);
    CHECK_THAT(shape, Catch::StartsWith("cloud-hypervisor template 1\n"));
    CHECK_THAT(shape, Catch::Contains("husk.template=1"));
    NetInterface other = eth0;
    other.mac = "02:42:ac:11:00:09";
    SandboxPaths elsewhere = state_sandbox_paths();
    for (auto* p : {&elsewhere.shared, &elsewhere.agent_sock, &elsewhere.control_sock, &elsewhere.vsock_sock, &elsewhere.virtiofs_sock})
        *p = "/elsewhere/c2/" + sys::basename(*p);
    CHECK(ch.template_shape(make_vm_config(small_spec(), host, elsewhere, {other}, {"tap7_husk"})) == shape);
    auto big = small_spec();
    big.memory_limit = 1ll << 30;
    CHECK(ch.template_shape(make_vm_config(big, host, state_sandbox_paths(), {eth0}, {"tap1_husk"})) != shape);
    HostFacts cold = host;
    cold.template_shape = false;
    CHECK(ch.template_shape(make_vm_config(small_spec(), cold, state_sandbox_paths())).empty());
}

TEST_CASE("Firecracker templates: a placeholder disk and the template's MACs, then snapshot, load, the disk patched in (golden)",
          "[drivers][templates]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hybrid_vsock = true;
    host.share_disk = "/state/c1/share.img";
    host.template_shape = true;
    NetInterface eth0;
    eth0.name = "eth0", eth0.mac = "02:42:ac:11:00:02", eth0.mtu = 1400;
    VmConfig cfg = make_vm_config(small_spec(), host, state_sandbox_paths(), {eth0}, {"tap0_husk"});
    REQUIRE(cfg.template_shape);
    CHECK(cfg.boot.share == "disk");  // the agent loads virtio_blk
    VmConfig seen = jailed_config(cfg);
    auto t = firecracker::template_calls(seen);
    nlohmann::json all = template_golden(firecracker::translate(seen), t);
    check_golden("translate/firecracker-template.json", all.dump(2) + "\n");
    // What makes the template holds nothing of this container's: an empty
    // disk in place of its rootfs, the NIC with the template's MAC.
    std::string boot = all["boot"].dump();
    CHECK_THAT(boot, Catch::Contains(kJailPlaceholderDisk));
    CHECK_THAT(boot, !Catch::Contains("\"" + jail_disk_path(0) + "\""));
    CHECK_THAT(boot, Catch::Contains(templates::mac(0)));
    CHECK_THAT(boot, !Catch::Contains(eth0.mac));
    REQUIRE(t.disks.size() == 1);
    CHECK(t.disks[0].method == "PATCH");
    CHECK(t.disks[0].body["path_on_host"] == jail_disk_path(0));
    CHECK(t.shares.empty());
    CHECK(t.nics.empty());
    firecracker::FirecrackerHypervisor fc;
    auto caps = fc.capabilities();
    CHECK(caps.templates);
    CHECK(caps.template_holds_nics);
    CHECK(caps.template_disks);
    // One shape whatever the container's MACs and state directory.
    std::string shape = fc.template_shape(cfg);
    CHECK_THAT(shape, Catch::StartsWith("firecracker template 1\n"));
    NetInterface other = eth0;
    other.mac = "02:42:ac:11:00:09";
    SandboxPaths elsewhere = state_sandbox_paths();
    for (auto* p : {&elsewhere.shared, &elsewhere.agent_sock, &elsewhere.control_sock, &elsewhere.vsock_sock, &elsewhere.virtiofs_sock})
        *p = "/elsewhere/c2/" + sys::basename(*p);
    HostFacts host2 = host;
    host2.share_disk = "/elsewhere/c2/share.img";
    CHECK(fc.template_shape(make_vm_config(small_spec(), host2, elsewhere, {other}, {"tap0_husk"})) == shape);
    // Another NIC count is another shape (the template holds them).
    CHECK(fc.template_shape(make_vm_config(small_spec(), host, state_sandbox_paths())) != shape);
    HostFacts cold = host;
    cold.template_shape = false;
    VmConfig booted = make_vm_config(small_spec(), cold, state_sandbox_paths(), {eth0}, {"tap0_husk"});
    CHECK(fc.template_shape(booted).empty());
    // A VM booted on its own has its disk and MAC from the start.
    std::string plain = calls_to_json(firecracker::translate(jailed_config(booted))).dump();
    CHECK_THAT(plain, Catch::Contains(eth0.mac));
    CHECK_THAT(plain, !Catch::Contains(kJailPlaceholderDisk));
}

TEST_CASE("a snapshot directory packs into one template file and back, and a bad pack is refused", "[drivers][templates]") {
    struct Dir {
        std::string path = make_tmpdir("tpack");
        ~Dir() { (void)sys::remove_all(path); }
    } d;
    std::string src = d.path + "/src", dst = d.path + "/dst";
    REQUIRE(sys::mkdir_p(src, 0700));
    REQUIRE(sys::mkdir_p(dst, 0700));
    std::string big(3 << 20, '\0');
    for (size_t i = 0; i < big.size(); i += 4093) big[i] = char('a' + i % 26);
    REQUIRE(sys::write_file(src + "/memory-ranges", big, 0600));
    REQUIRE(sys::write_file(src + "/config.json", "{\"x\": 1}\n", 0600));
    REQUIRE(sys::write_file(src + "/empty", "", 0600));
    auto packed = sys::open(d.path + "/t.state", O_RDWR | O_CREAT | O_TRUNC, 0600);
    REQUIRE(packed);
    REQUIRE(pack_snapshot(src, packed->get()));
    REQUIRE(unpack_snapshot(packed->get(), dst));
    CHECK(sys::read_file(dst + "/memory-ranges").value_or("") == big);
    CHECK(sys::read_file(dst + "/config.json").value_or("") == "{\"x\": 1}\n");
    CHECK(sys::exists(dst + "/empty"));
    CHECK(sys::list_dir(dst).value_or(std::vector<std::string>{}).size() == 3);
    // Only plain files are packed.
    REQUIRE(sys::mkdir_p(src + "/sub", 0700));
    auto again = sys::open(d.path + "/u.state", O_RDWR | O_CREAT | O_TRUNC, 0600);
    REQUIRE(again);
    CHECK_FALSE(pack_snapshot(src, again->get()));
    // A stream that is not a pack, names a path, or promises more than it holds.
    for (std::string bad : {std::string("garbage\n"), std::string("husk snapshot 1\n3 ../x\nabcend\n"),
                            std::string("husk snapshot 1\n3 a/b\nabcend\n"), std::string("husk snapshot 1\n99 a\nabc"),
                            std::string("husk snapshot 1\nx a\n"), std::string("husk snapshot 1\n3 a\nabc"),
                            std::string("husk snapshot 1\n-1 a\n"), std::string("")}) {
        INFO(bad);
        std::string out = d.path + "/bad" + std::to_string(bad.size()) + std::to_string(bad[bad.size() > 17 ? 17 : 0]);
        REQUIRE(sys::mkdir_p(out, 0700));
        auto f = sys::open(d.path + "/bad.state", O_RDWR | O_CREAT | O_TRUNC, 0600);
        REQUIRE(f);
        REQUIRE(sys::write_all(f->get(), bad));
        CHECK_FALSE(unpack_snapshot(f->get(), out));
        CHECK_FALSE(sys::exists(d.path + "/x"));
    }
}

TEST_CASE("the drivers say why they cannot run here", "[drivers]") {
    ::setenv("HUSK_FIRECRACKER", "/nonexistent/firecracker", 1);
    CHECK(firecracker::FirecrackerHypervisor().unavailable().find("/nonexistent/firecracker not found") == 0);
    ::setenv("HUSK_FIRECRACKER", "/bin/true", 1);
    bool kvm = ::access("/dev/kvm", R_OK | W_OK) == 0;
    CHECK(firecracker::FirecrackerHypervisor().unavailable() == (kvm ? "" : "needs /dev/kvm, which this host does not have"));
    ::unsetenv("HUSK_FIRECRACKER");
    ::setenv("HUSK_CLOUD_HYPERVISOR", "/nonexistent/ch", 1);
    CHECK(cloud_hypervisor::CloudHypervisor().unavailable().find("/nonexistent/ch not found") == 0);
    ::unsetenv("HUSK_CLOUD_HYPERVISOR");
    auto caps = firecracker::FirecrackerHypervisor().capabilities();
    CHECK((caps.hybrid_vsock && !caps.shares && caps.pause && !caps.control_socket));
    CHECK_FALSE(caps.nic_fd);  // it opens taps by name: the shim makes them persistent
}

TEST_CASE("rootfs on a disk: the driver's need, or the annotation", "[drivers]") {
    CHECK(rootfs_on_disk(small_spec(), "qemu", true).value() == false);
    CHECK(rootfs_on_disk(small_spec(), "firecracker", false).value() == true);
    CHECK(rootfs_on_disk(small_spec(R"({"org.husk.rootfs": "disk"})"), "qemu", true).value() == true);
    CHECK(rootfs_on_disk(small_spec(R"({"org.husk.rootfs": "shared"})"), "qemu", true).value() == false);
    auto no = rootfs_on_disk(small_spec(R"({"org.husk.rootfs": "shared"})"), "firecracker", false);
    REQUIRE(!no);
    CHECK(no.error().message == "annotation org.husk.rootfs=shared: firecracker cannot share a directory with its guest "
                                "(its rootfs goes on a disk)");
    auto bad = rootfs_on_disk(small_spec(R"({"org.husk.rootfs": "nfs"})"), "qemu", true);
    REQUIRE(!bad);
    CHECK(bad.error().message == "annotation org.husk.rootfs: expected \"shared\" or \"disk\", got \"nfs\"");
}

TEST_CASE("HTTP responses: framing and hostile servers", "[drivers]") {
    CHECK(http::format_request("PUT", "/vm", "{}") ==
          "PUT /vm HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
          "Content-Length: 2\r\n\r\n{}");
    auto r = http::parse_response("HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n", false);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK((*r)->status == 204);
    std::string full = "HTTP/1.1 400 Bad Request\r\ncontent-length: 26\r\n\r\n{\"fault_message\":\"no kvm\"}xx";
    // Incomplete at every cut before the end of the body.
    for (size_t cut = 0; cut < full.size() - 2; ++cut) CHECK(!http::parse_response(full.substr(0, cut), false).has_value());
    r = http::parse_response(full, false);
    REQUIRE((r && *r));
    CHECK((*r)->status == 400);
    CHECK(api_error_message((*r)->body) == "no kvm");
    CHECK(api_error_message("Error from API\nbad\tconfig") == "Error from API bad config");
    // A body without a length ends with the connection.
    CHECK(!http::parse_response("HTTP/1.0 200 OK\r\n\r\nabc", false).has_value());
    CHECK((*http::parse_response("HTTP/1.0 200 OK\r\n\r\nabc", true))->body == "abc");
    for (const char* bad : {"HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n", "garbage\r\n\r\n",
                            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            "HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"}) {
        auto e = http::parse_response(bad, false);
        INFO(bad);
        REQUIRE(e.has_value());
        CHECK(!*e);
    }
    CHECK(!*http::parse_response(std::string(http::kMaxHeader + 1, 'a'), false));
    CHECK(!*http::parse_response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", true));
}

TEST_CASE("hybrid vsock: CONNECT, OK, and nothing more read", "[drivers]") {
    CHECK(parse_hybrid_vsock_reply("OK 1073741824"));
    for (const char* bad : {"OK", "OK ", "ok 5", "OK 5x", "ERROR connection refused", ""}) CHECK(!parse_hybrid_vsock_reply(bad));

    std::string dir = make_tmpdir(), sock = dir + "/vsock.sock";
    auto listener = sys::unix_listen(sock, 4);
    REQUIRE(listener);
    // The fake VMM answers each connection in turn: OK then the agent's
    // first bytes; a guest not listening yet (close); garbage; silence.
    // Catch2's assertions are not for other threads: the fake VMM only
    // records what it was sent, checked once it is joined.
    std::vector<std::string> sent;
    std::thread vmm([&] {
        const char* answers[] = {"OK 1073741824\nHELLO", nullptr, "NOPE\n", ""};
        for (const char* a : answers) {
            auto c = sys::accept(listener->get());
            if (!c) return sent.push_back("accept: " + c.error().message);
            char buf[64];
            ssize_t n = ::read(c->get(), buf, sizeof buf);
            sent.emplace_back(buf, size_t(std::max<ssize_t>(n, 0)));
            if (a && *a) (void)!::write(c->get(), a, strlen(a));
            if (a && !*a) ::usleep(300000);  // silence until the client gives up
        }
    });
    struct Joined {  // a failed REQUIRE below still ends the fake VMM
        std::thread& t;
        int listener;
        ~Joined() {
            if (!t.joinable()) return;
            ::shutdown(listener, SHUT_RDWR);  // wakes its accept()
            t.join();
        }
    } joined{vmm, listener->get()};
    auto ok = hybrid_vsock_connect(sock, 1024, 2000);
    REQUIRE(ok);
    char buf[16];
    ssize_t n = ::read(ok->get(), buf, sizeof buf);
    CHECK(std::string(buf, size_t(std::max<ssize_t>(n, 0))) == "HELLO");
    auto refused = hybrid_vsock_connect(sock, 1024, 2000);
    REQUIRE(!refused);
    CHECK(refused.error().code == ECONNREFUSED);
    auto garbage = hybrid_vsock_connect(sock, 1024, 2000);
    REQUIRE(!garbage);
    CHECK(garbage.error().code == EPROTO);
    auto silent = hybrid_vsock_connect(sock, 1024, 100);
    REQUIRE(!silent);
    CHECK(silent.error().code == ETIMEDOUT);
    vmm.join();  // its last answer, the silence, is over by itself
    CHECK(sent == std::vector<std::string>(4, "CONNECT 1024\n"));
    (void)sys::remove_all(dir);
}

TEST_CASE("hybrid vsock: a dial never blocks; its answer is taken as it comes", "[drivers]") {
    std::string dir = make_tmpdir(), sock = dir + "/vsock.sock";
    auto listener = sys::unix_listen(sock, 4);
    REQUIRE(listener);
    auto d = VsockDial::hybrid(sock, 1024);
    REQUIRE(d);
    auto c = sys::accept(listener->get());
    REQUIRE(c);
    char buf[64];
    ssize_t n = ::read(c->get(), buf, sizeof buf);
    CHECK(std::string(buf, size_t(std::max<ssize_t>(n, 0))) == "CONNECT 1024\n");
    auto r = d->step();  // nothing yet: no wait
    REQUIRE(r);
    CHECK(!*r);
    REQUIRE(::write(c->get(), "OK 10", 5) == 5);
    r = d->step();
    REQUIRE(r);
    CHECK(!*r);
    REQUIRE(::write(c->get(), "737\nHELLO", 9) == 9);
    r = d->step();
    REQUIRE(r);
    REQUIRE(*r);
    n = ::read((**r).get(), buf, sizeof buf);
    CHECK(std::string(buf, size_t(std::max<ssize_t>(n, 0))) == "HELLO");  // the agent's, untouched
    // A VMM whose guest does not listen closes: refused, to retry.
    auto d2 = VsockDial::hybrid(sock, 1024);
    REQUIRE(d2);
    {
        auto c2 = sys::accept(listener->get());
        REQUIRE(c2);
        n = ::read(c2->get(), buf, sizeof buf);  // the VMM reads the line, then closes
    }
    REQUIRE(sys::wait_fd(d2->fd(), POLLIN, 2000).value_or(false));
    auto refused = d2->step();
    REQUIRE(!refused);
    CHECK(refused.error().code == ECONNREFUSED);
    (void)sys::remove_all(dir);
}

// The kernel vsock dial is a non-blocking connect that the loop polls for
// POLLOUT. No vsock transport here (no /dev/vhost-vsock): its state
// machine runs on TCP, whose connect is as non-blocking.
static Result<VsockDial> tcp_dial(uint16_t port) {
    sys::Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return VsockDial::connecting(std::move(s), &a, sizeof a, "connect");
}

static Result<std::optional<sys::Fd>> dial_until_done(VsockDial& d) {
    for (int i = 0; i < 200; ++i) {
        auto r = d.step();
        if (!r || *r) return r;
        (void)sys::wait_fd(d.fd(), d.events(), 10);
    }
    return std::optional<sys::Fd>();
}

TEST_CASE("vsock: the kernel dial never blocks; it ends connected or refused", "[drivers]") {
    sys::Fd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
    uint16_t port = ntohs(a.sin_port);
    // Bound, not listening: refused, to retry (a guest not listening yet).
    auto refused = tcp_dial(port);
    REQUIRE(refused);
    CHECK(refused->events() == POLLOUT);
    auto r = dial_until_done(*refused);
    REQUIRE(!r);
    CHECK(r.error().code == ECONNREFUSED);
    // Listening: the dial ends with the channel, which is the connection.
    REQUIRE(::listen(l.get(), 4) == 0);
    auto ok = tcp_dial(port);
    REQUIRE(ok);
    r = dial_until_done(*ok);
    REQUIRE(r);
    REQUIRE(*r);
    auto peer = sys::accept(l.get());
    REQUIRE(peer);
    REQUIRE(::write((**r).get(), "HELLO", 5) == 5);
    char buf[8];
    CHECK(::read(peer->get(), buf, sizeof buf) == 5);
    // AF_VSOCK itself: on a host without a transport (this one) the dial
    // fails at once, and the shim tries again in 50 ms.
    if (!sys::exists("/dev/vhost-vsock")) {
        auto v = VsockDial::kernel(3, 1024);
        int code = 0;
        if (!v) code = v.error().code;
        else if (auto done = dial_until_done(*v); !done) code = done.error().code;
        CHECK((code == ENODEV || code == EAFNOSUPPORT || code == ECONNRESET));
    }
}

TEST_CASE("the share as an ext4 image holds a copy of the tree", "[drivers]") {
    std::string dir = make_tmpdir(), tree = dir + "/shared", img = dir + "/share.img";
    REQUIRE(sys::mkdir_p(tree + "/rootfs/etc", 0755));
    REQUIRE(sys::write_file(tree + "/rootfs/etc/hostname", "husk-disk\n"));
    REQUIRE(sys::write_file(tree + "/rootfs/big", std::string(300000, 'x')));
    REQUIRE(::symlink("etc/hostname", (tree + "/rootfs/link").c_str()) == 0);
    auto t = tree_size(tree);
    REQUIRE(t);
    CHECK(t->inodes == 6);  // shared, rootfs, etc, hostname, big, link
    CHECK(t->bytes == 4096 + 303104 + 4096);
    CHECK(share_image_bytes(*t, 0) == 1u << 20);
    CHECK(share_image_bytes(*t) == 257u << 20);
    REQUIRE(make_share_image(tree, img, 8));
    struct stat st;
    REQUIRE(::stat(img.c_str(), &st) == 0);
    CHECK(st.st_size == 9 << 20);
    CHECK(uint64_t(st.st_blocks) * 512 < uint64_t(st.st_size));  // sparse
    // Read it back with e2fsprogs' debugfs, as the guest's ext4 would.
    auto out = make_tmpdir();
    std::string cmd = "/sbin/debugfs -R 'cat /rootfs/etc/hostname' " + img + " > " + out + "/h 2>/dev/null; " +
                      "/sbin/debugfs -R 'stat /rootfs/link' " + img + " > " + out + "/l 2>/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    CHECK(sys::read_file(out + "/h").value_or("") == "husk-disk\n");
    CHECK(sys::read_file(out + "/l").value_or("").find("Fast link dest: \"etc/hostname\"") != std::string::npos);
    // A tree that is not there: a clear error and no image left behind.
    auto bad = make_share_image(dir + "/missing", dir + "/bad.img", 8);
    REQUIRE(!bad);
    CHECK(!sys::exists(dir + "/bad.img"));
    (void)sys::remove_all(dir);
    (void)sys::remove_all(out);
}

TEST_CASE("a REST-API VMM is configured with the paths of its jail", "[drivers]") {
    VmConfig cfg = api_vm_config();
    VmConfig in = jailed_config(cfg);
    CHECK(in.kernel == "/kernel");
    CHECK(in.initrd == "/initrd.img");
    REQUIRE(in.disks.size() == 1);
    CHECK(in.disks[0].path == "/disk0");
    CHECK_FALSE(in.disks[0].readonly);
    CHECK(in.channel.socket_path == "vsock.sock");  // in its working directory, the jail's /vmm
    CHECK(in.nics[0].tap == "tap1_husk");           // taps are named in its netns, not its filesystem
    CHECK(in.memory_mib == cfg.memory_mib);
    auto calls = calls_to_json(firecracker::translate(in)).dump();
    CHECK(calls.find("/state/") == std::string::npos);  // no host path reaches the VMM
    CHECK(calls.find("/img/") == std::string::npos);
}

TEST_CASE("REST-API drivers checkpoint: the snapshot calls for any VM, a shape without the command line", "[drivers][checkpoint]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.hybrid_vsock = true;
    host.share_disk = "/state/c1/share.img";
    VmConfig cfg = make_vm_config(small_spec(), host, state_sandbox_paths());
    firecracker::FirecrackerHypervisor fc;
    cloud_hypervisor::CloudHypervisor ch;
    CHECK(fc.capabilities().checkpoint);
    CHECK(ch.capabilities().checkpoint);
    for (const Hypervisor* hv : {static_cast<const Hypervisor*>(&fc), static_cast<const Hypervisor*>(&ch)}) {
        std::string shape = hv->vm_shape(cfg);
        REQUIRE(!shape.empty());
        HostFacts debug = host;
        debug.debug = true;
        CHECK(hv->vm_shape(make_vm_config(small_spec(), debug, state_sandbox_paths())) == shape);
        auto big = small_spec();
        big.memory_limit = 1ll << 30;
        CHECK(hv->vm_shape(make_vm_config(big, host, state_sandbox_paths())) != shape);
    }
    // A VM that is not a template's still gets the save and restore calls.
    auto t = firecracker::template_calls(jailed_config(cfg));
    REQUIRE(t.save.size() == 2);
    CHECK(t.save[1].path == "/snapshot/create");
    REQUIRE(t.restore.size() == 1);
    CHECK(t.restore[0].path == "/snapshot/load");
}
