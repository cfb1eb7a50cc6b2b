// Which driver a container gets (src/husk/driver_choice.h): a named driver
// is that driver; the automatic choice follows the host and the spec.
#include <catch2/catch.hpp>

#include <functional>

#include "husk/driver_choice.h"
#include "husk/hypervisor.h"
#include "husk/pod.h"
#include "husk/sandbox.h"
#include "husk/system_image.h"

using namespace husk;

namespace {

// The spec `husk spec` writes (runc's default), changed by `edit`.
Spec spec_of(const std::function<void(nlohmann::json&)>& edit = {}) {
    auto j = default_spec();
    if (edit) edit(j);
    auto s = parse_spec(j.dump());
    REQUIRE(s);
    return *s;
}

const DriverHost kNoKvm{false, "no usable /dev/kvm", "", ""};
const DriverHost kKvm{true, "a guest booted under KVM", "", ""};

DriverChoice pick(const Spec& s, const DriverHost& host = kNoKvm, const std::string& global = "") {
    auto c = choose_driver(s.annotations, global, "--hypervisor", &s, [&] { return host; });
    REQUIRE(c);
    return *c;
}

}  // namespace

TEST_CASE("a named driver is that driver: annotation over --hypervisor over the config", "[driver]") {
    auto s = spec_of();
    CHECK(pick(s, kNoKvm, "qemu").name == "qemu");
    CHECK(pick(s, kKvm, "uml").name == "uml");
    CHECK(pick(s, kNoKvm, "qemu").why == "--hypervisor says qemu");
    auto annotated = spec_of([](auto& j) { j["annotations"][kAnnotationHypervisor] = "qemu"; });
    CHECK(pick(annotated, kNoKvm, "uml").name == "qemu");
    CHECK(pick(annotated).why == "annotation org.husk.hypervisor says qemu");
    // A named driver never looks at the host (the automatic choice may boot a KVM probe).
    auto unprobed = [] {
        FAIL("the host was probed for a named driver");
        return DriverHost{};
    };
    CHECK(choose_driver(annotated.annotations, "", "--hypervisor", &annotated, unprobed));
    CHECK(choose_driver({}, "uml", "--hypervisor", &s, unprobed));
    // "auto" asks for the choice, as leaving it unset does.
    auto autoann = spec_of([](auto& j) { j["annotations"][kAnnotationHypervisor] = "auto"; });
    CHECK(pick(autoann, kNoKvm, "qemu").name == "uml");
    CHECK(pick(s, kNoKvm, "auto").name == "uml");

    auto bad = choose_driver({}, "vmware", "--hypervisor", nullptr, [] { return kNoKvm; });
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message ==
          "--hypervisor: unknown hypervisor \"vmware\" (known: auto, qemu, uml, firecracker, cloud-hypervisor)");
    bad = choose_driver({}, "kvmtool", "/etc/husk/config.toml", nullptr, [] { return kNoKvm; });
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.rfind("/etc/husk/config.toml: unknown hypervisor \"kvmtool\"", 0) == 0);
    bad = choose_driver({{kAnnotationHypervisor, ""}}, "", "--hypervisor", nullptr, [] { return kNoKvm; });
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("annotation org.husk.hypervisor") == 0);
    for (const auto& n : hypervisor_names()) {
        auto hv = make_hypervisor(n);
        REQUIRE(hv);
        CHECK(hv->name() == n);
    }
    CHECK_FALSE(make_hypervisor("vmware"));
}

