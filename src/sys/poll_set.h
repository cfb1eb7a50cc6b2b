// One round of an event loop: each fd is added with what it is for (a tag
// of the loop's own), the set is waited on once, and the loop visits the
// ready ones by index. The shim's loop and the agent's are built on it.
// (Not sys/poll.h: that is the C library's header, which <poll.h> includes.)
#pragma once
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "husk/result.h"

namespace husk::sys {

template <class Tag>
class PollSet {
public:
    void add(int fd, short events, Tag tag) {
        fds_.push_back({fd, events, 0});
        tags_.push_back(tag);
    }
    // Up to timeout_ms (-1: no limit): how many fds are ready, 0 on a
    // timeout or a signal.
    Result<int> wait(int timeout_ms) {
        int n = ::poll(fds_.data(), fds_.size(), timeout_ms);
        if (n < 0 && errno == EINTR) return 0;
        if (n < 0) return fail_errno("poll");
        return n;
    }
    size_t size() const { return fds_.size(); }
    short revents(size_t i) const { return fds_[i].revents; }
    int fd(size_t i) const { return fds_[i].fd; }
    const Tag& tag(size_t i) const { return tags_[i]; }

private:
    std::vector<pollfd> fds_;
    std::vector<Tag> tags_;
};

// The sooner of two poll timeouts in ms (-1: none).
inline int sooner(int a, int b) { return a < 0 ? b : b < 0 ? a : std::min(a, b); }

}  // namespace husk::sys
