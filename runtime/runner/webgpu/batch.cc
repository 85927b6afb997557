// batch.cc — the pending batch of dispatches and its submission, timestamp queries, and copies
// between the host and the device (context.h says how work is batched).

#include <cstdio>
#include <cstring>

#include "context.h"

namespace edgesmith {
namespace wgpu {

using Lock = std::lock_guard<std::recursive_mutex>;

// ---------------------------------------------------------------------------- the batch

WGPUCommandEncoder Context::encoder() {
  if (!pending_) pending_ = api().wgpuDeviceCreateCommandEncoder(device, nullptr);
  return pending_;
}

void Context::flush() {
  Lock lock(mu_);
  if (!pending_) return;
  const Api& w = api();
  if (!arena_host_.empty()) w.wgpuQueueWriteBuffer(queue, arena_, 0, arena_host_.data(), arena_host_.size());
  uint32_t timed = uint32_t(timed_.size());
  if (timed) {  // the batch's timestamps into a buffer the host can map, after its last pass
    w.wgpuCommandEncoderResolveQuerySet(pending_, queries_, 0, 2 * timed, query_resolve_, 0);
    w.wgpuCommandEncoderCopyBufferToBuffer(pending_, query_resolve_, 0, query_read_, 0, 16 * uint64_t(timed));
  }
  WGPUCommandBuffer commands = w.wgpuCommandEncoderFinish(pending_, nullptr);
  w.wgpuCommandEncoderRelease(pending_);
  pending_ = nullptr;
  w.wgpuQueueSubmit(queue, 1, &commands);
  w.wgpuCommandBufferRelease(commands);
  arena_host_.clear();
  for (WGPUBindGroup g : used_groups_) w.wgpuBindGroupRelease(g);
  used_groups_.clear();
  ++submits_;
  check_uncaptured();
  if (timed) read_timestamps();
}

void Context::sync() {
  Lock lock(mu_);
  note_host_wait();
  flush();
  api().wgpuDevicePoll(device, true, nullptr);
  check_uncaptured();
}

void Context::dispatch(const std::string& kernel, WGPUComputePipeline pipeline, WGPUBindGroupLayout layout,
                       const std::vector<WGPUBuffer>& buffers, const std::vector<uint32_t>& pod, const uint32_t grid[3]) {
  Lock lock(mu_);
  const Api& w = api();
  size_t pod_bytes = (pod.size() * 4 + 15) / 16 * 16;  // a uniform struct's size is a multiple of 16
  size_t slot = (pod_bytes + slot_ - 1) / slot_ * slot_;
  if (arena_host_.size() + slot > arena_capacity_) flush();
  size_t offset = arena_host_.size();
  arena_host_.resize(offset + slot, 0);
  memcpy(arena_host_.data() + offset, pod.data(), pod.size() * 4);

  std::vector<WGPUBindGroupEntry> entries(buffers.size() + 1);
  for (size_t i = 0; i < buffers.size(); ++i) {
    size_t size = size_of(buffers[i]);
    if (size > limits.maxStorageBufferBindingSize)
      fail("kernel '" + kernel + "' binds a buffer of " + mib(size) + " and '" + facts.name + "' binds at most " +
           mib(limits.maxStorageBufferBindingSize) + " (maxStorageBufferBindingSize); compile a smaller model, a "
           "shorter --context, or quantize the embedding (no --float-embedding)");
    entries[i].binding = uint32_t(i);
    entries[i].buffer = buffers[i];
    entries[i].size = size;
  }
  entries.back().binding = uint32_t(buffers.size());
  entries.back().buffer = arena_;
  entries.back().offset = offset;
  entries.back().size = pod_bytes;
  WGPUBindGroupDescriptor bg{};
  bg.layout = layout;
  bg.entryCount = entries.size();
  bg.entries = entries.data();
  WGPUBindGroup group = w.wgpuDeviceCreateBindGroup(device, &bg);
  used_groups_.push_back(group);

  if (timing_ && timed_.size() == query_pairs_) flush();
  WGPUPassTimestampWrites stamps{};
  WGPUComputePassDescriptor timed_pass{};
  if (timing_) {
    stamps.querySet = queries_;
    stamps.beginningOfPassWriteIndex = uint32_t(2 * timed_.size());
    stamps.endOfPassWriteIndex = uint32_t(2 * timed_.size() + 1);
    timed_pass.timestampWrites = &stamps;
    timed_.push_back(kernel);
  }
  WGPUComputePassEncoder pass = w.wgpuCommandEncoderBeginComputePass(encoder(), timing_ ? &timed_pass : nullptr);
  w.wgpuComputePassEncoderSetPipeline(pass, pipeline);
  w.wgpuComputePassEncoderSetBindGroup(pass, 0, group, 0, nullptr);
  w.wgpuComputePassEncoderDispatchWorkgroups(pass, grid[0], grid[1], grid[2]);
  w.wgpuComputePassEncoderEnd(pass);
  w.wgpuComputePassEncoderRelease(pass);
  ++dispatches_;
}

struct MapResult {
  bool done = false;
  WGPUMapAsyncStatus status = WGPUMapAsyncStatus_Success;
  std::string message;
};

static void on_map(WGPUMapAsyncStatus status, WGPUStringView message, void* user, void*) {
  auto* r = static_cast<MapResult*>(user);
  r->status = status, r->message = str(message), r->done = true;
}

// ---------------------------------------------------------------------------- timestamps

bool Context::set_timestamps(bool on) {
  Lock lock(mu_);
  if (on && !facts.timestamps) return false;
  flush();  // what was recorded so far is not timed
  if (on && !queries_) {
    const Api& w = api();
    WGPUQuerySetDescriptor qd{};
    qd.type = WGPUQueryType_Timestamp;
    qd.count = 2 * query_pairs_;
    queries_ = scoped("creating timestamp queries", [&] { return w.wgpuDeviceCreateQuerySet(device, &qd); });
    WGPUBufferDescriptor bd{};
    bd.size = 16 * uint64_t(query_pairs_);
    bd.usage = WGPUBufferUsage_QueryResolve | WGPUBufferUsage_CopySrc;
    query_resolve_ = scoped("a timestamp buffer", [&] { return w.wgpuDeviceCreateBuffer(device, &bd); });
    bd.usage = WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst;
    query_read_ = scoped("a timestamp read-back buffer", [&] { return w.wgpuDeviceCreateBuffer(device, &bd); });
  }
  timing_ = on;
  return true;
}

void Context::read_timestamps() {
  const Api& w = api();
  size_t n = timed_.size();
  MapResult r;
  WGPUBufferMapCallbackInfo cb{};
  cb.mode = WGPUCallbackMode_AllowProcessEvents;
  cb.callback = on_map;
  cb.userdata1 = &r;
  w.wgpuBufferMapAsync(query_read_, WGPUMapMode_Read, 0, 16 * n, cb);
  wait_for(&r.done);
  if (r.status != WGPUMapAsyncStatus_Success) fail("reading the timestamps back failed: " + r.message);
  const uint64_t* ticks = static_cast<const uint64_t*>(w.wgpuBufferGetConstMappedRange(query_read_, 0, 16 * n));
  double ns_per_tick = w.wgpuQueueGetTimestampPeriod(queue);
  for (size_t i = 0; i < n; ++i) {
    auto& [calls, seconds] = kernel_times_[timed_[i]];
    calls += 1;
    if (ticks[2 * i + 1] > ticks[2 * i]) seconds += double(ticks[2 * i + 1] - ticks[2 * i]) * ns_per_tick * 1e-9;
  }
  w.wgpuBufferUnmap(query_read_);
  timed_.clear();
}

std::string Context::take_kernel_times() {
  Lock lock(mu_);
  sync();
  std::string out = "{";
  for (const auto& [name, t] : kernel_times_) {
    char buf[64];
    snprintf(buf, sizeof(buf), "[%lld, %.9f]", static_cast<long long>(t.first), t.second);
    out += (out.size() > 1 ? ", " : "") + json_string(name) + ": " + buf;
  }
  kernel_times_.clear();
  return out + "}";
}

// ---------------------------------------------------------------------------- copies

WGPUBuffer Context::staging(size_t nbytes) {
  if (staging_ && staging_size_ >= nbytes) return staging_;
  if (staging_) api().wgpuBufferDestroy(staging_), api().wgpuBufferRelease(staging_);
  WGPUBufferDescriptor bd{};
  bd.usage = WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst;
  bd.size = std::max<size_t>(nbytes, 1 << 16);
  staging_ = scoped("allocating a " + mib(bd.size) + " read-back buffer",
                    [&] { return api().wgpuDeviceCreateBuffer(device, &bd); });
  staging_size_ = bd.size;
  return staging_;
}

void Context::to_host(void* dst, WGPUBuffer src, size_t offset, size_t nbytes) {
  Lock lock(mu_);
  if (nbytes == 0) return;
  const Api& w = api();
  size_t lo = offset / 4 * 4, hi = (offset + nbytes + 3) / 4 * 4;
  WGPUBuffer stage = staging(hi - lo);
  w.wgpuCommandEncoderCopyBufferToBuffer(encoder(), src, lo, stage, 0, hi - lo);
  note_host_wait();
  flush();  // after every dispatch before it
  MapResult r;
  WGPUBufferMapCallbackInfo cb{};
  cb.mode = WGPUCallbackMode_AllowProcessEvents;
  cb.callback = on_map;
  cb.userdata1 = &r;
  w.wgpuBufferMapAsync(stage, WGPUMapMode_Read, 0, hi - lo, cb);
  wait_for(&r.done);
  check_uncaptured();
  if (r.status != WGPUMapAsyncStatus_Success) fail("reading back from '" + facts.name + "' failed: " + r.message);
  const void* mapped = w.wgpuBufferGetConstMappedRange(stage, 0, hi - lo);
  if (!mapped) fail("reading back from '" + facts.name + "' failed: no mapped range");
  memcpy(dst, static_cast<const char*>(mapped) + (offset - lo), nbytes);
  w.wgpuBufferUnmap(stage);
}

void Context::to_device(WGPUBuffer dst, size_t offset, const void* src, size_t nbytes) {
  Lock lock(mu_);
  if (nbytes == 0) return;
  // A queue write runs before the next submission: the dispatches recorded so far go first.
  flush();
  if (offset % 4 == 0 && nbytes % 4 == 0) {
    api().wgpuQueueWriteBuffer(queue, dst, offset, src, nbytes);
    return;
  }
  // WebGPU writes whole 4-byte words: read the edge words back and write the span around.
  size_t lo = offset / 4 * 4, hi = (offset + nbytes + 3) / 4 * 4;
  std::vector<char> span(hi - lo);
  to_host(span.data(), dst, lo, hi - lo);
  memcpy(span.data() + (offset - lo), src, nbytes);
  api().wgpuQueueWriteBuffer(queue, dst, lo, span.data(), span.size());
}

void Context::on_device(WGPUBuffer src, size_t src_offset, WGPUBuffer dst, size_t dst_offset, size_t nbytes) {
  Lock lock(mu_);
  if (nbytes == 0) return;
  if (src_offset % 4 == 0 && dst_offset % 4 == 0 && nbytes % 4 == 0) {
    api().wgpuCommandEncoderCopyBufferToBuffer(encoder(), src, src_offset, dst, dst_offset, nbytes);
    return;
  }
  std::vector<char> tmp(nbytes);
  to_host(tmp.data(), src, src_offset, nbytes);
  to_device(dst, dst_offset, tmp.data(), nbytes);
}

}  // namespace wgpu
}  // namespace edgesmith
