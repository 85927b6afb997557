// manifest.h — the bundle's manifest.json as the runner reads it (compiler/bundle/manifest.py writes it),
// and the checks made before anything is loaded: architecture, TVM version, every file's size and
// sha256. Only the keys the runner needs are read; the rest of the manifest is the host's.
//
// Part of runner.cc, included once at one point of it (one translation unit, one compiler call):
// not a standalone header. Uses die(), file_exists() and kArch
// from runner.cc, sha256_file() from sha256.h.
#pragma once


struct Manifest {
  std::string tvm_version, arch;
  int64_t vocab_size = 0;                 // model.config.vocab_size (bench draws token ids below it)
  int64_t page_size = 16, prefill_chunk = 512, max_total_seq_len = 4096;
  int64_t context = 0;                    // tokens a run may hold: --context N (0: max_total_seq_len)
  int64_t sliding_window = 0;             // kv_cache.sliding_window (0: none within the context)
  std::vector<std::string> param_names;   // in the order prefill/decode take them
  std::string device_api = "cpu";         // device.api: cpu | cuda | metal | opencl | webgpu
  int device_type = 1;                    // device.dl_device_type (DLPack: 1 CPU, 2 CUDA, 8 Metal, 15 WebGPU)
  std::vector<std::string> device_libs;   // device.runtime_libs: dlopen()ed after libtvm_runtime
  int64_t threads = 0;                    // tuning.threads: what `edgesmith tune` measured best (0: unset)
};

static std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("missing file " + path + " (is this a bundle folder?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static Manifest load_manifest(const std::string& bundle, bool verify) {
  std::string path = bundle + "/manifest.json";
  ffi::String err;
  ffi::json::Value root = ffi::json::Parse(read_text(path), &err);
  if (!err.empty()) die(path + " is not valid JSON: " + std::string(err));
  auto obj = root.as<ffi::json::Object>();
  if (!obj) die(path + " is not a JSON object");
  auto get = [&](const char* key) -> ffi::Any {
    auto it = obj->find(ffi::String(key));
    if (it == obj->end()) die(path + " has no \"" + key + "\"; rebuild the bundle");
    return (*it).second;
  };
  auto get_int = [&](ffi::json::Object o, const char* key, int64_t dflt) {
    auto it = o.find(ffi::String(key));
    return it == o.end() ? dflt : (*it).second.cast<int64_t>();
  };

  Manifest m;
  m.arch = get("arch").cast<ffi::String>();
  m.tvm_version = get("tvm_version").cast<ffi::String>();

  // Wrong architecture and wrong version fail first, before any file is touched.
  if (m.arch != kArch)
    die("bundle " + bundle + " is for " + m.arch + " but this runner is " + kArch +
        "; compile the bundle for this device's target");
  if (m.tvm_version != EDGESMITH_TVM_VERSION)
    die("bundle " + bundle + " was built with TVM " + m.tvm_version + " but this runtime is TVM " +
        EDGESMITH_TVM_VERSION + "; recompile the bundle with TVM " + EDGESMITH_TVM_VERSION);

  auto kv = get("kv_cache").cast<ffi::json::Object>();
  m.page_size = get_int(kv, "page_size", 16);
  m.prefill_chunk = get_int(kv, "prefill_chunk_size", 512);
  m.max_total_seq_len = get_int(kv, "max_total_seq_len", 4096);
  auto window = kv.find(ffi::String("sliding_window"));  // null or absent: no window
  if (window != kv.end() && (*window).second != nullptr) m.sliding_window = (*window).second.cast<int64_t>();
  auto model = get("model").cast<ffi::json::Object>();
  auto config = model.find("config");
  if (config != model.end()) m.vocab_size = get_int((*config).second.cast<ffi::json::Object>(), "vocab_size", 0);
  for (const ffi::Any& name : get("params").cast<ffi::json::Array>())
    m.param_names.push_back(std::string(name.cast<ffi::String>()));
  auto tuning_it = obj->find(ffi::String("tuning"));  // CPU bundles: the kernels' choices
  if (tuning_it != obj->end()) {
    m.threads = get_int((*tuning_it).second.cast<ffi::json::Object>(), "threads", 0);
  }
  auto dev_it = obj->find(ffi::String("device"));  // absent in CPU bundles
  if (dev_it != obj->end()) {
    auto dev = (*dev_it).second.cast<ffi::json::Object>();
    auto api = dev.find(ffi::String("api"));
    if (api != dev.end()) m.device_api = std::string((*api).second.cast<ffi::String>());
    m.device_type = int(get_int(dev, "dl_device_type", 1));
    auto libs = dev.find(ffi::String("runtime_libs"));
    if (libs != dev.end())
      for (const ffi::Any& lib : (*libs).second.cast<ffi::json::Array>())
        m.device_libs.push_back(std::string(lib.cast<ffi::String>()));
  }

  // Every listed file must exist with its size; its sha256 too unless --no-verify.
  for (const auto& kv_pair : get("files").cast<ffi::json::Object>()) {
    std::string rel = kv_pair.first.cast<ffi::String>();
    auto entry = kv_pair.second.cast<ffi::json::Object>();
    std::string file = bundle + "/" + rel;
    if (!file_exists(file)) die("missing file " + file + "; copy the whole bundle again");
    if (!verify) continue;
    auto it = entry.find(ffi::String("sha256"));
    if (it == entry.end()) continue;
    std::string want = (*it).second.cast<ffi::String>();
    std::string got = sha256_file(file);
    if (got != want)
      die("file " + file + " is corrupted (sha256 " + got.substr(0, 12) + "..., manifest says " +
          want.substr(0, 12) + "...); copy the bundle again");
  }
  return m;
}
