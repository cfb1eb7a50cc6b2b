// Checkpoints: the image's description (husk/checkpoint.h), the agent's
// "resume" answer (proto::Resumed), the shim session's way through a
// restored VM's resume, the sparse copy of its disk, and the shape QEMU
// loads a checkpoint into.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "husk/checkpoint.h"
#include "husk/sandbox.h"
#include "hypervisors/qemu/qemu.h"
#include "protocol/messages.h"
#include "shim/session.h"
#include "sys/sys.h"
#include "tmpdir.h"

using namespace husk;
using nlohmann::json;

TEST_CASE("checkpoint: the image's description, strictly", "[checkpoint]") {
    checkpoint::Info i;
    i.hypervisor = "qemu", i.protocol = 4, i.vm_shape = "qemu vm 1\n-m\n192M\n", i.id = "c1", i.terminal = true, i.saved = 1700000000;
    std::string text = checkpoint::info_to_json(i);
    auto back = checkpoint::info_from_json(text);
    REQUIRE(back);
    CHECK(back->hypervisor == "qemu");
    CHECK(back->protocol == 4);
    CHECK(back->vm_shape == i.vm_shape);
    CHECK(back->id == "c1");
    CHECK(back->terminal);
    CHECK(back->saved == 1700000000);
    auto refused = [](json j, const std::string& why) {
        auto r = checkpoint::info_from_json(j.dump());
        REQUIRE(!r);
        CHECK_THAT(r.error().message, Catch::Contains(why));
    };
    json j = json::parse(text);
    json x = j;
    x["extra"] = 1;
    refused(x, "unknown key extra");
    x = j;
    x.erase("vm_shape");
    refused(x, "vm_shape");
    x = j;
    x["husk_checkpoint"] = 2;
    refused(x, "version 2");
    x = j;
    x["terminal"] = "yes";
    refused(x, "terminal");
    x = j;
    x["protocol"] = -1;
    refused(x, "protocol");
    refused(json::array(), "not a JSON object");
    CHECK(!checkpoint::info_from_json("not json"));
}

TEST_CASE("checkpoint: an image directory must hold all three files", "[checkpoint]") {
    std::string d = make_tmpdir("ckpt");
    auto r = checkpoint::read_image(d + "/none");
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("does not exist"));
    checkpoint::Info i;
    i.hypervisor = "qemu", i.vm_shape = "s";
    REQUIRE(sys::write_file(d + "/" + checkpoint::kInfoFile, checkpoint::info_to_json(i)));
    r = checkpoint::read_image(d);
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("no vm.state"));
    REQUIRE(sys::write_file(d + "/" + checkpoint::kStateFile, "x"));
    REQUIRE(sys::write_file(d + "/" + checkpoint::kDiskFile, "x"));
    REQUIRE(checkpoint::read_image(d));
    REQUIRE(::unlink((d + "/" + checkpoint::kDiskFile).c_str()) == 0);
    REQUIRE(::symlink("/etc/shadow", (d + "/" + checkpoint::kDiskFile).c_str()) == 0);
    r = checkpoint::read_image(d);
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("rootfs.img is not a regular file"));
    REQUIRE(::unlink((d + "/" + checkpoint::kDiskFile).c_str()) == 0);
    REQUIRE(sys::write_file(d + "/" + checkpoint::kDiskFile, "x"));
    REQUIRE(sys::write_file(d + "/" + checkpoint::kInfoFile, "{}"));
    CHECK(!checkpoint::read_image(d));
    REQUIRE(sys::remove_all(d));
}

TEST_CASE("checkpoint: the first line two shapes differ at", "[checkpoint]") {
    CHECK(checkpoint::first_difference("a\n-m\n192M\nb", "a\n-m\n512M\nb") == "it was saved with \"192M\" where this one has \"512M\"");
    CHECK(checkpoint::first_difference("a\nb", "a\nb\nc") == "it was saved with (nothing) where this one has \"c\"");
}

