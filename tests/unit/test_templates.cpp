// VM templates: the store (husk/vm_template.h), the shape QEMU boots a
// template in and restores it from, the attach message, and the shim
// session's way through a template's HELLO.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <thread>

#include <catch2/catch.hpp>

#include "golden.h"
#include "husk/config.h"
#include "husk/sandbox.h"
#include "husk/vm_template.h"
#include "hypervisors/jail.h"
#include "hypervisors/qemu/qemu.h"
#include "protocol/messages.h"
#include "shim/session.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;
using nlohmann::json;

namespace {

Spec spec_of(const std::string& text) {
    auto s = parse_spec(text);
    REQUIRE(s);
    return *s;
}

const char* kSpec = R"({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
  "process": {"args": ["true"], "cwd": "/"}, "linux": {"namespaces": [{"type": "mount"}]}})";

HostFacts template_host() {
    HostFacts h;
    h.host_cpus = 2, h.kernel = "/img/vmlinux", h.initrd = "/img/initramfs.img";
    h.hotplug_mib = 2048;
    h.cpu_hotplug = true;
    h.share_fs = ShareFs::VirtioFs;
    h.template_shape = true;
    return h;
}

// Saved bytes as a VMM would have written them.
Result<bool> save(const std::string& d, const std::string& shape, const std::string& bytes, uint64_t max = 1u << 30) {
    auto fd = TRY(templates::begin_save(d));
    TRY(sys::write_all(fd.get(), bytes));
    return templates::publish(d, shape, fd.get(), max);
}

}  // namespace

TEST_CASE("templates: a template's QEMU argv holds nothing of one container's, and the same for all (golden)", "[templates]") {
    qemu::Options opt;
    opt.machine = "q35";
    NetInterface eth0;
    eth0.name = "eth0", eth0.mac = "02:00:00:00:00:01", eth0.mtu = 1400;
    VmConfig a = make_vm_config(spec_of(kSpec), template_host(), state_sandbox_paths("/state/a"), {eth0}, {"tap0_husk"});
    a.console_fd = 7;
    a.nics[0].fd = 9;
    CHECK(a.template_shape);
    CHECK(a.cmdline == std::string(defaults::kKernelCmdline) + " quiet maxcpus=1 memhp_default_state=online_movable swiotlb=noforce");
    CHECK(a.boot == proto::BootParams{.template_boot = true, .mem = true});
    auto argv = qemu::translate(jailed_config(a), opt);
    check_golden("translate/qemu-q35-template.argv", lines(argv));
    // No virtio-fs device and no NIC (added after the boot or the restore):
    // ports to add them on, and a generation id.
    auto has = [&](const std::string& w) { return std::find(argv.begin(), argv.end(), w) != argv.end(); };
    CHECK(std::none_of(argv.begin(), argv.end(), [](const std::string& w) { return w.find("vhost-user-fs") != std::string::npos; }));
    CHECK(std::none_of(argv.begin(), argv.end(), [](const std::string& w) { return w.find("virtio-net") != std::string::npos; }));
    CHECK(has("pcie-root-port,id=husk.hp0,chassis=1"));
    CHECK(has("pcie-root-port,id=husk.hp3,chassis=4"));
    CHECK(has("vmgenid,guid=auto"));
    // For the virtio-fs device to come; allocated at once (a restore faulted every page in one at a time).
    CHECK(has("memory-backend-memfd,id=ram,size=192M,share=on,prealloc=on"));
    CHECK(has("pcie-root-port,id=husk.hp4,chassis=5"));  // husk-vsock's device, a clone's
    CHECK(!has("-incoming"));
    // Another container's VM, elsewhere, with no NIC and a debug log: the
    // same argv (its sockets by name, the share at /share0).
    HostFacts h = template_host();
    h.debug = true;
    VmConfig b = make_vm_config(spec_of(kSpec), h, state_sandbox_paths("/elsewhere/b"));
    b.console_fd = 7;
    CHECK(qemu::translate(jailed_config(b), opt) == argv);
    // A restore of it: the same, and where the saved state comes from.
    b.incoming_fd = 42;
    auto restored = qemu::translate(jailed_config(b), opt);
    auto at = std::find(restored.begin(), restored.end(), "-incoming");
    REQUIRE(at + 1 < restored.end());
    CHECK(at[1] == "fd:" + std::to_string(qemu::kIncomingFd));
    restored.erase(at, at + 2);
    CHECK(restored == argv);
    // A VM booted on its own keeps what it had: the container's NICs, its
    // virtio-fs device, its command line.
    HostFacts cold = template_host();
    cold.template_shape = false;
    VmConfig c = make_vm_config(spec_of(kSpec), cold, state_sandbox_paths("/state/a"), {eth0}, {"tap0_husk"});
    CHECK(!c.template_shape);
    CHECK(c.boot == proto::BootParams{.share = "virtiofs", .net = true, .mem = true});
    auto cargv = qemu::translate(jailed_config(c), opt);
    CHECK(std::any_of(cargv.begin(), cargv.end(), [](const std::string& w) { return w.rfind("vhost-user-fs-pci", 0) == 0; }));
    CHECK(std::none_of(cargv.begin(), cargv.end(), [](const std::string& w) { return w.find("pcie-root-port") != std::string::npos; }));
}

