// Network plumbing through rtnetlink (libnl-route), for both sides of the
// VM: the shim reads the container's netns and wires taps to it; the agent
// configures the guest's NICs. Everything acts on the calling thread's
// current network namespace.
#pragma once
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "husk/network.h"
#include "husk/result.h"
#include "sys/fd.h"

namespace husk::sys {

// The Ethernet interfaces of this namespace (our own taps excepted), with
// their addresses and the routes through them. Routes the kernel derives
// from an address (proto kernel) and link-local IPv6 addresses are left
// out: the guest's kernel makes its own.
Result<std::vector<NetInterface>> scan_interfaces();

// A tap named `name`, up, with `mtu`, IPv6 off, with virtio-net headers.
// Not persistent: it vanishes with the last fd, i.e. with the shim and VMM.
// A tap of that name already there: EBUSY.
Result<Fd> create_tap(const std::string& name, unsigned mtu);

// For a VMM that opens its tap by name (UML, Firecracker, Cloud
// Hypervisor) rather than taking the fd: the tap outlives `fd`, and
// `owner` (a VMM that has no CAP_NET_ADMIN) may attach to it. Whoever
// made it must delete_taps it.
Result<void> persist_tap(int fd, uid_t owner);

// Delete these taps (ours only: names ending in _husk). Gone is fine.
void delete_taps(const std::vector<std::string>& names);

// Everything that arrives on `a` leaves by `b` and the other way round:
// an ingress qdisc on each with a match-everything u32 filter (priority
// kRedirectPrio) whose mirred action redirects to the other's egress.
Result<void> redirect_both_ways(const std::string& a, const std::string& b);

// Whether `link` already carries our redirect (another VM has it).
bool has_redirect(const std::string& link);

// Take our filters off these links, and their ingress qdisc once no other
// filter is left on it. Links that are gone are fine.
void remove_redirects(const std::vector<std::string>& links);

// Guest: wait for a NIC with each interface's MAC, then give it the name,
// MTU, addresses and state, and add the routes once every link is up.
Result<void> configure_interfaces(const std::vector<NetInterface>& ifs, int timeout_ms);

// Guest: give the NIC with each pair's first MAC the second (a template's
// NICs, which it holds with MACs of its own, become a container's).
Result<void> set_macs(const std::vector<std::pair<std::string, std::string>>& macs, int timeout_ms);

}  // namespace husk::sys
