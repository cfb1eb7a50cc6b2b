// The rules that put a container in a pod's VM (husk/pod.h), on specs as
// podman, containerd's CRI, CRI-O and docker write them.
#include <catch2/catch.hpp>

#include "guest-agent/procfs.h"
#include "husk/pod.h"
#include "husk/sandbox.h"

using namespace husk;

namespace {

Spec spec_of(const std::string& namespaces, const std::string& annotations = "{}") {
    auto s = parse_spec(R"({"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/"},
        "annotations":)" + annotations + R"(,"linux":{"namespaces":)" + namespaces + "}}");
    REQUIRE(s);
    return *s;
}

const std::pair<dev_t, ino_t> kPodNet{4, 4026532999};

std::optional<std::pair<dev_t, ino_t>> identity(const std::string& path) {
    if (path == "/run/netns/netns-pod" || path == "/var/run/netns/cni-1234") return kPodNet;
    if (path == "/run/netns/other") return std::make_pair(dev_t(4), ino_t(1));
    return std::nullopt;
}

// infra (a sandbox, shim pid 100, carrying the pod netns), one member of
// it (relay pid 200), and an unrelated lone container (pid 300).
const std::vector<PodPeer> kPeers = {
    {"infra", 100, "", kPodNet},
    {"web", 200, "infra", std::nullopt},
    {"lone", 300, "", std::make_pair(dev_t(4), ino_t(7))},
};

}  // namespace

TEST_CASE("pod: no paths, no annotations: a VM of its own") {
    auto r = resolve_pod(spec_of(R"([{"type":"pid"},{"type":"network"},{"type":"ipc"}])"), kPeers, identity);
    REQUIRE(r);
    CHECK(!*r);
}

TEST_CASE("pod: podman's pod member joins its infra container") {
    // podman 4: the infra's namespaces by /proc/<its pid>/ns/*.
    auto r = resolve_pod(spec_of(R"([{"type":"pid"},{"type":"network","path":"/proc/100/ns/net"},
        {"type":"ipc","path":"/proc/100/ns/ipc"},{"type":"uts","path":"/proc/100/ns/uts"},{"type":"mount"},
        {"type":"cgroup"}])"), kPeers, identity);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK((*r)->sandbox == "infra");
    CHECK((*r)->join == std::map<std::string, std::string>{{"ipc", "infra"}, {"uts", "infra"}});
}

TEST_CASE("pod: the pod's netns path alone joins the sandbox that carries it") {
    auto r = resolve_pod(spec_of(R"([{"type":"network","path":"/run/netns/netns-pod"},{"type":"mount"}])"), kPeers, identity);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK((*r)->sandbox == "infra");
    CHECK((*r)->join.empty());
}

TEST_CASE("pod: a netns no husk VM carries is the new VM's, as before") {
    auto r = resolve_pod(spec_of(R"([{"type":"network","path":"/run/netns/other"}])"), kPeers, identity);
    REQUIRE(r);
    CHECK(!*r);
}

TEST_CASE("pod: docker's container:NAME on a member joins the member's namespaces in the same VM") {
    auto r = resolve_pod(spec_of(R"([{"type":"network","path":"/proc/200/ns/net"},{"type":"ipc","path":"/proc/200/ns/ipc"},
        {"type":"pid","path":"/proc/200/ns/pid"}])"), kPeers, identity);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK((*r)->sandbox == "infra");
    CHECK((*r)->join == std::map<std::string, std::string>{{"ipc", "web"}, {"pid", "web"}});
}

TEST_CASE("pod: containerd's CRI sandbox and app containers") {
    auto pause = resolve_pod(spec_of(R"([{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},
        {"type":"network","path":"/var/run/netns/cni-fresh"}])", R"({"io.kubernetes.cri.container-type":"sandbox",
        "io.kubernetes.cri.sandbox-id":"infra2"})"), kPeers, identity);
    REQUIRE(pause);
    CHECK(!*pause);
    // A sandbox whose netns is already carried still gets its own VM.
    auto again = resolve_pod(spec_of(R"([{"type":"network","path":"/var/run/netns/cni-1234"}])",
                                     R"({"io.kubernetes.cri.container-type":"sandbox"})"), kPeers, identity);
    REQUIRE(again);
    CHECK(!*again);
    auto app = resolve_pod(spec_of(R"([{"type":"pid"},{"type":"ipc","path":"/proc/100/ns/ipc"},
        {"type":"uts","path":"/proc/100/ns/uts"},{"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1234"}])",
        R"({"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"infra"})"), kPeers, identity);
    REQUIRE(app);
    REQUIRE(*app);
    CHECK((*app)->sandbox == "infra");
    CHECK((*app)->join == std::map<std::string, std::string>{{"ipc", "infra"}, {"uts", "infra"}});
}

TEST_CASE("pod: CRI-O's annotations, with a pod pid namespace") {
    auto app = resolve_pod(spec_of(R"([{"type":"pid","path":"/proc/100/ns/pid"},{"type":"mount"}])",
        R"({"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.cri-o.SandboxID":"infra"})"), kPeers, identity);
    REQUIRE(app);
    REQUIRE(*app);
    CHECK((*app)->sandbox == "infra");
    CHECK((*app)->join == std::map<std::string, std::string>{{"pid", "infra"}});
    // Naming a member as the sandbox means its sandbox.
    auto via = resolve_pod(spec_of(R"([{"type":"mount"}])",
        R"({"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.cri-o.SandboxID":"web"})"), kPeers, identity);
    REQUIRE(via);
    REQUIRE(*via);
    CHECK((*via)->sandbox == "infra");
}

