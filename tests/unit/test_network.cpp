#include <fcntl.h>
#include <sys/socket.h>

#include <functional>

#include <catch2/catch.hpp>

#include "husk/network.h"

using namespace husk;
using nlohmann::json;

static NetInterface sample() {
    NetInterface i;
    i.name = "eth0";
    i.mac = "0a:58:0a:58:00:05";
    i.mtu = 1400;
    i.addresses = {"10.88.0.5/16", "fd00::5/64"};
    i.routes = {{AF_INET, "default", "10.88.0.1", 0, 0}, {AF_INET6, "default", "fd00::1", 0, 1024},
                {AF_INET, "169.254.1.1/32", "", 253, 0}};
    return i;
}

TEST_CASE("interfaces travel to the agent and back unchanged", "[network]") {
    auto j = interfaces_to_json({sample()});
    CHECK(j[0]["routes"][0] == json{{"family", "inet"}, {"dst", "default"}, {"gateway", "10.88.0.1"}});
    CHECK(j[0]["routes"][2] == json{{"family", "inet"}, {"dst", "169.254.1.1/32"}, {"scope", 253}});
    auto back = interfaces_from_json(j);
    REQUIRE(back);
    REQUIRE(back->size() == 1);
    const auto& i = (*back)[0];
    CHECK(i.name == "eth0");
    CHECK(i.mac == "0a:58:0a:58:00:05");
    CHECK(i.mtu == 1400);
    CHECK(i.up);
    CHECK(i.addresses == std::vector<std::string>{"10.88.0.5/16", "fd00::5/64"});
    REQUIRE(i.routes.size() == 3);
    CHECK(i.routes[1].family == AF_INET6);
    CHECK(i.routes[1].metric == 1024);
    CHECK(i.routes[2].scope == 253);
    CHECK(i.routes[2].gateway.empty());
}

TEST_CASE("a malformed interface list is refused with where it is wrong", "[network]") {
    auto bad = [](auto edit) {
        auto j = interfaces_to_json({sample()});
        edit(j[0]);
        auto r = interfaces_from_json(j);
        REQUIRE_FALSE(r);
        return r.error().message;
    };
    CHECK(bad([](json& i) { i["mac"] = "0a:58:0a:58:00"; }) == "network[0].mac: not a MAC address: \"0a:58:0a:58:00\"");
    CHECK(bad([](json& i) { i["mac"] = "0a-58-0a-58-00-05"; }).find("not a MAC address") != std::string::npos);
    CHECK(bad([](json& i) { i["name"] = "../../etc"; }).find("network[0].name: not an interface name") == 0);
    CHECK(bad([](json& i) { i["name"] = "a-very-long-interface"; }).find("not an interface name") != std::string::npos);
    CHECK(bad([](json& i) { i["mtu"] = 10; }) == "network[0].mtu: out of range");
    CHECK(bad([](json& i) { i["routes"][0]["family"] = "ipx"; }) == "network[0].routes[0].family: must be inet or inet6");
    CHECK(bad([](json& i) { i.erase("addresses"); }) == "network[0].addresses: missing");
    CHECK(bad([](json& i) { i["mtu"] = "1500"; }) == "network[0].mtu: expected an integer in 0..4294967295");
    CHECK(bad([](json& i) { i["routes"][0]["via"] = "x"; }) == "network[0].routes[0].via: unknown key");
    CHECK_FALSE(interfaces_from_json(json::object()));
}

TEST_CASE("connected routes go before the routes that need them", "[network]") {
    auto i = sample();
    order_routes(i.routes);
    CHECK(i.routes[0].dst == "169.254.1.1/32");  // Calico-style gateway reached first
    CHECK(i.routes[1].gateway == "10.88.0.1");
    CHECK(i.routes[2].gateway == "fd00::1");
    CHECK(tap_name(0) == "tap0_husk");
    CHECK(tap_name(12).size() <= 15);  // IFNAMSIZ - 1
}

// The netlink side, in a private network namespace of a forked child:
// what scan_interfaces reads from a veth set up with iproute2, and that
// redirects come and go without a trace.
#include <net/if.h>
#include <pwd.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sys/netlink.h"
#include "sys/sys.h"

static json in_private_netns(const std::function<json()>& f) {
    auto pr = sys::pipe(O_CLOEXEC);
    REQUIRE(pr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        json out;
        if (unshare(CLONE_NEWNET) < 0) out = {{"error", "unshare"}};
        else out = f();
        (void)sys::write_all(pr->second.get(), out.dump());
        _exit(0);
    }
    pr->second.reset();
    auto text = sys::read_to_eof(pr->first.get());
    waitpid(pid, nullptr, 0);
    REQUIRE(text);
    return json::parse(*text);
}

