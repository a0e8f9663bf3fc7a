//! Convolutions and 2-D max pooling through cuDNN (`--features cudnn`), the
//! way PyTorch runs them on a GPU.
//!
//! candle's own `cudnn` feature only replaces the convolution forward, and
//! on every call it builds descriptors, asks cuDNN's heuristics for an
//! algorithm and allocates a zeroed workspace (on an H200 its 3→32
//! convolution took 1.0 ms against 0.4 ms for candle's im2col); the
//! backward stays candle's. Here:
//!
//! - each (device, op, shape, dtype, math mode) gets its descriptors and
//!   algorithms once, from cuDNN's heuristics (`*_v7`, PyTorch's
//!   `cudnn.benchmark = False` path), kept in a per-thread cache (cuDNN
//!   handles must not be shared between threads that run at once);
//! - the backward is cuDNN's own: backward-data (skipped when the input
//!   needs no gradient, e.g. the data batch), backward-filter and
//!   backward-bias, one call each;
//! - the bias add is fused into the forward op (`cudnnAddTensor`) and its
//!   gradient is one reduction (candle's `broadcast_add` backward is a
//!   strided multi-dimension sum);
//! - max pooling forward and backward are one cuDNN call each (candle's
//!   reduce-max backward is a compare, a cast and a product over the
//!   activation);
//! - the math mode is explicit: TF32 tensor cores only when TF32 is asked
//!   for (`lintrace-train --tf32`, the same switch as for the matrix
//!   products, `candle_core::cuda::set_gemm_reduced_precision_f32`),
//!   strict fp32 (`CUDNN_FMA_MATH`) otherwise, so an analysis on the GPU
//!   still matches the CPU build to docs/metrics.md's tolerance.
//!
//! `LINTRACE_CUDNN=off` falls back to the candle path (`conv_gpu`) at run
//! time, for comparisons. `lintrace-bench --kernels --device cuda` checks
//! every op here against that path on the GPU (values and gradients).

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use candle_core::cuda::{CudaDType, CudaDevice, DeviceId};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

/// Whether ops on `x` can go through this module: a CUDA f32/f64 tensor
/// (and [`super::switches::cudnn`], which the dispatch checks).
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::F64) && super::switches::cudnn()
}

/// Cross-correlation of `x` [B, C, H, W] with `w` [O, C, kh, kw] plus the
/// optional bias `b` ([O] or [1, O, 1, 1]), zero `padding` and `stride` in
/// both directions (PyTorch `Conv2d`, groups 1, no dilation);
/// differentiable wrt all of them.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (o, wc, kh, kw) = w.dims4()?;
    if c != wc {
        bail!("conv2d: input has {c} channels but the kernel expects {wc}");
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw || stride == 0 {
        bail!("conv2d: a {kh}×{kw} kernel at padding {padding}, stride {stride} does not fit {h}×{wd}");
    }
    let op = ConvFwd { padding, stride };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => {
            if b.elem_count() != o {
                bail!("conv2d: bias {:?} does not have {o} elements", b.dims());
            }
            x.apply_op3(&w, &b.reshape(o)?.contiguous()?, op)
        }
        None => x.apply_op2(&w, op),
    }
}

/// Max pooling with a k×k window and stride k (no padding, floor mode) on
/// x [B, C, H, W], as `torch.nn.MaxPool2d(k)`; differentiable.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || k > h || k > w {
        bail!("max_pool2d: window {k} does not fit {h}x{w}");
    }
    x.contiguous()?.apply_op1(PoolFwd { k })
}

// ---------------------------------------------------------------- cuDNN calls

fn check(status: sys::cudnnStatus_t, what: &str) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        bail!("cuDNN {what} failed: {status:?}")
    }
}

/// Sizes as cuDNN's `int`s.
fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("cuDNN: {what} {n} does not fit an int")))
}

