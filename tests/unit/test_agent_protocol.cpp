// The shim <-> agent contract (protocol/agent.h): every message on the wire
// (golden), decoded back to the same struct, and what the strict decoders
// refuse. The shim encodes and the agent decodes the requests; the agent
// encodes and the shim decodes HELLO, responses and exit events (the
// guest's side is the untrusted one).
#include <sys/socket.h>

#include <catch2/catch.hpp>

#include "golden.h"
#include "protocol/agent.h"
#include "protocol/boot.h"
#include "protocol/protocol.h"

using namespace husk;
using namespace husk::proto;
using nlohmann::json;

namespace {

Process sample_process() {
    Process p;
    p.args = {"sh", "-c", "echo hi"};
    p.env = {"PATH=/bin", "A=b"};
    p.cwd = "/work";
    p.uid = 1000;
    p.gid = 100;
    p.additional_gids = {5, 6};
    p.umask = 022;
    p.no_new_privileges = true;
    p.terminal = true;
    p.console_size = ConsoleSize{24, 80};
    p.capabilities = std::map<std::string, std::vector<int>>{{"bounding", {0, 21}}, {"ambient", {}}};
    p.rlimits = {{7, 1024, 4096}};
    p.oom_score_adj = -17;
    p.extra_fds = {"in", "both"};
    return p;
}

// A create with every field set: a pod member that joins, with hooks.
Create full_create() {
    Create c;
    c.container = "member1";
    c.process_index = 3;
    c.process = sample_process();
    c.root_share = "member1/rootfs";
    c.root_readonly = true;
    c.hostname = "box";
    c.mounts = {Mount{"/proc", "proc", {}, "proc", std::nullopt, {}},
                Mount{"/data", "bind", {"rbind", "ro"}, "", std::string("member1/m1"), {"sub/dir"}}};
    c.namespaces = {"mount", "user"};
    c.join = {{"pid", "pod"}, {"ipc", "pod"}};
    c.userns = UserNs{"0 100000 65536\n", "0 100000 65536\n"};
    c.masked_paths = {"/proc/kcore"};
    c.readonly_paths = {"/proc/sys"};
    c.sysctl = {{"net.ipv4.ip_forward", "1"}};
    Seccomp s;
    s.default_action = "SCMP_ACT_ERRNO";
    s.default_errno_ret = 38;
    s.architectures = {"SCMP_ARCH_X86_64"};
    s.flags = {"SECCOMP_FILTER_FLAG_LOG"};
    s.syscalls = {SeccompRule{{"personality"}, "SCMP_ACT_ALLOW", std::nullopt, {SeccompArg{0, 8, 0, "SCMP_CMP_EQ"}}},
                  SeccompRule{{"mkdir"}, "SCMP_ACT_ERRNO", 1, {}}};
    c.seccomp = s;
    c.cgroup = Cgroup{{{"memory.max", "268435456"}}, {{false, "a", -1, -1, "rwm"}, {true, "c", 1, 3, "rwm"}}};
    c.devices = {Device{"/dev/fuse", "c", 10, 229, 0, 0, 0666}};
    c.hooks = {{"startContainer", {SpecHook{"/bin/hook", {"hook", "start"}, {"X=1"}, 5}}}};
    c.hook_state = json{{"ociVersion", "1.0.2"}, {"id", "member1"}, {"status", "creating"}};
    return c;
}

Create sandbox_create() {
    Create c;
    c.container = "box";
    c.process.args = {"true"};
    c.root_share = "rootfs";
    c.namespaces = {"pid", "mount"};
    NetInterface i;
    i.name = "eth0";
    i.mac = "0a:58:0a:58:00:05";
    i.mtu = 1400;
    i.addresses = {"10.88.0.5/16"};
    i.routes = {{AF_INET, "default", "10.88.0.1", 0, 0}};
    c.network = std::vector<NetInterface>{i};
    c.cgroup = Cgroup{{}, {}};
    return c;
}

// Decoded back to the same struct, re-encoded to the same JSON.
template <class T>
std::string line(const T& msg, const std::string& at) {
    json j = to_json(msg);
    auto back = decode<T>(j, at);
    INFO(at << ": " << (back ? "" : back.error().message));
    REQUIRE(back);
    CHECK(*back == msg);
    CHECK(to_json(*back) == j);
    return j.dump() + "\n";
}

// What the decoder of T says of `j`.
template <class T>
std::string why(const json& j, const std::string& at) {
    auto r = decode<T>(j, at);
    return r ? "decoded" : r.error().message;
}

}  // namespace