TEST_CASE("copy_file_sparse keeps holes and data", "[checkpoint][sys]") {
    std::string d = make_tmpdir("sparse");
    std::string a = d + "/a", b = d + "/b";
    {
        auto fd = sys::open(a, O_WRONLY | O_CREAT, 0600);
        REQUIRE(fd);
        REQUIRE(::ftruncate(fd->get(), 64 << 20) == 0);
        REQUIRE(::pwrite(fd->get(), "head", 4, 0) == 4);
        REQUIRE(::pwrite(fd->get(), "middle", 6, 32 << 20) == 6);
    }
    REQUIRE(sys::copy_file_sparse(a, b));
    struct stat sa{}, sb{};
    REQUIRE(::stat(a.c_str(), &sa) == 0);
    REQUIRE(::stat(b.c_str(), &sb) == 0);
    CHECK(sb.st_size == sa.st_size);
    CHECK(sb.st_blocks * 512 < (1 << 20));  // not 64 MiB of zeros
    CHECK((sb.st_mode & 0777) == 0600);
    auto content = sys::read_file(b, 128 << 20);
    REQUIRE(content);
    CHECK(content->substr(0, 4) == "head");
    CHECK(content->substr(32 << 20, 6) == "middle");
    CHECK(!sys::copy_file_sparse(d + "/missing", d + "/c"));
    CHECK(!sys::exists(d + "/c"));
    REQUIRE(sys::remove_all(d));
}

TEST_CASE("resume: one encoder, a strict decoder", "[checkpoint][protocol]") {
    proto::Resumed r;
    r.procs.push_back({0, {1, 2}, {{0, 17}}, false});
    json j = proto::to_json(r);
    auto back = proto::resumed_from_json(j);
    REQUIRE(back);
    REQUIRE(back->procs.size() == 1);
    CHECK(back->procs[0].out == std::vector<uint32_t>{1, 2});
    CHECK(back->procs[0].in[0].buffered == 17);
    for (json bad : {json::object(), json{{"procs", 1}}, json{{"procs", {{{"process", 0}}}}},
                     json{{"procs", {{{"process", -1}, {"out", json::array()}, {"in", json::array()}, {"exited", false}}}}},
                     json{{"procs", {{{"process", 0}, {"out", {"x"}}, {"in", json::array()}, {"exited", false}}}}},
                     json{{"procs", {{{"process", 0}, {"out", json::array()}, {"in", {{{"fd", 0}}}}, {"exited", false}}}}},
                     json{{"procs", json::array()}, {"more", 1}}})
        CHECK(!proto::resumed_from_json(bad));
}

namespace {

struct ResumeHost : shim::SessionHost {
    bool resumed_called = false, running_called = false, refuse = false;
    proto::Resumed got;
    proto::Create create_params() override { return {}; }
    void created(bool, const std::string&) override {}
    void running() override { running_called = true; }
    void busy(uint64_t) override {}
    void reply(uint64_t, const proto::ControlReply&) override {}
    Result<void> resumed(const proto::Resumed& r) override {
        resumed_called = true;
        got = r;
        if (refuse) return fail("unknown stream", EPROTO);
        return {};
    }
};

Result<void> feed_guest(shim::Session& s, const std::string& b) { return s.feed(b.data(), b.size()); }

}  // namespace

TEST_CASE("session: a restored checkpoint's agent is resumed, and runs", "[checkpoint][session]") {
    ResumeHost h;
    shim::Session s(h);
    s.resume_restored();
    CHECK(s.phase == shim::Phase::Resuming);
    CHECK(s.out.find(R"("method":"resume","params":{"restored":true})") != std::string::npos);
    proto::Resumed r;
    r.procs.push_back({0, {1}, {}, false});
    REQUIRE(feed_guest(s, proto::encode(proto::Type::Response, 0, json{{"id", 1}, {"ok", true}, {"result", proto::to_json(r)}}.dump())));
    CHECK(h.resumed_called);
    CHECK(h.running_called);
    CHECK(s.phase == shim::Phase::Running);
    CHECK(s.procs[0].started);
    // Then its output is the init's, as for any running container.
    s.procs[0].out[1].stream = proto::stream_id(0, 1);
    REQUIRE(feed_guest(s, proto::encode(proto::Type::Data, proto::stream_id(0, 1), "more")));
    CHECK(s.procs[0].out[1].data == "more");
}

