// linux.resources -> guest cgroup v2 files, device rules and their eBPF
// program, stats in runc's shape, and host cgroup placement.
#include <linux/bpf.h>
#include <unistd.h>

#include <set>

#include <catch2/catch.hpp>

#include "golden.h"
#include "guest-agent/cgroup.h"
#include "husk/cgroups.h"
#include "husk/spec.h"

using namespace husk;
using nlohmann::json;

static std::string dump(const CgroupFiles& f) {
    std::string s;
    for (auto& [k, v] : f.writes) s += k + " = " + v + "\n";
    for (auto& w : f.warnings) s += "warning: " + w + "\n";
    return s;
}

TEST_CASE("linux.resources become cgroup v2 files with runc's conversions", "[cgroups]") {
    auto res = parse_resources_file(R"({
      "memory": {"limit": 67108864, "reservation": 33554432, "swap": 134217728, "kernel": 1, "swappiness": 10},
      "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0", "idle": 0,
              "realtimeRuntime": 5},
      "pids": {"limit": 32},
      "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
      "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
      "network": {"classID": 1},
      "unified": {"memory.high": "50000000"}
    })", "r.json");
    REQUIRE(res);
    auto f = guest_cgroup_files(*res, "linux.resources");
    REQUIRE(f);
    check_golden("cgroups/resources.txt", dump(*f));

    // Unlimited values and the period-only cpu.max.
    auto u = guest_cgroup_files(json::parse(R"({"memory": {"limit": -1, "swap": -1}, "pids": {"limit": -1},
                                                 "cpu": {"period": 20000}})"), "");
    REQUIRE(u);
    CHECK(dump(*u) == "cpu.max = max 20000\nmemory.max = max\nmemory.swap.max = max\npids.max = max\n");
    // Nothing asked, nothing written.
    CHECK(guest_cgroup_files(json::object(), "")->writes.empty());
}

TEST_CASE("resources that cannot be applied are refused with their path", "[cgroups]") {
    auto e1 = guest_cgroup_files(json::parse(R"({"memory": {"limit": 100, "swap": 50}})"), "linux.resources");
    REQUIRE_FALSE(e1);
    CHECK(e1.error().message == "linux.resources.memory.swap: must not be below memory.limit (it counts memory plus swap)");
    auto e2 = guest_cgroup_files(json::parse(R"({"memory": {"swap": 50}})"), "");
    REQUIRE_FALSE(e2);
    CHECK(e2.error().message == "memory.swap: a swap limit needs a memory limit");
    auto e3 = guest_cgroup_files(json::parse(R"({"blockIO": {"weight": 5}})"), "");
    REQUIRE_FALSE(e3);
    CHECK(e3.error().message == "blockIO.weight: must be between 10 and 1000");

    auto bad = [](const char* text) {
        auto r = parse_resources_file(text, "res.json");
        REQUIRE_FALSE(r);
        return r.error().message;
    };
    CHECK(bad(R"({"memory": {"limit": "1g"}})") == "res.json: memory.limit: expected integer, got string");
    CHECK(bad(R"({"cpu": {"shares": -1}})") == "res.json: cpu.shares: expected unsigned integer, got integer");
    CHECK(bad(R"({"unified": {"../x": "1"}})") == "res.json: unified: invalid cgroup file name \"../x\"");
    CHECK(bad(R"({"devices": [{"allow": true, "type": "x"}]})") ==
          "res.json: devices[0].type: must be \"a\", \"b\" or \"c\", got \"x\"");
    CHECK(bad(R"({"devices": [{"allow": true, "access": "rwx"}]})") ==
          "res.json: devices[0].access: must be made of r, w and m, got \"rwx\"");
    CHECK(bad("[1]") == "res.json: $: expected object, got array");
}

TEST_CASE("device rules: the spec's, then runc's defaults; the program the kernel accepts", "[cgroups]") {
    auto rules = guest_device_rules(json::parse(R"({"devices": [{"allow": false, "access": "rwm"}]})"));
    REQUIRE(rules.size() == 12);
    CHECK(proto::to_json(rules[0]) == json::parse(R"({"allow": false, "type": "a", "major": -1, "minor": -1, "access": "rwm"})"));
    CHECK(proto::to_json(rules[3]) == json::parse(R"({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})"));

    auto prog = agent::device_program(rules);
    // Every jump stays inside the program.
    for (size_t i = 0; i < prog.size(); ++i) {
        bpf_insn in;
        std::memcpy(&in, &prog[i], sizeof in);
        if ((in.code & 0x07) == BPF_JMP && (in.code & 0xf0) != BPF_EXIT) CHECK(i + 1 + size_t(in.off) < prog.size());
    }
    // 6 loads; 8 rules "c M:m rwm" of 5; "c 136:* rwm" 4; "c/b *:* m" 6
    // each (type, 3 for the access mask, return); the deny-all returns
    // unconditionally in 2 and ends the program.
    CHECK(prog.size() == 6 + 8 * 5 + 4 + 2 * 6 + 2);
    // Without a catch-all rule, nothing matched means denied.
    auto one = agent::device_program({{true, "c", 1, 3, "rwm"}});
    CHECK(one.size() == 6 + 5 + 2);

    // The host kernel's verifier is the same as the guest's: it must take it.
    if (geteuid() != 0) {
        WARN("not root: the verifier check of the device program needs CAP_BPF");
        return;
    }
    auto fd = agent::load_device_program(rules);
    INFO((fd ? "" : fd.error().message));
    REQUIRE(fd);
    auto one_fd = agent::load_device_program({});
    REQUIRE(one_fd);
}

