#include "sys/netlink.h"

// net/if.h before any linux/ header that pulls in linux/if.h.
#include <net/if.h>
// clang-format off
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_arp.h>
#include <linux/if_ether.h>
#include <linux/if_tun.h>
#include <linux/pkt_cls.h>
#include <linux/tc_act/tc_mirred.h>
#include <netlink/netlink.h>
#include <netlink/route/act/mirred.h>
#include <netlink/route/action.h>
#include <netlink/route/addr.h>
#include <netlink/route/classifier.h>
#include <netlink/route/cls/u32.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/route.h>
#include <netlink/route/tc.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
// clang-format on

#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "sys/sys.h"

namespace husk::sys {

namespace {

// RAII for libnl's reference-counted objects.
template <typename T, void (*F)(T*)>
struct Put {
    void operator()(T* p) const {
        if (p) F(p);
    }
};
using Sock = std::unique_ptr<nl_sock, Put<nl_sock, nl_socket_free>>;
using Cache = std::unique_ptr<nl_cache, Put<nl_cache, nl_cache_free>>;
using Addr = std::unique_ptr<nl_addr, Put<nl_addr, nl_addr_put>>;
using Link = std::unique_ptr<rtnl_link, Put<rtnl_link, rtnl_link_put>>;
using IfAddr = std::unique_ptr<rtnl_addr, Put<rtnl_addr, rtnl_addr_put>>;
using Route = std::unique_ptr<rtnl_route, Put<rtnl_route, rtnl_route_put>>;
using Qdisc = std::unique_ptr<rtnl_qdisc, Put<rtnl_qdisc, rtnl_qdisc_put>>;
using Cls = std::unique_ptr<rtnl_cls, Put<rtnl_cls, rtnl_cls_put>>;
using Act = std::unique_ptr<rtnl_act, Put<rtnl_act, rtnl_act_put>>;

tl::unexpected<Error> nl_fail(const std::string& what, int err) {
    return fail(what + ": " + nl_geterror(err), EIO);
}

Result<Sock> connect() {
    Sock s(nl_socket_alloc());
    if (!s) return fail("netlink: out of memory", ENOMEM);
    if (int e = nl_connect(s.get(), NETLINK_ROUTE); e < 0) return nl_fail("netlink connect", e);
    return s;
}

// "10.0.0.2/24", "fd00::2/64"; without the prefix when `prefix` is false.
std::string addr_str(nl_addr* a, bool prefix) {
    char buf[INET6_ADDRSTRLEN] = "";
    if (!a || !inet_ntop(nl_addr_get_family(a), nl_addr_get_binary_addr(a), buf, sizeof buf)) return "";
    std::string s = buf;
    if (prefix) s += "/" + std::to_string(nl_addr_get_prefixlen(a));
    return s;
}

std::string mac_str(nl_addr* a) {
    char buf[32] = "";
    return a ? nl_addr2str(a, buf, sizeof buf) : "";
}

Result<Addr> parse_addr(const std::string& s, int family) {
    nl_addr* a = nullptr;
    if (int e = nl_addr_parse(s.c_str(), family, &a); e < 0) return nl_fail("address " + s, e);
    return Addr(a);
}

int ifindex(const std::string& name) { return int(if_nametoindex(name.c_str())); }

bool ours(const std::string& name) {
    return name.size() > 5 && name.compare(name.size() - 5, 5, "_husk") == 0;
}

template <typename T, typename F>
void each(nl_cache* c, F f) {
    for (nl_object* o = nl_cache_get_first(c); o; o = nl_cache_get_next(o)) f(reinterpret_cast<T*>(o));
}

}  // namespace

Result<std::vector<NetInterface>> scan_interfaces() {
    auto sk = TRY(connect());
    nl_cache *lc = nullptr, *ac = nullptr, *rc = nullptr;
    if (int e = rtnl_link_alloc_cache(sk.get(), AF_UNSPEC, &lc); e < 0) return nl_fail("list links", e);
    Cache links(lc);
    if (int e = rtnl_addr_alloc_cache(sk.get(), &ac); e < 0) return nl_fail("list addresses", e);
    Cache addrs(ac);
    if (int e = rtnl_route_alloc_cache(sk.get(), AF_UNSPEC, 0, &rc); e < 0) return nl_fail("list routes", e);
    Cache routes(rc);

    std::vector<NetInterface> out;
    std::map<int, size_t> by_index;
    each<rtnl_link>(links.get(), [&](rtnl_link* l) {
        std::string name = rtnl_link_get_name(l) ? rtnl_link_get_name(l) : "";
        if (rtnl_link_get_arptype(l) != ARPHRD_ETHER || ours(name)) return;
        NetInterface i;
        i.name = name;
        i.mac = mac_str(rtnl_link_get_addr(l));
        i.mtu = rtnl_link_get_mtu(l);
        i.up = rtnl_link_get_flags(l) & IFF_UP;
        by_index[rtnl_link_get_ifindex(l)] = out.size();
        out.push_back(std::move(i));
    });
    each<rtnl_addr>(addrs.get(), [&](rtnl_addr* a) {
        auto it = by_index.find(rtnl_addr_get_ifindex(a));
        if (it == by_index.end()) return;
        if (rtnl_addr_get_family(a) == AF_INET6 && rtnl_addr_get_scope(a) == RT_SCOPE_LINK) return;
        std::string s = addr_str(rtnl_addr_get_local(a), false);
        if (!s.empty()) out[it->second].addresses.push_back(s + "/" + std::to_string(rtnl_addr_get_prefixlen(a)));
    });
    each<rtnl_route>(routes.get(), [&](rtnl_route* r) {
        if (rtnl_route_get_table(r) != RT_TABLE_MAIN || rtnl_route_get_type(r) != RTN_UNICAST) return;
        if (rtnl_route_get_protocol(r) == RTPROT_KERNEL || rtnl_route_get_nnexthops(r) != 1) return;
        rtnl_nexthop* nh = rtnl_route_nexthop_n(r, 0);
        auto it = by_index.find(rtnl_route_nh_get_ifindex(nh));
        if (it == by_index.end()) return;
        NetRoute nr;
        nr.family = rtnl_route_get_family(r);
        nl_addr* dst = rtnl_route_get_dst(r);
        nr.dst = !dst || nl_addr_get_prefixlen(dst) == 0 ? "default" : addr_str(dst, true);
        nr.gateway = addr_str(rtnl_route_nh_get_gateway(nh), false);
        nr.scope = rtnl_route_get_scope(r);
        nr.metric = rtnl_route_get_priority(r);
        // IPv6 link-local and multicast routes come with every IPv6 link.
        if (nr.family == AF_INET6 && (nr.dst.rfind("fe80:", 0) == 0 || nr.dst.rfind("ff00:", 0) == 0)) return;
        out[it->second].routes.push_back(nr);
    });
    for (auto& i : out) order_routes(i.routes);
    return out;
}

Result<Fd> create_tap(const std::string& name, unsigned mtu) {
    auto fd = TRY(open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    struct ifreq ifr = {};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name.c_str());
    // IFF_TUN_EXCL: never someone else's (0x8000: the short's sign bit).
    ifr.ifr_flags = static_cast<short>(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL);
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) return fail_errno("create tap " + name);
    // The netns's own stack has no business on the tap: no IPv6 autoconf
    // chatter towards the guest.
    (void)write_file("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6", "1");
    Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s) return fail_errno("socket");
    ifr.ifr_mtu = int(mtu);
    if (::ioctl(s.get(), SIOCSIFMTU, &ifr) < 0) return fail_errno("tap " + name + ": set mtu " + std::to_string(mtu));
    if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) < 0) return fail_errno("tap " + name + ": get flags");
    ifr.ifr_flags = short(ifr.ifr_flags | IFF_UP);
    if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) < 0) return fail_errno("tap " + name + ": up");
    return fd;
}