TEST_CASE("templates: the shape names the files the guest comes from, and a microvm has none", "[templates]") {
    std::string d = make_tmpdir("tshape");
    for (const char* f : {"/vmlinux", "/initramfs.img"}) REQUIRE(sys::write_file(d + f, "x"));
    HostFacts h = template_host();
    h.kernel = d + "/vmlinux", h.initrd = d + "/initramfs.img";
    VmConfig cfg = make_vm_config(spec_of(kSpec), h, state_sandbox_paths());
    qemu::Options opt;
    opt.machine = "q35";
    qemu::QemuHypervisor q35(opt);
    std::string shape = q35.template_shape(cfg);
    CHECK_THAT(shape, Catch::StartsWith("qemu template 1\n") && Catch::Contains(d + "/vmlinux ") && Catch::Contains("husk.template=1"));
    // A rebuilt guest image is another shape.
    REQUIRE(sys::write_file(d + "/initramfs.img", "xy"));
    CHECK(q35.template_shape(cfg) != shape);
    // Not a template's config, or a machine with no PCIe port to add the share on.
    VmConfig plain = cfg;
    plain.template_shape = false;
    CHECK(q35.template_shape(plain).empty());
    qemu::QemuHypervisor microvm(qemu::Options{});
    CHECK(!microvm.capabilities().templates);
    CHECK(microvm.template_shape(cfg).empty());
    CHECK(q35.capabilities().templates);
    CHECK(q35.capabilities().template_nics == qemu::kHotplugPorts - 2);  // (the share's port and husk-vsock's)
    std::filesystem::remove_all(d);
}

