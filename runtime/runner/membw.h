// membw: how fast this device streams memory to the cores, the ceiling of a memory-bound decode.
//
// What decode does, so the number is one it can reach: all the run's threads (TVM_NUM_THREADS)
// each stream their own slice of a buffer well past the last-level cache (4x its size from sysfs,
// at least 256 MiB, at most a quarter of MemAvailable), with vector loads, several independent
// accumulators, and a software prefetch 2 KiB ahead, as the model's GEMVs read their weights.
// Each thread first-touches its slice (its pages, its NUMA node), a warm-up pass is not timed,
// then the best of r passes is the probe's answer; the spread of the passes says how steady it
// was. Included by runner.cc (one translation unit: the runner builds from one command).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace membw {

// The largest data cache's size in bytes (the last level), from sysfs; 0 when unknown.
inline int64_t last_level_cache_bytes() {
  int64_t best = 0;
  int best_level = 0;
  for (int i = 0; i < 16; ++i) {
    std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_f(dir + "level"), size_f(dir + "size"), type_f(dir + "type");
    if (!level_f || !size_f) continue;
    int level = 0;
    std::string size, type;
    level_f >> level;
    size_f >> size;
    type_f >> type;
    if (type == "Instruction" || size.empty()) continue;
    int64_t bytes = std::atoll(size.c_str());
    char unit = size.back();
    if (unit == 'K') bytes <<= 10;
    if (unit == 'M') bytes <<= 20;
    if (unit == 'G') bytes <<= 30;
    if (level > best_level || (level == best_level && bytes > best)) best = bytes, best_level = level;
  }
  return best;
}

inline int64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// Buffer size in MiB when none is asked for.
inline int64_t auto_mb(int64_t llc_bytes) {
  int64_t mb = std::max<int64_t>(256, 4 * llc_bytes >> 20);
  int64_t avail = mem_available_bytes();
  if (avail > 0) mb = std::min(mb, std::max<int64_t>(64, avail / 4 >> 20));
  return mb;
}

typedef uint64_t vec __attribute__((vector_size(16)));  // SSE2 / NEON: every target has it

// One thread's pass over words [lo, hi): four vector accumulators (four loads in flight without
// waiting on each other's adds), the prefetch 2 KiB ahead.
inline uint64_t stream(const vec* buf, size_t lo, size_t hi) {
  vec a0 = {0, 0}, a1 = a0, a2 = a0, a3 = a0;
  size_t i = lo;
  for (; i + 4 <= hi; i += 4) {
    __builtin_prefetch(buf + std::min(i + 128, hi - 1));
    a0 += buf[i], a1 += buf[i + 1], a2 += buf[i + 2], a3 += buf[i + 3];
  }
  for (; i < hi; ++i) a0 += buf[i];
  vec s = a0 + a1 + a2 + a3;
  return s[0] + s[1];
}

struct Result {
  std::vector<double> passes;  // GB/s of each timed pass
  double best = 0, median = 0, spread = 0;  // spread: (max - min) / best
  int64_t mb = 0, llc_bytes = 0;
  int threads = 1;
  uint64_t checksum = 0;
};

// `mb` 0: auto_mb. `on_pass(i, gbs)` sees each timed pass.
template <class OnPass>
Result measure(int64_t mb, int reps, int threads, double (*now)(), OnPass on_pass) {
  Result r;
  r.llc_bytes = last_level_cache_bytes();
  r.mb = mb > 0 ? mb : auto_mb(r.llc_bytes);
  r.threads = std::max(threads, 1);
  size_t n = size_t(r.mb) * (1 << 20) / sizeof(vec);
  std::vector<vec> buf(n);  // zero pages until touched: each thread touches its own slice
  std::vector<uint64_t> sums(r.threads);
  auto slice = [&](int t, size_t& lo, size_t& hi) { lo = n * t / r.threads, hi = n * (t + 1) / r.threads; };
  auto pass = [&](bool init) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < r.threads; ++t)
      pool.emplace_back([&, t] {
        size_t lo, hi;
        slice(t, lo, hi);
        if (init) {
          for (size_t i = lo; i < hi; ++i) buf[i] = vec{i, i ^ 0x5555};
          return;
        }
        ready.fetch_add(1);
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        sums[t] += stream(buf.data(), lo, hi);
      });
    double t0 = 0;
    if (!init) {
      while (ready.load() < r.threads) std::this_thread::yield();  // all started: time the reading only
      t0 = now();
      go.store(true, std::memory_order_release);
    }
    for (auto& th : pool) th.join();
    return init ? 0.0 : n * sizeof(vec) / (now() - t0) / 1e9;
  };
  pass(true);
  pass(false);  // warm-up: TLBs, frequency ramp, the prefetchers' training
  for (int i = 0; i < reps; ++i) {
    r.passes.push_back(pass(false));
    on_pass(i, r.passes.back());
  }
  std::vector<double> sorted = r.passes;
  std::sort(sorted.begin(), sorted.end());
  r.best = sorted.back();
  r.median = sorted[sorted.size() / 2];
  r.spread = r.best > 0 ? (sorted.back() - sorted.front()) / r.best : 0;
  for (uint64_t s : sums) r.checksum += s;  // used, so the reads are not optimized away
  return r;
}

}  // namespace membw