Result<void> persist_tap(int fd, uid_t owner) {
    if (::ioctl(fd, TUNSETOWNER, static_cast<unsigned long>(owner)) < 0) return fail_errno("tap: set owner");
    if (::ioctl(fd, TUNSETPERSIST, 1) < 0) return fail_errno("tap: make persistent");
    return {};
}

void delete_taps(const std::vector<std::string>& names) {
    auto sk = connect();
    if (!sk) return;
    for (const auto& name : names) {
        if (!ours(name) || !ifindex(name)) continue;
        Link l(rtnl_link_alloc());
        if (!l) return;
        rtnl_link_set_name(l.get(), name.c_str());
        (void)rtnl_link_delete(sk->get(), l.get());
    }
}

// The ingress qdisc's handle, and so the parent of every filter on it.
constexpr uint32_t kIngress = TC_HANDLE(0xffff, 0);

// Link `idx`'s ingress qdisc, named as adding and deleting it need.
static Result<Qdisc> ingress_qdisc(int idx) {
    Qdisc q(rtnl_qdisc_alloc());
    if (!q) return fail("netlink: out of memory", ENOMEM);
    rtnl_tc_set_ifindex(TC_CAST(q.get()), idx);
    rtnl_tc_set_parent(TC_CAST(q.get()), TC_H_INGRESS);
    rtnl_tc_set_handle(TC_CAST(q.get()), kIngress);
    if (int e = rtnl_tc_set_kind(TC_CAST(q.get()), "ingress"); e < 0) return nl_fail("ingress qdisc", e);
    return q;
}