TEST_CASE("agent protocol: every message, encoded (golden) and decoded back to the same", "[protocol][agent]") {
    std::string text;
    text += line(Hello{kVersion, false}, "hello");
    text += line(Hello{kVersion, true}, "hello");
    text += line(Request{7, "start", to_json(Start{0})}, "request");
    text += line(Response{7, true, "", json{{"pid", 42}}}, "response");
    text += line(Response{8, false, "container not running", std::nullopt}, "response");
    text += line(ExitEvent{3, 137, std::nullopt}, "event");
    text += line(ExitEvent{0, std::nullopt, 9}, "event");
    text += line(sandbox_create(), "create");
    text += line(full_create(), "create");
    text += line(Exec{"box", 4, sample_process()}, "exec");
    text += line(Spawned{1234}, "exec");
    text += line(Resume{true}, "resume");
    text += line(Start{3}, "start");
    text += line(Kill{0, 15, true}, "kill");
    text += line(Kill{2, 0, false}, "kill");
    text += line(Resize{1, 40, 120}, "resize");
    text += line(Target{}, "ps");
    text += line(Target{.container = "member1", .files = {{"cpu.max", "50000 100000"}}, .vcpus = 2}, "update");
    text += line(Target{.container = "member1", .names = {"memory.current", "pids.current"}}, "stats");
    text += line(Target{.container = "member1", .frozen = true}, "freeze");
    // ... and the answers that are structs of their own.
    text += line(PsProcess{.pid = 1, .ppid = 0, .uid = 0, .user = "root", .state = "S", .stat = "Ss", .cmd = "sh -c sleep 9",
                           .comm = "sh", .tty = "?", .start = 1764626400, .cpu = 0.25, .pcpu = 1.5, .pmem = 0.5,
                           .vsz = 1664, .rss = 980},
                 "ps[0]");
    check_golden("agent-requests.jsonl", text);
}