fn data_type(dtype: DType) -> Result<sys::cudnnDataType_t> {
    Ok(match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F64 => sys::cudnnDataType_t::CUDNN_DATA_DOUBLE,
        other => bail!("cuDNN ops here take f32 or f64, got {other:?}"),
    })
}

struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate below and destroyed once.
        unsafe { sys::cudnnDestroy(self.0) };
    }
}

struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    /// A packed NCHW tensor.
    fn new(dtype: DType, dims: [usize; 4]) -> Result<Self> {
        let mut d = std::ptr::null_mut();
        // SAFETY: plain descriptor calls on a pointer cuDNN fills in.
        unsafe {
            check(sys::cudnnCreateTensorDescriptor(&mut d), "cudnnCreateTensorDescriptor")?;
            let desc = TensorDesc(d);
            check(
                sys::cudnnSetTensor4dDescriptor(
                    d,
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    data_type(dtype)?,
                    int(dims[0], "batch")?,
                    int(dims[1], "channels")?,
                    int(dims[2], "height")?,
                    int(dims[3], "width")?,
                ),
                "cudnnSetTensor4dDescriptor",
            )?;
            Ok(desc)
        }
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
    }
}

struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    fn new(dtype: DType, dims: [usize; 4]) -> Result<Self> {
        let mut d = std::ptr::null_mut();
        // SAFETY: as for TensorDesc.
        unsafe {
            check(sys::cudnnCreateFilterDescriptor(&mut d), "cudnnCreateFilterDescriptor")?;
            let desc = FilterDesc(d);
            check(
                sys::cudnnSetFilter4dDescriptor(
                    d,
                    data_type(dtype)?,
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    int(dims[0], "output channels")?,
                    int(dims[1], "input channels")?,
                    int(dims[2], "kernel height")?,
                    int(dims[3], "kernel width")?,
                ),
                "cudnnSetFilter4dDescriptor",
            )?;
            Ok(desc)
        }
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyFilterDescriptor(self.0) };
    }
}

struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(dtype: DType, padding: usize, stride: usize, tf32: bool) -> Result<Self> {
        let mut d = std::ptr::null_mut();
        let (p, s) = (int(padding, "padding")?, int(stride, "stride")?);
        // DEFAULT_MATH lets f32 convolutions use TF32 tensor cores on
        // Ampere and later; FMA_MATH restricts them to fp32 FMA kernels.
        let math = if tf32 { sys::cudnnMathType_t::CUDNN_DEFAULT_MATH } else { sys::cudnnMathType_t::CUDNN_FMA_MATH };
        // SAFETY: as for TensorDesc.
        unsafe {
            check(sys::cudnnCreateConvolutionDescriptor(&mut d), "cudnnCreateConvolutionDescriptor")?;
            let desc = ConvDesc(d);
            check(
                sys::cudnnSetConvolution2dDescriptor(
                    d,
                    p,
                    p,
                    s,
                    s,
                    1,
                    1,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    data_type(dtype)?,
                ),
                "cudnnSetConvolution2dDescriptor",
            )?;
            check(sys::cudnnSetConvolutionMathType(d, math), "cudnnSetConvolutionMathType")?;
            Ok(desc)
        }
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}

struct PoolDesc(sys::cudnnPoolingDescriptor_t);

impl PoolDesc {
    fn new(k: usize) -> Result<Self> {
        let mut d = std::ptr::null_mut();
        let k = int(k, "window")?;
        // SAFETY: as for TensorDesc.
        unsafe {
            check(sys::cudnnCreatePoolingDescriptor(&mut d), "cudnnCreatePoolingDescriptor")?;
            let desc = PoolDesc(d);
            // NaNs propagate, as in PyTorch's max pooling.
            check(
                sys::cudnnSetPooling2dDescriptor(
                    d,
                    sys::cudnnPoolingMode_t::CUDNN_POOLING_MAX_DETERMINISTIC,
                    sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                    k,
                    k,
                    0,
                    0,
                    k,
                    k,
                ),
                "cudnnSetPooling2dDescriptor",
            )?;
            Ok(desc)
        }
    }
}

