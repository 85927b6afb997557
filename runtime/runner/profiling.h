// profiling.h — the runner's measuring commands: bench (prefill + decode tok/s), and what
// `edgesmith profile` and `edgesmith tune` run on the device (runtime/profile/ and runtime/tune/
// read these lines: sensors, profile, kernels, logits, membw, kernelbench), with their parser.
//
// Part of runner.cc, included once at one point of it (one translation unit, one compiler call):
// not a standalone header.
// Uses the model, KV cache and forward passes of runner.cc (Model, Manifest, KVCache, prefill,
// forward, argmax, ...) and its command-line helpers.
#pragma once

// ----------------------------------------------------------------------------
// bench: warm-up, then repetitions of (prefill p random tokens, decode n tokens greedily)

// What the device plug-in has counted so far (runtime/runner/opencl/context.h, webgpu/context.h):
// kernels launched (OpenCL enqueues, WebGPU dispatches: exact), times the host waited for the
// device, and stalls (waits with kernels queued since the last one); -1 each where no plug-in
// counts (CPU and CUDA bundles). A decode step's counts are differences (since).
struct DeviceCounts {
  int64_t launches = -1, host_waits = -1, stalls = -1;

  static DeviceCounts now() {
    static const ffi::Optional<ffi::Function> fs[3] = {counter("launches"), counter("host_waits"), counter("stalls")};
    DeviceCounts c;
    int64_t* out[3] = {&c.launches, &c.host_waits, &c.stalls};
    for (int i = 0; i < 3; ++i)
      if (fs[i]) *out[i] = (*fs[i])().cast<int64_t>();
    return c;
  }
  DeviceCounts since(const DeviceCounts& before) const {
    auto d = [](int64_t a, int64_t b) { return a < 0 || b < 0 ? int64_t(-1) : a - b; };
    return {d(launches, before.launches), d(host_waits, before.host_waits), d(stalls, before.stalls)};
  }
  // `"decode_launches": N, "decode_host_waits": N, "decode_stalls": N` (null: not counted here)
  std::string json() const {
    auto v = [](int64_t x) { return x < 0 ? std::string("null") : std::to_string(x); };
    return "\"decode_launches\": " + v(launches) + ", \"decode_host_waits\": " + v(host_waits) +
           ", \"decode_stalls\": " + v(stalls);
  }

 private:
  static ffi::Optional<ffi::Function> counter(const std::string& what) {
    auto f = ffi::Function::GetGlobal("edgesmith.opencl." + what);
    return f ? f : ffi::Function::GetGlobal("edgesmith.webgpu." + what);
  }
};

struct BenchArgs {
  int64_t p = 128, n = 128, warmup = 1, reps = 5;
  uint64_t seed = 0;
};

static void cmd_bench(const Model& model, const Manifest& m, double load_s, const BenchArgs& a) {
  if (m.vocab_size <= 0) die("manifest model.config.vocab_size is missing; bench cannot draw token ids");
  if (a.p < 1 || a.n < 1 || a.reps < 1) die("bench needs -p >= 1, -n >= 1 and -r >= 1");
  check_fits(m, a.p, a.n);
  Rng rng(a.seed);
  std::vector<int32_t> prompt(a.p);
  for (auto& t : prompt) t = int32_t(rng.next() % uint64_t(m.vocab_size));
  KVCache kv = create_kv_cache(model, m);
  std::vector<float> logits;
  std::vector<double> pp, tg;  // tok/s per measured repetition
  DeviceCounts counted;        // what the last repetition's decode launched and waited for

  for (int64_t rep = -a.warmup; rep < a.reps; ++rep) {
    kv.add(kv.obj, int64_t(0));
    double t0 = now_s();
    prefill(model, m, kv, prompt, logits);
    double t1 = now_s();
    DeviceCounts before = DeviceCounts::now();
    for (int64_t i = 0; i < a.n; ++i) {
      int32_t tok = argmax(logits);
      forward(model, kv, model.decode, &tok, 1, logits);
    }
    double t2 = now_s();
    counted = DeviceCounts::now().since(before);
    kv.remove(kv.obj, int64_t(0));
    if (rep < 0) continue;
    double prefill_s = t1 - t0, decode_s = t2 - t1;
    pp.push_back(a.p / prefill_s), tg.push_back(a.n / decode_s);
    printf("{\"rep\": %ld, \"prefill_s\": %.6f, \"decode_s\": %.6f, \"prefill_tok_s\": %.3f, "
           "\"decode_tok_s\": %.3f}\n",
           long(rep), prefill_s, decode_s, pp.back(), tg.back());
    fflush(stdout);
  }
  auto mean_std = [](const std::vector<double>& v, double& mean, double& sd) {
    mean = 0, sd = 0;
    for (double x : v) mean += x / v.size();
    for (double x : v) sd += (x - mean) * (x - mean) / v.size();
    sd = std::sqrt(sd);
  };
  double pm, ps, tm, ts;
  mean_std(pp, pm, ps), mean_std(tg, tm, ts);
  printf("{\"summary\": true, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, \"reps\": %ld, "
         "\"prefill_tok_s\": %.3f, \"prefill_tok_s_std\": %.3f, \"decode_tok_s\": %.3f, "
         "\"decode_tok_s_std\": %.3f, \"load_s\": %.6f, \"peak_rss_kb\": %ld, %s}\n",
         long(a.p), long(a.n), long(a.reps), pm, ps, tm, ts, load_s, peak_rss_kb(), counted.json().c_str());
}

