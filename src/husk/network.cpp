#include "husk/network.h"

#include <sys/socket.h>

#include <algorithm>
#include <cctype>

#include "protocol/decode.h"

namespace husk {

using nlohmann::json;
using proto::bad_field;
using proto::Object;

std::string tap_name(size_t index) { return "tap" + std::to_string(index) + "_husk"; }

json interfaces_to_json(const std::vector<NetInterface>& ifs) {
    json out = json::array();
    for (const auto& i : ifs) {
        json routes = json::array();
        for (const auto& r : i.routes) {
            json jr = {{"family", r.family == AF_INET6 ? "inet6" : "inet"}, {"dst", r.dst}};
            if (!r.gateway.empty()) jr["gateway"] = r.gateway;
            if (r.scope) jr["scope"] = r.scope;
            if (r.metric) jr["metric"] = r.metric;
            routes.push_back(jr);
        }
        out.push_back({{"name", i.name}, {"mac", i.mac}, {"mtu", i.mtu}, {"up", i.up},
                       {"addresses", i.addresses}, {"routes", routes}});
    }
    return out;
}

Result<void> get(const json& v, const std::string& at, NetRoute& out) {
    auto o = TRY(Object::of(v, at));
    std::string family;
    TRY(o.req("family", family));
    if (family != "inet" && family != "inet6") return bad_field(at + ".family", "must be inet or inet6");
    out.family = family == "inet6" ? AF_INET6 : AF_INET;
    TRY(o.req("dst", out.dst));
    TRY(o.opt("gateway", out.gateway));
    TRY(o.opt("scope", out.scope));
    TRY(o.opt("metric", out.metric));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, NetInterface& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("name", out.name));
    TRY(o.req("mac", out.mac));
    TRY(o.req("mtu", out.mtu));
    TRY(o.req("up", out.up));
    TRY(o.req("addresses", out.addresses));
    TRY(o.req("routes", out.routes));
    if (out.name.empty() || out.name.size() > 15 || out.name.find_first_of("/ \t\n:") != std::string::npos)
        return bad_field(at + ".name", "not an interface name: \"" + out.name + "\"");
    bool mac = out.mac.size() == 17;
    for (size_t k = 0; mac && k < out.mac.size(); ++k)
        mac = k % 3 == 2 ? out.mac[k] == ':' : std::isxdigit(static_cast<unsigned char>(out.mac[k])) != 0;
    if (!mac) return bad_field(at + ".mac", "not a MAC address: \"" + out.mac + "\"");
    if (out.mtu < 68 || out.mtu > 65535) return bad_field(at + ".mtu", "out of range");
    return o.end();
}

Result<std::vector<NetInterface>> interfaces_from_json(const json& j) {
    return proto::decode<std::vector<NetInterface>>(j, "network");
}

void order_routes(std::vector<NetRoute>& routes) {
    std::stable_sort(routes.begin(), routes.end(),
                     [](const NetRoute& a, const NetRoute& b) { return a.gateway.empty() && !b.gateway.empty(); });
}

}  // namespace husk
