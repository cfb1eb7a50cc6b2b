// The container's network as the VM gets it: the interfaces found in the
// container's network namespace on the host, each carried into the guest
// by a tap + tc redirect and a virtio-net NIC with the same MAC and MTU,
// and configured there by the agent with the addresses and routes the
// host interface had. This file is the hypervisor- and netlink-free model
// and its wire form in the agent's create request.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk {

struct NetRoute {
    int family = 0;            // AF_INET or AF_INET6
    std::string dst;           // "default" or an address/prefix
    std::string gateway;       // empty for a directly connected route
    int scope = 0;             // RT_SCOPE_*
    uint32_t metric = 0;
    bool operator==(const NetRoute&) const = default;
};

struct NetInterface {
    std::string name;          // as in the container's netns ("eth0")
    std::string mac;           // aa:bb:cc:dd:ee:ff, lower case
    unsigned mtu = 1500;
    bool up = true;
    std::vector<std::string> addresses;  // address/prefix, IPv4 and IPv6
    std::vector<NetRoute> routes;        // connected routes first
    bool operator==(const NetInterface&) const = default;
};

// The host's side of one interface: the tap the VMM reads, named per
// index, and how the shim's state remembers what to undo.
std::string tap_name(size_t index);
inline constexpr uint16_t kRedirectPrio = 0xc0de;  // our tc filter's priority

nlohmann::json interfaces_to_json(const std::vector<NetInterface>& ifs);
// Strict (protocol/decode.h): the agent configures nothing from a
// malformed list.
Result<std::vector<NetInterface>> interfaces_from_json(const nlohmann::json& j);
Result<void> get(const nlohmann::json& v, const std::string& at, NetInterface& out);
Result<void> get(const nlohmann::json& v, const std::string& at, NetRoute& out);

// Routes in an order the kernel accepts: a gateway must be reachable
// through a route added before it (connected routes, then the rest).
void order_routes(std::vector<NetRoute>& routes);

}  // namespace husk