// ----------------------------------------------------------------------------
// profiling: what `edgesmith profile` runs on the device (runtime/profile/ reads these lines)
//
//   sensors   thermal zones and CPU frequencies from sysfs, read around every repetition
//   profile   warm-up; per repetition: cool down below a threshold, prefill p + decode n;
//             stop once pp and tg tok/s spread less than --target-rsd (or at --max-reps)
//   kernels   every kernel call timed through a wrapper around the model library
//   logits    teacher-forced logits of a fixed token sequence (the on-device accuracy check)
//   membw     memory read bandwidth (the roofline's ceiling)
//   kernelbench  kernels of a candidate library timed in isolation, in alternating rounds

// Thermal zones (°C, in zone order) and current/max CPU frequencies (MHz, per cpu) under
// ROOT/sys — ROOT is "" on a real device; a test points it at a fake sysfs folder.
struct Sensors {
  std::vector<std::pair<std::string, double>> temps_c;
  std::vector<double> cur_mhz, max_mhz;
  double max_temp() const {
    double t = -1e9;
    for (auto& z : temps_c) t = std::max(t, z.second);
    return temps_c.empty() ? NAN : t;
  }
};

static bool read_number(const std::string& path, double& out) {
  std::ifstream in(path);
  return bool(in >> out);
}

static std::vector<std::string> entries_with_prefix(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size() && isdigit(name[prefix.size()]))
        names.push_back(name);
    }
    closedir(d);
  }
  // numeric order: zone2 before zone10
  std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    return atol(a.c_str() + prefix.size()) < atol(b.c_str() + prefix.size());
  });
  return names;
}

static Sensors read_sensors(const std::string& root) {
  Sensors s;
  std::string thermal = root + "/sys/class/thermal";
  for (const auto& zone : entries_with_prefix(thermal, "thermal_zone")) {
    double t;
    if (!read_number(thermal + "/" + zone + "/temp", t)) continue;
    std::string type = zone;
    std::ifstream(thermal + "/" + zone + "/type") >> type;
    s.temps_c.push_back({type, std::fabs(t) > 200 ? t / 1000 : t});  // millidegrees on Linux
  }
  std::string cpus = root + "/sys/devices/system/cpu";
  for (const auto& cpu : entries_with_prefix(cpus, "cpu")) {
    double cur, mx;
    if (!read_number(cpus + "/" + cpu + "/cpufreq/scaling_cur_freq", cur)) continue;
    if (!read_number(cpus + "/" + cpu + "/cpufreq/cpuinfo_max_freq", mx)) mx = cur;
    s.cur_mhz.push_back(cur / 1000), s.max_mhz.push_back(mx / 1000);  // kHz in sysfs
  }
  return s;
}