impl Drop for PoolDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}

/// One algorithm and the workspace bytes it needs.
#[derive(Clone, Copy)]
struct Algo<A> {
    algo: A,
    workspace: usize,
}

/// Everything cuDNN needs for one convolution shape, built once.
struct ConvPlan {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    /// The bias as [1, O, 1, 1] (broadcast over B, H, W by cudnnAddTensor).
    bias: TensorDesc,
    conv: ConvDesc,
    y_dims: [usize; 4],
    tf32: bool,
    fwd: std::cell::OnceCell<Algo<sys::cudnnConvolutionFwdAlgo_t>>,
    bwd_data: std::cell::OnceCell<Algo<sys::cudnnConvolutionBwdDataAlgo_t>>,
    bwd_filter: std::cell::OnceCell<Algo<sys::cudnnConvolutionBwdFilterAlgo_t>>,
}

struct PoolPlan {
    x: TensorDesc,
    y: TensorDesc,
    pool: PoolDesc,
    y_dims: [usize; 4],
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct ConvKey {
    dev: DeviceId,
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    padding: usize,
    stride: usize,
    tf32: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    dev: DeviceId,
    dtype: DType,
    x: [usize; 4],
    k: usize,
}

type Cache<K, V> = RefCell<HashMap<K, Rc<V>>>;

thread_local! {
    static HANDLES: Cache<DeviceId, Handle> = RefCell::new(HashMap::new());
    static CONV_PLANS: Cache<ConvKey, ConvPlan> = RefCell::new(HashMap::new());
    static POOL_PLANS: Cache<PoolKey, PoolPlan> = RefCell::new(HashMap::new());
}

/// The value cached under `key` in this thread's `cache`, built on first use.
fn cached<K: Copy + Eq + std::hash::Hash + 'static, V: 'static>(
    cache: &'static std::thread::LocalKey<Cache<K, V>>,
    key: K,
    build: impl FnOnce(K) -> Result<V>,
) -> Result<Rc<V>> {
    if let Some(v) = cache.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(v);
    }
    let v = Rc::new(build(key)?);
    cache.with(|c| c.borrow_mut().insert(key, v.clone()));
    Ok(v)
}

/// This thread's cuDNN handle for `dev`, bound to the device's stream (the
/// one candle's kernels and cuBLAS calls go to, so no synchronisation is
/// needed between them and these calls).
fn handle(dev: &CudaDevice) -> Result<Rc<Handle>> {
    // cuDNN runs in the calling thread's current context: make it the
    // device's (a rayon worker may not have touched the GPU before).
    dev.cuda_stream().context().bind_to_thread().map_err(candle_core::Error::wrap)?;
    cached(&HANDLES, dev.id(), |_| {
        let mut raw = std::ptr::null_mut();
        // SAFETY: cudnnCreate fills in a handle; the stream outlives it
        // (it is the device's, and the device outlives its tensors).
        unsafe {
            check(sys::cudnnCreate(&mut raw), "cudnnCreate (is libcudnn.so.9 from cuDNN 9 on the library path?)")?;
            let handle = Handle(raw);
            check(sys::cudnnSetStream(raw, dev.cuda_stream().cu_stream() as sys::cudaStream_t), "cudnnSetStream")?;
            Ok(handle)
        }
    })
}

/// The descriptors of one convolution shape (its algorithms are chosen on
/// first use of each direction).
fn conv_plan(key: ConvKey) -> Result<Rc<ConvPlan>> {
    cached(&CONV_PLANS, key, |ConvKey { dtype, x, w, padding, stride, tf32, .. }| {
        let out = |n: usize, k: usize| (n + 2 * padding - k) / stride + 1;
        let y_dims = [x[0], w[0], out(x[2], w[2]), out(x[3], w[3])];
        Ok(ConvPlan {
            x: TensorDesc::new(dtype, x)?,
            w: FilterDesc::new(dtype, w)?,
            y: TensorDesc::new(dtype, y_dims)?,
            bias: TensorDesc::new(dtype, [1, w[0], 1, 1])?,
            conv: ConvDesc::new(dtype, padding, stride, tf32)?,
            y_dims,
            tf32,
            fwd: Default::default(),
            bwd_data: Default::default(),
            bwd_filter: Default::default(),
        })
    })
}