TEST_CASE("automatic: QEMU under KVM; without it UML unless the container needs what UML lacks", "[driver]") {
    auto plain = spec_of();  // root, runc's three capabilities, no netns path
    CHECK(pick(plain, kKvm).name == "qemu");
    CHECK(pick(plain, kKvm).why == "KVM works here (a guest booted under KVM)");
    auto c = pick(plain);
    CHECK(c.name == "uml");
    CHECK(c.automatic);
    CHECK_FALSE(pick(plain, kNoKvm, "uml").automatic);
    CHECK(c.why.find("no usable KVM (no usable /dev/kvm)") == 0);
    CHECK(uml_lacks(plain).empty());

    // Each need, alone, sends the container to QEMU, and the reason says which.
    struct Case {
        const char* what;
        std::function<void(nlohmann::json&)> edit;
        const char* reason;
    };
    const std::vector<Case> cases = {
        {"a non-root user", [](auto& j) { j["process"]["user"] = {{"uid", 1000}, {"gid", 1000}}; },
         "runs as uid 1000 gid 1000: UML's hostfs"},
        {"a non-root group", [](auto& j) { j["process"]["user"] = {{"uid", 0}, {"gid", 5}}; }, "runs as uid 0 gid 5"},
        {"CAP_SETUID", [](auto& j) { j["process"]["capabilities"]["bounding"].push_back("CAP_SETUID"); },
         "may change its user"},
        {"CAP_SETGID", [](auto& j) { j["process"]["capabilities"]["bounding"].push_back("CAP_SETGID"); },
         "may change its user"},
        {"no capabilities object (a root process keeps all)", [](auto& j) { j["process"].erase("capabilities"); },
         "may change its user"},
        {"a user namespace",
         [](auto& j) {
             j["linux"]["namespaces"].push_back({{"type", "user"}});
             j["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 100000}, {"size", 65536}}};
             j["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", 100000}, {"size", 65536}}};
         },
         "maps user ids"},
        {"two CPUs of quota", [](auto& j) { j["linux"]["resources"]["cpu"] = {{"quota", 200000}, {"period", 100000}}; },
         "more than one CPU"},
        {"a two-CPU cpuset", [](auto& j) { j["linux"]["resources"]["cpu"] = {{"cpus", "0-1"}}; }, "asks for 2 CPUs"},
        {"a share annotation", [](auto& j) { j["annotations"][kAnnotationShare] = "9p"; }, "has annotation org.husk.share"},
        {"a rootfs on a disk", [](auto& j) { j["annotations"][kAnnotationRootfs] = "disk"; },
         "has its rootfs on a disk (org.husk.rootfs=disk), which is for checkpoints"},
        {"the image's own kernel", [](auto& j) { j["annotations"][system_image::kAnnotationKernel] = "/boot/vmlinuz"; },
         "boots the image's own kernel (org.husk.kernel), and UML boots a UML kernel only"},
        {"a CRI pod sandbox", [](auto& j) { j["annotations"][kCriContainerType] = "sandbox"; }, "is a pod's sandbox"},
        {"a CRI-O pod sandbox", [](auto& j) { j["annotations"][kCrioContainerType] = "sandbox"; }, "is a pod's sandbox"},
    };
    for (const auto& k : cases) {
        INFO(k.what);
        auto s = spec_of(k.edit);
        auto d = pick(s);
        CHECK(d.name == "qemu");
        CHECK(d.why.find(k.reason) != std::string::npos);
        CHECK(pick(s, kKvm).name == "qemu");
    }
    // Within UML's reach: one CPU of quota, a one-CPU cpuset, a network namespace to join (UML's NIC is as fast as
    // QEMU's), a CRI container (it joins its sandbox).
    for (const auto& edit : std::vector<std::function<void(nlohmann::json&)>>{
             [](auto& j) { j["linux"]["resources"]["cpu"] = {{"quota", 50000}, {"period", 100000}}; },
             [](auto& j) { j["linux"]["resources"]["cpu"] = {{"cpus", "1"}}; },
             [](auto& j) {
                 for (auto& n : j["linux"]["namespaces"])
                     if (n["type"] == "network") n["path"] = "/run/netns/x";
             },
             [](auto& j) { j["annotations"][kCriContainerType] = "container"; },
         })
        CHECK(pick(spec_of(edit)).name == "uml");
}

TEST_CASE("a restore goes to the driver its image was saved from, unless one is named", "[driver]") {
    auto plain = spec_of();
    auto restored = driver_for_restore(pick(plain), "qemu");  // automatic would say uml
    CHECK(restored.name == "qemu");
    CHECK(restored.why == "the checkpoint image is of a qemu VM");
    CHECK(driver_for_restore(pick(plain, kKvm), "firecracker").name == "firecracker");
    // Named: kept (the shim refuses a mismatch, naming both).
    auto named = driver_for_restore(pick(plain, kNoKvm, "uml"), "qemu");
    CHECK(named.name == "uml");
    CHECK(named.why == "--hypervisor says uml");
    CHECK(driver_for_restore(pick(plain), "").name == "uml");  // no image read: as chosen
}

TEST_CASE("automatic, where a driver is missing, and for no container in particular", "[driver]") {
    auto plain = spec_of();
    DriverHost no_uml = kNoKvm;
    no_uml.uml_unavailable = "/usr/bin/linux.uml not found (apt install user-mode-linux)";
    auto c = pick(plain, no_uml);
    CHECK(c.name == "qemu");
    CHECK(c.why.find("apt install user-mode-linux") != std::string::npos);
    DriverHost no_qemu = kNoKvm;
    no_qemu.qemu_unavailable = "qemu-system-x86_64 not found";
    CHECK(pick(spec_of([](auto& j) { j["process"]["user"]["uid"] = 7; }), no_qemu).name == "uml");
    // husk check / features: the host's rule, and QEMU as the driver every container can have.
    auto host = choose_driver({}, "", "--hypervisor", nullptr, [] { return kNoKvm; });
    REQUIRE(host);
    CHECK(host->name == "qemu");
    CHECK(host->why.find("UML for a container that needs nothing it lacks") != std::string::npos);
    host = choose_driver({}, "", "--hypervisor", nullptr, [] { return kKvm; });
    REQUIRE(host);
    CHECK(host->name == "qemu");
}