TEST_CASE("pod: what cannot be mapped is a clear error") {
    auto msg = [](const Spec& s) {
        auto r = resolve_pod(s, kPeers, identity);
        REQUIRE(!r);
        return r.error().message;
    };
    CHECK_THAT(msg(spec_of(R"([{"type":"ipc","path":"/proc/1/ns/ipc"}])")),
               Catch::Contains("linux.namespaces[0].path: /proc/1/ns/ipc is not a namespace of a running husk container"));
    CHECK_THAT(msg(spec_of(R"([{"type":"time","path":"/proc/100/ns/time"}])")),
               Catch::Contains("joining an existing time namespace is not possible from inside a VM"));
    CHECK_THAT(msg(spec_of(R"([{"type":"mount","path":"/proc/100/ns/mnt"}])")),
               Catch::Contains("joining an existing mount namespace is not possible"));
    CHECK_THAT(msg(spec_of(R"([{"type":"ipc","path":"/proc/100/ns/ipc"},{"type":"uts","path":"/proc/300/ns/uts"}])")),
               Catch::Contains("a container can join one pod"));
    CHECK_THAT(msg(spec_of(R"([{"type":"mount"}])", R"({"io.kubernetes.cri.container-type":"container"})")),
               Catch::Contains("names no sandbox"));
    CHECK_THAT(msg(spec_of(R"([{"type":"mount"}])",
                           R"({"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"gone"})")),
               Catch::Contains("sandbox gone is not a running husk container"));
    CHECK_THAT(msg(spec_of(R"([{"type":"mount"}])", R"({"io.kubernetes.cri.container-type":"pod"})")),
               Catch::Contains("expected \"sandbox\" or \"container\""));
    CHECK_THAT(msg(spec_of(R"([{"type":"ipc","path":"/proc/300/ns/ipc"}])",
                           R"({"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"infra"})")),
               Catch::Contains("names sandbox infra, its namespaces that of lone"));
    CHECK_THAT(msg(spec_of(R"([{"type":"ipc","path":"/proc/100/ns/ipc"}])", R"({"io.kubernetes.cri.container-type":"sandbox"})")),
               Catch::Contains("cannot join another's namespaces"));
}

TEST_CASE("agent: a process's cgroup v2 group, and those below it") {
    CHECK(agent::in_cgroup("0::/container-5\n", "/container-5"));
    CHECK(agent::in_cgroup("0::/container-5/inner\n", "/container-5"));
    CHECK(!agent::in_cgroup("0::/container-50\n", "/container-5"));
    CHECK(!agent::in_cgroup("0::/container\n", "/container-5"));
    CHECK(agent::in_cgroup("1:name=systemd:/x\n0::/container\n", "/container"));
    CHECK(!agent::in_cgroup("", "/container"));
    CHECK(agent::cgroup_path("1:name=systemd:/x\n0::/container/init.scope\n") == "/container/init.scope");
    CHECK_FALSE(agent::cgroup_path("1:name=systemd:/x\n"));
}

TEST_CASE("agent: a pid namespace's init takes a signal it blocks or catches") {
    std::string st = "Name:\tcatatonit\nSigBlk:\t0000000000004000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000002\n";
    CHECK(agent::takes_signal(st, 15));   // SIGTERM: blocked (bit 14)
    CHECK(agent::takes_signal(st, 2));    // SIGINT: caught (bit 1)
    CHECK(!agent::takes_signal(st, 10));  // SIGUSR1: default, so dropped
    CHECK(!agent::takes_signal("Name:\tsleep\nSigBlk:\t0\nSigCgt:\t0\n", 15));
    CHECK(!agent::takes_signal(st, 0));
    CHECK(!agent::takes_signal(st, 65));
}

TEST_CASE("pod: a CRI sandbox's VM is sized for the pod") {
    auto s = spec_of(R"([{"type":"mount"}])", R"({"io.kubernetes.cri.container-type":"sandbox",
        "io.kubernetes.cri.sandbox-memory":"629145600","io.kubernetes.cri.sandbox-cpu-quota":"250000",
        "io.kubernetes.cri.sandbox-cpu-period":"100000"})");
    CHECK(vm_memory_mib(s) == 600 + 64);  // the pod's 600 MiB, not the pause container's default
    CHECK(vm_vcpus(s, 8) == 3);           // 2.5 CPUs of pod quota
    CHECK(vm_vcpus(s, 2) == 2);
    CHECK_THAT(vm_size_reason(s), Catch::Contains("pod memory 600 MiB") && Catch::Contains("pod cpu quota 250000/100000"));
    auto bad = spec_of(R"([{"type":"mount"}])", R"({"io.kubernetes.cri.sandbox-memory":"lots"})");
    CHECK(vm_memory_mib(bad) == 128 + 64);
    CHECK(vm_size_reason(bad) == "the default size");
}

TEST_CASE("pod: sizes in annotations and cgroup files are decimal digits alone") {
    CHECK(decimal_figure("268435456") == 268435456u);
    CHECK(decimal_figure("0") == 0u);
    CHECK(decimal_figure("999999999999999999") == 999999999999999999u);
    for (const char* bad : {"", "-1", "1e9", "12 ", " 12", "0x10", "max", "1234567890123456789"})
        CHECK_FALSE(decimal_figure(bad));
}
