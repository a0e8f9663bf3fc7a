//! 2-D convolution for the CPU as im2col (unfold) + GEMM, differentiable.
//!
//! candle's own CPU conv2d is slow forward and much slower backward (a
//! `conv_transpose2d` for the input gradient and a second conv for the
//! weight gradient, ~5–10 GFLOP/s here). This file computes, per image,
//!
//! ```text
//! cols = im2col(x_b)             // [C·kh·kw, H'·W']
//! y_b  = W[O, C·kh·kw] · cols    // candle matmul (the `gemm` crate)
//! ```
//!
//! and the backward as dx_b = col2im(Wᵀ · dy_b), dW = Σ_b dy_b · cols_bᵀ,
//! db = Σ dy. The three GEMMs run through candle's matmul near the machine's
//! GEMM speed.
//!
//! Design notes (measured on the default CNN, see the report):
//! - Images run in parallel (rayon; candle's GEMM nests inside). Parallel
//!   over images rather than inside each small GEMM cut the 2-thread CPU
//!   overhead of a training step from ~35% to ~0.
//! - The convolution is ONE candle op ([`conv2d`]: CustomOp2 on x, w;
//!   [`conv2d_bias`]: CustomOp3 on x, w, b) rather than `unfold` + matmul in
//!   the autograd graph: a graph node for the column matrix (150 MB for the
//!   32→64 layer at batch 128) costs candle a zero-fill and an add of that
//!   size in backward, plus the GEMM output and page faults; fused, columns
//!   exist only per image (~1 MB, cache-resident, reused by malloc).
//! - Layout [C·kh·kw, H'·W'] per image: the GEMM output [O, H'·W'] already is
//!   NCHW, no permute. The alternative (columns [B·H'·W', C·kh·kw] and a
//!   permute of the output) was not faster in GEMM micro-benchmarks.
//! - The gradient ops are themselves candle ops without a backward:
//!   second-order gradients through [`conv2d`] are not supported (candle
//!   detaches gradients by default anyway; with CANDLE_GRAD_DO_NOT_DETACH a
//!   second backward errors out rather than being silently wrong). [`unfold`]
//!   (im2col, backward col2im, whose backward is im2col) is fully
//!   differentiable to any order.
//!
//! CPU only: the models reach it through [`super::conv2d`], which sends
//! other devices to [`super::conv_gpu`] or [`super::cudnn`].

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Cross-correlation of `x` [B, C, H, W] with `w` [O, C, kh, kw] (PyTorch
/// `Conv2d` layout, no dilation, groups 1), zero `padding` on every side and
/// `stride` in both directions. Returns [B, O, H', W'] with
/// H' = (H + 2·padding − kh) / stride + 1 (likewise W').
///
/// im2col + GEMM (f32 or f64), differentiable wrt both `x` and `w`.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let g = Geom::check(x, w, padding, stride)?;
    x.apply_op2(w, ConvOp { g })
}

/// `conv2d(x, w, padding, stride) + b` with `b` of shape [O] (or [1, O, 1, 1]),
/// fused: the bias is added while the output is written and its gradient is
/// one pass over the output gradient (candle's `broadcast_add` backward is a
/// slow multi-dim reduction).
pub fn conv2d_bias(x: &Tensor, w: &Tensor, b: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let o = w.dim(0)?;
    let g = Geom::check(x, w, padding, stride)?;
    if b.dtype() != x.dtype() {
        bail!("conv2d_bias: x is {:?} but b is {:?}", x.dtype(), b.dtype());
    }
    x.apply_op3(w, &b.reshape(o)?, ConvOp { g })
}

