// oneDNN's convolutions as an XLA:CPU FFI target, in JAX's layouts (NHWC activations, HWIO
// weights; float32, or bfloat16 with float32 accumulation), so that a jitted JAX program runs
// its convolutions and their gradients in oneDNN's kernels (the ones torch uses on CPU)
// instead of Eigen's. Built by `python -m resflax.kernels.build`; used through
// `resflax.kernels.onednn`.
//
// One target, three kinds (attribute `kind`), each out = f(a, b):
//   0 forward:          y  = conv(x, w)      a = x, b = w, out = y
//   1 input gradient:   dx from (g, w)       a = g, b = w, out = dx
//   2 weight gradient:  dw from (x, g)       a = x, b = g, out = dw
// Shapes and the data type (all three buffers alike) come from the buffers; strides and padding
// from attributes.

#include <sys/mman.h>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.h"
#include "oneapi/dnnl/dnnl_version.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#define RETURN_IF_DNNL(expr)                                                        \
  do {                                                                              \
    dnnl_status_t status_ = (expr);                                                 \
    if (status_ != dnnl_success)                                                    \
      return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + #expr + \
                                                       " returned status " +       \
                                                       std::to_string(status_));    \
  } while (0)

dnnl_engine_t Engine() {
  static dnnl_engine_t engine = [] {
    dnnl_engine_t e = nullptr;
    dnnl_engine_create(&e, dnnl_cpu, 0);
    return e;
  }();
  return engine;
}

using Dims = std::array<int64_t, 4>;

// oneDNN's logical order is (N, C, H, W) for activations and (O, I, H, W) for weights; the
// strides say where JAX keeps them.
dnnl_memory_desc_t Nhwc(const Dims& d, dnnl_data_type_t t) {
  dnnl_dims_t dims = {d[0], d[3], d[1], d[2]};
  dnnl_dims_t strides = {d[1] * d[2] * d[3], 1, d[2] * d[3], d[3]};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_strides(&md, 4, dims, t, strides);
  return md;
}

dnnl_memory_desc_t Hwio(const Dims& d, dnnl_data_type_t t) {
  dnnl_dims_t dims = {d[3], d[2], d[0], d[1]};
  dnnl_dims_t strides = {1, d[3], d[1] * d[2] * d[3], d[2] * d[3]};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_strides(&md, 4, dims, t, strides);
  return md;
}

// A primitive for one (kind, shapes, strides, padding), made once and kept: creating one
// dispatches over oneDNN's implementations, which costs more than a small convolution.
struct Plan {
  dnnl_memory_desc_t x = nullptr, y = nullptr, user_w = nullptr;
  dnnl_memory_desc_t prim_w = nullptr, scratch = nullptr;
  dnnl_primitive_t conv = nullptr;
  dnnl_primitive_t reorder = nullptr;  // user weights <-> the primitive's (blocked) layout
  size_t w_bytes = 0, scratch_bytes = 0;
};

std::mutex plans_mu;
std::unordered_map<std::string, std::unique_ptr<Plan>> plans;

struct MdGuard {
  dnnl_memory_desc_t md;
  ~MdGuard() { dnnl_memory_desc_destroy(md); }
};
struct PdGuard {
  dnnl_primitive_desc_t pd = nullptr;
  ~PdGuard() { dnnl_primitive_desc_destroy(pd); }
};

