// One round of poll(2) over fds, each tagged with what it is to its loop:
// the shim's and the agent's loops build one a round (what they wait for
// changes with their state), wait, then walk what is ready.
#pragma once
#include <poll.h>

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
    // How many are ready; 0 on a timeout or a signal.
    Result<int> wait(int timeout_ms) {
        int n = ::poll(fds_.data(), fds_.size(), timeout_ms);
        if (n < 0 && errno != EINTR) return fail_errno("poll");
        return n < 0 ? 0 : n;
    }
    size_t size() const { return fds_.size(); }
    int fd(size_t i) const { return fds_[i].fd; }
    short revents(size_t i) const { return fds_[i].revents; }
    const Tag& tag(size_t i) const { return tags_[i]; }

private:
    std::vector<pollfd> fds_;
    std::vector<Tag> tags_;
};

}  // namespace husk::sys