/// Makes glibc's malloc keep freed memory for reuse instead of unmapping it:
/// `M_MMAP_MAX = 0` (large blocks come from the heap, not fresh `mmap`s) and
/// `M_TRIM_THRESHOLD = 2 GiB` (freed heap is not handed back to the OS).
///
/// Why: every candle op on a CNN activation allocates a fresh buffer of
/// 16–150 MB; above glibc's mmap threshold (≤ 32 MB) each is a new `mmap`
/// whose pages are faulted in and zeroed by the kernel on first touch, then
/// `munmap`ed on drop. On the default CNN that was ~25–30% of a training step
/// (and roughly halves candle's native conv backward time too). Process-wide;
/// call once at startup of a CPU training run. Threads other than the main
/// one still fall back to `mmap` when their arena cannot grow, so nothing
/// fails; the cost is a higher, flat resident size (the peak is kept).
/// No-op on non-glibc targets. Returns whether both settings were accepted.
pub fn tune_malloc_for_training() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
        }
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_MAX: std::os::raw::c_int = -4;
        // SAFETY: mallopt only changes allocator parameters; glibc documents
        // both as settable at any time, from any thread.
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// im2col ("unfold") as a differentiable op: x [B, C, H, W] →
/// [B, C·kh·kw, H'·W'], row c·kh·kw + ky·kw + kx, column oy·W' + ox, zero
/// padding. Its backward is col2im, whose own backward is im2col again.
/// `w.reshape((O, C·kh·kw))?.broadcast_matmul(&unfold(..)?)` is the
/// convolution (what [`conv2d`] computes, fused and chunked). CPU only.
pub fn unfold(x: &Tensor, kh: usize, kw: usize, padding: usize, stride: usize) -> Result<Tensor> {
    if x.rank() != 4 {
        bail!("unfold: expected x [B, C, H, W], got {:?}", x.dims());
    }
    let (_, c, h, w) = x.dims4()?;
    x.apply_op1(Im2Col { g: Geom::new(c, h, w, kh, kw, padding, stride)? })
}

/// Images per GEMM chunk: the column buffer of one chunk stays about 1 MB
/// (cache-friendly, and far below glibc's mmap threshold so it is reused
/// rather than page-faulted in afresh on every call). Measured on the default
/// CNN: 1 image per chunk for the 32→64 and 64→64 layers was as fast as or
/// faster than 2.4, 4 or 16 MB chunks.
fn chunk_images<T>(g: &Geom, b: usize) -> usize {
    const TARGET_BYTES: usize = 1 << 20;
    (TARGET_BYTES / (g.k() * g.l() * std::mem::size_of::<T>()).max(1)).clamp(1, b.max(1))
}

fn cpu_tensor<T: WithDType, S: Into<Shape>>(v: Vec<T>, shape: S) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Copies a contiguous CPU tensor into `dst`.
fn copy_out<T: WithDType>(t: &Tensor, dst: &mut [T]) -> Result<()> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cs) = &*st else { bail!("conv_cpu: expected a CPU tensor") };
    let (a, b) = l.contiguous_offsets().expect("contiguous");
    dst.copy_from_slice(&cs.as_slice::<T>()?[a..b]);
    Ok(())
}

/// y = conv(x, w) (+ bias): images in parallel (rayon), one GEMM each.
fn conv_fwd<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, b: usize, o: usize, g: &Geom) -> Result<Vec<T>> {
    let (k, l, chw) = (g.k(), g.l(), g.c * g.h * g.w);
    let w2 = cpu_tensor(w.to_vec(), (o, k))?;
    let mut y = vec![T::zero(); b * o * l];
    let nb = chunk_images::<T>(g, b);
    y.par_chunks_mut(nb * o * l).enumerate().try_for_each(|(i, yc)| -> Result<()> {
        let n = yc.len() / (o * l);
        let xc = &x[i * nb * chw..(i * nb + n) * chw];
        let cols = if g.is_pointwise() { xc.to_vec() } else { im2col(xc, n, g) };
        copy_out(&w2.broadcast_matmul(&cpu_tensor(cols, (n, k, l))?)?, yc)?;
        if let Some(bias) = bias {
            for (bo, row) in yc.chunks_mut(l).enumerate() {
                let v = bias[bo % o];
                row.iter_mut().for_each(|e| *e += v);
            }
        }
        Ok(())
    })?;
    Ok(y)
}