static std::string json_string(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (uint8_t(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

static std::string json_sensors(const Sensors& s) {
  std::string out = "{\"temps_c\": {";
  for (size_t i = 0; i < s.temps_c.size(); ++i) {
    char num[32];
    snprintf(num, sizeof(num), "%.1f", s.temps_c[i].second);
    // duplicate zone types are common (several "cpu-thermal"): suffix the zone index
    out += (i ? ", " : "") + json_string(s.temps_c[i].first + "#" + std::to_string(i)) + ": " + num;
  }
  out += "}, \"cur_mhz\": [";
  for (size_t i = 0; i < s.cur_mhz.size(); ++i) out += (i ? "," : "") + std::to_string(long(s.cur_mhz[i]));
  out += "], \"max_mhz\": [";
  for (size_t i = 0; i < s.max_mhz.size(); ++i) out += (i ? "," : "") + std::to_string(long(s.max_mhz[i]));
  return out + "]}";
}

static long current_rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return strtol(line.c_str() + 6, nullptr, 10);
  return 0;
}

struct ProfileArgs {
  int64_t p = 128, n = 128, warmup = 1, min_reps = 3, max_reps = 10, context = 0, positions = 0, prefill = 1;
  int64_t mb = 0;  // membw: 0 = sized from the last-level cache
  double target_rsd = 0.03, cool_below = 0, cool_timeout = 300, cool_poll = 1;
  std::string sysroot;
  std::vector<int32_t> tokens;
  uint64_t seed = 0;
};

// Sample relative standard deviation (n - 1); 0 for fewer than two samples.
static double rel_sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  double mean = 0, ss = 0;
  for (double x : v) mean += x / v.size();
  for (double x : v) ss += (x - mean) * (x - mean);
  return mean > 0 ? std::sqrt(ss / (v.size() - 1)) / mean : 0;
}

// Waits until the hottest zone is below `below` °C (polling every `poll` s, at most `timeout`
// s); prints when it starts and ends waiting. Returns the seconds waited.
static double cool_down(const ProfileArgs& a, int64_t rep) {
  if (a.cool_below <= 0) return 0;
  double t = read_sensors(a.sysroot).max_temp();
  if (!(t >= a.cool_below)) return 0;  // no zones (NaN) or already cool
  printf("{\"event\": \"cooldown\", \"rep\": %ld, \"temp_c\": %.1f, \"below_c\": %.1f}\n", long(rep), t,
         a.cool_below);
  fflush(stdout);
  double t0 = now_s();
  bool timed_out = false;
  while (t >= a.cool_below) {
    if (now_s() - t0 >= a.cool_timeout) { timed_out = true; break; }
    usleep(useconds_t(a.cool_poll * 1e6));
    t = read_sensors(a.sysroot).max_temp();
  }
  double waited = now_s() - t0;
  printf("{\"event\": \"cooled\", \"rep\": %ld, \"temp_c\": %.1f, \"waited_s\": %.3f, \"timed_out\": %s}\n",
         long(rep), t, waited, timed_out ? "true" : "false");
  fflush(stdout);
  return waited;
}

static std::vector<int32_t> random_prompt(const Manifest& m, int64_t p, uint64_t seed) {
  if (m.vocab_size <= 0) die("manifest model.config.vocab_size is missing; cannot draw token ids");
  Rng rng(seed);
  std::vector<int32_t> prompt(p);
  for (auto& t : prompt) t = int32_t(rng.next() % uint64_t(m.vocab_size));
  return prompt;
}

// One repetition: a fresh sequence, prefill `prompt`, decode n tokens greedily. counted (when
// given): what the n decode steps launched and waited for (DeviceCounts).
static void one_rep(const Model& model, const Manifest& m, KVCache& kv, const std::vector<int32_t>& prompt,
                    int64_t n, double& prefill_s, double& decode_s, DeviceCounts* counted = nullptr) {
  std::vector<float> logits;
  kv.add(kv.obj, int64_t(0));
  double t0 = now_s();
  prefill(model, m, kv, prompt, logits);
  double t1 = now_s();
  DeviceCounts before = DeviceCounts::now();
  for (int64_t i = 0; i < n; ++i) {
    int32_t tok = argmax(logits);
    forward(model, kv, model.decode, &tok, 1, logits);
  }
  double t2 = now_s();
  if (counted) *counted = DeviceCounts::now().since(before);
  kv.remove(kv.obj, int64_t(0));
  prefill_s = t1 - t0, decode_s = t2 - t1;
}

static void cmd_profile(const Model& model, const Manifest& m, double load_s, const ProfileArgs& a) {
  if (a.p < 1 || a.n < 1 || a.min_reps < 1 || a.max_reps < a.min_reps)
    die("profile needs -p >= 1, -n >= 1, -r >= 1 and --max-reps >= -r");
  check_fits(m, a.p, a.n);
  std::vector<int32_t> prompt = random_prompt(m, a.p, a.seed);
  long rss_load = current_rss_kb();
  KVCache kv = create_kv_cache(model, m);
  double pre, dec;
  for (int64_t w = 0; w < a.warmup; ++w) one_rep(model, m, kv, prompt, a.n, pre, dec);

  std::vector<double> pp, tg;
  DeviceCounts counted;  // the last repetition's (every decoded token launches the same kernels)
  const char* stop = "max_reps";
  for (int64_t rep = 0; rep < a.max_reps; ++rep) {
    double waited = cool_down(a, rep);
    Sensors before = read_sensors(a.sysroot);
    one_rep(model, m, kv, prompt, a.n, pre, dec, &counted);
    Sensors after = read_sensors(a.sysroot);
    pp.push_back(a.p / pre), tg.push_back(a.n / dec);
    printf("{\"rep\": %ld, \"prefill_s\": %.6f, \"decode_s\": %.6f, \"prefill_tok_s\": %.3f, "
           "\"decode_tok_s\": %.3f, \"cooldown_s\": %.3f, \"before\": %s, \"after\": %s}\n",
           long(rep), pre, dec, pp.back(), tg.back(), waited, json_sensors(before).c_str(),
           json_sensors(after).c_str());
    fflush(stdout);
    if (int64_t(pp.size()) >= a.min_reps && rel_sd(pp) <= a.target_rsd && rel_sd(tg) <= a.target_rsd) {
      stop = "stable";
      break;
    }
  }
  printf("{\"summary\": true, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, \"reps\": %zu, \"stop\": \"%s\", "
         "\"prefill_rsd\": %.5f, \"decode_rsd\": %.5f, \"kv_context\": %ld, \"load_s\": %.6f, "
         "\"rss_after_load_kb\": %ld, \"peak_rss_kb\": %ld, \"threads\": %d, \"cpus\": %s, \"cpus_from\": \"%s\", "
         "%s}\n",
         long(a.p), long(a.n), pp.size(), stop, rel_sd(pp), rel_sd(tg), long(m.max_total_seq_len), load_s,
         rss_load, peak_rss_kb(), pool_threads(), cpu_list_json(g_cores.cpus).c_str(), g_cores.from.c_str(),
         counted.json().c_str());
}

// --- kernels: the VM finds kernels in the executable's imports (the model library) by name;
// swapping that import for a module that wraps each function with a clock times every call.
// On the CPU a kernel returns when its work is done, so wall time per call is its time; on a
// GPU a call only queues the kernel, so each timed call ends by waiting for the device's stream.

struct KernelStat {
  int64_t calls[2] = {0, 0};
  double seconds[2] = {0, 0};
};
static std::map<std::string, KernelStat> g_kernels;  // std::map: stable addresses
static int g_phase = -1;                             // -1 off, 0 prefill, 1 decode

static void wait_for_device() {
  if (g_timed_device.device_type == kDLCPU) return;
  static ffi::Function sync = global("runtime.Device_StreamSync");
  sync(g_timed_device, int64_t(0));  // stream 0: the one TVM launches on unless told otherwise
}

class TimedLibrary : public ffi::ModuleObj {
 public:
  explicit TimedLibrary(ffi::Module inner) : inner_(inner) {}
  const char* kind() const final { return "edgesmith_timed_library"; }
  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    ffi::Optional<ffi::Function> f = inner_->GetFunction(name, true);
    if (!f) return f;
    ffi::Function inner_fn = *f;
    KernelStat* stat = &g_kernels[std::string(name)];
    return ffi::Function::FromPacked([inner_fn, stat](ffi::PackedArgs args, ffi::Any* rv) {
      if (g_phase >= 0) wait_for_device();  // earlier queued work is not this kernel's
      double t0 = now_s();
      inner_fn.CallPacked(args, rv);
      if (g_phase >= 0) wait_for_device(), stat->calls[g_phase] += 1, stat->seconds[g_phase] += now_s() - t0;
    });
  }

 private:
  ffi::Module inner_;
};