TEST_CASE("session: a resume the agent refuses, or answers wrongly, ends the session", "[checkpoint][session]") {
    {
        ResumeHost h;
        shim::Session s(h);
        s.resume_restored();
        auto r = feed_guest(s, proto::encode(proto::Type::Response, 0, json{{"id", 1}, {"ok", false}, {"error", "not quiesced"}}.dump()));
        REQUIRE(!r);
        CHECK_THAT(r.error().message, Catch::Contains("resume the checkpoint's guest: not quiesced"));
    }
    {
        ResumeHost h;
        shim::Session s(h);
        s.resume_restored();
        auto r = feed_guest(s, proto::encode(proto::Type::Response, 0, json{{"id", 1}, {"ok", true}, {"result", {{"procs", 3}}}}.dump()));
        REQUIRE(!r);
        CHECK(!h.resumed_called);
    }
    {
        ResumeHost h;
        h.refuse = true;
        shim::Session s(h);
        s.resume_restored();
        auto r = feed_guest(s, proto::encode(proto::Type::Response, 0,
                                       json{{"id", 1}, {"ok", true}, {"result", proto::to_json(proto::Resumed{})}}.dump()));
        REQUIRE(!r);
        CHECK(!h.running_called);
        CHECK(s.phase == shim::Phase::Resuming);
    }
}

TEST_CASE("qemu: a checkpoint loads into a VM of the same devices, whatever its command line", "[checkpoint][drivers]") {
    HostFacts host;
    host.host_cpus = 2, host.kernel = "/img/vmlinux", host.initrd = "/img/initramfs.img";
    host.share_disk = "/state/c1/share.img";
    auto parsed = parse_spec(R"({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"}})");
    REQUIRE(parsed);
    Spec spec = *parsed;
    qemu::QemuHypervisor hv(qemu::Options{});
    VmConfig cfg = make_vm_config(spec, host, SandboxPaths{"/state/c1/shared", "/state/c1/agent.sock", "/state/c1/qmp.sock", "", "", ""});
    std::string shape = hv.vm_shape(cfg);
    REQUIRE(!shape.empty());
    CHECK_THAT(shape, Catch::StartsWith("qemu vm 1\n"));
    HostFacts debug = host;
    debug.debug = true;  // another kernel command line: the same VM to load into
    CHECK(hv.vm_shape(make_vm_config(spec, debug, SandboxPaths{"/state/c1/shared", "/state/c1/agent.sock", "/state/c1/qmp.sock", "", "", ""})) == shape);
    Spec big = spec;
    big.memory_limit = 1ll << 30;  // more memory: another VM
    CHECK(hv.vm_shape(make_vm_config(big, host, SandboxPaths{"/state/c1/shared", "/state/c1/agent.sock", "/state/c1/qmp.sock", "", "", ""})) != shape);
    HostFacts tmpl = host;
    tmpl.template_shape = true;
    CHECK(hv.vm_shape(make_vm_config(spec, tmpl, SandboxPaths{"/state/c1/shared", "/state/c1/agent.sock", "/state/c1/qmp.sock", "", "", ""})).empty());
}

TEST_CASE("checkpoint: CRIU's inventory and stats images, byte for byte", "[checkpoint]") {
    CHECK(checkpoint::criu_inventory() == std::string("\x16\x31\x31\x58\x02\x00\x00\x00\x08\x02", 10));
    checkpoint::DumpStats d;
    d.freezing_us = 1, d.frozen_us = 300, d.memdump_us = 200, d.memwrite_us = 4, d.pages_written = 19662;
    std::string s = checkpoint::criu_dump_stats(d);
    REQUIRE(s.size() > 12);
    CHECK(s.substr(0, 8) == std::string("\x40\x59\x10\x55\x06\x33\x09\x57", 8));  // IMG_SERVICE_MAGIC, STATS_MAGIC
    uint32_t n = uint8_t(s[8]) | uint8_t(s[9]) << 8 | uint8_t(s[10]) << 16 | uint32_t(uint8_t(s[11])) << 24;
    CHECK(n == s.size() - 12);
    // StatsEntry.dump (field 1, length-delimited), then DumpStatsEntry's fields in order.
    CHECK(uint8_t(s[12]) == 0x0a);
    CHECK(s.substr(14, 6) == std::string("\x08\x01\x10\xac\x02\x18", 6));  // freezing 1, frozen 300, memdump...
    auto back = checkpoint::stats_from_json(checkpoint::stats_to_json(d));  // the shim's reply, read by husk
    CHECK(back.frozen_us == 300);
    CHECK(back.pages_written == 19662);
    CHECK(checkpoint::stats_from_json(json{{"frozen_us", "x"}}).frozen_us == 0);
    std::string r = checkpoint::criu_restore_stats({1234, 7});
    CHECK(uint8_t(r[12]) == 0x12);  // StatsEntry.restore (field 2)
}
