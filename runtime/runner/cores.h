// Which cores decode runs on (big.LITTLE). Included by runner.cc.
//
// Phones mix core sizes: a thread on a little core runs the same GEMV several times slower, and
// the pool waits for its slowest thread, so by default the runner keeps to the big cluster: the
// CPUs this process may use with the largest /sys/devices/system/cpu/cpuN/cpu_capacity (the
// kernel's own relative performance), else the largest cpufreq/cpuinfo_max_freq, else all of
// them; and as many threads as those CPUs. --cpus LIST (and --threads N) choose instead.
// `sysroot` prefixes the sysfs paths (tests give a fake tree).
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

struct CoreChoice {
  std::vector<int> cpus;  // the CPUs decode runs on, ascending
  std::string from;       // "cpu_capacity", "cpuinfo_max_freq", "all" (nothing to tell them apart), "--cpus"
};

// The CPUs this process may run on (its affinity mask), ascending.
static std::vector<int> allowed_cpus() {
  std::vector<int> out;
#if !defined(__APPLE__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) out.push_back(c);
#endif
  return out;
}

static long read_sysfs_number(const std::string& path) {
  std::ifstream f(path);
  long v = -1;
  if (!(f >> v)) return -1;
  return v;
}

// The CPUs of `allowed` whose `file` (under cpuN/) holds the largest value (all of them where all
// are alike); empty when a CPU lacks the file (nothing to choose by).
static std::vector<int> largest_by(const std::string& sysroot, const std::vector<int>& allowed, const char* file) {
  std::vector<long> v;
  for (int c : allowed) {
    long x = read_sysfs_number(sysroot + "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/" + file);
    if (x <= 0) return {};
    v.push_back(x);
  }
  long best = 0;
  for (long x : v) best = std::max(best, x);
  std::vector<int> out;
  for (size_t i = 0; i < allowed.size(); ++i)
    if (v[i] == best) out.push_back(allowed[i]);
  return out;
}

static CoreChoice big_cluster(const std::string& sysroot, const std::vector<int>& allowed) {
  if (allowed.empty()) return {{}, "all"};
  auto by_capacity = largest_by(sysroot, allowed, "cpu_capacity");
  if (!by_capacity.empty()) return {by_capacity, "cpu_capacity"};
  auto by_freq = largest_by(sysroot, allowed, "cpufreq/cpuinfo_max_freq");
  if (!by_freq.empty()) return {by_freq, "cpuinfo_max_freq"};
  return {allowed, "all"};
}

// "4-7", "0,2,5", "1-2,6" -> sorted CPU numbers; an empty list or a bad entry: empty (the caller says so).
static std::vector<int> parse_cpu_list(const std::string& s) {
  std::set<int> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    int lo = 0, hi = 0;
    char tail = 0;
    if (sscanf(part.c_str(), "%d-%d%c", &lo, &hi, &tail) == 2) {
    } else if (sscanf(part.c_str(), "%d%c", &lo, &tail) == 1) {
      hi = lo;
    } else {
      return {};
    }
    if (lo < 0 || hi < lo || hi >= CPU_SETSIZE) return {};
    for (int c = lo; c <= hi; ++c) out.insert(c);
  }
  return std::vector<int>(out.begin(), out.end());
}

// Keep this process (and the threads it starts later: TVM's pool) on `cpus`. False: the kernel
// refused (a CPU that is not there or not ours).
static bool pin_to(const std::vector<int>& cpus) {
#if !defined(__APPLE__)
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
#else
  (void)cpus;
  return true;
#endif
}

static std::string cpu_list_json(const std::vector<int>& cpus) {
  std::string s = "[";
  for (size_t i = 0; i < cpus.size(); ++i) s += (i ? ", " : "") + std::to_string(cpus[i]);
  return s + "]";
}