static void wrap_imports(ffi::ModuleObj* parent) {
  std::vector<ffi::Module> libs;
  for (const ffi::Any& imp : parent->imports()) libs.push_back(imp.cast<ffi::Module>());
  parent->ClearImports();
  for (auto& lib : libs) parent->ImportModule(ffi::Module(ffi::make_object<TimedLibrary>(lib)));
}

static void wrap_library(ffi::Module& exec) { wrap_imports(exec.operator->()); }

// OpenCL and WebGPU: the model library's host functions launch the kernels of its imported device
// module, which they look up through the library's imports on first call; timing that module
// instead makes the table list the device kernels themselves (host glue counts as "other"). Each
// timed call waits for the device before and after it, so the times are per-dispatch waits. WebGPU
// bundles on an adapter with timestamp queries are not wrapped: the plug-in times each dispatch on
// the device (edgesmith.webgpu.timestamps / kernel_times), read at the end of each phase.
static void wrap_device_kernels(ffi::Module& exec) {
  for (const ffi::Any& imp : exec->imports()) wrap_imports(imp.cast<ffi::Module>().operator->());
}

static bool g_device_timestamps = false;  // WebGPU: kernel times from the plug-in's timestamp queries

// The plug-in's times of one phase ({"kernel": [calls, seconds]}) into g_kernels.
static void take_device_times(int phase) {
  static ffi::Function take = global("edgesmith.webgpu.kernel_times");
  ffi::String err;
  ffi::json::Value times = ffi::json::Parse(std::string(take().cast<ffi::String>()), &err);
  if (!err.empty()) die("the WebGPU plug-in's kernel times are not JSON: " + std::string(err));
  if (phase < 0) return;  // dropped (the warm-up's)
  for (const auto& kv : times.cast<ffi::json::Object>()) {
    auto pair = kv.second.cast<ffi::json::Array>();
    KernelStat& st = g_kernels[std::string(kv.first.cast<ffi::String>())];
    st.calls[phase] += pair[0].cast<int64_t>();
    st.seconds[phase] += pair[1].cast<double>();
  }
}