TEST_CASE("scan_interfaces reads a veth's MAC, MTU, addresses and routes; redirects leave no trace", "[network][netlink]") {
    json r = in_private_netns([] {
        std::string setup =
            "ip link add eth0 address 0a:58:0a:58:00:05 mtu 1400 type veth peer name peer0 && "
            "ip link set eth0 up && ip link set peer0 up && ip addr add 10.88.0.5/16 dev eth0 && "
            "ip addr add fd00::5/64 dev eth0 nodad && ip route add default via 10.88.0.1 && "
            "ip route add 192.0.2.0/24 via 10.88.0.1 metric 7";
        if (system(setup.c_str()) != 0) return json{{"error", "ip setup"}};
        json out;
        auto ifs = sys::scan_interfaces();
        if (!ifs) return json{{"error", ifs.error().message}};
        for (auto& i : *ifs)
            if (i.name == "eth0") out["eth0"] = interfaces_to_json({i})[0];
        auto tap = sys::create_tap("tap0_husk", 1400);
        if (!tap) return json{{"error", tap.error().message}};
        if (auto rr = sys::redirect_both_ways("eth0", "tap0_husk"); !rr) return json{{"error", rr.error().message}};
        out["redirected"] = sys::has_redirect("eth0") && sys::has_redirect("tap0_husk");
        auto again = sys::scan_interfaces();  // our tap is never carried
        out["after"] = again ? again->size() : 0;
        sys::remove_redirects({"eth0"});
        out["removed"] = !sys::has_redirect("eth0");
        out["qdisc_left"] = system("tc qdisc show dev eth0 | grep -q ingress") == 0;
        return out;
    });
    REQUIRE_FALSE(r.contains("error"));
    auto eth0 = r["eth0"];
    CHECK(eth0["mac"] == "0a:58:0a:58:00:05");
    CHECK(eth0["mtu"] == 1400);
    CHECK(eth0["up"] == true);
    CHECK(eth0["addresses"] == json{"10.88.0.5/16", "fd00::5/64"});  // no fe80::
    // The kernel's own subnet routes are left for the guest's kernel; ours
    // come in the order they can be added.
    CHECK(eth0["routes"] == json::parse(R"([{"family":"inet","dst":"default","gateway":"10.88.0.1"},
                                            {"family":"inet","dst":"192.0.2.0/24","gateway":"10.88.0.1","metric":7}])"));
    CHECK(r["redirected"] == true);
    CHECK(r["after"] == 2);  // eth0 and peer0, not the tap
    CHECK(r["removed"] == true);
    CHECK(r["qdisc_left"] == false);
}

TEST_CASE("a persistent tap outlives its fd, is never taken over, and delete_taps removes only ours", "[network][netlink]") {
    json r = in_private_netns([] {
        json out;
        {
            auto tap = sys::create_tap("tap0_husk", 1500);
            if (!tap) return json{{"error", tap.error().message}};
            if (auto p = sys::persist_tap(tap->get(), ::geteuid()); !p) return json{{"error", p.error().message}};
        }
        out["persists"] = if_nametoindex("tap0_husk") != 0;
        // A second create of the name must fail, not attach to it (a pod
        // sibling's tap whose VMM has not opened it yet).
        auto again = sys::create_tap("tap0_husk", 1500);
        out["exclusive"] = !again && again.error().code == EBUSY;
        // A VMM without CAP_NET_ADMIN attaches by name as the owner.
        // (ip, not /sys: sysfs shows the netns that mounted it.)
        FILE* ip = popen("ip -d link show tap0_husk", "r");
        if (!ip) return json{{"error", "popen"}};
        char buf[4096] = {};
        size_t n = fread(buf, 1, sizeof buf - 1, ip);
        pclose(ip);
        std::string d(buf, n);
        out["details"] = d;
        struct passwd* pw = getpwuid(::geteuid());  // ip prints the owner's name
        std::string who = pw ? pw->pw_name : std::to_string(::geteuid());
        out["persist_owner"] = d.find("persist on user " + who + " ") != std::string::npos;
        if (system("ip tuntap add dev tapx mode tap") != 0) return json{{"error", "ip tuntap"}};
        sys::delete_taps({"tap0_husk", "tapx", "tap9_husk"});  // tapx is not ours; tap9_husk is not there
        out["deleted"] = if_nametoindex("tap0_husk") == 0;
        out["others_kept"] = if_nametoindex("tapx") != 0;
        return out;
    });
    REQUIRE_FALSE(r.contains("error"));
    CHECK(r["persists"] == true);
    CHECK(r["exclusive"] == true);
    INFO(r["details"]);
    CHECK(r["persist_owner"] == true);
    CHECK(r["deleted"] == true);
    CHECK(r["others_kept"] == true);
}