fn pool_plan(key: PoolKey) -> Result<Rc<PoolPlan>> {
    cached(&POOL_PLANS, key, |PoolKey { dtype, x, k, .. }| {
        let y_dims = [x[0], x[1], x[2] / k, x[3] / k];
        Ok(PoolPlan { x: TensorDesc::new(dtype, x)?, y: TensorDesc::new(dtype, y_dims)?, pool: PoolDesc::new(k)?, y_dims })
    })
}

fn is_tensor_op(m: sys::cudnnMathType_t) -> bool {
    matches!(m, sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
}

/// The best of cuDNN's heuristic ranking that can run, preferring (in this
/// order) kernels that match the math mode (without TF32, no tensor-op
/// kernel: the descriptor's FMA_MATH is what is enforced, this keeps the
/// choice consistent with it) and deterministic ones (some backward-filter
/// and backward-data kernels sum with atomics, so two runs of one step
/// would differ in the last bits; PyTorch's `cudnn.deterministic`).
macro_rules! pick {
    ($perf:expr, $n:expr, $tf32:expr, $what:expr) => {{
        let ok: Vec<_> = $perf[..$n.max(0) as usize].iter().filter(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS).collect();
        let math = |m: sys::cudnnMathType_t| $tf32 || !is_tensor_op(m);
        let det = sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC;
        match ok.iter().find(|p| math(p.mathType) && p.determinism == det).or_else(|| ok.iter().find(|p| math(p.mathType))).or(ok.first()) {
            Some(p) => p.algo,
            None => bail!("cuDNN {}: no algorithm for this shape", $what),
        }
    }};
}

impl ConvPlan {
    fn fwd(&self, h: &Handle) -> Result<Algo<sys::cudnnConvolutionFwdAlgo_t>> {
        if let Some(a) = self.fwd.get() {
            return Ok(*a);
        }
        // SAFETY: descriptors are live; cuDNN writes at most 8 results.
        let a = unsafe {
            let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); 8];
            let mut n = 0;
            check(
                sys::cudnnGetConvolutionForwardAlgorithm_v7(h.0, self.x.0, self.w.0, self.conv.0, self.y.0, 8, &mut n, perf.as_mut_ptr()),
                "cudnnGetConvolutionForwardAlgorithm_v7",
            )?;
            let algo = pick!(perf, n, self.tf32, "convolution forward");
            let mut ws = 0;
            check(
                sys::cudnnGetConvolutionForwardWorkspaceSize(h.0, self.x.0, self.w.0, self.conv.0, self.y.0, algo, &mut ws),
                "cudnnGetConvolutionForwardWorkspaceSize",
            )?;
            Algo { algo, workspace: ws }
        };
        Ok(*self.fwd.get_or_init(|| a))
    }

    fn bwd_data(&self, h: &Handle) -> Result<Algo<sys::cudnnConvolutionBwdDataAlgo_t>> {
        if let Some(a) = self.bwd_data.get() {
            return Ok(*a);
        }
        // SAFETY: as in fwd.
        let a = unsafe {
            let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); 8];
            let mut n = 0;
            check(
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                    h.0,
                    self.w.0,
                    self.y.0,
                    self.conv.0,
                    self.x.0,
                    8,
                    &mut n,
                    perf.as_mut_ptr(),
                ),
                "cudnnGetConvolutionBackwardDataAlgorithm_v7",
            )?;
            let algo = pick!(perf, n, self.tf32, "convolution backward-data");
            let mut ws = 0;
            check(
                sys::cudnnGetConvolutionBackwardDataWorkspaceSize(h.0, self.w.0, self.y.0, self.conv.0, self.x.0, algo, &mut ws),
                "cudnnGetConvolutionBackwardDataWorkspaceSize",
            )?;
            Algo { algo, workspace: ws }
        };
        Ok(*self.bwd_data.get_or_init(|| a))
    }

    fn bwd_filter(&self, h: &Handle) -> Result<Algo<sys::cudnnConvolutionBwdFilterAlgo_t>> {
        if let Some(a) = self.bwd_filter.get() {
            return Ok(*a);
        }
        // SAFETY: as in fwd.
        let a = unsafe {
            let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(); 8];
            let mut n = 0;
            check(
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h.0,
                    self.x.0,
                    self.y.0,
                    self.conv.0,
                    self.w.0,
                    8,
                    &mut n,
                    perf.as_mut_ptr(),
                ),
                "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
            )?;
            let algo = pick!(perf, n, self.tf32, "convolution backward-filter");
            let mut ws = 0;
            check(
                sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(h.0, self.x.0, self.y.0, self.conv.0, self.w.0, algo, &mut ws),
                "cudnnGetConvolutionBackwardFilterWorkspaceSize",
            )?;
            Algo { algo, workspace: ws }
        };
        Ok(*self.bwd_filter.get_or_init(|| a))
    }
}