static void cmd_kernels(const Model& model, const Manifest& m, const ProfileArgs& a) {
  if (a.p < 1 || a.n < 1) die("kernels needs -p >= 1 and -n >= 1");
  check_fits(m, a.p, a.n);
  std::vector<int32_t> prompt = random_prompt(m, a.p, a.seed);
  KVCache kv = create_kv_cache(model, m);
  double pre, dec;
  for (int64_t w = 0; w < a.warmup; ++w) one_rep(model, m, kv, prompt, a.n, pre, dec);
  // Measured: prefill with the clock on phase 0, then decode on phase 1.
  std::vector<float> logits;
  kv.add(kv.obj, int64_t(0));
  if (g_device_timestamps) take_device_times(-1);  // the warm-up's: dropped
  g_phase = 0;
  double t0 = now_s();
  prefill(model, m, kv, prompt, logits);
  double t1 = now_s();
  if (g_device_timestamps) take_device_times(0);
  g_phase = 1;
  for (int64_t i = 0; i < a.n; ++i) {
    int32_t tok = argmax(logits);
    forward(model, kv, model.decode, &tok, 1, logits);
  }
  double t2 = now_s();
  if (g_device_timestamps) take_device_times(1);
  g_phase = -1;
  kv.remove(kv.obj, int64_t(0));
  double sum[2] = {0, 0};
  for (const auto& [name, st] : g_kernels) {
    for (int ph = 0; ph < 2; ++ph) {
      if (!st.calls[ph]) continue;
      sum[ph] += st.seconds[ph];
      printf("{\"kernel\": %s, \"phase\": \"%s\", \"calls\": %ld, \"total_s\": %.6f}\n", json_string(name).c_str(),
             ph ? "decode" : "prefill", long(st.calls[ph]), st.seconds[ph]);
    }
  }
  const char* timing = g_device_timestamps ? "timestamp queries"
                       : m.device_api == "cpu"  ? "host clock"
                                                : "per-dispatch waits";
  printf("{\"summary\": true, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, \"prefill_s\": %.6f, \"decode_s\": %.6f, "
         "\"kernels_prefill_s\": %.6f, \"kernels_decode_s\": %.6f, \"timing\": \"%s\"}\n",
         long(a.p), long(a.n), t1 - t0, t2 - t1, sum[0], sum[1], timing);
}

