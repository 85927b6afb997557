// kernelbench.h — `runner kernelbench`: `edgesmith tune`'s candidate kernels timed alone.
//
// Part of runner.cc through profiling.h, included once (one translation unit, one compiler call):
// not a standalone header. Uses ProfileArgs, the sensors and the thermal gate from profiling.h, Rng
// and load_runtime() from runner.cc.
#pragma once

// --- kernelbench: `edgesmith tune`'s candidates (runtime/tune/). BUNDLE/lib/kernels.so holds
// one function per candidate; --fn LABEL[/FUNC]=SPEC gives each one's arguments (dtype:shape, the
// output last), which are allocated on the CPU and filled with finite values (floats in [-1, 1),
// fp16 1/64, integers random bits: any packed weight is valid), or hold the values given (an
// attention kernel's indptrs: i32:N@v/v/...), or are scalars (int@V, float@V). A GPU library (the
// manifest's "device": g_timed_device) gets its tensors copied to the GPU, and every timed sample
// ends by waiting for the device's stream (a call only queues the kernel). One function may be
// timed on several argument sets under several labels (attention at a few lengths). After the warm-up every round
// times each function once, in turn (a noisy machine slows all candidates of a round alike); a
// sample is `number` back-to-back calls, `number` chosen so a sample lasts --min-time. The
// thermal gate is profile's: before each round, wait until the device is below --cool-below.

struct BenchArg {
  DLDataType dtype;
  std::vector<int64_t> shape;   // empty with `scalar`
  std::vector<double> values;   // given values (int tensors: indptrs; scalars: one), else filled
  bool scalar = false;          // int@V or float@V: a plain argument, not a tensor
};
struct BenchFn {
  std::string label, name;  // label (what the output line says) / function in the library
  std::vector<BenchArg> args;
};

static DLDataType parse_dtype(const std::string& s) {
  if (s == "f32") return DLDataType{kDLFloat, 32, 1};
  if (s == "f16") return DLDataType{kDLFloat, 16, 1};
  if (s == "u32") return DLDataType{kDLUInt, 32, 1};
  if (s == "i32") return DLDataType{kDLInt, 32, 1};
  if (s == "i8") return DLDataType{kDLInt, 8, 1};
  die("--fn: dtype '" + s + "' is not one of f32, f16, u32, i32, i8");
}

static double parse_value(const std::string& spec, const std::string& v) {
  char* end = nullptr;
  double d = strtod(v.c_str(), &end);
  if (v.empty() || *end != 0) die("--fn '" + spec + "': value '" + v + "' is not a number");
  return d;
}

// LABEL[/FUNC]=ARG,ARG,...; ARG: dtype:AxBxC (filled), dtype:N@v0/v1/... (these values, int32),
// int@V or float@V (a scalar argument).
static BenchFn parse_fn(const std::string& spec) {
  BenchFn fn;
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) die("--fn '" + spec + "': expected NAME=dtype:AxB,dtype:C,...");
  std::string names = spec.substr(0, eq);
  size_t slash = names.find('/');
  fn.label = names.substr(0, slash);
  fn.name = slash == std::string::npos ? names : names.substr(slash + 1);
  std::stringstream ss(spec.substr(eq + 1));
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t at = item.find('@');
    std::string head = item.substr(0, at);
    if (head == "int" || head == "float") {
      if (at == std::string::npos) die("--fn '" + spec + "': scalar '" + item + "' needs @VALUE");
      BenchArg a{head == "int" ? DLDataType{kDLInt, 64, 1} : DLDataType{kDLFloat, 64, 1}, {}, {}, true};
      a.values.push_back(parse_value(spec, item.substr(at + 1)));
      fn.args.push_back(a);
      continue;
    }
    size_t colon = head.find(':');
    if (colon == std::string::npos) die("--fn '" + spec + "': argument '" + item + "' has no dtype:shape");
    BenchArg a{parse_dtype(head.substr(0, colon)), {}, {}, false};
    std::stringstream dims(head.substr(colon + 1));
    std::string d;
    while (std::getline(dims, d, 'x')) {
      char* end = nullptr;
      long long v = strtoll(d.c_str(), &end, 10);
      if (d.empty() || *end != 0 || v < 1) die("--fn '" + spec + "': dimension '" + d + "' is not a positive integer");
      a.shape.push_back(v);
    }
    if (at != std::string::npos) {
      if (a.dtype.code != kDLInt || a.dtype.bits != 32 || a.shape.size() != 1)
        die("--fn '" + spec + "': given values ('" + item + "') are for a 1-d i32 tensor");
      std::stringstream vals(item.substr(at + 1));
      std::string v;
      while (std::getline(vals, v, '/')) a.values.push_back(parse_value(spec, v));
      if (int64_t(a.values.size()) != a.shape[0]) die("--fn '" + spec + "': '" + item + "' gives the wrong count of values");
    }
    fn.args.push_back(a);
  }
  if (fn.args.empty()) die("--fn '" + spec + "' gives no arguments");
  return fn;
}