// ------------------------------------------------------- device memory access

fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match l.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        other => bail!("cuDNN {what}: expected a 4-D tensor, got {other:?}"),
    }
}

fn contiguous(l: &Layout, what: &str) -> Result<()> {
    if !l.is_contiguous() {
        bail!("cuDNN {what}: internal error, operand is not contiguous");
    }
    Ok(())
}

/// The device address of `s` at the layout's offset (contiguous operands).
fn addr<T: CudaDType + DeviceRepr>(s: &CudaStorage, l: &Layout, dev: &CudaDevice) -> Result<*const c_void> {
    let slice = s.as_cuda_slice::<T>()?;
    let stream = dev.cuda_stream();
    // No event tracking here (lintrace runs one stream per device, see
    // `crate::device`), so the guard records nothing.
    let (ptr, _guard) = slice.device_ptr(&stream);
    Ok((ptr as usize + l.start_offset() * std::mem::size_of::<T>()) as *const c_void)
}

/// `n` fresh elements on the device and their address.
///
/// SAFETY: uninitialised: every element is written by the cuDNN call
/// (outputs are written with β = 0; cuDNN initialises the workspace it reads).
unsafe fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<(CudaSlice<T>, *mut c_void)> {
    let buf = dev.alloc::<T>(n)?;
    let ptr = {
        let stream = dev.cuda_stream();
        let (p, _guard) = buf.device_ptr(&stream);
        p as usize as *mut c_void
    };
    Ok((buf, ptr))
}

/// A fresh output of `n` elements, its address and the storage to return.
fn output<T: CudaDType + DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<(*mut c_void, CudaStorage)> {
    // SAFETY: written in full by the call it is for.
    let (out, ptr) = unsafe { alloc::<T>(dev, n)? };
    Ok((ptr, CudaStorage::wrap_cuda_slice(out, dev.clone())))
}

/// Workspace memory (dropped after the call: freed in stream order).
fn workspace(dev: &CudaDevice, bytes: usize) -> Result<(Option<CudaSlice<u8>>, *mut c_void)> {
    if bytes == 0 {
        return Ok((None, std::ptr::null_mut()));
    }
    // SAFETY: scratch space.
    let (ws, ptr) = unsafe { alloc::<u8>(dev, bytes)? };
    Ok((Some(ws), ptr))
}

/// cuDNN's α = 1, β = 0 scaling factors, typed as the data (float for
/// f32, double for f64).
#[derive(Clone, Copy)]
enum Scale {
    F32(f32, f32),
    F64(f64, f64),
}