// Our filter on link `idx`'s ingress (priority kRedirectPrio, every
// protocol), named as adding and deleting it need.
static Result<Cls> our_filter(int idx) {
    Cls c(rtnl_cls_alloc());
    if (!c) return fail("netlink: out of memory", ENOMEM);
    rtnl_tc_set_ifindex(TC_CAST(c.get()), idx);
    rtnl_tc_set_parent(TC_CAST(c.get()), kIngress);
    rtnl_cls_set_prio(c.get(), kRedirectPrio);
    rtnl_cls_set_protocol(c.get(), ETH_P_ALL);
    return c;
}

// Every filter on link `idx`'s ingress.
static Result<Cache> ingress_filters(nl_sock* sk, int idx) {
    nl_cache* cc = nullptr;
    if (int e = rtnl_cls_alloc_cache(sk, idx, kIngress, &cc); e < 0) return nl_fail("list filters", e);
    return Cache(cc);
}

static Result<void> redirect(nl_sock* sk, const std::string& from, const std::string& to) {
    int fi = ifindex(from), ti = ifindex(to);
    if (!fi) return fail_errno("link " + from);
    if (!ti) return fail_errno("link " + to);
    auto q = TRY(ingress_qdisc(fi));
    if (int e = rtnl_qdisc_add(sk, q.get(), NLM_F_CREATE); e < 0 && e != -NLE_EXIST)
        return nl_fail("add ingress qdisc on " + from, e);

    Act a(rtnl_act_alloc());
    if (!a) return fail("netlink: out of memory", ENOMEM);
    if (int e = rtnl_tc_set_kind(TC_CAST(a.get()), "mirred"); e < 0) return nl_fail("mirred action", e);
    rtnl_mirred_set_action(a.get(), TCA_EGRESS_REDIR);
    rtnl_mirred_set_policy(a.get(), TC_ACT_STOLEN);
    rtnl_mirred_set_ifindex(a.get(), uint32_t(ti));
    auto c = TRY(our_filter(fi));
    // u32 with one empty key matches everything; matchall would say so
    // more plainly but is not in every kernel (not in this one).
    if (int e = rtnl_tc_set_kind(TC_CAST(c.get()), "u32"); e < 0) return nl_fail("u32 filter", e);
    if (int e = rtnl_u32_add_key_uint32(c.get(), 0, 0, 0, 0); e < 0) return nl_fail("u32 filter", e);
    if (int e = rtnl_u32_set_cls_terminal(c.get()); e < 0) return nl_fail("u32 filter", e);
    if (int e = rtnl_u32_add_action(c.get(), a.get()); e < 0) return nl_fail("u32 filter", e);
    if (int e = rtnl_cls_add(sk, c.get(), NLM_F_CREATE | NLM_F_EXCL); e < 0)
        return nl_fail("redirect " + from + " to " + to, e);
    return {};
}