TEST_CASE("templates: the store makes, finds, refuses a different shape, and drops", "[templates]") {
    std::string d = make_tmpdir("tstore") + "/templates";
    CHECK(templates::key_of("a") == templates::key_of("a"));
    CHECK(templates::key_of("a") != templates::key_of("b"));
    CHECK(templates::key_of("a").size() == 32);
    auto none = templates::open_saved(d, "shape A");
    REQUIRE(none);
    CHECK(!*none);
    auto made = save(d, "shape A", "saved VM A");
    REQUIRE(made);
    CHECK(*made);
    struct stat st;
    REQUIRE(::stat(d.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    auto found = templates::open_saved(d, "shape A");
    REQUIRE(found);
    REQUIRE(*found);
    REQUIRE(::fstat((*found)->get(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(sys::read_to_eof((*found)->get()).value_or("") == "saved VM A");
    // The same key with another shape's text (a collision) is a miss.
    std::string key = templates::key_of("shape A");
    REQUIRE(sys::write_file(d + "/" + key + ".shape.new", "shape B"));
    REQUIRE(::rename((d + "/" + key + ".shape.new").c_str(), (d + "/" + key + ".shape").c_str()) == 0);
    auto miss = templates::open_saved(d, "shape A");
    REQUIRE(miss);
    CHECK(!*miss);
    auto all = templates::list(d);
    REQUIRE(all.size() == 1);
    CHECK(all[0].key == key);
    CHECK(all[0].bytes == 10);
    templates::remove(d, key);
    CHECK(templates::list(d).empty());
    CHECK(sys::list_dir(d).value_or(std::vector<std::string>{"x"}).empty());
    std::filesystem::remove_all(sys::dirname(d));
}

TEST_CASE("templates: two makers of one shape: one is published, nothing else is left", "[templates]") {
    std::string d = make_tmpdir("trace");
    auto a = templates::begin_save(d), b = templates::begin_save(d);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(sys::list_dir(d).value_or(std::vector<std::string>{"x"}).empty());  // unnamed while they are written
    REQUIRE(sys::write_all(a->get(), std::string("first")));
    REQUIRE(sys::write_all(b->get(), std::string("second")));
    std::vector<Result<bool>> got(2);
    std::thread t1([&] { got[0] = templates::publish(d, "S", a->get(), 1u << 30); });
    std::thread t2([&] { got[1] = templates::publish(d, "S", b->get(), 1u << 30); });
    t1.join();
    t2.join();
    REQUIRE(got[0]);
    REQUIRE(got[1]);
    CHECK(int(*got[0]) + int(*got[1]) == 1);
    auto saved = templates::open_saved(d, "S");
    REQUIRE(saved);
    REQUIRE(*saved);
    std::string bytes = sys::read_to_eof((*saved)->get()).value_or("");
    CHECK(bytes == (*got[0] ? "first" : "second"));
    CHECK(sys::list_dir(d).value_or(std::vector<std::string>{}).size() == 3);  // <key>.state, .shape, .seal
    // A maker that dies before publishing leaves nothing at all.
    { auto c = templates::begin_save(d); REQUIRE(c); REQUIRE(sys::write_all(c->get(), std::string("lost"))); }
    CHECK(sys::list_dir(d).value_or(std::vector<std::string>{}).size() == 3);
    std::filesystem::remove_all(d);
}

TEST_CASE("templates: the store keeps within its bound, the least recently used going first", "[templates]") {
    std::string d = make_tmpdir("tprune");
    REQUIRE(save(d, "old", std::string(400, 'o')));
    REQUIRE(save(d, "mid", std::string(400, 'm')));
    // Ages as the seals' mtimes: "old" last used long ago, "mid" a while ago.
    for (auto [shape, age] : {std::pair<const char*, int>{"old", 3000}, {"mid", 2000}}) {
        timespec t[2] = {{::time(nullptr) - age, 0}, {::time(nullptr) - age, 0}};
        REQUIRE(::utimensat(AT_FDCWD, (d + "/" + templates::key_of(shape) + ".seal").c_str(), t, 0) == 0);
    }
    REQUIRE(templates::open_saved(d, "mid"));  // a restore is a use: "mid" is now the newest
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // past the filesystem's clock tick
    REQUIRE(save(d, "new", std::string(400, 'n'), 1000));  // over the bound: "old" goes
    std::vector<std::string> keys;
    for (const auto& e : templates::list(d)) keys.push_back(e.key);
    CHECK(keys == std::vector<std::string>{templates::key_of("new"), templates::key_of("mid")});
    CHECK(templates::prune(d, 0, templates::key_of("new")) == 1);  // never the one being kept
    CHECK(templates::list(d).size() == 1);
    std::filesystem::remove_all(d);
}

TEST_CASE("templates: a template is restored only as it was sealed; anything else is dropped", "[templates]") {
    std::string d = make_tmpdir("tseal");
    std::string key = templates::key_of("S"), state = d + "/" + key + ".state", seal = d + "/" + key + ".seal";
    std::string bytes(3 << 20, 'v');
    REQUIRE(save(d, "S", bytes));
    auto sealed = templates::seal_from_json(sys::read_file(seal).value_or(""));
    REQUIRE(sealed);
    struct stat st;
    REQUIRE(::stat(state.c_str(), &st) == 0);
    CHECK(sealed->bytes == bytes.size());
    CHECK(sealed->ino == st.st_ino);  // recorded once named: the first restore need not hash
    auto fd = sys::open(state, O_RDONLY);
    REQUIRE(fd);
    CHECK(templates::sha256_of(fd->get()).value_or("") == sealed->sha256);
    long hashed = 0;
    auto r = templates::open_saved(d, "S", &hashed);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK(hashed == -1);
    // Touched without a change (its ctime moves): hashed again, the same,
    // restored, and recorded so the next restore need not hash.
    REQUIRE(::chmod(state.c_str(), 0600) == 0);
    r = templates::open_saved(d, "S", &hashed);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK(hashed >= 0);
    r = templates::open_saved(d, "S", &hashed);
    REQUIRE(r);
    CHECK(hashed == -1);
    // One byte changed in the middle: refused with why, and dropped whole.
    {
        auto w = sys::open(state, O_WRONLY);
        REQUIRE(w);
        REQUIRE(::pwrite(w->get(), "X", 1, off_t(bytes.size() / 2)) == 1);
    }
    r = templates::open_saved(d, "S", &hashed);
    REQUIRE(!r);
    CHECK(r.error().code == EBADMSG);
    CHECK(r.error().message.find("not the ones saved") != std::string::npos);
    CHECK(sys::list_dir(d).value_or(std::vector<std::string>{"x"}).empty());
    r = templates::open_saved(d, "S");
    REQUIRE(r);
    CHECK(!*r);  // a miss: the next container makes it again
    // Cut short, a missing seal, a seal that is not one: the same.
    auto dropped = [&](const std::function<void()>& tamper, const std::string& why) {
        REQUIRE(save(d, "S", bytes));
        tamper();
        auto t = templates::open_saved(d, "S");
        REQUIRE(!t);
        CHECK(t.error().code == EBADMSG);
        CHECK(t.error().message.find(why) != std::string::npos);
        CHECK(sys::list_dir(d).value_or(std::vector<std::string>{"x"}).empty());
    };
    dropped([&] { REQUIRE(::truncate(state.c_str(), off_t(bytes.size() - 4096)) == 0); }, "bytes where");
    dropped([&] { REQUIRE(::unlink(seal.c_str()) == 0); }, "no seal");
    dropped([&] { REQUIRE(sys::write_file(seal, R"({"sha256":"00","bytes":1,"ino":1,"ctime_ns":1})")); }, "64 hex");
    dropped([&] { REQUIRE(sys::write_file(seal, R"({"sha256":"0","bytes":1,"ino":1,"ctime_ns":1,"more":1})")); }, "unknown key");
    // A file swapped in whole (another inode, the same size): hashed, refused.
    dropped(
        [&] {
            REQUIRE(sys::write_file(state + ".new", std::string(bytes.size(), 'w'), 0600));
            REQUIRE(::rename((state + ".new").c_str(), state.c_str()) == 0);
        },
        "not the ones saved");
    std::filesystem::remove_all(d);
}

TEST_CASE("templates: two makers: one seal, its state; a seal a dead maker left goes after a minute", "[templates]") {
    std::string d = make_tmpdir("tseal2");
    std::string key = templates::key_of("S");
    // A seal whose state never came (its maker died between the two).
    REQUIRE(sys::write_file(d + "/" + key + ".seal", "{}", 0600));
    REQUIRE(sys::write_file(d + "/" + key + ".seal.123.123", "{", 0600));  // half replaced
    auto lost = save(d, "S", "mine");
    REQUIRE(lost);
    CHECK(!*lost);  // not published while that seal may be a maker's
    // A minute later it is a dead maker's: the next maker clears it and publishes.
    timespec old[2] = {{::time(nullptr) - 120, 0}, {::time(nullptr) - 120, 0}};
    for (const char* n : {".seal", ".seal.123.123"}) REQUIRE(::utimensat(AT_FDCWD, (d + "/" + key + n).c_str(), old, 0) == 0);
    auto won = save(d, "S", "mine");
    CHECK(!sys::exists(d + "/" + key + ".seal.123.123"));
    REQUIRE(won);
    CHECK(*won);
    auto r = templates::open_saved(d, "S");
    REQUIRE(r);
    REQUIRE(*r);
    CHECK(sys::read_to_eof((*r)->get()).value_or("") == "mine");
    std::filesystem::remove_all(d);
}

TEST_CASE("templates: on unless the annotation, HUSK_TEMPLATES or the config file say off; a bad value is an error", "[templates]") {
    ::unsetenv("HUSK_TEMPLATES");
    CHECK(templates::choose({}, std::nullopt)->on);
    CHECK(!templates::choose({}, false)->on);
    CHECK(templates::choose({}, false)->why == "the config file's templates = false");
    auto off = templates::choose({{"org.husk.template", "off"}}, true);
    CHECK(!off->on);
    CHECK(off->why == "annotation org.husk.template=off");
    CHECK(templates::choose({{"org.husk.template", "on"}}, false)->on);  // the container's word first
    auto bad = templates::choose({{"org.husk.template", "maybe"}}, std::nullopt);
    REQUIRE(!bad);
    CHECK(bad.error().message == "annotation org.husk.template: expected \"on\" or \"off\", got \"maybe\"");
    ::setenv("HUSK_TEMPLATES", "0", 1);
    CHECK(templates::choose({}, true)->why == "HUSK_TEMPLATES=0");
    ::setenv("HUSK_TEMPLATES", "nope", 1);
    CHECK(!templates::choose({}, true));
    ::unsetenv("HUSK_TEMPLATES");
    auto c = parse_config("templates = false\n", "c.toml");
    REQUIRE(c);
    CHECK(c->templates == std::optional<bool>(false));
    CHECK(!parse_config("templates = \"no\"\n", "c.toml"));
    CHECK(!parse_config("", "c.toml")->templates);
}

TEST_CASE("attach: one encoder, a strict decoder", "[templates][protocol]") {
    proto::Attach a;
    a.share = "virtiofs", a.debug = true, a.entropy = std::string(64, '\xa5'), a.realtime_ns = 1234567890123ull, a.vcpus = 2;
    a.macs = {{"02:68:75:73:6b:00", "0a:58:0a:58:00:05"}};
    json j = proto::to_json(a);
    CHECK(j["entropy"].get<std::string>().size() == 128);
    CHECK(j["entropy"].get<std::string>().substr(0, 4) == "a5a5");
    auto back = proto::attach_from_json(j);
    REQUIRE(back);
    CHECK(back->share == a.share);
    CHECK(back->debug);
    CHECK(back->entropy == a.entropy);
    CHECK(back->realtime_ns == a.realtime_ns);
    CHECK(back->vcpus == 2);
    CHECK(back->macs == a.macs);
    auto refused = [&](json bad, const std::string& why) {
        auto r = proto::attach_from_json(bad);
        REQUIRE(!r);
        CHECK_THAT(r.error().message, Catch::Contains(why));
    };
    json x = j;
    x["extra"] = 1;
    refused(x, "unknown key extra");
    x = j;
    x.erase("vcpus");
    refused(x, "missing vcpus");
    x = j;
    x["debug"] = "yes";
    refused(x, "wrong type");
    x = j;
    x["share"] = "nfs";
    refused(x, "unknown share");
    x = j;
    x["share"] = "disk";
    CHECK(proto::attach_from_json(x));
    x = j;
    x.erase("macs");
    refused(x, "missing macs");
    for (json m : {json::array({"02:68:75:73:6b:00"}), json::array({"02:68:75:73:6b:00", "0A:58:0A:58:00:05"}),
                   json::array({"02:68:75:73:6b:0", "0a:58:0a:58:00:05"}), json::array({1, 2})}) {
        x = j;
        x["macs"] = json::array({m});
        refused(x, "macs: expected");
    }
    x = j;
    x["entropy"] = "abc";
    refused(x, "odd number");
    x = j;
    x["entropy"] = "zz" + j["entropy"].get<std::string>().substr(2);
    refused(x, "not a hex digit");
    x = j;
    x["entropy"] = "00";
    refused(x, "32-512 bytes");
    x = j;
    x["vcpus"] = 0;
    refused(x, "vcpus out of range");
    refused(json::array(), "expected an object");
}

namespace {

struct TemplateHost : shim::SessionHost {
    int booted_calls = 0, hellos = 0;
    bool ours = true;
    proto::Create create_params() override { return {}; }
    void created(bool, const std::string&) override {}
    void running() override {}
    void busy(uint64_t) override {}
    void reply(uint64_t, const proto::ControlReply&) override {}
    void booted() override { ++booted_calls; }
    Result<proto::Attach> template_hello() override {
        ++hellos;
        if (!ours) return fail("the agent booted as a template unasked", EPROTO);
        proto::Attach a;
        a.share = "9p", a.entropy = std::string(32, 'e'), a.realtime_ns = 5;
        return a;
    }
};

Result<void> feed(shim::Session& s, const std::string& b) { return s.feed(b.data(), b.size()); }
std::string hello(bool tmpl) {
    json h = {{"version", proto::kVersion}};
    if (tmpl) h["template"] = true;
    return proto::encode(proto::Type::Hello, 0, h.dump());
}

}  // namespace

TEST_CASE("session: a template's HELLO is answered with attach, and create comes after it", "[templates][session]") {
    TemplateHost h;
    shim::Session s(h);
    REQUIRE(feed(s, hello(true)));
    CHECK(h.hellos == 1);
    CHECK(s.phase == shim::Phase::Attaching);
    CHECK(h.booted_calls == 0);
    CHECK(s.out.find(R"("method":"attach")") != std::string::npos);
    CHECK(s.out.find(R"("method":"create")") == std::string::npos);
    s.out.clear();
    REQUIRE(feed(s, proto::encode(proto::Type::Response, 0, json{{"id", 1}, {"ok", true}}.dump())));
    CHECK(s.phase == shim::Phase::Creating);
    CHECK(h.booted_calls == 1);
    CHECK(s.out.find(R"("method":"create","params":{)") != std::string::npos);
}

TEST_CASE("session: a restored template is greeted and attached without a HELLO of its own", "[templates][session]") {
    TemplateHost h;
    shim::Session s(h);
    proto::Attach a;
    a.share = "virtiofs", a.entropy = std::string(32, 'e');
    s.attach_restored(a);
    CHECK(s.phase == shim::Phase::Attaching);
    CHECK(s.out.find(R"("version":)") != std::string::npos);
    CHECK(s.out.find(R"("method":"attach")") != std::string::npos);
    // An agent that failed its attach (no share came): the session ends.
    auto r = feed(s, proto::encode(proto::Type::Response, 0, json{{"id", 1}, {"ok", false}, {"error", "no tag"}}.dump()));
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("attach the template's guest: no tag"));
    CHECK(h.booted_calls == 0);
    // Its VM is replaced by one that boots: the session starts over.
    s.restart_boot();
    CHECK(s.phase == shim::Phase::Booting);
    CHECK(s.out.empty());
    REQUIRE(feed(s, hello(false)));
    CHECK(s.phase == shim::Phase::Creating);
    CHECK(h.booted_calls == 1);
}

TEST_CASE("session: a template's HELLO we did not ask for, or a second HELLO, ends the session", "[templates][session]") {
    TemplateHost h;
    h.ours = false;
    shim::Session s(h);
    auto r = feed(s, hello(true));
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("unasked"));
    TemplateHost h2;
    shim::Session s2(h2);
    REQUIRE(feed(s2, hello(true)));
    CHECK(!feed(s2, hello(true)));  // not Booting any more
    TemplateHost h3;
    shim::Session s3(h3);
    CHECK(!feed(s3, proto::encode(proto::Type::Hello, 0, json{{"version", proto::kVersion}, {"template", "yes"}}.dump())));
}