impl Scale {
    fn new(dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => Scale::F32(1.0, 0.0),
            DType::F64 => Scale::F64(1.0, 0.0),
            other => bail!("cuDNN ops here take f32 or f64, got {other:?}"),
        })
    }
    fn one(&self) -> *const c_void {
        match self {
            Scale::F32(a, _) => a as *const f32 as *const c_void,
            Scale::F64(a, _) => a as *const f64 as *const c_void,
        }
    }
    fn zero(&self) -> *const c_void {
        match self {
            Scale::F32(_, b) => b as *const f32 as *const c_void,
            Scale::F64(_, b) => b as *const f64 as *const c_void,
        }
    }
}

/// Runs `f` with addresses typed for `dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            other => bail!("cuDNN ops here take f32 or f64, got {other:?}"),
        }
    };
}

fn conv_key(dev: &CudaDevice, dtype: DType, x: [usize; 4], w: [usize; 4], padding: usize, stride: usize) -> ConvKey {
    ConvKey { dev: dev.id(), dtype, x, w, padding, stride, tf32: dtype == DType::F32 && candle_core::cuda::gemm_reduced_precision_f32() }
}

// ------------------------------------------------------------------- the ops

/// y = conv(x, w) (+ b): forward through cuDNN, backward by [`BwdData`],
/// [`BwdFilter`] and [`BwdBias`].
#[derive(Clone, Copy)]
struct ConvFwd {
    padding: usize,
    stride: usize,
}

impl ConvFwd {
    fn run(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        b: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.0.device().clone();
        let dtype = x.0.dtype();
        contiguous(x.1, "convolution input")?;
        contiguous(w.1, "convolution kernel")?;
        let key = conv_key(&dev, dtype, dims4(x.1, "convolution input")?, dims4(w.1, "convolution kernel")?, self.padding, self.stride);
        let p = conv_plan(key)?;
        let h = handle(&dev)?;
        let algo = p.fwd(&h)?;
        let scale = Scale::new(dtype)?;
        let n: usize = p.y_dims.iter().product();
        by_dtype!(dtype, T => {
            let (xp, wp) = (addr::<T>(x.0, x.1, &dev)?, addr::<T>(w.0, w.1, &dev)?);
            let (yp, out) = output::<T>(&dev, n)?;
            let (_ws, wsp) = workspace(&dev, algo.workspace)?;
            // SAFETY: the descriptors match these packed buffers' shapes and
            // dtype; the workspace has the size cuDNN asked for.
            unsafe {
                check(
                    sys::cudnnConvolutionForward(h.0, scale.one(), p.x.0, xp, p.w.0, wp, p.conv.0, algo.algo, wsp, algo.workspace, scale.zero(), p.y.0, yp),
                    "cudnnConvolutionForward",
                )?;
                if let Some(b) = b {
                    contiguous(b.1, "convolution bias")?;
                    let bp = addr::<T>(b.0, b.1, &dev)?;
                    // y = 1·b (broadcast) + 1·y
                    check(sys::cudnnAddTensor(h.0, scale.one(), p.bias.0, bp, scale.one(), p.y.0, yp), "cudnnAddTensor")?;
                }
            }
            Ok((out, Shape::from(p.y_dims.to_vec())))
        })
    }

    fn grads(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &BwdData { padding: self.padding, stride: self.stride, x: x.dims4()? })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&dy, &BwdFilter { padding: self.padding, stride: self.stride, w: w.dims4()? })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

fn not_on_cpu(what: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{what}: the cuDNN op was called on a CPU tensor (internal error)")
}

impl CustomOp2 for ConvFwd {
    fn name(&self) -> &'static str {
        "cudnn-conv2d"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("conv2d")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), None)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, dy)
    }
}

impl CustomOp3 for ConvFwd {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-bias"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("conv2d")
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), Some((b, bl)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, dy)?;
        let db = if b.track_op() { Some(dy.contiguous()?.apply_op1_no_bwd(&BwdBias)?) } else { None };
        Ok((dx, dw, db))
    }
}