// --- logits: position K-1 from a prefill of tokens[0..K) (--prefill K, default 1: the prefill
// kernels, in the bundle's chunks), position i >= K from a decode of tokens[i]; each printed as little-endian float32 in base64 (a phone's stdout carries it unchanged).

static std::string base64(const uint8_t* p, size_t n) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = uint32_t(p[i]) << 16 | (i + 1 < n ? uint32_t(p[i + 1]) << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    out += abc[v >> 18 & 63], out += abc[v >> 12 & 63];
    out += i + 1 < n ? abc[v >> 6 & 63] : '=';
    out += i + 2 < n ? abc[v & 63] : '=';
  }
  return out;
}

static void cmd_logits(const Model& model, const Manifest& m, const ProfileArgs& a) {
  if (a.tokens.empty()) die("logits needs --tokens (comma-separated token ids)");
  for (int32_t t : a.tokens)
    if (t < 0 || (m.vocab_size > 0 && t >= m.vocab_size))
      die("token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(m.vocab_size - 1) + ")");
  if (a.prefill < 1 || a.prefill > int64_t(a.tokens.size()))
    die("--prefill " + std::to_string(a.prefill) + ": it must be between 1 and the " +
        std::to_string(a.tokens.size()) + " tokens given");
  check_fits(m, a.tokens.size(), 0);
  KVCache kv = create_kv_cache(model, m);
  std::vector<float> logits;
  kv.add(kv.obj, int64_t(0));
  std::vector<int32_t> head(a.tokens.begin(), a.tokens.begin() + a.prefill);
  prefill(model, m, kv, head, logits);  // position prefill - 1 ...
  for (size_t i = a.prefill - 1; i < a.tokens.size(); ++i) {
    if (i >= size_t(a.prefill)) forward(model, kv, model.decode, &a.tokens[i], 1, logits);  // ... then one each
    printf("{\"position\": %zu, \"token\": %d, \"vocab\": %zu, \"logits_f32le_b64\": \"%s\"}\n", i, a.tokens[i],
           logits.size(), base64(reinterpret_cast<const uint8_t*>(logits.data()), logits.size() * 4).c_str());
  }
  kv.remove(kv.obj, int64_t(0));
  printf("{\"summary\": true, \"positions\": %zu}\n", a.tokens.size());
}

// --- membw: the device's read bandwidth as decode can use it (membw.h says how it is measured).

static void cmd_membw(const ProfileArgs& a) {
  if (a.mb < 0 || a.min_reps < 1) die("membw needs --mb >= 0 (0: sized from the caches) and -r >= 1");
  const char* env = getenv("TVM_NUM_THREADS");
  int threads = env ? atoi(env) : int(std::thread::hardware_concurrency());
  membw::Result r = membw::measure(a.mb, int(a.min_reps), threads, now_s, [](int i, double gbs) {
    printf("{\"rep\": %d, \"read_gb_s\": %.3f}\n", i, gbs);
  });
  printf("{\"summary\": true, \"read_gb_s\": %.3f, \"median_gb_s\": %.3f, \"spread\": %.4f, \"passes\": %zu, "
         "\"mb\": %ld, \"llc_bytes\": %ld, \"threads\": %d, \"checksum\": %llu}\n",
         r.best, r.median, r.spread, r.passes.size(), long(r.mb), long(r.llc_bytes), r.threads,
         (unsigned long long)(r.checksum & 0xffff));
}


#include "kernelbench.h"  // kernelbench: edgesmith tune's candidates, timed alone

// ----------------------------------------------------------------------------
// the profiling commands' parser (generate and bench: runner.cc's run())

static bool is_profiling_command(const std::string& cmd) {
  return cmd == "profile" || cmd == "kernels" || cmd == "logits" || cmd == "membw" || cmd == "kernelbench";
}