ffi::Error MakePlan(int64_t kind, dnnl_data_type_t t, const Dims& xd, const Dims& wd,
                    const Dims& yd, const int64_t* st, const int64_t* lo, const int64_t* hi,
                    Plan& p) {
  p.x = Nhwc(xd, t);
  p.y = Nhwc(yd, t);
  p.user_w = Hwio(wd, t);
  MdGuard any_w{nullptr};
  dnnl_dims_t wdims = {wd[3], wd[2], wd[0], wd[1]};
  RETURN_IF_DNNL(dnnl_memory_desc_create_with_tag(&any_w.md, 4, wdims, t, dnnl_format_tag_any));
  dnnl_dims_t strides = {st[0], st[1]}, dilation = {0, 0};
  dnnl_dims_t pad_l = {lo[0], lo[1]}, pad_r = {hi[0], hi[1]};
  dnnl_primitive_attr_t attr = nullptr;
  RETURN_IF_DNNL(dnnl_primitive_attr_create(&attr));
  std::unique_ptr<std::remove_pointer_t<dnnl_primitive_attr_t>,
                  dnnl_status_t (*)(dnnl_primitive_attr_t)>
      attr_guard(attr, dnnl_primitive_attr_destroy);
  // The scratchpad is passed in per call, so one primitive can run on several threads.
  RETURN_IF_DNNL(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
  PdGuard fwd, bwd;
  RETURN_IF_DNNL(dnnl_convolution_forward_primitive_desc_create(
      &fwd.pd, Engine(), dnnl_forward_training, dnnl_convolution_direct, p.x, any_w.md,
      nullptr, p.y, strides, dilation, pad_l, pad_r, kind == 0 ? attr : nullptr));
  dnnl_primitive_desc_t pd = fwd.pd;
  dnnl_query_t weights_query = dnnl_query_weights_md;
  if (kind == 1) {
    RETURN_IF_DNNL(dnnl_convolution_backward_data_primitive_desc_create(
        &bwd.pd, Engine(), dnnl_convolution_direct, p.x, any_w.md, p.y, strides, dilation,
        pad_l, pad_r, fwd.pd, attr));
    pd = bwd.pd;
  } else if (kind == 2) {
    RETURN_IF_DNNL(dnnl_convolution_backward_weights_primitive_desc_create(
        &bwd.pd, Engine(), dnnl_convolution_direct, p.x, any_w.md, nullptr, p.y, strides,
        dilation, pad_l, pad_r, fwd.pd, attr));
    pd = bwd.pd;
    weights_query = dnnl_query_diff_weights_md;
  }
  RETURN_IF_DNNL(dnnl_primitive_create(&p.conv, pd));
  RETURN_IF_DNNL(dnnl_memory_desc_clone(&p.prim_w, dnnl_primitive_desc_query_md(pd, weights_query, 0)));
  RETURN_IF_DNNL(dnnl_memory_desc_clone(&p.scratch, dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)));
  p.scratch_bytes = dnnl_memory_desc_get_size(p.scratch);
  if (!dnnl_memory_desc_equal(p.prim_w, p.user_w)) {
    PdGuard r;
    const_dnnl_memory_desc_t from = kind == 2 ? p.prim_w : p.user_w;
    const_dnnl_memory_desc_t to = kind == 2 ? p.user_w : p.prim_w;
    RETURN_IF_DNNL(dnnl_reorder_primitive_desc_create(&r.pd, from, Engine(), to, Engine(), nullptr));
    RETURN_IF_DNNL(dnnl_primitive_create(&p.reorder, r.pd));
    p.w_bytes = dnnl_memory_desc_get_size(p.prim_w);
  }
  return ffi::Error::Success();
}

// Per-thread stream and buffers (the reordered weights and the scratchpad), grown as needed;
// a thread runs one call at a time, so a buffer is free again when the next call starts.
// The buffers are mapped directly, not malloc'd: with resflax's host_malloc="retain" (one
// arena, nothing returned) blocks of a few MB kept for the whole run would sit in the holes
// XLA's per-step buffers leave, and the heap would grow by a whole step's buffers.
struct ThreadState {
  dnnl_stream_t stream = nullptr;
  char* scratch = nullptr;
  size_t scratch_size = 0;
  char* weights = nullptr;
  size_t weights_size = 0;
  ~ThreadState() {
    if (scratch) munmap(scratch, scratch_size);
    if (weights) munmap(weights, weights_size);
    if (stream) dnnl_stream_destroy(stream);
  }
  static char* Grow(char*& buf, size_t& size, size_t need) {
    if (need <= size) return buf;
    if (buf) munmap(buf, size);
    size_t rounded = (need + 4095) & ~size_t{4095};
    void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    buf = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
    size = buf ? rounded : 0;
    return buf;
  }
};

ThreadState& Local() {
  thread_local ThreadState t;
  if (t.stream == nullptr) dnnl_stream_create(&t.stream, Engine(), dnnl_stream_default_flags);
  return t;
}

struct MemGuard {
  dnnl_memory_t m = nullptr;
  ~MemGuard() { dnnl_memory_destroy(m); }
};