/// dx from (dy, w): cuDNN's backward-data.
struct BwdData {
    padding: usize,
    stride: usize,
    x: (usize, usize, usize, usize),
}

impl CustomOp2 for BwdData {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-bwd-data"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("conv2d backward")
    }
    fn cuda_fwd(&self, dy: &CudaStorage, dyl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = dy.device().clone();
        let dtype = dy.dtype();
        contiguous(dyl, "convolution output gradient")?;
        contiguous(wl, "convolution kernel")?;
        let x = [self.x.0, self.x.1, self.x.2, self.x.3];
        let p = conv_plan(conv_key(&dev, dtype, x, dims4(wl, "convolution kernel")?, self.padding, self.stride))?;
        if dims4(dyl, "convolution output gradient")? != p.y_dims {
            bail!("cuDNN conv2d backward: output gradient {:?} does not match the output {:?}", dyl.dims(), p.y_dims);
        }
        let h = handle(&dev)?;
        let algo = p.bwd_data(&h)?;
        let scale = Scale::new(dtype)?;
        by_dtype!(dtype, T => {
            let (dyp, wp) = (addr::<T>(dy, dyl, &dev)?, addr::<T>(w, wl, &dev)?);
            let (dxp, out) = output::<T>(&dev, x.iter().product())?;
            let (_ws, wsp) = workspace(&dev, algo.workspace)?;
            // SAFETY: as in ConvFwd::run.
            unsafe {
                check(
                    sys::cudnnConvolutionBackwardData(h.0, scale.one(), p.w.0, wp, p.y.0, dyp, p.conv.0, algo.algo, wsp, algo.workspace, scale.zero(), p.x.0, dxp),
                    "cudnnConvolutionBackwardData",
                )?;
            }
            Ok((out, Shape::from(x.to_vec())))
        })
    }
}

/// dw from (x, dy): cuDNN's backward-filter.
struct BwdFilter {
    padding: usize,
    stride: usize,
    w: (usize, usize, usize, usize),
}

impl CustomOp2 for BwdFilter {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-bwd-filter"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("conv2d backward")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, dy: &CudaStorage, dyl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let dtype = x.dtype();
        contiguous(xl, "convolution input")?;
        contiguous(dyl, "convolution output gradient")?;
        let w = [self.w.0, self.w.1, self.w.2, self.w.3];
        let p = conv_plan(conv_key(&dev, dtype, dims4(xl, "convolution input")?, w, self.padding, self.stride))?;
        if dims4(dyl, "convolution output gradient")? != p.y_dims {
            bail!("cuDNN conv2d backward: output gradient {:?} does not match the output {:?}", dyl.dims(), p.y_dims);
        }
        let h = handle(&dev)?;
        let algo = p.bwd_filter(&h)?;
        let scale = Scale::new(dtype)?;
        by_dtype!(dtype, T => {
            let (xp, dyp) = (addr::<T>(x, xl, &dev)?, addr::<T>(dy, dyl, &dev)?);
            let (dwp, out) = output::<T>(&dev, w.iter().product())?;
            let (_ws, wsp) = workspace(&dev, algo.workspace)?;
            // SAFETY: as in ConvFwd::run.
            unsafe {
                check(
                    sys::cudnnConvolutionBackwardFilter(h.0, scale.one(), p.x.0, xp, p.y.0, dyp, p.conv.0, algo.algo, wsp, algo.workspace, scale.zero(), p.w.0, dwp),
                    "cudnnConvolutionBackwardFilter",
                )?;
            }
            Ok((out, Shape::from(w.to_vec())))
        })
    }
}

/// db [O] from dy [B, O, H, W]: the sum over B, H and W.
struct BwdBias;