/// dL/dx = col2im(Wᵀ · dL/dy): images in parallel, one GEMM each.
fn conv_bwd_x<T: WithDType>(gy: &[T], w: &[T], b: usize, o: usize, g: &Geom) -> Result<Vec<T>> {
    let (k, l, chw) = (g.k(), g.l(), g.c * g.h * g.w);
    let w2t = cpu_tensor(w.to_vec(), (o, k))?.t()?;
    let mut gx = vec![T::zero(); b * chw];
    let nb = chunk_images::<T>(g, b);
    gx.par_chunks_mut(nb * chw).enumerate().try_for_each(|(i, gxc)| -> Result<()> {
        let n = gxc.len() / chw;
        let gyc = cpu_tensor(gy[i * nb * o * l..(i * nb + n) * o * l].to_vec(), (n, o, l))?;
        let gcols = w2t.broadcast_matmul(&gyc)?; // [n, K, L]
        if g.is_pointwise() {
            copy_out(&gcols, gxc)?;
        } else {
            let (st, lay) = gcols.storage_and_layout();
            let candle_core::Storage::Cpu(cs) = &*st else { bail!("conv_cpu: expected a CPU tensor") };
            let (a, e) = lay.contiguous_offsets().expect("matmul output is contiguous");
            col2im_into(&cs.as_slice::<T>()?[a..e], gxc, g);
        }
        Ok(())
    })?;
    Ok(gx)
}

/// dL/dw = Σ_b dL/dy_b · cols_bᵀ: images in parallel, partial sums reduced.
fn conv_bwd_w<T: WithDType>(x: &[T], gy: &[T], b: usize, o: usize, g: &Geom) -> Result<Vec<T>> {
    let (k, l, chw) = (g.k(), g.l(), g.c * g.h * g.w);
    let nb = chunk_images::<T>(g, b);
    let add = |mut a: Vec<T>, c: Vec<T>| {
        a.iter_mut().zip(&c).for_each(|(a, &c)| *a += c);
        a
    };
    (0..b.div_ceil(nb))
        .into_par_iter()
        .map(|i| -> Result<Vec<T>> {
            let n = nb.min(b - i * nb);
            let xc = &x[i * nb * chw..(i * nb + n) * chw];
            let cols = if g.is_pointwise() { xc.to_vec() } else { im2col(xc, n, g) };
            let cols = cpu_tensor(cols, (n, k, l))?;
            let gyc = cpu_tensor(gy[i * nb * o * l..(i * nb + n) * o * l].to_vec(), (n, o, l))?;
            let part = gyc.matmul(&cols.t()?)?; // [n, O, K]
            let mut flat = vec![T::zero(); n * o * k];
            copy_out(&part, &mut flat)?;
            Ok(flat.chunks(o * k).fold(vec![T::zero(); o * k], |acc, c| add(acc, c.to_vec())))
        })
        .try_reduce(|| vec![T::zero(); o * k], |a, c| Ok(add(a, c)))
}

/// dL/db = Σ over images and positions of dL/dy.
fn conv_bwd_b<T: WithDType>(gy: &[T], o: usize, l: usize) -> Vec<T> {
    let mut gb = vec![T::zero(); o];
    for (bo, row) in gy.chunks(l).enumerate() {
        let mut s = T::zero();
        for &v in row {
            s += v;
        }
        gb[bo % o] += s;
    }
    gb
}

/// The fused convolution (as CustomOp2: x, w; as CustomOp3: x, w, bias).
struct ConvOp {
    g: Geom,
}