static void run_profiling(const std::string& cmd, int argc, char** argv) {
  if (argc < 3 || argv[2][0] == '-') die(cmd + " needs a BUNDLE folder as its first argument");
  std::string bundle = argv[2];
  std::string lib_dir = exe_dir();
  bool verify = true;
  ProfileArgs a;
  if (cmd == "kernels") a.n = 32;
  if (cmd == "membw") a.min_reps = 5;
  if (cmd == "kernelbench") a.min_reps = 7, a.warmup = 2;
  std::vector<BenchFn> fns;
  double min_time = 0.02;
  std::string cpus_flag;  // cores.h: --cpus, else the big cluster (read under --sysroot)
  bool cpus_given = false;
  for (int i = 3; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&] { return flag_value(argc, argv, i, flag); };
    auto number = [&] { return flag_number(argc, argv, i, flag); };
    bool timed = cmd == "profile" || cmd == "kernels";
    bool gated = cmd == "profile" || cmd == "kernelbench";  // the thermal gate
    if (flag == "--lib-dir") lib_dir = value();
    else if (flag == "--threads") setenv("TVM_NUM_THREADS", value().c_str(), 1), g_user_threads = true;
    else if ((timed || cmd == "logits") && flag == "--cpus") cpus_flag = value(), cpus_given = true;
    else if (flag == "--no-verify") verify = false;
    else if (flag == "--context") a.context = context_flag(number());
    else if (flag == "--seed") a.seed = uint64_t(number());
    else if (timed && flag == "-p") a.p = int64_t(number());
    else if (timed && flag == "-n") a.n = int64_t(number());
    else if ((timed || cmd == "kernelbench") && flag == "--warmup") a.warmup = int64_t(number());
    else if ((cmd == "profile" || cmd == "membw" || cmd == "kernelbench") && flag == "-r") a.min_reps = int64_t(number());
    else if (cmd == "profile" && flag == "--max-reps") a.max_reps = int64_t(number());
    else if (cmd == "profile" && flag == "--target-rsd") a.target_rsd = number();
    else if (gated && flag == "--cool-below") a.cool_below = number();
    else if (gated && flag == "--cool-timeout") a.cool_timeout = number();
    else if (gated && flag == "--cool-poll") a.cool_poll = number();
    else if (gated && flag == "--sysroot") a.sysroot = value();
    else if (cmd == "kernelbench" && flag == "--fn") fns.push_back(parse_fn(value()));
    else if (cmd == "kernelbench" && flag == "--min-time") min_time = number();
    else if (cmd == "logits" && flag == "--tokens")
      for (int32_t t : parse_token_list(flag, value())) a.tokens.push_back(t);
    else if (cmd == "logits" && flag == "--prefill") a.prefill = int64_t(number());
    else if (cmd == "membw" && flag == "--mb") a.mb = int64_t(number());
    else die("unknown option '" + flag + "' for " + cmd + "; see the usage at the top of runner.cc");
  }
  if (cmd == "profile" && a.max_reps < a.min_reps) a.max_reps = a.min_reps;
  if (cmd == "membw") return cmd_membw(a);

  double t0 = now_s();
  Manifest m = load_manifest(bundle, verify);
  // A KV cache for the context the run needs (whole pages), not the bundle's maximum.
  apply_context(m, a.context);
  if (cmd == "kernelbench") {
    // a GPU library: its device's runtime (our OpenCL / WebGPU plug-in, TVM's CUDA) loaded first
    if (m.device_api == "cuda") register_cuda_compiler();
    load_runtime(lib_dir, m);
    g_timed_device = DLDevice{DLDeviceType(m.device_type), 0};
    return cmd_kernelbench(bundle, fns, a, min_time);
  }
  if (cmd == "kernels")
    g_wrap_library = m.device_api == "opencl" || m.device_api == "webgpu" ? wrap_device_kernels : wrap_library;
  apply_cores(cpus_given, cpus_flag, a.sysroot);
  apply_tuned_threads(m);
  load_runtime(lib_dir, m);
  if (cmd == "kernels" && m.device_api == "webgpu" && !getenv("EDGESMITH_WEBGPU_NO_TIMESTAMPS") &&
      global("edgesmith.webgpu.timestamps")(true).cast<bool>())
    g_device_timestamps = true, g_wrap_library = nullptr;  // timed on the device instead
  Model model = load_model(bundle, m);
  double load_s = now_s() - t0;
  if (cmd == "profile") cmd_profile(model, m, load_s, a);
  else if (cmd == "kernels") cmd_kernels(model, m, a);
  else cmd_logits(model, m, a);
}