TEST_CASE("agent protocol: a misspelt, missing, mistyped or out-of-range field is an error with its path",
          "[protocol][agent]") {
    json c = to_json(full_create());
    auto edit = [&](auto f) {
        json j = c;
        f(j);
        return why<Create>(j, "create");
    };
    // The bug class this replaces: a misspelt key silently the default.
    CHECK(edit([](json& j) { j["readonly_path"] = json::array(); }) == "create.readonly_path: unknown key");
    CHECK(edit([](json& j) { j["process"]["no_new_privilege"] = true; }) == "create.process.no_new_privilege: unknown key");
    CHECK(edit([](json& j) { j.erase("masked_paths"); }) == "create.masked_paths: missing");
    CHECK(edit([](json& j) { j["process"]["uid"] = -1; }) == "create.process.uid: expected an integer in 0..4294967295");
    CHECK(edit([](json& j) { j["process"]["uid"] = 1.5; }) == "create.process.uid: expected an integer in 0..4294967295");
    CHECK(edit([](json& j) { j["process"]["args"] = json::array(); }) == "create.process.args: expected a program");
    CHECK(edit([](json& j) { j["process"]["cwd"] = "work"; }) == "create.process.cwd: expected an absolute path");
    CHECK(edit([](json& j) { j["process"]["umask"] = 01000; }) == "create.process.umask: expected 0..0777");
    CHECK(edit([](json& j) { j["process"]["capabilities"]["bounding"] = {64}; }) ==
          "create.process.capabilities.bounding: not a capability number");
    CHECK(edit([](json& j) { j["process"]["extra_fds"] = {"sideways"}; }) == "create.process.extra_fds: not a flow: sideways");
    CHECK(edit([](json& j) { j["process"]["rlimits"][0]["resource"] = 99; }) ==
          "create.process.rlimits[0].resource: not an RLIMIT_* number");
    CHECK(edit([](json& j) { j["mounts"][1]["submounts"] = {"../../etc"}; }) ==
          "create.mounts[1].submounts: not a relative path: ../../etc");
    CHECK(edit([](json& j) { j["mounts"][1]["share"] = "../x"; }) == "create.mounts[1].share: not a share entry");
    CHECK(edit([](json& j) { j["mounts"][0].erase("source"); }) == "create.mounts[0].source: missing");
    CHECK(edit([](json& j) { j["mounts"][0]["destination"] = "proc"; }) ==
          "create.mounts[0].destination: expected an absolute path");
    CHECK(edit([](json& j) { j["namespaces"] = {"network"}; }) == "create.namespaces: not a namespace husk makes: network");
    CHECK(edit([](json& j) { j["join"]["mount"] = "pod"; }) == "create.join.mount: cannot join a mount namespace");
    CHECK(edit([](json& j) { j.erase("userns"); }) == "create.userns: only with a user namespace");
    CHECK(edit([](json& j) { j["root"]["share"] = "../../"; }) == "create.root.share: not a share entry");
    CHECK(edit([](json& j) { j["root"]["writable"] = true; }) == "create.root.writable: unknown key");
    CHECK(edit([](json& j) { j["sysctl"]["../../x"] = "1"; }) == "create.sysctl.../../x: not a sysctl name");
    CHECK(edit([](json& j) { j["seccomp"]["defaultAction"] = "SCMP_ACT_NOTIFY"; }) ==
          "create.seccomp.defaultAction: unsupported action SCMP_ACT_NOTIFY");
    CHECK(edit([](json& j) { j["seccomp"]["syscalls"][0]["args"][0]["op"] = "SCMP_CMP_XX"; }) ==
          "create.seccomp.syscalls[0].args[0].op: unknown operator SCMP_CMP_XX");
    CHECK(edit([](json& j) { j["seccomp"]["syscalls"][0]["args"][0]["index"] = 6; }) ==
          "create.seccomp.syscalls[0].args[0].index: expected 0..5");
    CHECK(edit([](json& j) { j["cgroup"]["files"][0] = {"memory.max"}; }) == "create.cgroup.files[0]: expected a pair [a, b]");
    CHECK(edit([](json& j) { j["cgroup"]["devices"][0]["access"] = "rwx"; }) ==
          "create.cgroup.devices[0].access: expected r, w and m");
    CHECK(edit([](json& j) { j["devices"][0]["type"] = "x"; }) == "create.devices[0].type: expected c, b, u or p");
    CHECK(edit([](json& j) { j["hooks"]["prestart"] = j["hooks"]["startContainer"]; }) ==
          "create.hooks.prestart: not a guest stage");
    CHECK(edit([](json& j) { j["hooks"]["startContainer"][0]["path"] = "hook"; }) ==
          "create.hooks.startContainer[0].path: expected an absolute path");
    CHECK(edit([](json& j) { j.erase("hook_state"); }) == "create.hook_state: expected the state hooks read");
    CHECK(edit([](json& j) { j["process_index"] = kMaxProcess + 1; }) == "create.process_index: out of range");
    CHECK(why<Create>(json::array(), "create") == "create: expected an object");

    CHECK(why<Exec>(to_json(Exec{"box", 0, sample_process()}), "exec") == "exec.process_index: out of range");
    CHECK(why<Kill>({{"process", 0}, {"signal", 65}, {"all", false}}, "kill") == "kill.signal: expected 0..64");
    CHECK(why<Kill>({{"process", 0}, {"signal", 9}}, "kill") == "kill.all: missing");
    CHECK(why<Resize>({{"process", 0}, {"rows", 70000}, {"cols", 80}}, "resize") == "resize.rows: expected an integer in 0..65535");
    CHECK(why<Target>({{"container", "x"}, {"files", json::array({json::array({"a", 1})})}}, "update") ==
          "update.files[0][1]: expected a string");
    CHECK(why<Target>({{"vcpus", 0}}, "update") == "update.vcpus: expected 1..1024");
    CHECK(why<Target>({{"process", 0}}, "ps") == "ps.process: unknown key");
    CHECK(why<Start>(json::object(), "start") == "start.process: missing");
}

