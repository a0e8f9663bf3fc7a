//! torch.save files built byte by byte, for tests/it/robustness/hostile.rs and
//! tests/it/robustness/fuzz.rs: a state-dict pickle written opcode by opcode the way
//! torch.save writes it (protocol 2), and a zip of stored entries as torch.save
//! lays them out (`archive/data.pkl`, `archive/data/<storage key>`).
#![allow(dead_code)]

use std::io::Write;

/// The memory each thread holds (bytes it allocated less those it freed)
/// and the most it has held, so that a test can check that a loader holds
/// nothing beyond what its file justifies: one huge allocation and a
/// million small ones alike.
struct Tracking;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|l| {
        l.set(l.get().saturating_add(delta));
        let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
    });
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note(layout.size() as isize);
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note(layout.size() as isize);
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        std::alloc::System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        note(-(layout.size() as isize));
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static TRACKING: Tracking = Tracking;

/// Runs `f` and returns its result and the most memory it held at once
/// (beyond what this thread held when it started).
pub fn peak_memory<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    let out = f();
    (out, (PEAK.with(|p| p.get()) - start).max(0) as usize)
}

/// One tensor of a state dict, with every field the pickle records
/// (signed, so that hostile values can be written).
#[derive(Clone, Debug)]
pub struct FakeTensor {
    pub name: String,
    pub storage_class: String,
    pub key: String,
    pub storage_len: i64,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

impl FakeTensor {
    /// A contiguous float32 tensor that fills its own storage `key`.
    pub fn f32(name: &str, key: &str, shape: &[usize]) -> Self {
        let mut stride = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1] as i64;
        }
        FakeTensor {
            name: name.into(),
            storage_class: "FloatStorage".into(),
            key: key.into(),
            storage_len: shape.iter().product::<usize>() as i64,
            offset: 0,
            shape: shape.iter().map(|&d| d as i64).collect(),
            stride,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }
}

/// An integer: BININT when it fits 32 bits, else LONG1 with 8 bytes.
pub fn int(v: i64) -> Vec<u8> {
    match i32::try_from(v) {
        Ok(v) => [&[b'J'][..], &v.to_le_bytes()].concat(),
        Err(_) => [&[0x8a, 8][..], &v.to_le_bytes()].concat(),
    }
}

pub fn unicode(s: &str) -> Vec<u8> {
    [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat()
}

pub fn global(module: &str, class: &str) -> Vec<u8> {
    format!("c{module}\n{class}\n").into_bytes()
}

fn tuple_of(ints: &[i64]) -> Vec<u8> {
    let mut out = vec![b'('];
    for &i in ints {
        out.extend(int(i));
    }
    out.push(b't');
    out
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
pub fn tensor_pickle(t: &FakeTensor) -> Vec<u8> {
    let mut out = global("torch._utils", "_rebuild_tensor_v2");
    out.extend(b"((");
    out.extend(unicode("storage"));
    out.extend(global("torch", &t.storage_class));
    out.extend(unicode(&t.key));
    out.extend(unicode("cpu"));
    out.extend(int(t.storage_len));
    out.extend(b"tQ");
    out.extend(int(t.offset));
    out.extend(tuple_of(&t.shape));
    out.extend(tuple_of(&t.stride));
    out.push(0x89); // False
    out.extend(global("collections", "OrderedDict"));
    out.extend(b")Rt"); // OrderedDict(), end of the arguments
    out.push(b'R');
    out
}

/// A state dict (an OrderedDict) of `entries`, each a name and the pickle of
/// its value.
pub fn state_dict(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    out.extend(global("collections", "OrderedDict"));
    out.extend(b")R(");
    for (name, value) in entries {
        out.extend(unicode(name));
        out.extend(value);
    }
    out.extend(b"u.");
    out
}

/// A zip of stored (uncompressed) entries.
pub fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A torch.save file: `pickle` as archive/data.pkl and each (key, bytes) of
/// `storages` as archive/data/<key>.
pub fn torch_zip(pickle: Vec<u8>, storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_string(), pickle), ("archive/version".to_string(), b"3\n".to_vec())];
    entries.extend(storages.iter().map(|(k, b)| (format!("archive/data/{k}"), b.clone())));
    zip(&entries)
}

/// A torch.save file of `tensors`, each storage holding the float32 values
/// 0.5, 1.5, … (as many as its `storage_len` says, or none when that is
/// negative or above 2^20).
pub fn torch_file(tensors: &[FakeTensor]) -> Vec<u8> {
    let pickle = state_dict(&tensors.iter().map(|t| (t.name.clone(), tensor_pickle(t))).collect::<Vec<_>>());
    let mut storages: Vec<(String, Vec<u8>)> = Vec::new();
    for t in tensors {
        if !storages.iter().any(|(k, _)| *k == t.key) {
            let n = usize::try_from(t.storage_len).ok().filter(|&n| n <= 1 << 20).unwrap_or(0);
            storages.push((t.key.clone(), (0..n).flat_map(|i| (i as f32 + 0.5).to_le_bytes()).collect()));
        }
    }
    torch_zip(pickle, &storages)
}

/// The entries of a zip, in order, as (name, bytes).
pub fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut out).unwrap();
            (f.name().unwrap().to_string(), out)
        })
        .collect()
}

/// `zip` with its end-of-central-directory record replaced by a ZIP64 one
/// that claims `entries` files in a central directory of `size` bytes at
/// `offset`: the numbers a zip reader may size its tables by.
pub fn zip64_claiming(zip: &[u8], entries: u64, size: u64, offset: u64) -> Vec<u8> {
    let eocd = zip.len() - 22;
    assert_eq!(&zip[eocd..eocd + 4], b"PK\x05\x06");
    let mut out = zip[..eocd].to_vec();
    let at = out.len() as u64;
    out.extend(b"PK\x06\x06");
    out.extend(44u64.to_le_bytes());
    out.extend([45, 0, 45, 0]);
    out.extend([0u8; 8]); // this disk, the directory's disk
    out.extend(entries.to_le_bytes());
    out.extend(entries.to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend(offset.to_le_bytes());
    out.extend(b"PK\x06\x07");
    out.extend(0u32.to_le_bytes());
    out.extend(at.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    out.extend(b"PK\x05\x06");
    out.extend([0u8; 4]);
    out.extend([0xff; 4]);
    out.extend([0xff; 8]);
    out.extend([0u8; 2]);
    out
}
