#include "husk/network.h"

#include <sys/socket.h>

#include <algorithm>
#include <cctype>

namespace husk {

using nlohmann::json;

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

static bool valid_mac(const std::string& m) {
    if (m.size() != 17) return false;
    for (size_t k = 0; k < m.size(); ++k) {
        bool sep = k % 3 == 2;
        if (sep != (m[k] == ':')) return false;
        if (!sep && !std::isxdigit(static_cast<unsigned char>(m[k]))) return false;
    }
    return true;
}

Result<std::vector<NetInterface>> interfaces_from_json(const json& j) {
    if (!j.is_array()) return fail("network: expected an array", EINVAL);
    std::vector<NetInterface> out;
    for (size_t n = 0; n < j.size(); ++n) {
        const auto& e = j[n];
        std::string at = "network[" + std::to_string(n) + "]";
        try {
            NetInterface i;
            i.name = e.at("name").get<std::string>();
            i.mac = e.at("mac").get<std::string>();
            i.mtu = e.at("mtu").get<unsigned>();
            i.up = e.at("up").get<bool>();
            i.addresses = e.at("addresses").get<std::vector<std::string>>();
            if (i.name.empty() || i.name.size() > 15 || i.name.find_first_of("/ \t\n:") != std::string::npos)
                return fail(at + ".name: not an interface name: \"" + i.name + "\"", EINVAL);
            if (!valid_mac(i.mac)) return fail(at + ".mac: not a MAC address: \"" + i.mac + "\"", EINVAL);
            if (i.mtu < 68 || i.mtu > 65535) return fail(at + ".mtu: out of range", EINVAL);
            for (const auto& r : e.at("routes")) {
                NetRoute nr;
                auto fam = r.at("family").get<std::string>();
                if (fam != "inet" && fam != "inet6") return fail(at + ".routes: family must be inet or inet6", EINVAL);
                nr.family = fam == "inet6" ? AF_INET6 : AF_INET;
                nr.dst = r.at("dst").get<std::string>();
                nr.gateway = r.value("gateway", "");
                nr.scope = r.value("scope", 0);
                nr.metric = r.value("metric", 0u);
                i.routes.push_back(nr);
            }
            out.push_back(std::move(i));
        } catch (const json::exception& ex) {
            return fail(at + ": " + ex.what(), EINVAL);
        }
    }
    return out;
}

void order_routes(std::vector<NetRoute>& routes) {
    std::stable_sort(routes.begin(), routes.end(),
                     [](const NetRoute& a, const NetRoute& b) { return a.gateway.empty() && !b.gateway.empty(); });
}

}  // namespace husk