Result<void> redirect_both_ways(const std::string& a, const std::string& b) {
    auto sk = TRY(connect());
    TRY(redirect(sk.get(), a, b));
    TRY(redirect(sk.get(), b, a));
    return {};
}

bool has_redirect(const std::string& link) {
    auto sk = connect();
    int idx = ifindex(link);
    if (!sk || !idx) return false;
    auto filters = ingress_filters(sk->get(), idx);
    if (!filters) return false;
    bool found = false;
    each<rtnl_cls>(filters->get(), [&](rtnl_cls* c) { found |= rtnl_cls_get_prio(c) == kRedirectPrio; });
    return found;
}

void remove_redirects(const std::vector<std::string>& links) {
    auto sk = connect();
    if (!sk) return;
    for (const auto& name : links) {
        int idx = ifindex(name);
        if (!idx) continue;
        if (auto c = our_filter(idx)) (void)rtnl_cls_delete(sk->get(), c->get(), 0);
        auto left = ingress_filters(sk->get(), idx);
        if (!left || nl_cache_nitems(left->get()) > 0) continue;
        if (auto q = ingress_qdisc(idx)) (void)rtnl_qdisc_delete(sk->get(), q->get());
    }
}

// ---------------------------------------------------------------- guest

static Result<int> wait_for_mac(nl_sock* sk, const std::string& mac, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        nl_cache* lc = nullptr;
        if (int e = rtnl_link_alloc_cache(sk, AF_UNSPEC, &lc); e < 0) return nl_fail("list links", e);
        Cache links(lc);
        int found = 0;
        each<rtnl_link>(links.get(), [&](rtnl_link* l) {
            if (mac_str(rtnl_link_get_addr(l)) == mac) found = rtnl_link_get_ifindex(l);
        });
        if (found) return found;
        if (std::chrono::steady_clock::now() > deadline) return fail("no NIC with MAC " + mac + " appeared", ENODEV);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

// Link `idx` as the kernel has it, changed by `edit(orig, change)`, which
// says what it changed (for the error).
template <typename F>
static Result<void> change_link(nl_sock* sk, int idx, F edit) {
    Link orig, change(rtnl_link_alloc());
    rtnl_link* o = nullptr;
    if (int e = rtnl_link_get_kernel(sk, idx, nullptr, &o); e < 0) return nl_fail("link " + std::to_string(idx), e);
    orig.reset(o);
    std::string what = edit(o, change.get());
    if (int e = rtnl_link_change(sk, orig.get(), change.get(), 0); e < 0) return nl_fail(what, e);
    return {};
}

static Result<void> set_link(nl_sock* sk, int idx, const std::string& name, unsigned mtu, bool up) {
    return change_link(sk, idx, [&](rtnl_link* o, rtnl_link* change) {
        if (name != rtnl_link_get_name(o)) rtnl_link_set_name(change, name.c_str());
        if (mtu) rtnl_link_set_mtu(change, mtu);
        if (up) rtnl_link_set_flags(change, IFF_UP);
        return name + ": set name" + (mtu ? ", mtu " + std::to_string(mtu) : "") + (up ? ", up" : "");
    });
}

Result<void> set_macs(const std::vector<std::pair<std::string, std::string>>& macs, int timeout_ms) {
    auto sk = TRY(connect());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (const auto& pair : macs) {
        const std::string& to = pair.second;  // (a named reference: clang 14 cannot capture a structured binding)
        int idx = TRY(wait_for_mac(sk.get(), pair.first, deadline));
        auto mac = TRY(parse_addr(to, AF_LLC));
        TRY(change_link(sk.get(), idx, [&](rtnl_link* o, rtnl_link* change) {
            rtnl_link_set_addr(change, mac.get());
            return std::string(rtnl_link_get_name(o)) + ": set MAC " + to;
        }));
    }
    return {};
}

Result<void> configure_interfaces(const std::vector<NetInterface>& ifs, int timeout_ms) {
    auto sk = TRY(connect());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    // A guest kernel without IPv6 (UML's, when its module would not load)
    // gets the IPv4 part; the agent has said why.
    bool v6 = exists("/proc/sys/net/ipv6");
    // Out of the way first: the guest kernel's own "eth0" may be the NIC
    // that is to be called "eth1". Renaming needs the link down.
    std::vector<int> index;
    for (size_t n = 0; n < ifs.size(); ++n) {
        int idx = TRY(wait_for_mac(sk.get(), ifs[n].mac, deadline));
        TRY(set_link(sk.get(), idx, "husk" + std::to_string(n), 0, false));
        index.push_back(idx);
    }
    for (size_t n = 0; n < ifs.size(); ++n) {
        const auto& i = ifs[n];
        int idx = index[n];
        TRY(set_link(sk.get(), idx, i.name, i.mtu, false));
        for (const auto& cidr : i.addresses) {
            IfAddr a(rtnl_addr_alloc());
            auto local = TRY_CTX(parse_addr(cidr, AF_UNSPEC), i.name);
            if (nl_addr_get_family(local.get()) == AF_INET6 && !v6) continue;
            rtnl_addr_set_ifindex(a.get(), idx);
            if (int e = rtnl_addr_set_local(a.get(), local.get()); e < 0) return nl_fail(i.name + ": " + cidr, e);
            // The host interface already owns the address: nothing to detect.
            if (nl_addr_get_family(local.get()) == AF_INET6) rtnl_addr_set_flags(a.get(), IFA_F_NODAD);
            if (int e = rtnl_addr_add(sk.get(), a.get(), 0); e < 0 && e != -NLE_EXIST)
                return nl_fail(i.name + ": add address " + cidr, e);
        }
        if (i.up) TRY(set_link(sk.get(), idx, i.name, 0, true));
    }
    for (size_t n = 0; n < ifs.size(); ++n) {
        if (!ifs[n].up) continue;
        for (const auto& r : ifs[n].routes) {
            if (r.family == AF_INET6 && !v6) continue;
            Route rt(rtnl_route_alloc());
            auto dst = TRY_CTX(parse_addr(r.dst, r.family), ifs[n].name + ": route");
            rtnl_route_set_family(rt.get(), uint8_t(r.family));
            rtnl_route_set_table(rt.get(), RT_TABLE_MAIN);
            rtnl_route_set_protocol(rt.get(), RTPROT_BOOT);
            rtnl_route_set_scope(rt.get(), uint8_t(r.scope));
            if (r.metric) rtnl_route_set_priority(rt.get(), r.metric);
            if (int e = rtnl_route_set_dst(rt.get(), dst.get()); e < 0) return nl_fail(ifs[n].name + ": route " + r.dst, e);
            rtnl_nexthop* nh = rtnl_route_nh_alloc();
            rtnl_route_nh_set_ifindex(nh, index[n]);
            if (!r.gateway.empty()) {
                auto gw = TRY_CTX(parse_addr(r.gateway, r.family), ifs[n].name + ": route");
                rtnl_route_nh_set_gateway(nh, gw.get());
            }
            rtnl_route_add_nexthop(rt.get(), nh);  // the route owns it now
            if (int e = rtnl_route_add(sk.get(), rt.get(), NLM_F_CREATE); e < 0 && e != -NLE_EXIST)
                return nl_fail(ifs[n].name + ": route " + r.dst + (r.gateway.empty() ? "" : " via " + r.gateway), e);
        }
    }
    return {};
}

}  // namespace husk::sys
