// Split + RoPE + KV append in one kernel on GPU decode (compiler/kernels/kv_append.py says why).
//
// A GPU bundle's create_paged_kv_cache calls the builtin registered here,
//   edgesmith.kv_fused_append(fused, split, append, sliding) -> [split', append']
// and hands the pair to TVM's paged KV cache in place of its split and append functions. TVM's
// AttentionWithFusedQKV calls split' then append' (paged_kv_cache.cc); on a decode step of one
// token that is before the attention, so split' only keeps its buffers and append' runs the one
// fused kernel, which writes q and the new k, v into the pages:
//   split'(qkv (t, hq + 2 hkv, d), pos (t), q (t, hq, d), k, v, rope)   t == 1: keep qkv, pos, q
//                                                                     else: split(...) as before
//   append'(pages, k, v, append_pos (t))   kept: fused(qkv, pos, q, pages, append_pos)
//                                          else: append(pages, k, v, append_pos) (TVM's)
// A prefill (t > 1) runs the attention between the two, reading the split's k and v: both
// kernels run. A cache that may slide (sliding != 0) appends after the attention even for one
// token: it gets split and append unchanged.
#pragma once

#include <memory>

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>

namespace kv_append {

namespace ffi = tvm::ffi;

struct Kept {  // a one-token split's buffers, until the append that follows it
  bool set = false;
  ffi::Tensor qkv, pos, q;
};

inline ffi::Array<ffi::Any> make_pair(ffi::Function fused, ffi::Function split, ffi::Function append,
                                      int64_t sliding) {
  if (sliding) return ffi::Array<ffi::Any>{split, append};
  auto kept = std::make_shared<Kept>();
  ffi::Function split_kept = ffi::Function::FromPacked([=](ffi::PackedArgs args, ffi::Any* rv) {
    ffi::Tensor qkv = args[0].cast<ffi::Tensor>();
    if (qkv.shape()[0] == 1) {
      *kept = Kept{true, qkv, args[1].cast<ffi::Tensor>(), args[2].cast<ffi::Tensor>()};
      return;
    }
    *kept = Kept{};
    split.CallPacked(args, rv);
  });
  ffi::Function append_fused = ffi::Function::FromPacked([=](ffi::PackedArgs args, ffi::Any* rv) {
    if (!kept->set) {
      append.CallPacked(args, rv);
      return;
    }
    Kept k = *kept;
    *kept = Kept{};  // the buffers are the cache's temporaries: hold them no longer than this call
    fused(k.qkv, k.pos, k.q, args[0].cast<ffi::Tensor>(), args[3].cast<ffi::Tensor>());
  });
  return ffi::Array<ffi::Any>{split_kept, append_fused};
}

// Before the model library loads: the VM looks its builtins up when it initializes.
inline void register_factory() {
  ffi::Function::SetGlobal("edgesmith.kv_fused_append", ffi::Function::FromTyped(make_pair), true);
}

}  // namespace kv_append