impl CustomOp1 for BwdBias {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-bwd-bias"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("conv2d backward")
    }
    fn cuda_fwd(&self, dy: &CudaStorage, dyl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = dy.device().clone();
        let dtype = dy.dtype();
        contiguous(dyl, "convolution output gradient")?;
        let d = dims4(dyl, "convolution output gradient")?;
        let (dy_desc, db_desc) = (TensorDesc::new(dtype, d)?, TensorDesc::new(dtype, [1, d[1], 1, 1])?);
        let h = handle(&dev)?;
        let scale = Scale::new(dtype)?;
        by_dtype!(dtype, T => {
            let dyp = addr::<T>(dy, dyl, &dev)?;
            let (dbp, out) = output::<T>(&dev, d[1])?;
            // SAFETY: as in ConvFwd::run.
            unsafe {
                check(sys::cudnnConvolutionBackwardBias(h.0, scale.one(), dy_desc.0, dyp, scale.zero(), db_desc.0, dbp), "cudnnConvolutionBackwardBias")?;
            }
            Ok((out, Shape::from(d[1])))
        })
    }
}

/// y = max_pool(x): forward through cuDNN, backward by [`PoolBwd`].
struct PoolFwd {
    k: usize,
}

impl CustomOp1 for PoolFwd {
    fn name(&self) -> &'static str {
        "cudnn-max-pool2d"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("max_pool2d")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let dtype = x.dtype();
        contiguous(xl, "max-pool input")?;
        let p = pool_plan(PoolKey { dev: dev.id(), dtype, x: dims4(xl, "max-pool input")?, k: self.k })?;
        let h = handle(&dev)?;
        let scale = Scale::new(dtype)?;
        by_dtype!(dtype, T => {
            let xp = addr::<T>(x, xl, &dev)?;
            let (yp, out) = output::<T>(&dev, p.y_dims.iter().product())?;
            // SAFETY: as in ConvFwd::run.
            unsafe {
                check(sys::cudnnPoolingForward(h.0, p.pool.0, scale.one(), p.x.0, xp, scale.zero(), p.y.0, yp), "cudnnPoolingForward")?;
            }
            Ok((out, Shape::from(p.y_dims.to_vec())))
        })
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(y, &dy.contiguous()?, &PoolBwd { k: self.k })?))
    }
}

/// dx from (x, y, dy): cuDNN's pooling backward (the gradient goes to the
/// window's maximum).
struct PoolBwd {
    k: usize,
}

impl CustomOp3 for PoolBwd {
    fn name(&self) -> &'static str {
        "cudnn-max-pool2d-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_on_cpu("max_pool2d backward")
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let dtype = x.dtype();
        for (l, what) in [(xl, "max-pool input"), (yl, "max-pool output"), (dyl, "max-pool output gradient")] {
            contiguous(l, what)?;
        }
        let xd = dims4(xl, "max-pool input")?;
        let p = pool_plan(PoolKey { dev: dev.id(), dtype, x: xd, k: self.k })?;
        if dims4(yl, "max-pool output")? != p.y_dims || dims4(dyl, "max-pool output gradient")? != p.y_dims {
            bail!("cuDNN max_pool2d backward: output {:?} / gradient {:?} do not match {:?}", yl.dims(), dyl.dims(), p.y_dims);
        }
        let h = handle(&dev)?;
        let scale = Scale::new(dtype)?;
        by_dtype!(dtype, T => {
            let (xp, yp, dyp) = (addr::<T>(x, xl, &dev)?, addr::<T>(y, yl, &dev)?, addr::<T>(dy, dyl, &dev)?);
            let (dxp, out) = output::<T>(&dev, xd.iter().product())?;
            // SAFETY: as in ConvFwd::run.
            unsafe {
                check(
                    sys::cudnnPoolingBackward(h.0, p.pool.0, scale.one(), p.y.0, yp, p.y.0, dyp, p.x.0, xp, scale.zero(), p.x.0, dxp),
                    "cudnnPoolingBackward",
                )?;
            }
            Ok((out, Shape::from(xd.to_vec())))
        })
    }
}