static void fill_bench_tensor(const BenchArg& a, Rng& rng, ffi::Tensor& t);

static ffi::Tensor bench_tensor(const BenchArg& a, Rng& rng) {
  static ffi::Function alloc = global("runtime.TVMTensorAllocWithScope");
  ffi::Tensor t = alloc(ffi::Shape(a.shape), a.dtype, DLDevice{kDLCPU, 0}, ffi::Optional<ffi::String>())
                      .cast<ffi::Tensor>();
  fill_bench_tensor(a, rng, t);
  if (g_timed_device.device_type == kDLCPU) return t;
  ffi::Tensor on_device = alloc(ffi::Shape(a.shape), a.dtype, g_timed_device, ffi::Optional<ffi::String>())
                              .cast<ffi::Tensor>();
  int64_t bytes = int64_t(a.dtype.bits / 8);
  for (int64_t d : a.shape) bytes *= d;
  static ffi::Function copy_in = global("runtime.TVMTensorCopyFromBytes");
  copy_in(on_device, t.data_ptr(), bytes);
  return on_device;
}

// The values of a CPU tensor `t` for argument `a`: given, or filled as the header says.
static void fill_bench_tensor(const BenchArg& a, Rng& rng, ffi::Tensor& t) {
  int64_t n = 1;
  for (int64_t d : a.shape) n *= d;
  if (!a.values.empty()) {
    int32_t* p = static_cast<int32_t*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = int32_t(a.values[i]);
  } else if (a.dtype.code == kDLFloat && a.dtype.bits == 32) {
    float* p = static_cast<float*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = float(2 * rng.uniform() - 1);
  } else if (a.dtype.code == kDLFloat) {
    uint16_t* p = static_cast<uint16_t*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = 0x2400;  // 1/64 in fp16
  } else {
    uint8_t* p = static_cast<uint8_t*>(t.data_ptr());
    for (int64_t i = 0; i < n * a.dtype.bits / 8; ++i) p[i] = uint8_t(rng.next());
  }
}

static void cmd_kernelbench(const std::string& bundle, const std::vector<BenchFn>& fns, const ProfileArgs& a,
                            double min_time) {
  if (fns.empty()) die("kernelbench needs at least one --fn NAME=SPEC");
  if (a.min_reps < 1 || a.warmup < 0 || !(min_time > 0)) die("kernelbench needs -r >= 1, --warmup >= 0, --min-time > 0");
  ffi::Module lib = ffi::Module::LoadFromFile(bundle + "/lib/kernels.so");
  Rng rng(a.seed + 1);
  struct Bound {
    ffi::Function f;
    std::vector<ffi::Any> values;  // tensors, and scalars as int64 / double
    std::vector<ffi::AnyView> views;
    int64_t number = 1;
    std::vector<double> per_call;
  };
  std::vector<Bound> bound(fns.size());
  for (size_t i = 0; i < fns.size(); ++i) {
    auto f = lib->GetFunction(fns[i].name);
    if (!f) die(bundle + "/lib/kernels.so has no function '" + fns[i].name + "'");
    bound[i].f = *f;
    for (const auto& arg : fns[i].args) {
      if (!arg.scalar) bound[i].values.push_back(bench_tensor(arg, rng));
      else if (arg.dtype.code == kDLInt) bound[i].values.push_back(int64_t(arg.values[0]));
      else bound[i].values.push_back(arg.values[0]);
    }
  }
  for (auto& b : bound)
    for (auto& v : b.values) b.views.push_back(ffi::AnyView(v));
  auto call = [](Bound& b, int64_t times) {
    ffi::Any rv;
    double t0 = now_s();
    for (int64_t i = 0; i < times; ++i) b.f.CallPacked(b.views.data(), int32_t(b.views.size()), &rv);
    wait_for_device();  // a GPU: the queued calls done before the clock is read
    return now_s() - t0;
  };
  for (auto& b : bound) {
    double once = call(b, 1);
    for (int64_t w = 0; w < a.warmup; ++w) once = std::min(once, call(b, 1));
    b.number = std::max<int64_t>(1, int64_t(min_time / std::max(once, 1e-7)));
  }
  for (int64_t rep = 0; rep < a.min_reps; ++rep) {
    cool_down(a, rep);
    for (auto& b : bound) b.per_call.push_back(call(b, b.number) / b.number);
  }
  for (size_t i = 0; i < fns.size(); ++i) {
    std::vector<double> v = bound[i].per_call;
    std::sort(v.begin(), v.end());
    double median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    printf("{\"fn\": %s, \"median_s\": %.9f, \"min_s\": %.9f, \"rsd\": %.5f, \"reps\": %zu, \"number\": %ld}\n",
           json_string(fns[i].label).c_str(), median, v.front(), rel_sd(bound[i].per_call), v.size(),
           long(bound[i].number));
  }
  Sensors s = read_sensors(a.sysroot);
  printf("{\"summary\": true, \"functions\": %zu, \"reps\": %ld, \"sensors\": %s}\n", fns.size(), long(a.min_reps),
         json_sensors(s).c_str());
}