impl ConvOp {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (b, c, h, wd) = x.1.shape().dims4()?;
        let (o, wc, kh, kw) = w.1.shape().dims4()?;
        if (c, h, wd, wc, kh, kw) != (g.c, g.h, g.w, g.c, g.kh, g.kw) {
            bail!("conv2d: x {:?} / w {:?} do not match the geometry {g:?}", x.1.dims(), w.1.dims());
        }
        let shape = Shape::from((b, o, g.oh, g.ow));
        macro_rules! go {
            ($t:ty, $v:ident) => {{
                let xs = contiguous_slice::<$t>(x.0, x.1)?;
                let ws = contiguous_slice::<$t>(w.0, w.1)?;
                let bs = match bias {
                    Some((s, l)) => Some(contiguous_slice::<$t>(s, l)?),
                    None => None,
                };
                CpuStorage::$v(conv_fwd(&xs, &ws, bs.as_deref(), b, o, g)?)
            }};
        }
        let out = match (x.0, w.0) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => go!(f32, F32),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => go!(f64, F64),
            _ => bail!("conv2d: f32 or f64 only, got {:?} and {:?}", x.0.dtype(), w.0.dtype()),
        };
        Ok((out, shape))
    }

    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Skip the input gradient when nothing upstream wants it (the first
        // layer, fed with data): candle would compute and then discard it.
        let gx = if x.track_op() { Some(grad.apply_op2(w, ConvBwdX { g: self.g })?) } else { None };
        let gw = if w.track_op() { Some(x.apply_op2(grad, ConvBwdW { g: self.g })?) } else { None };
        Ok((gx, gw))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, grad)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        let gb = if b.track_op() { Some(grad.apply_op1(ConvBwdB)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// (dL/dy, w) → dL/dx.
struct ConvBwdX {
    g: Geom,
}

impl CustomOp2 for ConvBwdX {
    fn name(&self) -> &'static str {
        "conv2d-im2col-bwd-x"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (b, o, _, _) = l1.shape().dims4()?;
        let shape = Shape::from((b, g.c, g.h, g.w));
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                (CpuStorage::F32(conv_bwd_x(&contiguous_slice::<f32>(s1, l1)?, &contiguous_slice::<f32>(s2, l2)?, b, o, g)?), shape)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                (CpuStorage::F64(conv_bwd_x(&contiguous_slice::<f64>(s1, l1)?, &contiguous_slice::<f64>(s2, l2)?, b, o, g)?), shape)
            }
            _ => bail!("conv2d backward: f32 or f64 only"),
        })
    }
}

/// (x, dL/dy) → dL/dw.
struct ConvBwdW {
    g: Geom,
}

impl CustomOp2 for ConvBwdW {
    fn name(&self) -> &'static str {
        "conv2d-im2col-bwd-w"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (b, o, _, _) = l2.shape().dims4()?;
        let shape = Shape::from((o, g.c, g.kh, g.kw));
        Ok(match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                (CpuStorage::F32(conv_bwd_w(&contiguous_slice::<f32>(s1, l1)?, &contiguous_slice::<f32>(s2, l2)?, b, o, g)?), shape)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                (CpuStorage::F64(conv_bwd_w(&contiguous_slice::<f64>(s1, l1)?, &contiguous_slice::<f64>(s2, l2)?, b, o, g)?), shape)
            }
            _ => bail!("conv2d backward: f32 or f64 only"),
        })
    }
}

/// dL/dy [B, O, H', W'] → dL/db [O].
struct ConvBwdB;

impl CustomOp1 for ConvBwdB {
    fn name(&self) -> &'static str {
        "conv2d-bias-bwd"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, o, oh, ow) = l.shape().dims4()?;
        Ok(match s {
            CpuStorage::F32(_) => (CpuStorage::F32(conv_bwd_b(&contiguous_slice::<f32>(s, l)?, o, oh * ow)), Shape::from(o)),
            CpuStorage::F64(_) => (CpuStorage::F64(conv_bwd_b(&contiguous_slice::<f64>(s, l)?, o, oh * ow)), Shape::from(o)),
            _ => bail!("conv2d backward: f32 or f64 only"),
        })
    }
}

