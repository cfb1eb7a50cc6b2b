// The guest's boot, as PID 1: devtmpfs/proc/sys, the modules the command
// line asks for, a tmpfs root instead of the initramfs, the share, the
// channel. A guest booted as a template (husk.template=1) stops before
// the share and waits for attach(), the first thing its host asks.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "husk/result.h"
#include "protocol/boot.h"
#include "protocol/messages.h"
#include "sys/fd.h"

namespace husk::agent {

extern bool g_debug;
// A line on the console, under husk.debug=1 (or an attach's debug).
void say(const std::string& m);
// The message on the console, and the VM powers off (PID 1).
[[noreturn]] void fatal(const std::string& m);
// The husk.* words of /proc/cmdline (protocol/boot.h), strictly.
Result<proto::BootParams> boot_params();

Result<void> early_init();
Result<sys::Fd> open_serial_channel();
Result<sys::Fd> open_tty_channel(const std::string& name);
Result<sys::Fd> open_vsock_channel();
// A template on another channel listens on vsock too, with no device yet:
// a clone that is given one (QEMU's husk-vsock, plugged in once restored)
// is dialled there, and the agent takes that connection as its channel
// (redial_listener).
Result<void> listen_vsock_for_clones();

Result<void> load_module(const std::string& path);
// Where the modules loaded on demand (virtio_mem) are kept once the
// initramfs is gone: the agent's own root, which no container sees.
inline constexpr const char* kLateModules = "/lib/husk-modules";
// Each cpuN of sysfs but the boot CPU (which has no online file), in order.
std::vector<std::pair<unsigned, std::string>> cpu_online_files();

// Booted as a template, and not attached yet.
bool template_boot();
// A vsock channel's listening socket while a new host may dial (-1: none,
// or not now): a template's, until it is attached, and any agent's while a
// checkpoint has it quiesced. A restored clone's or checkpoint's host
// connects anew (its VMM resets the saved connection, or leaves it dead),
// and that connection is the channel from then on.
int redial_listener(bool quiesced);
Result<void> attach(const proto::Attach& p);

}  // namespace husk::agent
