// --preserve-fds N: fds 3..3+N-1 of the caller, passed to the container's
// process at the same numbers (runc's contract). A VM cannot share a host
// fd, so each is relayed like stdio: a pipe in the guest for an fd the
// host opened read-only or write-only, a socketpair for one opened
// read-write. What cannot be a stream (a listening socket, a directory,
// an O_PATH fd) is refused by name before anything starts.
#pragma once
#include <sys/types.h>

#include <vector>

#include "husk/result.h"
#include "protocol/protocol.h"

namespace husk {

// Fds 3..255: a stream id carries 8 bits of fd.
using proto::kFirstPreservedFd;
using proto::kMaxPreservedFds;

// The flow of an fd from its open flags (O_ACCMODE and O_PATH), its file
// type and whether it is a listening socket. Pure: unit-tested.
Result<proto::Flow> fd_flow(int fd, int open_flags, mode_t type, bool listening);
// The same, asked of the fd itself; errors name it `shown` (the number
// the container sees) when that is given.
Result<proto::Flow> fd_flow(int fd, int shown = -1);
// The flows of fds first..first+n-1 (the caller's, before anything starts),
// or an error naming the first that cannot be relayed.
Result<std::vector<proto::Flow>> preserved_fd_flows(int n, int first = kFirstPreservedFd);
// The fds themselves: first..first+n-1.
std::vector<int> preserved_fds(int n, int first = kFirstPreservedFd);

}  // namespace husk