/// The geometry of one convolution, per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(c: usize, h: usize, w: usize, kh: usize, kw: usize, pad: usize, stride: usize) -> Result<Self> {
        if stride == 0 {
            bail!("conv2d: stride must be at least 1");
        }
        if kh == 0 || kw == 0 || c == 0 {
            bail!("conv2d: empty kernel or no input channels (c {c}, kernel {kh}x{kw})");
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than the padded input {}x{}", h + 2 * pad, w + 2 * pad);
        }
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (w + 2 * pad - kw) / stride + 1;
        Ok(Geom { c, h, w, kh, kw, pad, stride, oh, ow })
    }

    fn check(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Self> {
        if x.rank() != 4 || w.rank() != 4 {
            bail!("conv2d: expected x [B, C, H, W] and w [O, C, kh, kw], got x {:?} and w {:?}", x.dims(), w.dims());
        }
        if x.dtype() != w.dtype() {
            bail!("conv2d: x is {:?} but w is {:?}", x.dtype(), w.dtype());
        }
        if !matches!(x.dtype(), DType::F32 | DType::F64) {
            bail!("conv2d on the CPU supports f32 and f64, got {:?}", x.dtype());
        }
        let (_, c, h, wd) = x.dims4()?;
        let (_, wc, kh, kw) = w.dims4()?;
        if wc != c {
            bail!("conv2d: x has {c} channels but w {:?} expects {wc}", w.dims());
        }
        Geom::new(c, h, wd, kh, kw, padding, stride)
    }

    fn kk(&self) -> usize {
        self.kh * self.kw
    }
    /// Rows of the column matrix: C·kh·kw.
    fn k(&self) -> usize {
        self.c * self.kk()
    }
    /// Output positions per image: H'·W'.
    fn l(&self) -> usize {
        self.oh * self.ow
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride == 1
    }
    /// The output columns ox whose input column ox·stride + kx − pad lies
    /// inside [0, W): a half-open range [lo, hi).
    fn ox_range(&self, kx: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if kx >= self.pad { 0 } else { (self.pad - kx).div_ceil(s) };
        let hi = if self.w + self.pad > kx { (self.w + self.pad - kx).div_ceil(s).min(self.ow) } else { 0 };
        (lo.min(hi), hi)
    }
    /// The input row for output row oy and kernel row ky, if inside.
    fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        let y = oy * self.stride + ky;
        (y >= self.pad && y - self.pad < self.h).then(|| y - self.pad)
    }
}

/// The input as one contiguous slice: borrowed when the layout already is,
/// gathered otherwise.
pub(crate) fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [T]>> {
    let data = s.as_slice::<T>()?;
    Ok(match l.contiguous_offsets() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&data[a..b]),
        None => {
            // Odometer over the dims, innermost fastest.
            let (dims, strides) = (l.dims(), l.stride());
            let n = l.shape().elem_count();
            let mut out = Vec::with_capacity(n);
            let mut idx = vec![0usize; dims.len()];
            let mut off = l.start_offset();
            for _ in 0..n {
                out.push(data[off]);
                for d in (0..dims.len()).rev() {
                    idx[d] += 1;
                    off += strides[d];
                    if idx[d] < dims[d] {
                        break;
                    }
                    off -= strides[d] * dims[d];
                    idx[d] = 0;
                }
            }
            std::borrow::Cow::Owned(out)
        }
    })
}