ffi::Error Execute(int64_t kind, void* a, void* b, void* out, const Plan& p) {
  ThreadState& t = Local();
  void* x = kind == 0 ? a : kind == 1 ? out : a;
  void* y = kind == 0 ? out : kind == 1 ? a : b;
  void* w = kind == 2 ? out : b;
  MemGuard xm, ym, user_wm, prim_wm, sm;
  RETURN_IF_DNNL(dnnl_memory_create(&xm.m, p.x, Engine(), x));
  RETURN_IF_DNNL(dnnl_memory_create(&ym.m, p.y, Engine(), y));
  RETURN_IF_DNNL(dnnl_memory_create(&user_wm.m, p.user_w, Engine(), w));
  dnnl_memory_t wm = user_wm.m;
  if (p.reorder) {
    char* buf = ThreadState::Grow(t.weights, t.weights_size, p.w_bytes);
    if (buf == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "weights buffer");
    RETURN_IF_DNNL(dnnl_memory_create(&prim_wm.m, p.prim_w, Engine(), buf));
    wm = prim_wm.m;
    if (kind != 2) {
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, user_wm.m}, {DNNL_ARG_TO, wm}};
      RETURN_IF_DNNL(dnnl_primitive_execute(p.reorder, t.stream, 2, r));
    }
  }
  std::vector<dnnl_exec_arg_t> args;
  if (kind == 0)
    args = {{DNNL_ARG_SRC, xm.m}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym.m}};
  else if (kind == 1)
    args = {{DNNL_ARG_DIFF_SRC, xm.m}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_DST, ym.m}};
  else
    args = {{DNNL_ARG_SRC, xm.m}, {DNNL_ARG_DIFF_WEIGHTS, wm}, {DNNL_ARG_DIFF_DST, ym.m}};
  if (p.scratch_bytes) {
    char* buf = ThreadState::Grow(t.scratch, t.scratch_size, p.scratch_bytes);
    if (buf == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "scratchpad");
    RETURN_IF_DNNL(dnnl_memory_create(&sm.m, p.scratch, Engine(), buf));
    args.push_back({DNNL_ARG_SCRATCHPAD, sm.m});
  }
  RETURN_IF_DNNL(dnnl_primitive_execute(p.conv, t.stream, static_cast<int>(args.size()), args.data()));
  if (kind == 2 && p.reorder) {
    dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, wm}, {DNNL_ARG_TO, user_wm.m}};
    RETURN_IF_DNNL(dnnl_primitive_execute(p.reorder, t.stream, 2, r));
  }
  RETURN_IF_DNNL(dnnl_stream_wait(t.stream));
  return ffi::Error::Success();
}

Dims DimsOf(ffi::Span<const int64_t> d) { return {d[0], d[1], d[2], d[3]}; }

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t kind,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                ffi::Span<const int64_t> pad_hi) {
  if (kind < 0 || kind > 2)
    return ffi::Error::InvalidArgument("kind must be 0, 1 or 2, got " + std::to_string(kind));
  const ffi::DataType type = a.element_type();
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("operands must be float32 or bfloat16");
  for (auto* buf : {&a, &b, &*out}) {
    if (buf->element_type() != type || buf->dimensions().size() != 4)
      return ffi::Error::InvalidArgument("operands must be 4-D, all of one data type");
  }
  const dnnl_data_type_t dnnl_type = type == ffi::DataType::F32 ? dnnl_f32 : dnnl_bf16;
  if (strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2)
    return ffi::Error::InvalidArgument("strides, pad_lo and pad_hi need 2 entries each");
  Dims xd, wd, yd;
  if (kind == 0) xd = DimsOf(a.dimensions()), wd = DimsOf(b.dimensions()), yd = DimsOf(out->dimensions());
  if (kind == 1) yd = DimsOf(a.dimensions()), wd = DimsOf(b.dimensions()), xd = DimsOf(out->dimensions());
  if (kind == 2) xd = DimsOf(a.dimensions()), yd = DimsOf(b.dimensions()), wd = DimsOf(out->dimensions());
  std::string key;
  auto put = [&key](const int64_t* v, size_t n) {
    key.append(reinterpret_cast<const char*>(v), n * sizeof(int64_t));
  };
  const int64_t type_code = dnnl_type;
  put(&kind, 1), put(&type_code, 1);
  put(xd.data(), 4), put(wd.data(), 4), put(yd.data(), 4);
  put(strides.begin(), 2), put(pad_lo.begin(), 2), put(pad_hi.begin(), 2);
  const Plan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(plans_mu);
    auto it = plans.find(key);
    if (it != plans.end()) plan = it->second.get();
  }
  if (plan == nullptr) {
    auto p = std::make_unique<Plan>();
    if (auto err = MakePlan(kind, dnnl_type, xd, wd, yd, strides.begin(), pad_lo.begin(),
                            pad_hi.begin(), *p);
        err.failure())
      return err;
    std::lock_guard<std::mutex> lock(plans_mu);
    plan = plans.emplace(key, std::move(p)).first->second.get();  // a racing twin is dropped
  }
  return Execute(kind, a.untyped_data(), b.untyped_data(), out->untyped_data(), *plan);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResflaxOnednnConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi"));

// The oneDNN version this library runs with, for the Python side to check and report.
extern "C" int ResflaxOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// The oneDNN version whose headers this file was compiled against: structs and enums are
// laid out as those headers say, so it must equal the library's (tests/kernels/test_onednn.py).
extern "C" int ResflaxOnednnCompiledVersion() {
  return DNNL_VERSION_MAJOR * 10000 + DNNL_VERSION_MINOR * 100 + DNNL_VERSION_PATCH;
}