TEST_CASE("agent protocol: what a guest sends the shim is decoded as strictly", "[protocol][agent]") {
    CHECK(why<Hello>({{"version", "4"}}, "hello") == "hello.version: expected an integer in 0..4294967295");
    CHECK(why<Hello>({{"version", 4}, {"template", 1}}, "hello") == "hello.template: expected true or false");
    CHECK(why<Response>({{"id", 1}, {"ok", false}}, "response") == "response.error: missing");
    CHECK(why<Response>({{"id", -1}, {"ok", true}}, "response") ==
          "response.id: expected an integer in 0..18446744073709551615");
    CHECK(why<Response>({{"id", 1}, {"ok", true}, {"error", "x"}}, "response") == "response.error: unknown key");
    CHECK(why<ExitEvent>({{"event", "exit"}, {"process", 0}}, "event") == "event: expected a code or a signal");
    CHECK(why<ExitEvent>({{"event", "exit"}, {"process", 0}, {"code", 256}}, "event") == "event.code: expected 0..255");
    CHECK(why<ExitEvent>({{"event", "exit"}, {"process", 0}, {"signal", 0}}, "event") == "event.signal: expected 1..64");
    CHECK(why<Spawned>({{"pid", 0}}, "exec") == "exec.pid: not a pid");
    CHECK(why<Request>({{"id", 1}, {"method", "ps"}, {"params", json::array()}}, "request") ==
          "request.params: expected an object");
    // ps's and stats' answers.
    json p = to_json(PsProcess{.pid = 7, .ppid = 1, .uid = 1000, .state = "R", .stat = "R", .cmd = "x", .comm = "x", .tty = "?"});
    CHECK(why<std::vector<PsProcess>>(json::array({p}), "ps") == "decoded");
    auto with = [&](const char* k, json v) {
        json q = p;
        q[k] = std::move(v);
        return why<std::vector<PsProcess>>(json::array({p, q}), "ps");
    };
    CHECK(with("pid", 0) == "ps[1].pid: not a pid");
    CHECK(with("ppid", -1) == "ps[1].ppid: not a pid (or 0)");
    CHECK(with("uid", int64_t(1) << 32) == "ps[1].uid: not a uid");
    CHECK(with("pcpu", -0.5) == "ps[1].pcpu: not a figure");
    CHECK(with("cpu", "1") == "ps[1].cpu: expected a number");
    CHECK(with("rss", -1) == "ps[1].rss: negative");
    CHECK(with("cmd", 1) == "ps[1].cmd: expected a string");
    CHECK(with("threads", 2) == "ps[1].threads: unknown key");
    json no_tty = p;
    no_tty.erase("tty");
    CHECK(why<std::vector<PsProcess>>(json::array({no_tty}), "ps") == "ps[0].tty: missing");
    CHECK(why<std::vector<PsProcess>>(p, "ps") == "ps: expected an array");
    CHECK(why<CgroupStats>({{"memory.current", "4096\n"}}, "stats") == "decoded");
    CHECK(why<CgroupStats>({{"memory.current", 4096}}, "stats") == "stats.memory.current: expected a string");
    CHECK(why<CgroupStats>(json::array(), "stats") == "stats: expected an object");
}

TEST_CASE("decode: integers keep to their type's range, floats are not integers", "[protocol]") {
    uint16_t u16 = 0;
    CHECK(get(json(65535), "n", u16));
    CHECK(u16 == 65535);
    CHECK_FALSE(get(json(65536), "n", u16));
    CHECK_FALSE(get(json(-1), "n", u16));
    int8_t i8 = 0;
    CHECK(get(json(-128), "n", i8));
    CHECK(i8 == -128);
    CHECK_FALSE(get(json(-129), "n", i8));
    CHECK_FALSE(get(json(128), "n", i8));
    int64_t i64 = 0;
    CHECK(get(json(INT64_MIN), "n", i64));
    CHECK(i64 == INT64_MIN);
    CHECK_FALSE(get(json(UINT64_MAX), "n", i64));
    CHECK_FALSE(get(json(2.0), "n", i64));
    CHECK_FALSE(get(json(true), "n", i64));
    uint64_t u64 = 0;
    CHECK(get(json(UINT64_MAX), "n", u64));
    CHECK(u64 == UINT64_MAX);
}

TEST_CASE("boot parameters: the husk.* words, written in one order and read back strictly", "[protocol][agent]") {
    BootParams b{.debug = true, .share = "virtiofs", .vmm = "uml", .net = true, .mem = true, .channel = "tty1",
                 .hostfs = "/run/husk/x/rootfs"};
    std::string words = to_cmdline(b);
    CHECK(words == " husk.debug=1 husk.vmm=uml husk.channel=tty1 husk.share=virtiofs husk.net=1 husk.mem=1"
                   " husk.hostfs=/run/husk/x/rootfs");
    // The kernel's own words around them are the kernel's.
    auto back = boot_params_from_cmdline("console=ttyS0 quiet maxcpus=1" + words + " panic=-1\n");
    REQUIRE(back);
    CHECK(*back == b);
    CHECK(to_cmdline(BootParams{}).empty());
    CHECK(boot_params_from_cmdline("quiet husk.probe=1")->probe);
    CHECK(boot_params_from_cmdline("husk.template=1 husk.channel=vsock")->template_boot);
    auto why = [](const std::string& c) {
        auto r = boot_params_from_cmdline(c);
        return r ? "decoded" : r.error().message;
    };
    CHECK(why("husk.debg=1") == "kernel command line: husk.debg=1: not a word husk writes");
    CHECK(why("husk.debug=yes") == "kernel command line: husk.debug=yes: expected 1");
    CHECK(why("husk.share=nfs") == "kernel command line: husk.share=nfs: not a value husk writes");
    CHECK(why("husk.channel=tty") == "kernel command line: husk.channel=tty: not a value husk writes");
    CHECK(why("husk.channel=ttyS0x") == "kernel command line: husk.channel=ttyS0x: not a value husk writes");
    CHECK(why("husk.hostfs=rootfs") == "kernel command line: husk.hostfs=rootfs: expected an absolute path");
    CHECK(why("husk.net") == "kernel command line: husk.net: expected 1");
}