/// im2col of one image plane `src` [H, W] (channel c of image b) into the
/// kh·kw rows of `dst` that belong to it; row r starts at `r * row_stride`,
/// each row holds H'·W' values. `dst` must be zeroed: padding is skipped.
fn im2col_plane<T: WithDType>(src: &[T], dst: &mut [T], row_stride: usize, g: &Geom) {
    let (ow, wd, s) = (g.ow, g.w, g.stride);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &mut dst[(ky * g.kw + kx) * row_stride..][..g.l()];
            let (lo, hi) = g.ox_range(kx);
            if lo >= hi {
                continue;
            }
            for oy in 0..g.oh {
                let Some(iy) = g.iy(oy, ky) else { continue };
                let out = &mut row[oy * ow + lo..oy * ow + hi];
                // Input column of ox = lo is lo·s + kx − pad (≥ 0 by ox_range).
                let first = lo * s + kx - g.pad;
                let srow = &src[iy * wd..(iy + 1) * wd];
                if s == 1 {
                    out.copy_from_slice(&srow[first..first + out.len()]);
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = srow[first + j * s];
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_plane`]: adds the kh·kw rows of `src` (row r at
/// `r * row_stride`) back into the image plane `dst` [H, W].
fn col2im_plane<T: WithDType>(src: &[T], row_stride: usize, dst: &mut [T], g: &Geom) {
    let (ow, wd, s) = (g.ow, g.w, g.stride);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &src[(ky * g.kw + kx) * row_stride..][..g.l()];
            let (lo, hi) = g.ox_range(kx);
            if lo >= hi {
                continue;
            }
            for oy in 0..g.oh {
                let Some(iy) = g.iy(oy, ky) else { continue };
                let inp = &row[oy * ow + lo..oy * ow + hi];
                let first = lo * s + kx - g.pad;
                let drow = &mut dst[iy * wd..(iy + 1) * wd];
                if s == 1 {
                    for (d, &v) in drow[first..first + inp.len()].iter_mut().zip(inp) {
                        *d += v;
                    }
                } else {
                    for (j, &v) in inp.iter().enumerate() {
                        drow[first + j * s] += v;
                    }
                }
            }
        }
    }
}

/// [B, C, H, W] → [B, C·kh·kw, H'·W'], row index c·kh·kw + ky·kw + kx.
fn im2col<T: WithDType>(x: &[T], b: usize, g: &Geom) -> Vec<T> {
    let (kk, l, hw) = (g.kk(), g.l(), g.h * g.w);
    let mut cols = vec![T::zero(); b * g.k() * l];
    // One task per (image, channel): kh·kw contiguous rows of the output.
    cols.par_chunks_mut(kk * l).enumerate().for_each(|(bc, dst)| {
        im2col_plane(&x[bc * hw..(bc + 1) * hw], dst, l, g);
    });
    cols
}

/// [B, C·kh·kw, H'·W'] → [B, C, H, W], summing overlapping windows.
fn col2im<T: WithDType>(cols: &[T], b: usize, g: &Geom) -> Vec<T> {
    let mut x = vec![T::zero(); b * g.c * g.h * g.w];
    col2im_into(cols, &mut x, g);
    x
}

/// col2im adding into `x` (zeroed by the caller) [b, C, H, W].
fn col2im_into<T: WithDType>(cols: &[T], x: &mut [T], g: &Geom) {
    let (kk, l, hw) = (g.kk(), g.l(), g.h * g.w);
    x.par_chunks_mut(hw).enumerate().for_each(|(bc, dst)| {
        col2im_plane(&cols[bc * kk * l..(bc + 1) * kk * l], l, dst, g);
    });
}

/// im2col as a candle op: [B, C, H, W] → [B, C·kh·kw, H'·W'].
struct Im2Col {
    g: Geom,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (b, c, h, w) = l.shape().dims4()?;
        if (c, h, w) != (g.c, g.h, g.w) {
            bail!("im2col: input {:?} does not match the geometry {g:?}", l.dims());
        }
        let shape = Shape::from((b, g.k(), g.l()));
        Ok(match s {
            CpuStorage::F32(_) => (CpuStorage::F32(im2col(&contiguous_slice::<f32>(s, l)?, b, g)), shape),
            CpuStorage::F64(_) => (CpuStorage::F64(im2col(&contiguous_slice::<f64>(s, l)?, b, g)), shape),
            _ => bail!("im2col: f32 and f64 only, got {:?}", s.dtype()),
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.apply_op1(Col2Im { g: self.g })?))
    }
}

/// col2im as a candle op: [B, C·kh·kw, H'·W'] → [B, C, H, W]; the adjoint
/// of [`Im2Col`].
struct Col2Im {
    g: Geom,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (b, k, len) = l.shape().dims3()?;
        if (k, len) != (g.k(), g.l()) {
            bail!("col2im: input {:?} does not match the geometry {g:?}", l.dims());
        }
        let shape = Shape::from((b, g.c, g.h, g.w));
        Ok(match s {
            CpuStorage::F32(_) => (CpuStorage::F32(col2im(&contiguous_slice::<f32>(s, l)?, b, g)), shape),
            CpuStorage::F64(_) => (CpuStorage::F64(col2im(&contiguous_slice::<f64>(s, l)?, b, g)), shape),
            _ => bail!("col2im: f32 and f64 only, got {:?}", s.dtype()),
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.apply_op1(Im2Col { g: self.g })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// max |a − b| / max(max |b|, 1e-12).
    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn randn(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f64, 1., shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    /// (B, C, H, W, O, k, padding, stride)
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    const SHAPES: &[Case] = &[
        (2, 3, 8, 8, 4, 3, 1, 1),
        (2, 3, 7, 9, 5, 3, 1, 2),
        (3, 16, 7, 9, 8, 1, 0, 1),
        (2, 16, 9, 7, 6, 1, 0, 2),
        (2, 3, 9, 9, 4, 5, 2, 1),
        (2, 16, 11, 9, 5, 5, 2, 2),
        (2, 16, 7, 9, 4, 3, 0, 1),
        (1, 3, 7, 9, 3, 5, 0, 2),
        (2, 16, 8, 8, 7, 3, 2, 1),
        // Large enough per image that the batch runs in several GEMM chunks.
        (3, 16, 32, 32, 8, 5, 2, 1),
    ];

    #[test]
    fn forward_matches_candle() {
        for &(b, c, h, w, o, k, p, s) in SHAPES {
            let x = randn(&[b, c, h, w], DType::F32);
            let wt = randn(&[o, c, k, k], DType::F32);
            let ours = conv2d(&x, &wt, p, s).unwrap();
            let theirs = x.conv2d(&wt, p, s, 1, 1).unwrap();
            let e = rel_err(&ours, &theirs);
            assert!(e < 1e-4, "shape {:?}: rel err {e}", (b, c, h, w, o, k, p, s));
        }
    }

    #[test]
    fn gradients_match_candle() {
        for &(b, c, h, w, o, k, p, s) in SHAPES {
            // candle's conv2d backward derives the output padding of its
            // conv_transpose2d from H alone; skip shapes where W disagrees.
            let out_pad = |n: usize| n + 2 * p - k - ((n + 2 * p - k) / s) * s;
            if out_pad(h) != out_pad(w) {
                continue;
            }
            let x = Var::from_tensor(&randn(&[b, c, h, w], DType::F32)).unwrap();
            let wt = Var::from_tensor(&randn(&[o, c, k, k], DType::F32)).unwrap();
            let bias = Var::from_tensor(&randn(&[o], DType::F32)).unwrap();
            let ho = (h + 2 * p - k) / s + 1;
            let wo = (w + 2 * p - k) / s + 1;
            let r = randn(&[b, o, ho, wo], DType::F32);
            let ours = conv2d_bias(&x, &wt, &bias, p, s).unwrap();
            let theirs = x.conv2d(&wt, p, s, 1, 1).unwrap().broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap()).unwrap();
            assert!(rel_err(&ours, &theirs) < 1e-4);
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("w", &wt), ("b", &bias)] {
                let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(e < 1e-4, "shape {:?}: grad {name} rel err {e}", (b, c, h, w, o, k, p, s));
            }
            // Without bias, too.
            let g3 = (conv2d(&x, &wt, p, s).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("w", &wt)] {
                let e = rel_err(g3.get(v).unwrap(), g2.get(v).unwrap());
                assert!(e < 1e-4, "shape {:?}: no-bias grad {name} rel err {e}", (b, c, h, w, o, k, p, s));
            }
        }
    }

    #[test]
    fn weight_gradient_with_a_constant_input() {
        // x is plain data (as for the first layer): only w and b get gradients.
        let x = randn(&[3, 3, 9, 9], DType::F32);
        let wt = Var::from_tensor(&randn(&[5, 3, 3, 3], DType::F32)).unwrap();
        let bias = Var::from_tensor(&randn(&[5], DType::F32)).unwrap();
        let g1 = conv2d_bias(&x, &wt, &bias, 1, 1).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = x.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, 5, 1, 1)).unwrap()).unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g1.get(&x).is_none());
        assert!(rel_err(g1.get(&wt).unwrap(), g2.get(&wt).unwrap()) < 1e-4);
        assert!(rel_err(g1.get(&bias).unwrap(), g2.get(&bias).unwrap()) < 1e-4);
    }

    #[test]
    fn finite_differences_f64() {
        let (b, c, h, w, o, k, p, s) = (2, 2, 5, 4, 3, 3, 1, 2);
        let x = Var::from_tensor(&randn(&[b, c, h, w], DType::F64)).unwrap();
        let wt = Var::from_tensor(&randn(&[o, c, k, k], DType::F64)).unwrap();
        let bias = Var::from_tensor(&randn(&[o], DType::F64)).unwrap();
        let r = randn(&[b, o, 3, 2], DType::F64);
        let loss = |x: &Tensor, wt: &Tensor, bias: &Tensor| -> f64 {
            (conv2d_bias(x, wt, bias, p, s).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let grads = (conv2d_bias(&x, &wt, &bias, p, s).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let eps = 1e-6;
        for (which, v) in [(0, &x), (1, &wt), (2, &bias)] {
            let base = v.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let analytic = grads.get(v).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in 0..base.len() {
                let mut plus = base.clone();
                plus[i] += eps;
                let mut minus = base.clone();
                minus[i] -= eps;
                let t = |d: Vec<f64>| Tensor::from_vec(d, v.dims(), &Device::Cpu).unwrap();
                let f = |d: Vec<f64>| match which {
                    0 => loss(&t(d), &wt, &bias),
                    1 => loss(&x, &t(d), &bias),
                    _ => loss(&x, &wt, &t(d)),
                };
                let numeric = (f(plus) - f(minus)) / (2. * eps);
                assert!((numeric - analytic[i]).abs() < 1e-6 * (1. + numeric.abs()), "arg {which} [{i}]: {numeric} vs {}", analytic[i]);
            }
        }
    }

    #[test]
    fn unfold_is_adjoint_of_its_backward_and_convolves() {
        for &(b, c, h, w, o, k, p, s) in SHAPES {
            let x = Var::from_tensor(&randn(&[b, c, h, w], DType::F64)).unwrap();
            let cols = unfold(&x, k, k, p, s).unwrap();
            // <unfold(x), r> = <x, col2im(r)>, and the gradient is col2im(r).
            let r = randn(cols.dims(), DType::F64);
            let g = (&cols * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(&x).unwrap();
            let lhs = (&cols * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            let rhs = (x.as_tensor() * gx).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            assert!((lhs - rhs).abs() < 1e-9 * (1. + lhs.abs()), "{lhs} vs {rhs}");
            // col2im's backward is im2col: the second-order check.
            let rv = Var::from_tensor(&r).unwrap();
            let back = rv.apply_op1(Col2Im { g: Geom::new(c, h, w, k, k, p, s).unwrap() }).unwrap();
            let g2 = (&back * x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(rel_err(g2.get(&rv).unwrap(), &cols) < 1e-12);
            // And unfold + matmul is the convolution.
            let wt = randn(&[o, c, k, k], DType::F64);
            let y = wt.reshape((o, c * k * k)).unwrap().broadcast_matmul(&cols).unwrap();
            let y = y.reshape((b, o, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1)).unwrap();
            assert!(rel_err(&y, &x.conv2d(&wt, p, s, 1, 1).unwrap()) < 1e-10);
        }
    }

    #[test]
    fn non_contiguous_input() {
        let x = randn(&[2, 9, 7, 3], DType::F32).transpose(1, 3).unwrap(); // [2, 3, 7, 9], strided
        let wt = randn(&[4, 5, 3, 3], DType::F32).narrow(1, 1, 3).unwrap(); // [4, 3, 3, 3], strided
        assert!(!x.is_contiguous() && !wt.is_contiguous());
        let ours = conv2d(&x, &wt, 1, 1).unwrap();
        let theirs = x.contiguous().unwrap().conv2d(&wt.contiguous().unwrap(), 1, 1, 1, 1).unwrap();
        assert!(rel_err(&ours, &theirs) < 1e-4);
        let cols = unfold(&x, 3, 3, 1, 2).unwrap();
        let cols2 = unfold(&x.contiguous().unwrap(), 3, 3, 1, 2).unwrap();
        assert!(rel_err(&cols, &cols2) == 0.);
    }

    #[test]
    fn clear_errors() {
        let x = randn(&[2, 3, 5, 5], DType::F32);
        let w = randn(&[4, 3, 3, 3], DType::F32);
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert!(msg(conv2d(&x.flatten_from(2).unwrap(), &w, 0, 1)).contains("expected x [B, C, H, W]"));
        assert!(msg(conv2d(&x, &w.to_dtype(DType::F64).unwrap(), 0, 1)).contains("is F32 but w is F64"));
        assert!(msg(conv2d(&x.to_dtype(DType::BF16).unwrap(), &w.to_dtype(DType::BF16).unwrap(), 0, 1)).contains("f32 and f64"));
        assert!(msg(conv2d(&x, &randn(&[4, 2, 3, 3], DType::F32), 0, 1)).contains("channels"));
        assert!(msg(conv2d(&x, &randn(&[4, 3, 7, 7], DType::F32), 0, 1)).contains("larger than the padded input"));
        assert!(msg(conv2d(&x, &w, 0, 0)).contains("stride"));
    }
}