TEST_CASE("guest cgroup files become runc's stats", "[cgroups]") {
    proto::CgroupStats files = {
        {"cpu.stat", "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\nnr_periods 10\nnr_throttled 2\nthrottled_usec 300\n"},
        {"memory.current", "1048576\n"},
        {"memory.max", "max\n"},
        {"memory.peak", "2097152\n"},
        {"memory.stat", "anon 4096\nfile 8192\n"},
        {"memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"},
        {"pids.current", "4\n"},
        {"pids.max", "64\n"},
        {"cpuset.cpus.effective", "0-1\n"},
    };
    check_golden("cgroups/stats.json", runc_stats(files).dump(2) + "\n");
    CHECK(oom_kills(files) == 1);
    CHECK(oom_kills({}) == 0);
}

static const char* kMountinfo =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    "50 23 0:40 / /tmp rw - tmpfs tmpfs rw\n";
static const char* kSelfCgroup = "9:name=systemd:/user.slice\n4:memory:/outer\n1:cpu,cpuacct:/\n0::/user.slice\n";

TEST_CASE("cgroupsPath on the host: every hierarchy, relative, systemd, and refusals", "[cgroups]") {
    auto abs = host_cgroup_dirs("/machine/c1", kMountinfo, kSelfCgroup);
    REQUIRE(abs);
    CHECK(*abs == std::vector<std::string>{"/sys/fs/cgroup/cpu,cpuacct/machine/c1", "/sys/fs/cgroup/memory/machine/c1",
                                            "/sys/fs/cgroup/systemd/machine/c1", "/sys/fs/cgroup/unified/machine/c1"});
    auto rel = host_cgroup_dirs("c1", kMountinfo, kSelfCgroup);
    REQUIRE(rel);
    CHECK(*rel == std::vector<std::string>{"/sys/fs/cgroup/cpu,cpuacct/c1", "/sys/fs/cgroup/memory/outer/c1",
                                            "/sys/fs/cgroup/systemd/user.slice/c1", "/sys/fs/cgroup/unified/user.slice/c1"});
    auto sd = host_cgroup_dirs("machine-husk.slice:libpod:abc", kMountinfo, kSelfCgroup);
    REQUIRE(sd);
    CHECK((*sd)[1] == "/sys/fs/cgroup/memory/machine.slice/machine-husk.slice/libpod-abc.scope");
    CHECK((*host_cgroup_dirs(":husk:x", kMountinfo, kSelfCgroup))[0] == "/sys/fs/cgroup/cpu,cpuacct/system.slice/husk-x.scope");
    CHECK(host_cgroup_dirs("", kMountinfo, kSelfCgroup)->empty());
    CHECK(host_cgroup_dirs("/a/../b", kMountinfo, kSelfCgroup).error().message == "cgroupsPath /a/../b: must not contain \"..\"");
    CHECK(host_cgroup_dirs("x:y:z", kMountinfo, kSelfCgroup).error().message ==
          "cgroupsPath x:y:z: \"x\" is not a systemd slice");
    CHECK(host_cgroup_dirs("/a", "", "").error().code == ENOENT);
    // A hierarchy mounted from a sub-cgroup only shows what is below it.
    auto inner = host_cgroup_dirs("/pod/c1", "41 31 0:38 /pod /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "0::/\n");
    REQUIRE(inner);
    CHECK(*inner == std::vector<std::string>{"/sys/fs/cgroup/c1"});
}

TEST_CASE("the host bounds the VM with the spec's CPU limits, cpuset and a memory bound", "[cgroups]") {
    // A v1 host: cpu, cpuset and memory hierarchies, and the unified tree
    // without controllers (systemd's hybrid layout); then a v2 host.
    static const std::set<std::string> files = {
        "/v1/cpu/c/cpu.cfs_quota_us", "/v1/cpu/c/cpu.shares", "/v1/cpuset/c/cpuset.cpus", "/v1/memory/c/memory.limit_in_bytes",
        "/v1/unified/c/cgroup.procs", "/v2/c/cgroup.controllers", "/v2/c/cpu.max", "/v2/c/cpuset.cpus", "/v2/c/memory.max"};
    auto has = [](const std::string& p) { return files.count(p) > 0; };
    json res = json::parse(R"({"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"},
                               "memory": {"limit": 67108864}})");
    using W = std::vector<std::pair<std::string, std::string>>;
    CHECK(host_cgroup_limits(res, 400u << 20, {"/v1/cpu/c", "/v1/cpuset/c", "/v1/memory/c", "/v1/unified/c"}, has) ==
          W{{"/v1/cpu/c/cpu.shares", "512"}, {"/v1/cpu/c/cpu.cfs_period_us", "100000"}, {"/v1/cpu/c/cpu.cfs_quota_us", "50000"},
            {"/v1/cpuset/c/cpuset.cpus", "0-1"}, {"/v1/memory/c/memory.limit_in_bytes", std::to_string(400u << 20)}});
    CHECK(host_cgroup_limits(res, 400u << 20, {"/v2/c"}, has) ==
          W{{"/v2/c/cpu.weight", "20"}, {"/v2/c/cpu.max", "50000 100000"}, {"/v2/c/cpuset.cpus", "0-1"},
            {"/v2/c/memory.max", std::to_string(400u << 20)}});
    // No memory limit in the spec: the VM is not bounded on the host
    // (nor is it on update, which cannot resize the VM).
    CHECK(host_cgroup_limits(json::parse(R"({"memory": {}})"), 400u << 20, {"/v1/memory/c"}, has).empty());
    CHECK(host_cgroup_limits(res, std::nullopt, {"/v1/memory/c"}, has).empty());
}
